"""How good is a confusion tree? Held-out measures on label documents.

A tree is only worth its clusters if they say which labels the classifier confuses
*on images it has not seen*. The measures here take arrays only (this package does
not open stores; :mod:`cwox.pipelines.trees` does):

* :func:`split_by_photo` — a held-out split by source photo: every view of a photo
  (the documents store keeps the image path of each row) falls on the same side, so
  augmented views of a training photo never score the tree; a photo's side depends on
  its path alone, so it stays put when photos are added (the nightly gate relies on it).
* :func:`heldout_loglik` — the exact log-likelihood per held-out document
  (``log P(d) = log sum_Z prod_v P(v | pa(v))``, latents summed out; CWOX Sec. 3).
* :func:`confusion_coherence` — among the label pairs that co-occur in a held-out
  document, the share that the tree puts in one level-1 cluster (CWOX Sec. 4 cuts
  the tree at level 1), against the mean share for random clusters of the same sizes.
* :func:`cluster_sizes`, :func:`cluster_evidence` and :func:`pair_cooccurrence` — how
  many labels sit in multi-label clusters, the largest cluster, and per cluster how
  often its labels co-occur and the lift over chance, as a whole and pair by pair (what
  ``cwox tree show --docs`` prints and the tree page shows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp

from .data import as_binary_csr
from .tree import cluster_of, log_likelihood

__all__ = [
    "SPLIT_RULE",
    "split_by_photo",
    "heldout_loglik",
    "level1_assignment",
    "confusion_coherence",
    "cluster_sizes",
    "cluster_evidence",
    "pair_cooccurrence",
    "ClusterEvidence",
    "TreeQuality",
    "tree_quality",
]


#: The held-out rule, recorded with every tree version the nightly job fits, so that a
#: later comparison knows whether two trees were held out from the same photos.
SPLIT_RULE = "sha256(seed:path) < fraction"


def split_by_photo(photos: Sequence[str], test_fraction: float = 0.2, random_state: int = 0) -> np.ndarray:
    """Boolean mask of the held-out rows: each source photo is held out by a hash of its path.

    ``photos`` holds one source id per row (the image path); every view of a photo
    (its augmented copies) falls on the same side. A photo is held out when
    ``sha256(f"{random_state}:{path}")`` read as a fraction is below ``test_fraction``
    (:data:`SPLIT_RULE`): the decision depends on that photo alone, never on which other
    photos are in the set, so the held-out fraction is ``test_fraction`` on average,
    not exactly, and a photo held out tonight stays held out when photos are added. A
    permutation of the whole set would move photos a published tree was fitted on to
    the held-out side whenever photos are added, and that tree would then score
    documents it has seen: measured on 273 photos, such a split favoured the published
    tree by 6.4 nats per document (``benchmarks/RESULTS.md``, "Nightly job"). At least
    one photo is held out and one kept when there are two or more.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
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


def heldout_loglik(tree: nx.DiGraph, X) -> float:
    """Mean exact log-likelihood (nats) per document of the binary documents ``X`` under ``tree``."""
    M = as_binary_csr(X, n_labels=int(tree.graph["n_labels"]))
    return log_likelihood(tree, M) / M.shape[0]


def level1_assignment(tree_or_groups, n_labels: int | None = None) -> np.ndarray:
    """Level-1 cluster index of every label, from a tree or from a list of label groups
    (labels in no group are alone). Singletons get distinct indices."""
    if isinstance(tree_or_groups, nx.DiGraph):
        ids = cluster_of(tree_or_groups)
        _, out = np.unique([ids[i] for i in range(len(ids))], return_inverse=True)
        return out.ravel()
    if n_labels is None:
        raise ValueError("n_labels is needed with a list of groups")
    out = np.full(n_labels, -1)
    for k, g in enumerate(tree_or_groups):
        out[list(g)] = k
    alone = np.flatnonzero(out < 0)
    out[alone] = np.arange(len(alone)) + len(tree_or_groups)
    return out


def _pair_counts(X: sp.csr_matrix) -> sp.csr_matrix:
    """Co-occurrence counts ``C[a, b]`` of label pairs over the documents (diagonal: 0)."""
    C = (X.T @ X).tocsr()
    C.setdiag(0)
    C.eliminate_zeros()
    return C


def _within_share(C: sp.csr_matrix, assign: np.ndarray) -> float:
    total = C.sum()
    if total <= 0:
        return float("nan")
    coo = C.tocoo()
    return float(coo.data[assign[coo.row] == assign[coo.col]].sum() / total)


def confusion_coherence(
    assign: np.ndarray, X, n_random: int = 50, random_state=0,
) -> tuple[float, float]:
    """(share, random share) of co-occurring label pairs that fall in one level-1 cluster.

    ``assign``: the level-1 cluster of every label (:func:`level1_assignment`). Each
    held-out document contributes every pair of its labels. The random share is the
    mean over ``n_random`` random relabellings of the same cluster sizes (a seeded
    permutation of ``assign``), so the two compare clusterings of equal sizes.
    """
    M = as_binary_csr(X, n_labels=len(assign))
    C = _pair_counts(M)
    share = _within_share(C, assign)
    rng = np.random.default_rng(random_state)
    rand = float(np.mean([_within_share(C, rng.permutation(assign)) for _ in range(n_random)]))
    return share, rand


def cluster_sizes(assign: np.ndarray) -> tuple[int, int, int]:
    """(labels in multi-label clusters, multi-label clusters, largest cluster size)."""
    sizes = np.bincount(assign)
    multi = sizes[sizes > 1]
    return int(multi.sum()), int(len(multi)), int(sizes.max()) if len(sizes) else 0


@dataclass
class ClusterEvidence:
    """The co-occurrence evidence for one cluster of labels in a set of documents.

    ``documents``: documents holding at least two of its labels; ``pairs``: co-occurring
    pairs of its labels summed over documents; ``expected``: that sum if the labels
    occurred independently at their own frequencies; ``lift = pairs / expected``.
    """

    labels: list[int]
    documents: int
    pairs: float
    expected: float

    @property
    def lift(self) -> float:
        return self.pairs / self.expected if self.expected > 0 else float("inf") if self.pairs else float("nan")


def cluster_evidence(labels: Sequence[int], X) -> ClusterEvidence:
    """How often the ``labels`` of one cluster co-occur in the binary documents ``X``."""
    M = as_binary_csr(X)
    labels = [int(i) for i in labels]
    sub = M[:, labels]
    per_doc = np.asarray(sub.sum(axis=1)).ravel()
    pairs = float((per_doc * (per_doc - 1) / 2).sum())
    n = M.shape[0]
    f = np.asarray(sub.sum(axis=0)).ravel()
    expected = float(((f.sum() ** 2 - (f ** 2).sum()) / 2) / n) if n else 0.0
    return ClusterEvidence(labels, int((per_doc >= 2).sum()), pairs, expected)


def pair_cooccurrence(labels: Sequence[int], X) -> list[tuple[int, int, int, float | None]]:
    """Every pair ``(a, b, n_ab, lift)`` of ``labels`` in the binary documents ``X``, most
    co-occurring first: ``n_ab`` documents hold both, ``lift = n_ab * N / (n_a * n_b)``
    (1 when a and b fall in the top-K independently; None where one never occurs)."""
    M = as_binary_csr(X).astype(np.float64)
    labels = [int(i) for i in labels]
    sub = M[:, labels]
    co = (sub.T @ sub).toarray()  # n_ab, with n_a on the diagonal
    n = M.shape[0]
    out = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            n_ab, n_a, n_b = co[i, j], co[i, i], co[j, j]
            lift = float(n_ab * n / (n_a * n_b)) if n_a and n_b else None
            out.append((labels[i], labels[j], int(n_ab), lift))
    out.sort(key=lambda r: (-r[2], -(r[3] or 0.0)))
    return out


@dataclass
class TreeQuality:
    """The tree-quality report of one tree on held-out documents."""

    heldout_loglik: float
    coherence: float
    coherence_random: float
    labels_in_clusters: int
    n_clusters: int
    largest_cluster: int
    n_heldout: int

    def lines(self) -> list[str]:
        return [
            f"held-out documents      {self.n_heldout}",
            f"held-out loglik / doc   {self.heldout_loglik:.4f}",
            f"confusion coherence     {self.coherence:.3f} (random clusters of the same sizes: "
            f"{self.coherence_random:.3f})",
            f"labels in clusters      {self.labels_in_clusters} in {self.n_clusters} multi-label clusters, "
            f"largest {self.largest_cluster}",
        ]


def tree_quality(tree: nx.DiGraph, X_heldout, random_state=0) -> TreeQuality:
    """Every measure of this module for a fitted ``tree`` on held-out documents."""
    assign = level1_assignment(tree)
    share, rand = confusion_coherence(assign, X_heldout, random_state=random_state)
    in_clusters, n_clusters, largest = cluster_sizes(assign)
    M = as_binary_csr(X_heldout, n_labels=len(assign))
    return TreeQuality(heldout_loglik(tree, M), share, rand, in_clusters, n_clusters, largest, M.shape[0])
