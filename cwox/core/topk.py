"""The top-K rule shared by the offline documents and the online explanations.

CWOX Sec. 4: K is either fixed (e.g. 5) or the smallest number of top classes whose
cumulative probability exceeds a threshold (e.g. 0.95), capped at ``max_k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TopKRule:
    """How many top classes to keep per image.

    ``TopKRule(k=5)`` keeps 5; ``TopKRule(cum=0.95, max_k=5)`` keeps the smallest K
    whose cumulative probability is greater than 0.95 (at least 1), at most 5.
    """

    k: int | None = 5
    cum: float | None = None
    max_k: int = 5

    def __post_init__(self) -> None:
        if self.cum is None:
            if self.k is None or self.k < 1:
                raise ValueError(f"top-k must be a positive integer, got {self.k}")
        else:
            if not 0.0 < self.cum <= 1.0:
                raise ValueError(f"cumulative threshold must be in (0, 1], got {self.cum}")
            if self.max_k < 1:
                raise ValueError(f"max-k must be a positive integer, got {self.max_k}")

    @classmethod
    def from_options(cls, top_k: int | None, cum: float | None, max_k: int | None) -> TopKRule:
        """Build from CLI options: ``--cum`` wins over the default ``--top-k``."""
        if cum is not None:
            return cls(k=None, cum=cum, max_k=max_k or 5)
        return cls(k=top_k if top_k is not None else 5, max_k=max_k or 5)

    @property
    def width(self) -> int:
        """The most labels a row can hold."""
        return self.max_k if self.cum is not None else int(self.k)  # type: ignore[arg-type]

    def describe(self) -> dict:
        if self.cum is not None:
            return {"kind": "cum", "cum": self.cum, "max_k": self.max_k}
        return {"kind": "top_k", "k": self.k}

    def apply(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Select the top classes of each row of a ``B x C`` probability matrix.

        Returns ``(labels, top_probs, k)``: ``B x width`` int64 class ids (padded
        with -1), ``B x width`` probabilities (padded with 0), and K per row.
        """
        width = min(self.width, probs.shape[-1])
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
