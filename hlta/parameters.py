"""Parameters of a latent tree of fixed structure: whole-model EM, and a start for a bare structure.

:func:`em_refine` is the final step of PEM-HLTA (Chen et al. 2017: EM over the whole
model, exactly and sparsely with :mod:`cwox.hlta.inference`). :func:`fit_parameters`
gives a structure-only tree (``cpt=None``, e.g. from :func:`cwox.hlta.tree.tree_from_groups`)
conditional tables by EM from a data-driven start, so that trees from other builders
(agglomerative clustering, a confusion-matrix hierarchy) are scored with the same
model family and the same exact likelihood as HLTA's.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp

from .data import as_binary_csr, unique_rows
from .inference import compile_tree, expected_counts, tree_log_likelihood
from .small_models import P_MIN

__all__ = ["em_refine", "fit_parameters"]


def em_refine(tree: nx.DiGraph, U: sp.csr_matrix, w: np.ndarray, n_iter: int, chunk: int = 100_000) -> float:
    """``n_iter`` EM iterations over the whole model in place; returns the final log-likelihood.

    ``U``/``w``: unique binary documents and their counts. Leaves marked
    ``never_occurs`` keep their tables.
    """
    model = compile_tree(tree)
    fixed = np.array([bool(tree.nodes[n].get("never_occurs", False)) for n in model.nodes])
    for _ in range(n_iter):
        counts, _ = expected_counts(model, U, w, chunk=chunk)
        for u, c in enumerate(counts):
            if fixed[u]:
                continue
            c = np.maximum(c, 0.0)
            cpt = c / np.maximum(c.sum(axis=0, keepdims=True), 1e-300)
            cpt = np.clip(cpt, P_MIN, 1.0)
            model.cpt[u] = cpt / cpt.sum(axis=0, keepdims=True)
        model.refresh()
    for n, cpt in zip(model.nodes, model.cpt, strict=True):
        tree.nodes[n]["cpt"] = cpt
    return tree_log_likelihood(model, U, w, chunk=chunk)


def fit_parameters(tree: nx.DiGraph, X, n_iter: int = 30, random_state=None) -> nx.DiGraph:
    """A copy of the structure ``tree`` (binary latents) with tables fitted by EM on ``X``.

    Start: every latent is "on" (state 1) in a tenth of the documents, a little
    noise breaking symmetry; a label is likelier when its parent is on (four times
    its frequency, capped at 0.9) than when off (half its frequency); labels that
    never occur in ``X`` get probability ``1 / (N + 2)`` and stay fixed.
    """
    rng = np.random.default_rng(random_state)
    M = as_binary_csr(X, n_labels=int(tree.graph["n_labels"]))
    U, w = unique_rows(M)
    n = float(w.sum())
    freq = (np.asarray(U.T @ w).ravel() + 0.5) / (n + 1.0)
    out = tree.copy()
    for _, d in out.nodes(data=True):
        d.pop("never_occurs", None)
    root = next(v for v, deg in out.in_degree() if deg == 0)
    for node, d in out.nodes(data=True):
        on = 0.1 + rng.uniform(-0.02, 0.02)
        if node == root:
            d["cpt"] = np.array([1.0 - on, on])
        elif d["level"] >= 1:
            d["cpt"] = np.array([[1.0 - on / 4, 1.0 - 4 * on], [on / 4, 4 * on]])
        else:
            f = freq[d["label"]]
            if f * (n + 1.0) <= 0.5 + 1e-9:  # never occurs
                p = 1.0 / (n + 2.0)
                d["cpt"] = np.tile([[1.0 - p], [p]], (1, 2))
                d["never_occurs"] = True
            else:
                lo, hi = f / 2, min(0.9, 4 * f)
                d["cpt"] = np.array([[1.0 - lo, 1.0 - hi], [lo, hi]])
    em_refine(out, U, w, n_iter)
    return out
