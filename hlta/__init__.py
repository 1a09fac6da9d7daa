"""Hierarchical latent tree analysis (PEM-HLTA) over class-label documents.

``HLTA`` learns a hierarchical latent tree over class labels from binary
documents (CWOX Section 3); :mod:`cwox.hlta.tree` holds the tree contract shared with
``store`` and ``online``.
"""

from .estimator import BIC_BATCH, HLTA
from .tree import (
    bic,
    cluster_of,
    clusters,
    log_likelihood,
    n_params,
    to_pgmpy,
    tree_from_groups,
    validate_tree,
)

__all__ = [
    "BIC_BATCH",
    "HLTA",
    "bic",
    "cluster_of",
    "clusters",
    "log_likelihood",
    "n_params",
    "to_pgmpy",
    "tree_from_groups",
    "validate_tree",
]
