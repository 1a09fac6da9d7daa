"""The top-K rule shared by the offline documents and the online explanations.

CWOX Sec. 4: K is either fixed (e.g. 5) or the smallest number of top classes whose
cumulative probability exceeds a threshold (e.g. 0.95), capped at ``max_k``.

The documents that built the CWOX paper's trees follow the reference's own rule
(``vaynexie/CWOX``, ``HLTM/scripts/prepare_training_data.py``: the ``numberlist`` cut,
lines 48-54 and 65, and the ``len(...) > 1`` filter, line 66; ``HLTM/readme.md`` line
22): the top labels up to cumulative probability 0.95 with **no cap**, and documents
with K = 1 dropped, since a one-label document carries no co-occurrence.
Here that is ``TopKRule(cum=0.95, max_k=None, min_k=2)``. ``min_k`` never changes
which labels a row holds: it says which rows make the learner's corpus (the
documents store keeps every row and :meth:`TopKRule.keeps` says which count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: The rule of the reference code that built the CWOX paper's trees (see the module docstring).
REFERENCE_CUM = 0.95


@dataclass(frozen=True)
class TopKRule:
    """How many top classes to keep per image, and which rows count as documents.

    ``TopKRule(k=5)`` keeps 5; ``TopKRule(cum=0.95, max_k=5)`` keeps the smallest K
    whose cumulative probability is greater than 0.95 (at least 1), at most 5;
    ``max_k=None`` with ``cum`` is no cap (the reference's rule). ``min_k``: rows
    with fewer labels are left out of the tree learner's corpus (``min_k=2`` drops
    the one-label documents, as the reference does).
    """

    k: int | None = 5
    cum: float | None = None
    max_k: int | None = 5
    min_k: int = 1

    def __post_init__(self) -> None:
        if self.cum is None:
            if self.k is None or self.k < 1:
                raise ValueError(f"top-k must be a positive integer, got {self.k}")
        else:
            if not 0.0 < self.cum <= 1.0:
                raise ValueError(f"cumulative threshold must be in (0, 1], got {self.cum}")
            if self.max_k is not None and self.max_k < 1:
                raise ValueError(f"max-k must be a positive integer, got {self.max_k}")
        if self.min_k < 1:
            raise ValueError(f"min-k must be a positive integer, got {self.min_k}")
        if self.cum is None and self.min_k > int(self.k):  # type: ignore[arg-type]
            raise ValueError(f"min-k {self.min_k} is above the fixed K {self.k}: every row would be dropped")
        if self.cum is not None and self.max_k is not None and self.min_k > self.max_k:
            raise ValueError(f"min-k {self.min_k} is above max-k {self.max_k}: every row would be dropped")

    @classmethod
    def from_options(
        cls, top_k: int | None, cum: float | None, max_k: int | None, *, no_cap: bool = False,
        min_k: int = 1,
    ) -> TopKRule:
        """Build from CLI options: ``--cum`` wins over the default ``--top-k``;
        ``no_cap`` (with ``--cum``) lifts ``--max-k``."""
        if no_cap and cum is None:
            raise ValueError("--no-cap lifts the cap of a cumulative rule; give --cum too")
        if cum is not None:
            return cls(k=None, cum=cum, max_k=None if no_cap else (max_k or 5), min_k=min_k)
        return cls(k=top_k if top_k is not None else 5, max_k=max_k or 5, min_k=min_k)

    @classmethod
    def reference(cls) -> TopKRule:
        """The reference's document rule: cumulative 0.95, no cap, one-label rows dropped."""
        return cls(k=None, cum=REFERENCE_CUM, max_k=None, min_k=2)

    @property
    def width(self) -> int | None:
        """The most labels a row can hold (None: no cap, see :meth:`width_for`)."""
        return self.max_k if self.cum is not None else int(self.k)  # type: ignore[arg-type]

    def width_for(self, n_classes: int) -> int:
        """The most labels a row can hold for a classifier of ``n_classes`` classes."""
        return n_classes if self.width is None else min(self.width, n_classes)

    def describe(self) -> dict:
        """The rule as stored in a documents store (``min_k`` only when it drops rows,
        so that stores written before it existed still compare equal)."""
        out: dict = {"kind": "cum", "cum": self.cum, "max_k": self.max_k} if self.cum is not None \
            else {"kind": "top_k", "k": self.k}
        if self.min_k > 1:
            out["min_k"] = self.min_k
        return out

    @classmethod
    def from_description(cls, d: dict) -> TopKRule:
        """Inverse of :meth:`describe`."""
        if d.get("kind") == "cum":
            return cls(k=None, cum=float(d["cum"]), max_k=d.get("max_k"), min_k=int(d.get("min_k", 1)))
        return cls(k=int(d["k"]), min_k=int(d.get("min_k", 1)))

    def keeps(self, k: np.ndarray) -> np.ndarray:
        """Which rows (by their K; 0 = a failed image) make the learner's corpus."""
        return np.asarray(k) >= max(1, self.min_k)

    def apply(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Select the top classes of each row of a ``B x C`` probability matrix.

        Returns ``(labels, top_probs, k)``: ``B x width`` int64 class ids (padded
        with -1), ``B x width`` probabilities (padded with 0), and K per row.
        """
        width = self.width_for(probs.shape[-1])
        # A stable sort, so that ties go to the lower class id on every device and run.
        sorted_p, sorted_i = torch.sort(probs, dim=-1, descending=True, stable=True)
        top_p, top_i = sorted_p[..., :width], sorted_i[..., :width]
        if self.cum is None:
            k = torch.full((probs.shape[0],), width, dtype=torch.int64, device=probs.device)
        else:
            # smallest K with cumsum > cum: count the prefixes still at or below it, plus one
            below = (top_p.cumsum(-1) <= self.cum).sum(-1)
            k = (below + 1).clamp(max=width)
        keep = torch.arange(width, device=probs.device)[None, :] < k[:, None]
        labels = torch.where(keep, top_i, torch.full_like(top_i, -1))
        return labels, torch.where(keep, top_p, torch.zeros_like(top_p)), k
