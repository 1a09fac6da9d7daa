"""The :class:`HLTA` estimator: PEM-HLTA over binary label documents, scikit-learn style.

Algorithm (Chen et al. 2017, "Latent tree models for hierarchical topic
detection", PEM-HLTA; used by CWOX Section 3 to learn the class-label tree):

1. Level 1: partition the labels into islands by the correlation and
   unidimensionality tests (:mod:`cwox.hlta.islands`), each island an LCM with one
   binary latent; a label whose co-occurrence the data do not support stays a
   singleton.
2. Hard-assign each island latent its MAP state per document; these binary
   variables, with the singletons' own columns, are the data of the next level.
   Repeat until at most ``max_top`` variables remain at a level (or a level makes
   no new latent).
3. Join the top latents by a maximum spanning tree over their empirical mutual
   information (bridging), root it at the top latent of the highest level, hang the
   top singletons (and labels that never occur) under a root of level >= 2, and
   stack all levels into one tree.
4. Run EM over the whole model (a few iterations), exactly and sparsely
   (:mod:`cwox.hlta.inference`).

Defaults follow the reference that built the CWOX paper's trees where it matters
(``vaynexie/CWOX`` ``HLTM/``, see :mod:`cwox.hlta.islands`): correlation test with
threshold 3 and UD threshold 3. Kept from this implementation because they are better
or cheaper: exact likelihoods (the reference's global step is stepwise EM on
batches), EM over unique document patterns, and the whole data for structure (the
reference learns structure on a 100,000-document sample, ``HLTA.scala`` line 49).

Only the top level is bridged in the final model (lower levels are linked
through their parents), as in PEM-HLTA. Because our hard assignment uses each
island's own LCM (not the bridged level model), bridging a lower level would not
change anything, so it is skipped there. Deviation from the reference code: the
conditional tables of the bridging edges are initialised from the hard-assigned
joint counts rather than by a 4-node progressive EM; the final whole-model EM
re-estimates them.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from . import tree as T
from .data import (
    as_binary_csr,
    normalized_mutual_information,
    pairwise_mutual_information,
    unique_rows,
)
from .islands import EMSettings, IslandTests, PatternData, build_islands, hard_assign
from .parameters import em_refine
from .small_models import P_MIN

__all__ = ["HLTA", "BIC_BATCH"]

#: Default scale of the island tests' BIC: the reference's batch of 5,000 documents
#: (``HLTA.scala`` line 51). Chosen with the measurements in ``benchmarks/RESULTS.md``
#: ("HLTA"): see ``benchmarks/bench_hlta.py --compare-scale``.
BIC_BATCH = 5000


def _leaf_cpt(p1: np.ndarray) -> np.ndarray:
    """``P(child | parent)`` of shape (2, 2) from ``P(child=1 | parent=j)``."""
    p1 = np.asarray(p1, dtype=np.float64)
    return np.stack([1.0 - p1, p1])


class HLTA(BaseEstimator):
    """Hierarchical latent tree analysis (PEM-HLTA) of label co-occurrence.

    Parameters
    ----------
    ud_threshold : float, default 3.0
        Threshold ``delta`` of the unidimensionality test: an island is closed when
        ``BIC(m2) - BIC(m1) > delta`` (Chen et al. 2017).
    ct_threshold : float or None, default 3.0
        Threshold of the correlation test (the reference's ``CTthreshold``, default 3):
        a label joins an island only when ``BIC(island + label) - BIC(island, label
        independent) >= ct_threshold``; labels that join nothing stay singletons.
        ``None`` turns the test off (every label gets an island).
    bic_batch : int or None, default BIC_BATCH
        Number of documents the tests' BIC is scaled to (the reference's
        ``--struct-batch-size``, 5,000): ``loglik * B / N - dim / 2 * log B`` when
        ``N > B``. ``None``: the full-``N`` BIC. See :data:`BIC_BATCH` for the default.
    candidate_order : {"nmi", "mi"}, default "nmi"
        How an island picks its next label: the highest mutual information with a
        member (``"mi"``, the paper and the reference) or the highest MI normalised by
        the geometric mean of the two labels' entropies (``"nmi"``). With ``"mi"``
        frequent labels of a neighbouring group enter before a group's own rarer
        labels; measured in ``benchmarks/RESULTS.md`` ("HLTA"): level-1 ARI 0.79 (mi)
        vs 0.92 (nmi) on strongly co-occurring sibling groups. On real documents
        ("Tree quality") the MI order with the reference's island cap of 10 has a
        0.15-0.19 nats/doc better held-out loglik and the same coherence.
    max_island : int, default 15
        Maximum number of variables of an island (when at least 3 others remain).
    max_top : int, default 20
        Stop stacking levels once a level has at most this many latents.
    em_restarts : int, default 5
        Random restarts of each small-model EM.
    em_max_iter : int, default 50
        Maximum EM iterations of each small model.
    tol : float, default 0.01
        EM convergence threshold: the small-model EM stops when the log-likelihood
        improves by less than ``tol`` nats (the EM threshold of the HLTA code).
    global_em_iter : int, default 5
        Iterations of EM over the whole model at the end.
    refine_iter : int, default 50
        Maximum full EM iterations refining ``m1`` and ``m2`` after their progressive EM.
    chunk_size : int, default 100000
        Documents per chunk in the whole-model passes (bounds memory).
    random_state : int, numpy Generator or None
        Seed of the EM restarts.

    Attributes
    ----------
    tree_ : networkx.DiGraph
        The fitted latent tree (see :mod:`cwox.hlta.tree` for the contract).
    loglik_ : float
        Total log-likelihood of the training documents.
    bic_ : float
        ``loglik_ - n_params_ / 2 * log(n_documents_)``.
    n_params_ : int
    n_documents_ : int
    class_names_ : list of str
    """

    def __init__(
        self, ud_threshold: float = 3.0, ct_threshold: float | None = 3.0, bic_batch: int | None = BIC_BATCH,
        candidate_order: str = "nmi", max_island: int = 15, max_top: int = 20,
        em_restarts: int = 5, em_max_iter: int = 50, tol: float = 0.01, global_em_iter: int = 5,
        refine_iter: int = 50, chunk_size: int = 100_000, random_state=None,
    ):
        self.ud_threshold = ud_threshold
        self.ct_threshold = ct_threshold
        self.bic_batch = bic_batch
        self.candidate_order = candidate_order
        self.max_island = max_island
        self.max_top = max_top
        self.em_restarts = em_restarts
        self.em_max_iter = em_max_iter
        self.tol = tol
        self.global_em_iter = global_em_iter
        self.refine_iter = refine_iter
        self.chunk_size = chunk_size
        self.random_state = random_state

    # ------------------------------------------------------------------ input
    def _check_params(self) -> None:
        if not np.isfinite(self.ud_threshold):
            raise ValueError(f"ud_threshold must be finite, got {self.ud_threshold!r}")
        if self.ct_threshold is not None and not np.isfinite(self.ct_threshold):
            raise ValueError(f"ct_threshold must be finite or None, got {self.ct_threshold!r}")
        if self.candidate_order not in ("mi", "nmi"):
            raise ValueError(f"candidate_order must be 'mi' or 'nmi', got {self.candidate_order!r}")
        if self.bic_batch is not None and (not isinstance(self.bic_batch, int | np.integer) or self.bic_batch < 1):
            raise ValueError(f"bic_batch must be an int >= 1 or None, got {self.bic_batch!r}")
        for name, low in (("max_island", 3), ("max_top", 1), ("em_restarts", 1), ("em_max_iter", 1),
                          ("chunk_size", 1)):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        for name in ("global_em_iter", "refine_iter"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")

    @staticmethod
    def _resolve_input(X, class_names):
        """Turn a matrix or a documents object into (CSR matrix, names)."""
        if isinstance(X, str | Path):
            raise TypeError(
                "HLTA.fit takes a documents x labels matrix or a documents object, not a path; "
                "open a store with cwox.store.documents.open_documents (or use cwox.pipelines.trees.fit_tree)"
            )
        if hasattr(X, "label_matrix"):
            if class_names is None:
                class_names = getattr(X, "class_names", None)
            X = X.label_matrix()
        M = as_binary_csr(X)
        n_labels = M.shape[1]
        if class_names is None:
            class_names = [str(i) for i in range(n_labels)]
        class_names = [str(c) for c in class_names]
        if len(class_names) != n_labels:
            raise ValueError(
                f"got {len(class_names)} class names for {n_labels} label columns; they must agree"
            )
        return M, class_names

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, class_names=None) -> HLTA:
        """Learn the latent tree from binary documents.

        Parameters
        ----------
        X : scipy.sparse matrix / array (documents x labels, binary), or an
            in-memory documents object (anything with ``label_matrix()`` and
            ``class_names``, e.g. an opened documents store). This package never
            opens stores itself: :func:`cwox.pipelines.trees.fit_tree` does.
        y : ignored
        class_names : list of str, optional
            One name per label column (default: the store's names, else ``"0".."L-1"``).

        Notes
        -----
        Labels that never occur hang directly under the root as singletons, with
        their empirical (Laplace-smoothed, i.e. almost all mass on "absent")
        frequency as table, and are not re-estimated by EM. Documents with no
        labels are kept: they are evidence about the latents. Non-binary or
        negative values, an empty matrix, or a class-name count that differs from
        the number of columns raise ``ValueError``.
        """
        self._check_params()
        M, names = self._resolve_input(X, class_names)
        rng = np.random.default_rng(self.random_state)
        U, w = unique_rows(M)
        tree = self._learn_structure(U, w, names, rng)
        self._global_em(tree, U, w)
        self.tree_ = tree
        self.class_names_ = names
        self.n_documents_ = int(M.shape[0])
        self.n_params_ = T.n_params(tree)
        self.bic_ = self.loglik_ - self.n_params_ / 2.0 * np.log(self.n_documents_)
        tree.graph["n_documents"] = self.n_documents_
        tree.graph["loglik"] = self.loglik_
        return self

    def _learn_structure(self, U: sp.csr_matrix, w: np.ndarray, names: list[str], rng) -> nx.DiGraph:
        n_labels = U.shape[1]
        total = float(w.sum())
        freq = np.asarray(U.T @ w).ravel()
        occurring = np.flatnonzero(freq > 0)
        em = EMSettings(self.em_restarts, self.em_max_iter, self.tol, self.refine_iter)
        tests = IslandTests(self.ud_threshold, self.ct_threshold, self.bic_batch, self.max_island)
        tree = nx.DiGraph(class_names=list(names), n_labels=int(n_labels))
        for j in range(n_labels):
            tree.add_node(T.leaf_id(j), level=0, label=int(j), name=names[j], card=2, cpt=None)

        counter = 0
        X_level: sp.csr_matrix = U[:, occurring]
        var_nodes = [T.leaf_id(j) for j in occurring]
        level = 1
        top: list[str] = []
        priors: dict[str, np.ndarray] = {}
        H = X_level
        while var_nodes:
            data = PatternData(X_level, w)
            mi = pairwise_mutual_information(X_level, w)
            order = normalized_mutual_information(mi, X_level, w) if self.candidate_order == "nmi" else mi
            islands = build_islands(data, mi, np.arange(len(var_nodes)), tests, rng, em, order)
            H, islands = hard_assign(data, islands)
            new_nodes = []
            for isl in islands:
                if isl.singleton:  # passed up unchanged: alone at this level
                    new_nodes.append(var_nodes[isl.variables[0]])
                    continue
                z = f"Z{counter}"
                counter += 1
                tree.add_node(z, level=level, card=2, cpt=None)
                priors[z] = isl.model.prior.copy()
                for v, p1 in zip(isl.variables, isl.model.p1, strict=True):
                    child = var_nodes[v]
                    tree.add_edge(z, child)
                    tree.nodes[child]["cpt"] = _leaf_cpt(p1)
                new_nodes.append(z)
            if len(islands) <= self.max_top or len(islands) >= len(var_nodes):
                top = new_nodes
                break
            X_level, var_nodes = H, new_nodes
            level += 1

        return self._bridge_top(tree, top, H, w, priors, np.setdiff1d(np.arange(n_labels), occurring), total)

    @staticmethod
    def _bridge_top(tree, top: list[str], H, w, priors, never: np.ndarray, total: float) -> str:
        """Join the top latents by a maximum spanning tree over their MI, root it at the
        top latent of the highest level, and hang the top singletons and the labels that
        never occur under a root of level >= 2 (a new one when needed, with an identity
        link to the old root: the likelihood is unchanged and EM may refine it)."""
        Hc = sp.csc_matrix(H)
        n1 = np.asarray(Hc.T @ w).ravel()
        co = (Hc.T @ sp.diags(w) @ Hc).toarray()

        def cpt_from_counts(c: int, p: int) -> np.ndarray:
            n11 = co[c, p]
            joint = np.array([[total - n1[c] - n1[p] + n11, n1[p] - n11], [n1[c] - n11, n11]])
            joint = np.maximum(joint, 0.0) + 1.0  # rows: child state, columns: parent state
            return joint / joint.sum(axis=0, keepdims=True)

        lat = [i for i, n in enumerate(top) if tree.nodes[n]["level"] >= 1]
        loose = [i for i, n in enumerate(top) if tree.nodes[n]["level"] == 0]
        counter = sum(1 for _, d in tree.nodes(data=True) if d["level"] >= 1)
        root = None
        if lat:
            mi = pairwise_mutual_information(H[:, lat], w) if len(lat) > 1 else np.zeros((1, 1))
            g = nx.Graph()
            g.add_nodes_from(range(len(lat)))
            iu, ju = np.triu_indices(len(lat), 1)
            g.add_weighted_edges_from(zip(iu.tolist(), ju.tolist(), (mi[iu, ju] + 1e-12).tolist(), strict=True))
            mst = nx.maximum_spanning_tree(g)
            strength = [sum(d["weight"] for *_, d in mst.edges(i, data=True)) for i in range(len(lat))]
            r = max(range(len(lat)), key=lambda i: (tree.nodes[top[lat[i]]]["level"], strength[i]))
            root = top[lat[r]]
            tree.nodes[root]["cpt"] = priors[root]
            for p, c in nx.bfs_edges(mst, r):
                tree.add_edge(top[lat[p]], top[lat[c]])
                tree.nodes[top[lat[c]]]["cpt"] = cpt_from_counts(lat[c], lat[p])
        if root is None or ((loose or len(never)) and tree.nodes[root]["level"] == 1):
            # Labels hanging from a level-1 latent would join its cluster: put a level-2
            # root above (or a bare root when no latent was learnt at all).
            new = f"Z{counter}"
            tree.add_node(new, level=2, card=2, cpt=np.array([0.5, 0.5]) if root is None else tree.nodes[root]["cpt"])
            if root is not None:
                tree.add_edge(new, root)
                tree.nodes[root]["cpt"] = np.clip(np.eye(2), P_MIN, 1.0) / (1.0 + P_MIN)
            root = new
        for i in loose:  # a singleton at the top: its frequency in both root states (EM refines)
            f = (n1[i] + 1.0) / (total + 2.0)
            tree.add_edge(root, top[i])
            tree.nodes[top[i]]["cpt"] = np.tile([[1.0 - f], [f]], (1, 2))
        for j in never:
            p = 1.0 / (total + 2.0)
            tree.add_edge(root, T.leaf_id(j))
            tree.nodes[T.leaf_id(j)]["cpt"] = np.tile([[1.0 - p], [p]], (1, 2))
            tree.nodes[T.leaf_id(j)]["never_occurs"] = True
        return tree

    def _global_em(self, tree: nx.DiGraph, U: sp.csr_matrix, w: np.ndarray) -> None:
        """EM over the whole model (Chen et al. 2017: final parameter refinement)."""
        self.loglik_ = em_refine(tree, U, w, self.global_em_iter, chunk=self.chunk_size)

    # ------------------------------------------------------------------ use
    def _check_fitted(self) -> None:
        if not hasattr(self, "tree_"):
            raise NotFittedError("this HLTA instance is not fitted yet; call fit() or HLTA.from_tree()")

    def clusters(self, labels=None, level: int = 1) -> list[list[int]]:
        """Confusion clusters of ``labels`` at ``level`` (see :func:`cwox.hlta.tree.clusters`)."""
        self._check_fitted()
        return T.clusters(self.tree_, labels, level)

    def score(self, X, y=None) -> float:
        """Mean exact log-likelihood per document of ``X`` (latents summed out)."""
        self._check_fitted()
        M, _ = self._resolve_input(X, None)
        return T.log_likelihood(self.tree_, M) / M.shape[0]

    def to_pgmpy(self):
        """The fitted tree as a pgmpy ``DiscreteBayesianNetwork`` (see :func:`cwox.hlta.tree.to_pgmpy`)."""
        self._check_fitted()
        return T.to_pgmpy(self.tree_)

    @classmethod
    def from_tree(cls, tree: nx.DiGraph, **params) -> HLTA:
        """A fitted estimator wrapping a loaded tree (e.g. from the store).

        ``loglik_``/``n_documents_`` are read from ``tree.graph`` when present
        (``"loglik"``, ``"n_documents"``), else set to NaN / 0.
        """
        T.validate_tree(tree)
        est = cls(**params)
        est.tree_ = tree
        est.class_names_ = list(tree.graph["class_names"])
        est.n_params_ = T.n_params(tree)
        est.n_documents_ = int(tree.graph.get("n_documents", 0))
        est.loglik_ = float(tree.graph.get("loglik", np.nan))
        est.bic_ = (
            est.loglik_ - est.n_params_ / 2.0 * np.log(est.n_documents_) if est.n_documents_ else np.nan
        )
        return est
