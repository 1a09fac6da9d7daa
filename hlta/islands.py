"""One level of PEM-HLTA: islands by the correlation and unidimensionality tests, and hard assignment.

Chen et al. 2017 (AIJ), Sec. 5 (the "BuildIslands" step of PEM-HLTA), as the reference
code that built the CWOX paper's trees runs it (``vaynexie/CWOX``,
``HLTM/src/main/java/clustering/StepwiseEMHLTA.java``, ``IslandFinding``, lines 547-760):

1. Start an island ``S`` with the pair of remaining variables of highest mutual
   information (MI) and the variable of highest MI with that pair; fit an LCM.
2. Repeatedly take the remaining variable ``X`` of highest MI with ``S`` (MI of a
   variable with a set = its maximum MI with a member; the reference leaves the seed
   pair out of that maximum, ``findShortestOutLink`` lines 1454-1490; we follow the
   paper and take every member; with ``order`` the score may be normalised MI instead,
   see :func:`cwox.hlta.data.normalized_mutual_information`) and build
   ``m1`` = the LCM on ``S + X``, where progressive EM estimates only ``P(X | Y)``
   on the data of the seed pair and ``X`` with the rest fixed, and
   ``m2`` = ``Y1`` over ``S - W``, ``Y2`` over ``{W, X}``, where progressive EM
   estimates only ``P(Y2|Y1), P(W|Y2), P(X|Y2)`` on the data of the seed pair,
   ``W`` and ``X``. Both are then refined by full EM on ``S + X`` (the tests compare
   BIC scores, so both models must be near their maximum likelihood).
3. **Correlation test** (reference lines 630-658, ``EmLCM_addOneChild`` lines
   811-838; threshold ``CTthreshold``, default 3 in ``HLTM/src/main/scala/xai/hlta/HLTA.scala``
   line 40): ``m0+`` is the island's current LCM with ``X`` added as an independent
   child at its empirical frequency (one parameter more than ``m0``). If
   ``BIC(m1) - BIC(m0+) < ct_threshold``, the data do not support ``X``'s
   dependence on the island's latent: the island is closed as ``S`` and ``X`` goes back
   to the pool. Without this test an island grows to the size cap by taking in any
   label that merely co-occurs with something.
4. **Unidimensionality (UD) test**: if ``BIC(m2) - BIC(m1) > ud_threshold`` (3) the
   island is closed as the LCM over ``S - {W, X}`` (``W`` and ``X`` go back to the
   pool; if nothing else remains they form a second island). The island is also
   closed at ``max_island`` variables when at least three variables remain.

**BIC scale** (``bic_batch``): the reference scores both tests with
``BatchBICScoreCalculator`` (``HLTM/src/main/scala/xai/hlta/BatchBICScoreCalculator.scala``
lines 29-39; ``--struct-batch-size``, default 5,000 in ``HLTA.scala`` line 51): with
``N`` documents above the batch size ``B`` it uses ``loglik * B / N - dim / 2 * log B``,
the BIC the same per-document evidence would have on ``B`` documents, so that a test
means the same at 10k and at 1.3M documents. ``bic_batch=None`` is the textbook
full-``N`` BIC, under which any small misfit of a one-latent model is "significant" at
ImageNet scale. :func:`scaled_bic` holds the rule.

Deviations from the reference, each to let the data say "no cluster":

* The reference always seeds an island with three variables and ends with the last
  three in one island, so every label gets a cluster. Here the seed pair must pass
  the correlation test too (``BIC`` of the pair's saturated joint against the two
  independent, i.e. ``N * MI - log(N) / 2`` at the chosen scale), and so must the
  third variable (against the pair's LCM ``m0``, as for every later ``X``). A
  variable that passes no test stays a **singleton**: it is handed to the next level
  unchanged (its parent will be a higher latent, so it is alone at level 1).
* The reference applies the correlation test only when at least three variables
  would remain in the pool; with singletons allowed that guard is not needed.

Islands are LCMs with binary latents. The data of the next level are the latents'
MAP states per document given the island's own variables (hard assignment), and the
singletons' own columns. States are relabelled so that state 0 is the MAP state of
the document in which every island variable is absent; this keeps every level's data
as sparse as the documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .small_models import SmallModel, lcm, project_patterns

__all__ = ["PatternData", "Island", "EMSettings", "IslandTests", "build_islands", "hard_assign", "scaled_bic"]


@dataclass(frozen=True)
class EMSettings:
    """EM settings of the small models."""

    restarts: int = 5
    max_iter: int = 50
    tol: float = 0.01
    refine_iter: int = 50


@dataclass(frozen=True)
class IslandTests:
    """The tests that grow and close islands (see the module docstring).

    ``ct_threshold``: correlation-test threshold (``None``: no correlation test, every
    label joins some island, as PEM-HLTA without it). ``bic_batch``: the number of
    documents the tests' BIC is scaled to (``None``: the full-``N`` BIC).
    """

    ud_threshold: float = 3.0
    ct_threshold: float | None = 3.0
    bic_batch: int | None = 5000
    max_island: int = 15

    def bic(self, loglik: float, dim: int, n: float) -> float:
        return scaled_bic(loglik, dim, n, self.bic_batch)

    def correlated(self, gain: float, extra_dim: int, n: float) -> bool:
        """Whether a log-likelihood ``gain`` bought with ``extra_dim`` parameters passes
        the correlation test (always, when the test is off)."""
        if self.ct_threshold is None:
            return True
        return self.bic(gain, extra_dim, n) >= self.ct_threshold


def scaled_bic(loglik: float, dim: int, n: float, batch: int | None) -> float:
    """BIC of a model with log-likelihood ``loglik`` and ``dim`` parameters on ``n`` documents.

    With ``batch`` below ``n``: the reference's batch BIC ``loglik * batch / n - dim / 2 *
    log(batch)`` (``BatchBICScoreCalculator.scala`` lines 29-39); otherwise the full BIC
    ``loglik - dim / 2 * log(n)``. Differences of two such scores are what the tests
    threshold, so ``loglik`` may be a log-likelihood gain and ``dim`` a parameter gain.
    """
    if batch is not None and 0 < batch < n:
        return loglik * batch / n - dim / 2.0 * np.log(batch)
    return loglik - dim / 2.0 * np.log(n)


@dataclass
class Island:
    """An island: the variables (column indices of the level's data) and their LCM.

    A singleton (one variable the tests kept alone) has ``model=None``.
    """

    variables: list[int]
    model: SmallModel | None

    @property
    def singleton(self) -> bool:
        return self.model is None


class PatternData:
    """Weighted sparse binary data of one level, giving unique patterns over few columns."""

    def __init__(self, X: sp.csr_matrix, weights: np.ndarray):
        self.csc = sp.csc_matrix(X)
        self.csc.sort_indices()
        self.weights = np.asarray(weights, dtype=np.float64)
        self.total = float(self.weights.sum())
        self.n_vars = X.shape[1]

    def column_rows(self, c: int) -> np.ndarray:
        return self.csc.indices[self.csc.indptr[c]:self.csc.indptr[c + 1]]

    def patterns(self, cols, return_rows: bool = False):
        """Unique patterns over ``cols`` with their weights; the all-absent pattern is
        the last row when it occurs. With ``return_rows``: also the rows in which some
        column is present and the index of each such row's pattern."""
        cols = list(cols)
        k = len(cols)
        if k > 62:
            raise ValueError("patterns over more than 62 variables are not supported")
        parts = [self.column_rows(c) for c in cols]
        rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        bits = np.concatenate([np.full(len(p), 1 << i, dtype=np.int64) for i, p in enumerate(parts)])
        active, inv = np.unique(rows, return_inverse=True)
        codes = np.bincount(inv.ravel(), weights=bits, minlength=len(active)).astype(np.int64)
        uniq, pinv = np.unique(codes, return_inverse=True)
        w_active = self.weights[active]
        counts = np.bincount(pinv.ravel(), weights=w_active, minlength=len(uniq))
        P = ((uniq[:, None] >> np.arange(k)[None, :]) & 1).astype(np.float64)
        zero_w = self.total - float(w_active.sum())
        if zero_w > 1e-9 * max(self.total, 1.0):
            P = np.vstack([P, np.zeros((1, k))])
            counts = np.append(counts, zero_w)
        if return_rows:
            return P, counts, active, pinv.ravel()
        return P, counts


def _fit_lcm(data: PatternData, cols, rng, em: EMSettings) -> SmallModel:
    P, w = data.patterns(cols)
    return lcm(len(cols)).fit(P, w, rng, restarts=em.restarts, max_iter=em.max_iter, tol=em.tol)


def _refine(m: SmallModel, P, w, rng, em: EMSettings) -> SmallModel:
    """Full EM from the progressive estimate, and from a copy pulled off the boundary.

    With rare latent states EM has a stable local optimum at the boundary
    ``P(x_k = 1 | Y = j) ~ 0`` (the rare state absorbs every occurrence of ``x_k``,
    including chance ones), which progressive EM carries over from small early
    models. A few nats of such slack in ``m1`` make the UD test split true islands
    at large N, so refinement also starts from a copy whose conditionals are at
    least half the empirical frequency of each variable and keeps the better fit.
    """
    if em.refine_iter <= 0:
        return m
    freq = (w @ P) / w.sum()
    lifted = m.copy()
    lifted.p1 = np.maximum(lifted.p1, 0.5 * freq[:, None])
    fits = [
        start.fit(P, w, rng, randomize=False, max_iter=em.refine_iter, restart_iter=1, tol=em.tol)
        for start in (m, lifted)
    ]
    return max(fits, key=lambda f: f.log_likelihood(P, w))


def _bernoulli_loglik(P: np.ndarray, w: np.ndarray, col: int) -> float:
    """Log-likelihood of column ``col`` of the weighted patterns under its own frequency."""
    n = float(w.sum())
    f = float(w @ P[:, col]) / n
    return float(n * sum(p * np.log(p) for p in (f, 1.0 - f) if p > 0))


def _adds_to(m: SmallModel, m1: SmallModel, P: np.ndarray, w: np.ndarray, tests: IslandTests) -> bool:
    """Correlation test of the last column of ``P`` against the island model ``m``
    (over the other columns): ``BIC(m1) - BIC(m + X independent)``, see the module docstring."""
    Ps, ws = project_patterns(P, w, list(range(P.shape[1] - 1)))
    ll0 = m.log_likelihood(Ps, ws) + _bernoulli_loglik(P, w, P.shape[1] - 1)
    gain = m1.log_likelihood(P, w) - ll0
    return tests.correlated(gain, m1.n_params() - (m.n_params() + 1), float(w.sum()))


def _grow_lcm(m: SmallModel, P, cnt, rng, em: EMSettings) -> SmallModel:
    """``m1``: the LCM ``m`` with the last column of ``P`` as a new child; progressive EM
    for ``P(X|Y)`` on the seed pair and ``X``, then full EM (see :func:`_refine`)."""
    k = P.shape[1]
    m1 = SmallModel(np.zeros(k, dtype=int), np.vstack([m.p1, [[0.5, 0.5]]]), m.prior.copy())
    sub_cols = [0, 1, k - 1]
    Ps, ws = project_patterns(P, cnt, sub_cols)
    part = SmallModel(np.zeros(3, dtype=int), m1.p1[sub_cols].copy(), m1.prior.copy())
    part = part.fit(Ps, ws, rng, free_leaves=np.array([False, False, True]), free_prior=False,
                    restarts=em.restarts, max_iter=em.max_iter, tol=em.tol)
    m1.p1[k - 1] = part.p1[2]
    return _refine(m1, P, cnt, rng, em)


def _singletons(idx) -> list[Island]:
    return [Island([int(v)], None) for v in idx]


def _one_island(
    data: PatternData, mi: np.ndarray, order: np.ndarray, pool: np.ndarray, tests: IslandTests,
    rng: np.random.Generator, em: EMSettings,
) -> list[Island]:
    """Grow one island from the pool (a boolean mask); returns one or two islands, or
    singletons when no pair of the pool passes the correlation test. ``order``: the
    pairwise score by which the next variable is chosen (MI, or normalised MI)."""
    idx = np.flatnonzero(pool)
    n = data.total
    if len(idx) == 1:
        return _singletons(idx)
    sub = mi[np.ix_(idx, idx)].copy()
    np.fill_diagonal(sub, -np.inf)
    i, j = np.unravel_index(np.argmax(sub), sub.shape)
    a, b = int(idx[i]), int(idx[j])
    # The pair's saturated joint has one parameter more than the two independent
    # columns and gains exactly N * MI; the test is monotone in MI, so when the best
    # pair fails, every pair of the pool fails.
    if not tests.correlated(n * float(mi[a, b]), 1, n):
        return _singletons(idx)
    seeds = [a, b]
    m = _fit_lcm(data, seeds, rng, em)
    if len(idx) == 2:
        return [Island(seeds, m)]
    cluster = seeds
    while True:
        rest = pool.copy()
        rest[cluster] = False
        if not rest.any():
            return [Island(cluster, m)]
        # X: highest MI with the island (max over all members, as the paper states;
        # the reference code leaves the seed pair out of this maximum). W: the member
        # other than the seed pair (never moved out) of highest MI with X.
        x = int(np.argmax(np.where(rest, order[cluster].max(axis=0), -np.inf)))
        cluster = [*cluster, x]
        P, cnt = data.patterns(cluster)
        k = len(cluster)
        m1 = _grow_lcm(m, P, cnt, rng, em)
        rest[x] = False
        if not _adds_to(m, m1, P, cnt, tests):
            return [Island(cluster[:-1], m)]
        if k == 3:  # no W yet: the UD test needs two variables besides the seed pair
            m = m1
            continue
        members = np.array(cluster[2:-1])
        w_var = int(members[np.argmax(mi[members, x])])
        # m2: Y1 over S - W, Y2 over {W, X}; progressive EM on {seed pair, W, X}.
        wpos = cluster.index(w_var)
        leaf_latent = np.zeros(k, dtype=int)
        leaf_latent[[wpos, k - 1]] = 1
        m2 = SmallModel(leaf_latent, m1.p1.copy(), m1.prior.copy(), np.full((2, 2), 0.5))
        sub_cols = [0, 1, wpos, k - 1]
        Ps, ws = project_patterns(P, cnt, sub_cols)
        part = SmallModel(leaf_latent[sub_cols], m2.p1[sub_cols].copy(), m2.prior.copy(), m2.trans.copy())
        part = part.fit(Ps, ws, rng, free_leaves=np.array([False, False, True, True]), free_prior=False,
                        free_trans=True, restarts=em.restarts, max_iter=em.max_iter, tol=em.tol)
        m2.p1[[wpos, k - 1]] = part.p1[[2, 3]]
        m2.trans = part.trans
        m2 = _refine(m2, P, cnt, rng, em)
        keep = [p for p in range(k) if p not in (wpos, k - 1)]
        ll1, ll2 = m1.log_likelihood(P, cnt), m2.log_likelihood(P, cnt)
        if tests.bic(ll2 - ll1, m2.n_params() - m1.n_params(), n) > tests.ud_threshold:
            island = Island([cluster[p] for p in keep], m1.take_leaves(np.array(keep)))
            if not rest.any():
                pair = SmallModel(
                    np.zeros(2, dtype=int), m2.p1[[wpos, k - 1]].copy(),
                    m2.trans @ m2.prior,
                )
                return [island, Island([w_var, x], pair)]
            return [island]
        if not rest.any() or (k >= tests.max_island and rest.sum() >= 3):
            return [Island(cluster, m1)]
        m = m1


def build_islands(
    data: PatternData, mi: np.ndarray, variables: np.ndarray, tests: IslandTests,
    rng: np.random.Generator, em: EMSettings, order: np.ndarray | None = None,
) -> list[Island]:
    """Partition ``variables`` (column indices) into islands and singletons
    (Chen et al. 2017, Alg. BuildIslands, with the reference's correlation test).

    ``order`` (default ``mi``): the pairwise score that picks the next variable of an
    island (the seed pair is always the pair of highest MI)."""
    order = mi if order is None else order
    pool = np.zeros(data.n_vars, dtype=bool)
    pool[variables] = True
    islands: list[Island] = []
    while pool.any():
        for island in _one_island(data, mi, order, pool, tests, rng, em):
            islands.append(island)
            pool[island.variables] = False
    return islands


def hard_assign(data: PatternData, islands: list[Island]) -> tuple[sp.csr_matrix, list[Island]]:
    """MAP state of every island latent in every row, given the island's variables.

    Each island's latent states are relabelled (parameters permuted) so that state
    0 is the MAP state of the all-absent pattern; the returned binary CSR matrix
    (rows x islands) holds 1 where a row's MAP state is the other state. A
    singleton's column is its variable's own column.
    """
    cols_rows: list[np.ndarray] = []
    out_islands: list[Island] = []
    for isl in islands:
        if isl.singleton:
            cols_rows.append(data.column_rows(isl.variables[0]))
            out_islands.append(isl)
            continue
        P, _, active, pinv = data.patterns(isl.variables, return_rows=True)
        zero = np.zeros((1, len(isl.variables)))
        model = isl.model
        if np.argmax(model.posterior_y1(zero)[0]) == 1:
            model = model.swap_states()
        post = model.posterior_y1(P)
        on = post[:, 1] > post[:, 0]
        cols_rows.append(active[on[pinv]])
        out_islands.append(Island(isl.variables, model))
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in cols_rows])])
    indices = np.concatenate(cols_rows) if cols_rows else np.zeros(0, dtype=np.int64)
    H = sp.csc_matrix(
        (np.ones(len(indices)), indices, indptr), shape=(data.csc.shape[0], len(islands))
    )
    H.sort_indices()
    return H.tocsr(), out_islands
