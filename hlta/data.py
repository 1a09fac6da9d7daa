"""Binary document matrices: input checks, unique rows with counts, mutual information.

A *document* is one classifier output reduced to the set of its top labels; a
corpus is a binary ``documents x labels`` matrix (1 = the label is among the
document's top labels). Everything here works on ``scipy.sparse`` CSR matrices
with optional per-row weights (the counts of identical documents), so that the
learner touches only the non-zero entries.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = [
    "as_binary_csr", "unique_rows", "pairwise_mutual_information", "normalized_mutual_information",
    "entropy_terms",
]


def as_binary_csr(X, n_labels: int | None = None, name: str = "X") -> sp.csr_matrix:
    """Return ``X`` as a canonical binary CSR matrix (float64 ones, sorted indices).

    Parameters
    ----------
    X : scipy.sparse matrix or array-like of shape (n_documents, n_labels)
        Binary presence matrix. Explicitly stored zeros are dropped.
    n_labels : int, optional
        Required number of columns.
    name : str
        Name used in error messages.

    Raises
    ------
    ValueError
        If ``X`` is not two-dimensional, has no rows or no columns, has the wrong
        number of columns, or holds values other than 0 and 1 (negative values,
        counts, NaN).
    """
    if sp.issparse(X):
        M = sp.csr_matrix(X)
    else:
        arr = np.asarray(X)
        if arr.dtype == object:
            raise ValueError(f"{name} must be numeric, got an object array")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D documents x labels matrix, got shape {arr.shape}")
        M = sp.csr_matrix(arr)
    if M.ndim != 2:
        raise ValueError(f"{name} must be a 2-D documents x labels matrix")
    n_docs, n_cols = M.shape
    if n_docs == 0 or n_cols == 0:
        raise ValueError(f"{name} is empty (shape {M.shape}); need at least one document and one label")
    if n_labels is not None and n_cols != n_labels:
        raise ValueError(f"{name} has {n_cols} label columns but the tree has {n_labels} labels")
    M.sum_duplicates()
    data = M.data
    if data.size:
        if not np.issubdtype(data.dtype, np.number) and data.dtype != bool:
            raise ValueError(f"{name} must be numeric, got dtype {data.dtype}")
        if np.any(np.isnan(data.astype(np.float64))):
            raise ValueError(f"{name} contains NaN; it must be binary (0/1)")
        if np.any(data < 0):
            raise ValueError(f"{name} contains negative values; it must be binary (0/1)")
        bad = (data != 0) & (data != 1)
        if np.any(bad):
            raise ValueError(
                f"{name} must be binary (0/1); found value {data[bad][0]!r}. "
                "Pass label presence, not counts or probabilities."
            )
    M = sp.csr_matrix(
        (np.ones(np.count_nonzero(data), dtype=np.float64), *_nonzero_structure(M)), shape=M.shape
    )
    M.sort_indices()
    return M


def _nonzero_structure(M: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    M.eliminate_zeros()
    return M.indices.astype(np.int32, copy=True), M.indptr.astype(np.int64, copy=True)


def unique_rows(X: sp.csr_matrix, weights: np.ndarray | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
    """Collapse identical rows of a binary CSR matrix into unique patterns with counts.

    Rows are grouped by their number of non-zeros, so the work is a sort of small
    integer matrices (no Python loop over rows).

    Returns
    -------
    U : csr_matrix of shape (n_unique, n_labels)
    counts : ndarray of float64, the summed ``weights`` (1 per row by default) of each pattern.
    """
    X = sp.csr_matrix(X)
    X.sort_indices()
    n = X.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    lengths = np.diff(X.indptr)
    rows_out: list[np.ndarray] = []
    counts_out: list[np.ndarray] = []
    lengths_out: list[np.ndarray] = []
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        if length == 0:
            rows_out.append(np.empty((1, 0), dtype=np.int32))
            counts_out.append(np.array([w[rows].sum()]))
            lengths_out.append(np.array([0]))
            continue
        starts = X.indptr[rows]
        idx = X.indices[starts[:, None] + np.arange(length)[None, :]]
        uniq, inverse = np.unique(idx, axis=0, return_inverse=True)
        counts_out.append(np.bincount(inverse.ravel(), weights=w[rows], minlength=len(uniq)))
        rows_out.append(uniq)
        lengths_out.append(np.full(len(uniq), length))
    lens = np.concatenate(lengths_out)
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    indices = np.concatenate([r.ravel() for r in rows_out]).astype(np.int32)
    U = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(lens), X.shape[1]))
    return U, np.concatenate(counts_out)


def entropy_terms(p: np.ndarray) -> np.ndarray:
    """``p * log p`` elementwise with ``0 log 0 = 0``."""
    p = np.asarray(p, dtype=np.float64)
    out = np.zeros_like(p)
    pos = p > 0
    out[pos] = p[pos] * np.log(p[pos])
    return out


def pairwise_mutual_information(X: sp.csr_matrix, weights: np.ndarray | None = None) -> np.ndarray:
    """Empirical mutual information (nats) between every pair of binary columns.

    ``I(A;B) = sum_{a,b} p(a,b) log p(a,b) / (p(a) p(b))`` from the weighted 2x2
    contingency tables, which follow from the co-occurrence matrix ``X^T W X``
    and the column totals. The diagonal is set to 0.
    """
    X = sp.csr_matrix(X)
    w = np.ones(X.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    n1 = np.asarray(X.T @ w).ravel()
    co = (X.T @ sp.diags(w) @ X).toarray()
    n11 = co
    n10 = n1[:, None] - co
    n01 = n1[None, :] - co
    n00 = total - n1[:, None] - n1[None, :] + co
    p1 = n1 / total
    h_joint = sum(entropy_terms(np.maximum(t, 0.0) / total) for t in (n11, n10, n01, n00))
    h1 = entropy_terms(p1) + entropy_terms(1.0 - p1)
    mi = h_joint - h1[:, None] - h1[None, :]  # = -H(A,B) + H(A) + H(B) with signs of p log p
    mi = np.maximum(mi, 0.0)
    np.fill_diagonal(mi, 0.0)
    return mi


def normalized_mutual_information(mi: np.ndarray, X: sp.csr_matrix, weights: np.ndarray | None = None) -> np.ndarray:
    """``MI(A;B) / sqrt(H(A) H(B))`` for every pair of binary columns (0 where an entropy is 0).

    MI grows with the labels' frequencies: a frequent label of a neighbouring group
    can have more MI with an island's members than the island's own rarer labels,
    although the rare ones occur almost only with the island. Dividing by the
    geometric mean of the two entropies compares dependence on one scale.
    """
    X = sp.csr_matrix(X)
    w = np.ones(X.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    p1 = np.asarray(X.T @ w).ravel() / float(w.sum())
    h = -(entropy_terms(p1) + entropy_terms(1.0 - p1))
    denom = np.sqrt(h[:, None] * h[None, :])
    return np.divide(mi, denom, out=np.zeros_like(mi), where=denom > 0)
