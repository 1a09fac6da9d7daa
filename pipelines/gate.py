"""The nightly job's quality gate: is the new tree clearly worse than the published one?

Both trees score the same held-out documents — the rows of photos the new tree was
not fitted on (a split by source photo, so the augmented views of a training photo
never score it). The measure is the exact log-likelihood of each held-out document,
``log P(d) = log sum_Z prod_v P(v | pa(v))`` with the latents summed out (the
likelihood PEM-HLTA maximises, Chen et al. 2017, Eq. 1; CWOX Sec. 3 takes the tree
as a model of the classifier's top-K documents). Since both trees score the same
documents, the comparison is paired: ``delta_i = log P_new(d_i) - log P_pub(d_i)``.

The new tree is *clearly worse* when even the optimistic end of the ~95% interval
of the mean ``delta`` lies more than ``tolerance`` nats per document below zero:
``mean + 2 * standard error < -tolerance``. A small held-out set never refuses a
tree on noise; a large one never lets a real loss through. (A negative
``tolerance`` asks the new tree to be better by that much.) When :mod:`cwox.hlta.quality` is installed its confusion coherence
(share of co-occurring held-out label pairs that one level-1 cluster holds) is
compared too: a drop by more than ``coherence_tolerance`` also refuses.

The published tree may have been fitted on documents that include today's held-out
photos; that favours the incumbent, so the gate errs on the side of keeping it.

The held-out photos are chosen by a hash of each photo's path (:func:`split_by_photo`),
so a photo held out tonight was held out every night with the same fraction and seed:
neither tree was fitted on it. When the published tree records another split rule or
fraction, the summary says that the comparison may favour it.

Seam: the extra tree-quality measures come from :func:`heldout_functions`, which takes
:mod:`cwox.hlta.quality` when it is there (``tree_quality``); the per-document
likelihood is the small function below, over the exact likelihood of
:mod:`cwox.hlta.inference`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
from cwox.hlta.data import as_binary_csr, unique_rows
from cwox.hlta.inference import compile_tree, tree_log_likelihood

__all__ = ["GateResult", "heldout_functions", "per_document_loglik", "quality_gate", "split_by_photo"]

#: Default: how many nats per held-out document worse the new tree may be.
DEFAULT_TOLERANCE = 0.1
#: Default: how much lower its confusion coherence may be (when measured).
DEFAULT_COHERENCE_TOLERANCE = 0.05


def split_by_photo(photos: Sequence[str], test_fraction: float = 0.2, random_state: int = 0) -> np.ndarray:
    """Boolean mask of held-out rows: each photo is held out by a hash of its path.

    A photo is held out when ``sha256(f"{random_state}:{path}")`` read as a fraction is
    below ``test_fraction``: the decision depends on that photo alone, never on which
    other photos are in tonight's set. A permutation of tonight's photos would move
    photos the published tree was fitted on into the held-out side whenever photos are
    added, and that tree would then score documents it has seen: measured on 273 photos,
    such a split favoured the published tree by 6.4 nats per document
    (benchmarks/RESULTS.md, "Nightly job"). Every view of a photo is on the same side;
    at least one photo is held out and one kept when there are two or more.
    """
    uniq, inv = np.unique(np.asarray([str(p) for p in photos], dtype=str), return_inverse=True)
    if len(uniq) < 2:
        raise ValueError("a held-out split by photo needs documents of at least two photos")
    score = np.array([int.from_bytes(hashlib.sha256(f"{random_state}:{p}".encode()).digest()[:8], "big")
                      for p in uniq.tolist()]) / 2.0**64
    held = score < test_fraction
    if not held.any():
        held[np.argmin(score)] = True
    if held.all():
        held[np.argmax(score)] = False
    return held[inv.ravel()]


#: Recorded with every version the nightly job fits, so that a later gate knows whether
#: the published tree was held out from the same photos.
SPLIT_RULE = "sha256(seed:path) < fraction"


def heldout_functions() -> Callable[..., Any] | None:
    """``tree_quality`` of the tree-quality package when it is installed (the one place
    to switch), else None. The split stays :func:`split_by_photo` (stable per photo)."""
    try:
        from cwox.hlta import quality
    except ImportError:
        return None
    return getattr(quality, "tree_quality", None)


def per_document_loglik(tree: nx.DiGraph, X: sp.csr_matrix) -> np.ndarray:
    """Exact ``log P(d)`` of every row of the binary documents matrix ``X`` (nats).

    Rows are grouped into unique patterns first, so each distinct document is scored
    once by :func:`cwox.hlta.inference.tree_log_likelihood`.
    """
    model = compile_tree(tree)
    M = as_binary_csr(X, n_labels=model.n_labels)
    U, _counts = unique_rows(M)
    per_pattern = np.array([tree_log_likelihood(model, U[i:i + 1]) for i in range(U.shape[0])])
    index = {tuple(U[i].indices.tolist()): i for i in range(U.shape[0])}
    return np.array([per_pattern[index[tuple(M[r].indices.tolist())]] for r in range(M.shape[0])])


@dataclass
class GateResult:
    """What the gate decided and on what evidence (JSON-able with :meth:`as_dict`)."""

    passed: bool
    reason: str
    n_heldout: int = 0
    new_loglik: float | None = None
    published_loglik: float | None = None
    mean_delta: float | None = None
    stderr_delta: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    quality: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _has_cpts(tree: nx.DiGraph) -> bool:
    return all(d.get("cpt") is not None for _, d in tree.nodes(data=True))


def quality_gate(
    new: nx.DiGraph,
    published: nx.DiGraph | None,
    X_heldout: sp.csr_matrix,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    coherence_tolerance: float = DEFAULT_COHERENCE_TOLERANCE,
) -> GateResult:
    """Compare ``new`` with ``published`` on the held-out documents (see the module doc).

    Passes (with the reason why) when there is nothing to compare with: no published
    tree, a structure-only one (no CPTs, no likelihood), one over other class names.
    """
    n = int(X_heldout.shape[0])
    if published is None:
        return GateResult(True, "no published tree to compare with (first version)", n, tolerance=tolerance)
    if list(published.graph.get("class_names", [])) != list(new.graph.get("class_names", [])):
        return GateResult(True, "the published tree has other class names; nothing to compare", n,
                          tolerance=tolerance)
    if not _has_cpts(published):
        return GateResult(True, "the published tree is structure-only (no likelihood); nothing to compare",
                          n, tolerance=tolerance)
    if n == 0:
        return GateResult(True, "no held-out documents; nothing to compare", n, tolerance=tolerance)
    ll_new = per_document_loglik(new, X_heldout)
    ll_pub = per_document_loglik(published, X_heldout)
    delta = ll_new - ll_pub
    mean = float(delta.mean())
    se = float(delta.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    result = GateResult(True, "", n, float(ll_new.mean()), float(ll_pub.mean()), mean, se, tolerance)
    problems = []
    if mean + 2 * se < -tolerance:
        problems.append(
            f"held-out log-likelihood {result.new_loglik:.4f} nats/document against the published "
            f"tree's {result.published_loglik:.4f} (mean difference {mean:+.4f} +- {se:.4f} over {n} "
            f"documents; the gate allows {tolerance:g} below)"
        )
    tree_quality = heldout_functions()
    if tree_quality is not None:
        q_new, q_pub = tree_quality(new, X_heldout), tree_quality(published, X_heldout)
        result.quality = {"new": asdict(q_new), "published": asdict(q_pub)}
        drop = q_pub.coherence - q_new.coherence
        if drop > coherence_tolerance:
            problems.append(f"confusion coherence {q_new.coherence:.3f} against {q_pub.coherence:.3f} "
                            f"(the gate allows a drop of {coherence_tolerance:g})")
    if problems:
        result.passed = False
        result.reason = "the new tree is clearly worse: " + "; ".join(problems)
    else:
        result.reason = (f"held-out log-likelihood {result.new_loglik:.4f} against {result.published_loglik:.4f} "
                         f"nats/document (difference {mean:+.4f} +- {se:.4f} over {n} documents)")
    return result
