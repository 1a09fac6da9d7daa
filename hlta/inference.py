"""Exact inference in a latent tree over sparse binary documents.

The model is a tree-shaped Bayesian network: observed binary leaves (labels),
discrete latents, ``P(node | parent)`` tables. The likelihood of a document sums
the latents out by one upward (inside) pass; expected sufficient statistics for
EM come from one downward pass (CWOX Section 3; Chen et al. 2017, Eq. of the
HLTM likelihood ``P(d) = sum_Z prod_v P(v | pa(v))``).

Sparsity
--------
A document of a few labels differs from the empty document only on the paths
from its present leaves to the root. For every node ``u`` the *inside* message
of the empty document is a constant vector; a document whose present labels lie
outside ``u``'s subtree sends exactly that constant. The passes below therefore
work, for each node, only on the documents that are *active* at it (some present
leaf below it), and correct the constant product over all children by the few
children whose message differs. For EM, the expected counts of the inactive
documents at a node follow from the parent's total posterior minus the
posterior mass of the active documents, times the fixed conditional of the
empty subtree. The cost is proportional to the number of (document, active
node) pairs, not documents x nodes. Documents are processed in row chunks to
bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import scipy.sparse as sp

__all__ = ["CompiledTree", "compile_tree", "tree_log_likelihood", "document_log_likelihoods", "expected_counts", "LOG_FLOOR"]

#: Probabilities are floored at exp(LOG_FLOOR) in the log domain so that the
#: sparse corrections never compute ``-inf - (-inf)``.
LOG_FLOOR = -700.0

DEFAULT_CHUNK = 100_000


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(p), LOG_FLOOR)


def log_matmul(loga: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``log(exp(loga) @ b)`` computed stably; ``loga`` is (n, k), ``b`` is (k, m) >= 0."""
    mx = loga.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        out = np.log(np.exp(loga - mx) @ b)
    return np.maximum(out + mx, LOG_FLOOR)


def logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """``log sum_k exp(a[:, k])``."""
    mx = a.max(axis=1)
    return mx + np.log(np.exp(a - mx[:, None]).sum(axis=1))


@dataclass
class CompiledTree:
    """Array view of a latent tree, nodes in topological order (root first).

    Attributes
    ----------
    nodes : node ids in topological (breadth-first) order.
    parent : index of each node's parent, -1 for the root.
    children : child indices of each node.
    card : cardinality of each node.
    label : label id of each leaf, -1 for latents.
    cpt : ``P(node | parent)`` of shape (card, parent_card), or (card,) for the root.
    n_labels : number of label columns.
    """

    nodes: list
    parent: np.ndarray
    children: list[list[int]]
    card: np.ndarray
    label: np.ndarray
    cpt: list[np.ndarray]
    n_labels: int
    ancestors: sp.csr_matrix = field(init=False, repr=False)
    _lam0: list[np.ndarray] = field(init=False, repr=False)
    _msg0: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.nodes)
        rows, cols = [], []
        for u in range(n):
            if self.label[u] >= 0:
                v = u
                while v >= 0:
                    rows.append(self.label[u])
                    cols.append(v)
                    v = self.parent[v]
        self.ancestors = sp.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(self.n_labels, n)
        )
        self.refresh()

    @property
    def root(self) -> int:
        return 0

    def is_leaf(self, u: int) -> bool:
        return bool(self.label[u] >= 0)

    def refresh(self) -> None:
        """Recompute log tables and the messages of the empty document after a cpt change."""
        n = len(self.nodes)
        self.logcpt = [_log(np.asarray(c, dtype=np.float64)) for c in self.cpt]
        self._lam0 = [np.zeros(0)] * n
        self._msg0 = [np.zeros(0)] * n
        self.leaf_delta = [np.zeros(0)] * n
        for u in reversed(range(n)):
            if self.is_leaf(u):
                self._lam0[u] = np.array([0.0, LOG_FLOOR])
                if self.parent[u] >= 0:
                    self._msg0[u] = self.logcpt[u][0]
                    self.leaf_delta[u] = self.logcpt[u][1] - self.logcpt[u][0]
                continue
            lam = np.zeros(int(self.card[u]))
            for c in self.children[u]:
                lam = lam + self._msg0[c]
            self._lam0[u] = lam
            if self.parent[u] >= 0:
                self._msg0[u] = log_matmul(lam[None, :], self.cpt[u])[0]

    def empty_log_likelihood(self) -> float:
        """Log-probability of the document with no labels."""
        return float(logsumexp_rows((self._lam0[0] + self.logcpt[0])[None, :])[0])


def compile_tree(tree: nx.DiGraph) -> CompiledTree:
    """Compile a contract tree (see :mod:`cwox.hlta.tree`) into arrays; every cpt must be set."""
    roots = [n for n, d in tree.in_degree() if d == 0]
    if len(roots) != 1:
        raise ValueError(f"tree must have exactly one root, found {len(roots)}")
    order = [roots[0], *(v for _, v in nx.bfs_edges(tree, roots[0]))]
    index = {n: i for i, n in enumerate(order)}
    parent = np.full(len(order), -1, dtype=np.int64)
    children: list[list[int]] = [[] for _ in order]
    for u, v in tree.edges():
        parent[index[v]] = index[u]
        children[index[u]].append(index[v])
    card = np.array([int(tree.nodes[n]["card"]) for n in order], dtype=np.int64)
    label = np.array(
        [int(tree.nodes[n]["label"]) if tree.nodes[n].get("level", 1) == 0 else -1 for n in order],
        dtype=np.int64,
    )
    cpts = []
    for n in order:
        c = tree.nodes[n].get("cpt")
        if c is None:
            raise ValueError(
                f"node {n!r} has no cpt: this is a structure-only tree, likelihoods are unavailable"
            )
        cpts.append(np.asarray(c, dtype=np.float64))
    return CompiledTree(
        nodes=order, parent=parent, children=children, card=card, label=label, cpt=cpts,
        n_labels=int(tree.graph["n_labels"]),
    )


@dataclass
class _Pass:
    """Per-chunk state of an upward pass: active documents and log messages per node."""

    active: list[np.ndarray]
    loglam: list[np.ndarray | None]
    logmsg: list[np.ndarray | None]
    loglik_active: np.ndarray  # log P(d) for documents active at the root


def _upward(m: CompiledTree, Xc: sp.csr_matrix) -> _Pass:
    """Inside pass over one chunk of documents (rows of ``Xc``)."""
    A = (Xc @ m.ancestors).tocsc()
    A.sort_indices()
    n = len(m.nodes)
    active = [A.indices[A.indptr[u]:A.indptr[u + 1]] for u in range(n)]
    loglam: list[np.ndarray | None] = [None] * n
    logmsg: list[np.ndarray | None] = [None] * n
    for u in reversed(range(n)):
        if m.is_leaf(u):
            continue
        act = active[u]
        lam = np.tile(m._lam0[u], (len(act), 1))
        for c in m.children[u]:
            if len(active[c]) == 0:
                continue
            pos = np.searchsorted(act, active[c])
            if m.is_leaf(c):
                lam[pos] += m.leaf_delta[c]
            else:
                lam[pos] += logmsg[c] - m._msg0[c]
        loglam[u] = lam
        if m.parent[u] >= 0:
            logmsg[u] = log_matmul(lam, m.cpt[u]) if len(act) else np.zeros((0, m.card[m.parent[u]]))
    root_lam = loglam[0]
    ll = logsumexp_rows(root_lam + m.logcpt[0][None, :]) if len(active[0]) else np.zeros(0)
    return _Pass(active, loglam, logmsg, ll)


def _chunks(X: sp.csr_matrix, weights: np.ndarray, chunk: int):
    for start in range(0, X.shape[0], chunk):
        stop = min(start + chunk, X.shape[0])
        yield X[start:stop], weights[start:stop]


def tree_log_likelihood(
    m: CompiledTree, X: sp.csr_matrix, weights: np.ndarray | None = None, chunk: int = DEFAULT_CHUNK
) -> float:
    """Total (weighted) exact log-likelihood of the rows of binary CSR ``X``."""
    w = np.ones(X.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    ll0 = m.empty_log_likelihood()
    total = 0.0
    for Xc, wc in _chunks(X, w, chunk):
        p = _upward(m, Xc)
        act = p.active[0]
        total += float(wc[act] @ p.loglik_active) + (float(wc.sum()) - float(wc[act].sum())) * ll0
    return total


def document_log_likelihoods(m: CompiledTree, X: sp.csr_matrix, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Exact ``log P(d)`` of every row of binary CSR ``X`` (the terms :func:`tree_log_likelihood` sums)."""
    out = np.full(X.shape[0], m.empty_log_likelihood())
    for start in range(0, X.shape[0], chunk):
        p = _upward(m, X[start:start + chunk])
        out[start + p.active[0]] = p.loglik_active
    return out


def expected_counts(
    m: CompiledTree, X: sp.csr_matrix, weights: np.ndarray | None = None, chunk: int = DEFAULT_CHUNK
) -> tuple[list[np.ndarray], float]:
    """E-step: expected counts ``sum_d P(node=i, parent=j | d)`` for every node, and the log-likelihood.

    Returns a list aligned with ``m.nodes``: arrays of shape (card, parent_card),
    or (card,) for the root, plus the total log-likelihood of the data under the
    current parameters.
    """
    w = np.ones(X.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    n = len(m.nodes)
    counts = [np.zeros_like(c) for c in m.cpt]
    # conditional of an all-absent subtree given the parent: P(u=i | p=j, subtree empty)
    cond0 = [None] * n
    for u in range(1, n):
        lam0 = m._lam0[u]
        cond0[u] = np.exp(m.logcpt[u] + lam0[:, None] - m._msg0[u][None, :])
    root_post0 = np.exp(m._lam0[0] + m.logcpt[0] - m.empty_log_likelihood())
    ll0 = m.empty_log_likelihood()
    total_ll = 0.0
    for Xc, wc in _chunks(X, w, chunk):
        p = _upward(m, Xc)
        act0 = p.active[0]
        w_act = wc[act0]
        w_rest = float(wc.sum()) - float(w_act.sum())
        total_ll += float(w_act @ p.loglik_active) + w_rest * ll0
        logpost: list[np.ndarray | None] = [None] * n
        S: list[np.ndarray | None] = [None] * n  # total posterior mass of each node's states
        lp = p.loglam[0] + m.logcpt[0][None, :] - p.loglik_active[:, None]
        logpost[0] = lp
        S[0] = w_act @ np.exp(lp) + w_rest * root_post0
        counts[0] += S[0]
        for u in range(1, n):
            par = m.parent[u]
            act = p.active[u]
            if len(act):
                pos = np.searchsorted(p.active[par], act)
                lpp = logpost[par][pos]
                wu = wc[act]
                if m.is_leaf(u):
                    pa = wu @ np.exp(lpp)
                    ca = np.zeros_like(m.cpt[u])
                    ca[1] = pa
                else:
                    J = (
                        lpp[:, None, :] - p.logmsg[u][:, None, :]
                        + m.logcpt[u][None, :, :] + p.loglam[u][:, :, None]
                    )
                    E = np.exp(J)
                    ca = np.einsum("n,nij->ij", wu, E)
                    pa = ca.sum(axis=0)
                    logpost[u] = np.log(np.maximum(E.sum(axis=2), 1e-300))
            else:
                pa = np.zeros(m.card[par])
                ca = np.zeros_like(m.cpt[u])
                if not m.is_leaf(u):
                    logpost[u] = np.zeros((0, m.card[u]))
            rest = np.maximum(S[par] - pa, 0.0)
            cu = ca + rest[None, :] * cond0[u]
            counts[u] += cu
            S[u] = cu.sum(axis=1)
    return counts, total_ll
