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
``tolerance`` asks the new tree to be better by that much.) The confusion coherence of
:mod:`cwox.hlta.quality` (share of co-occurring held-out label pairs that one level-1
cluster holds) is compared too: a drop by more than ``coherence_tolerance`` also refuses.

The published tree may have been fitted on documents that include today's held-out
photos; that favours the incumbent, so the gate errs on the side of keeping it.

The held-out photos are chosen by a hash of each photo's path
(:func:`cwox.hlta.quality.split_by_photo`),
so a photo held out tonight was held out every night with the same fraction and seed:
neither tree was fitted on it. When the published tree records another split rule or
fraction, the summary says that the comparison may favour it.

The per-document likelihood is :func:`per_document_loglik`, over the exact likelihood of
:mod:`cwox.hlta.inference`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
from cwox.hlta.data import as_binary_csr
from cwox.hlta.inference import compile_tree, document_log_likelihoods
from cwox.hlta.quality import SPLIT_RULE, split_by_photo, tree_quality

__all__ = ["GateResult", "SPLIT_RULE", "per_document_loglik", "quality_gate", "split_by_photo"]

#: Default: how many nats per held-out document worse the new tree may be.
DEFAULT_TOLERANCE = 0.1
#: Default: how much lower its confusion coherence may be (when measured).
DEFAULT_COHERENCE_TOLERANCE = 0.05


def per_document_loglik(tree: nx.DiGraph, X: sp.csr_matrix) -> np.ndarray:
    """Exact ``log P(d)`` of every row of the binary documents matrix ``X`` (nats), by one
    upward pass per chunk (:func:`cwox.hlta.inference.document_log_likelihoods`)."""
    model = compile_tree(tree)
    return document_log_likelihoods(model, as_binary_csr(X, n_labels=model.n_labels))


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
