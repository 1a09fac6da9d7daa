"""Small latent tree models over a few binary variables, fitted by (progressive) EM.

PEM-HLTA (Chen et al. 2017, Sec. 5) only ever fits two kinds of small model
while it builds islands:

* the latent class model (LCM) ``m1``: one binary latent ``Y`` with the island's
  variables as children, ``P(x) = sum_y P(y) prod_k P(x_k | y)``;
* the two-latent model ``m2`` of the unidimensionality (UD) test: ``Y1`` over
  most variables, ``Y2`` (child of ``Y1``) over two of them.

Both are evaluated by enumerating the joint latent states (2 or 4), vectorised
over the *unique* data patterns of the model's variables with their counts.
Progressive EM re-estimates only the parameters marked free and keeps the
others fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .inference import logsumexp_rows

__all__ = ["SmallModel", "lcm", "project_patterns", "P_MIN"]

#: Conditional probabilities are kept in [P_MIN, 1 - P_MIN] so logs stay finite.
P_MIN = 1e-10

_STATES = {1: np.array([[0], [1]]), 2: np.array([[0, 0], [0, 1], [1, 0], [1, 1]])}
# _GROUP[a][s, j] = 1 when latent a is in state j in joint state s (two-latent models)
_GROUP = [(_STATES[2][:, a][:, None] == np.arange(2)[None, :]).astype(float) for a in range(2)]


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.clip(v / max(float(v.sum()), 1e-300), P_MIN, 1 - P_MIN)
    return v / v.sum()


@dataclass
class SmallModel:
    """A latent tree with one or two binary latents and binary leaves.

    Attributes
    ----------
    leaf_latent : (k,) int, the latent (0 = ``Y1``, 1 = ``Y2``) each leaf hangs from.
    p1 : (k, 2) float, ``P(leaf = 1 | parent latent = j)``.
    prior : (2,) float, ``P(Y1)``.
    trans : (2, 2) float or None, ``P(Y2 = i | Y1 = j)`` (two-latent models only).
    """

    leaf_latent: np.ndarray
    p1: np.ndarray
    prior: np.ndarray
    trans: np.ndarray | None = None

    @property
    def n_latent(self) -> int:
        return 1 if self.trans is None else 2

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_latent)

    def n_params(self) -> int:
        """Free parameters: 1 for ``P(Y1)``, 2 for ``P(Y2|Y1)``, 2 per leaf."""
        return 1 + 2 * self.n_leaves + (2 if self.trans is not None else 0)

    def copy(self) -> SmallModel:
        return replace(
            self, leaf_latent=self.leaf_latent.copy(), p1=self.p1.copy(), prior=self.prior.copy(),
            trans=None if self.trans is None else self.trans.copy(),
        )

    # ------------------------------------------------------------------ inference
    def _joint(self, P: np.ndarray) -> np.ndarray:
        """Log joint ``log P(x, states)`` of every pattern (rows of ``P``) and joint latent state."""
        st = _STATES[self.n_latent]
        logprior = np.log(self.prior[st[:, 0]])
        if self.trans is not None:
            logprior = logprior + np.log(self.trans[st[:, 1], st[:, 0]])
        Q = self.p1[np.arange(self.n_leaves)[:, None], st[:, self.leaf_latent].T]  # (k, S)
        lq, l1q = np.log(Q), np.log1p(-Q)
        return P @ (lq - l1q) + l1q.sum(axis=0)[None, :] + logprior[None, :]

    def log_likelihood(self, P: np.ndarray, counts: np.ndarray) -> float:
        """Weighted log-likelihood of the patterns ``P`` (n, k) with ``counts`` (n,)."""
        return float(counts @ logsumexp_rows(self._joint(P)))

    def bic(self, P: np.ndarray, counts: np.ndarray) -> float:
        """``BIC = log-likelihood - n_params / 2 * log N`` with ``N = sum(counts)``."""
        return self.log_likelihood(P, counts) - 0.5 * self.n_params() * np.log(counts.sum())

    def posterior_y1(self, P: np.ndarray) -> np.ndarray:
        """``P(Y1 | x)`` for every pattern, shape (n, 2)."""
        J = self._joint(P)
        post = np.exp(J - logsumexp_rows(J)[:, None])
        st = _STATES[self.n_latent]
        return np.stack([post[:, st[:, 0] == j].sum(axis=1) for j in (0, 1)], axis=1)

    # ------------------------------------------------------------------ learning
    def em_step(
        self, P: np.ndarray, counts: np.ndarray, free_leaves: np.ndarray,
        free_prior: bool, free_trans: bool,
    ) -> float:
        """One EM iteration in place, updating only the free parameters; returns the
        log-likelihood *before* the update."""
        J = self._joint(P)
        if self.trans is None:  # two joint states: a cheaper exact log-sum-exp
            ll = np.logaddexp(J[:, 0], J[:, 1])
        else:
            ll = logsumexp_rows(J)
        R = np.exp(J - ll[:, None])
        R *= counts[:, None]  # (n, S) expected counts of the joint latent states
        cs = R.sum(axis=0)
        if self.trans is None:
            if free_leaves.any():
                num = P[:, free_leaves].T @ R if not free_leaves.all() else P.T @ R
                self.p1[free_leaves] = np.minimum(np.maximum(num / np.maximum(cs, 1e-300), P_MIN), 1 - P_MIN)
            if free_prior:
                self.prior = _normalise(cs)
            return float(counts @ ll)
        N1 = P.T @ R  # (k, S)
        for a in range(2):
            rows = free_leaves & (self.leaf_latent == a)
            if not rows.any():
                continue
            G = _GROUP[a]
            self.p1[rows] = np.clip((N1[rows] @ G) / np.maximum(cs @ G, 1e-300)[None, :], P_MIN, 1 - P_MIN)
        if free_prior:
            self.prior = _normalise(cs @ _GROUP[0])
        if free_trans:
            joint = cs.reshape(2, 2)  # [y1, y2]
            self.trans = np.stack([_normalise(joint[j]) for j in range(2)], axis=1)
        return float(counts @ ll)

    def fit(
        self, P: np.ndarray, counts: np.ndarray, rng: np.random.Generator, *,
        free_leaves: np.ndarray | None = None, free_prior: bool = True, free_trans: bool = True,
        restarts: int = 5, max_iter: int = 50, tol: float = 0.01, restart_iter: int = 8,
        randomize: bool = True,
    ) -> SmallModel:
        """(Progressive) EM with random restarts; returns the best fitted copy.

        Only the parameters marked free are randomised and re-estimated (progressive
        EM, Chen et al. 2017 Sec. 5.2); the rest keep their values. Each of the
        ``restarts`` random starts runs ``restart_iter`` iterations, then the best
        continues until the log-likelihood improves by less than ``tol`` (nats, the
        EM threshold of the HLTA reference code) or ``max_iter`` iterations in total.
        """
        if free_leaves is None:
            free_leaves = np.ones(self.n_leaves, dtype=bool)
        args = (P, counts, free_leaves, free_prior, free_trans)
        starts = []
        for _ in range(max(1, restarts) if randomize else 1):
            m = self.copy()
            if randomize:
                m._randomize(rng, free_leaves, free_prior, free_trans)
            ll = -np.inf
            for _ in range(min(restart_iter, max_iter)):
                ll = m.em_step(*args)
            starts.append((ll, m))
        ll, best = max(starts, key=lambda t: t[0])
        prev = ll
        for _ in range(max(0, max_iter - restart_iter)):
            ll = best.em_step(*args)
            if ll - prev < tol:
                break
            prev = ll
        return best

    def _randomize(self, rng, free_leaves, free_prior, free_trans) -> None:
        k = int(free_leaves.sum())
        if k:
            self.p1[free_leaves] = rng.uniform(0.05, 0.95, size=(k, 2))
        if free_prior:
            a = rng.uniform(0.2, 0.8)
            self.prior = np.array([a, 1 - a])
        if free_trans and self.trans is not None:
            t = rng.uniform(0.1, 0.9, size=2)
            self.trans = np.stack([t, 1 - t])

    # ------------------------------------------------------------------ editing
    def take_leaves(self, keep: np.ndarray) -> SmallModel:
        """The LCM of ``Y1`` restricted to the leaves ``keep`` (indices), dropping ``Y2``."""
        return SmallModel(np.zeros(len(keep), dtype=int), self.p1[keep].copy(), self.prior.copy())

    def swap_states(self) -> SmallModel:
        """Relabel the two states of ``Y1`` (an LCM only)."""
        if self.trans is not None:
            raise ValueError("swap_states is defined for one-latent models only")
        return SmallModel(self.leaf_latent.copy(), self.p1[:, ::-1].copy(), self.prior[::-1].copy())


def lcm(k: int) -> SmallModel:
    """An LCM over ``k`` leaves with placeholder parameters (to be fitted)."""
    return SmallModel(np.zeros(k, dtype=int), np.full((k, 2), 0.5), np.array([0.5, 0.5]))


def project_patterns(P: np.ndarray, counts: np.ndarray, cols) -> tuple[np.ndarray, np.ndarray]:
    """Marginalise weighted binary patterns onto the columns ``cols`` (unique rows, summed counts)."""
    sub = P[:, cols].astype(np.int64)
    codes = sub @ (np.int64(1) << np.arange(sub.shape[1], dtype=np.int64))
    uniq, inv = np.unique(codes, return_inverse=True)
    w = np.bincount(inv.ravel(), weights=counts, minlength=len(uniq))
    pats = ((uniq[:, None] >> np.arange(sub.shape[1])[None, :]) & 1).astype(np.float64)
    return pats, w
