"""Batched forward passes: the one loop every explainer and pipeline shares."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Slices ``[0:b], [b:2b], ...`` covering ``range(n)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.inference_mode()
def batched_forward(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """Apply ``fn`` to ``inputs`` in batches of ``batch_size`` and concatenate the outputs."""
    outs = [fn(inputs[s]) for s in batch_slices(inputs.shape[0], batch_size)]
    return torch.cat(outs) if outs else inputs.new_zeros((0,))
