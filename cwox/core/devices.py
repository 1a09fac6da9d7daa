"""Device choice, batch sizing and the CPU allocator setting, shared by every stage."""

from __future__ import annotations

import ctypes
import os
import sys

import torch

#: Default batch sizes per device type: forward passes of a 224-pixel CNN. On CPU a
#: small batch keeps activations in cache; 4 to 16 run at the same rate on 2 cores and
#: 32 is about 30% slower (``benchmarks/RESULTS.md``, allocator section).
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 128}

#: glibc malloc settings for processes that run CNNs on the CPU. By default glibc
#: serves every block above 32 MiB (a batch's activation maps) with a fresh mmap,
#: which the kernel zero-fills page by page and unmaps on free; a forward pass then
#: spends more time faulting pages than computing. Above a 256 MiB threshold only,
#: and with freed memory kept up to 512 MiB, the blocks are reused: 1.7x to 2.7x more
#: images/s for EfficientNet-Lite0 on 2 cores, bitwise the same outputs.
MMAP_THRESHOLD = 256 * 2**20
TRIM_THRESHOLD = 512 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

#: The same settings as environment variables, for worker processes started by cwox
#: (read by glibc at start). One arena: a Dask task runs in a worker thread, and a
#: thread's own arena cannot hold blocks above 64 MiB, which would go back to mmap.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    "MALLOC_ARENA_MAX": "1",
}

_tuned: bool | None = None


def allocator_tuning_enabled() -> bool:
    """False when the user set ``CWOX_MALLOC_TUNING=0``."""
    return os.environ.get("CWOX_MALLOC_TUNING", "1") != "0"


def worker_allocator_env() -> dict[str, str]:
    """:data:`ALLOCATOR_ENV`, or nothing when tuning is turned off."""
    return dict(ALLOCATOR_ENV) if allocator_tuning_enabled() else {}


def tune_cpu_allocator() -> bool:
    """Apply :data:`MMAP_THRESHOLD` and :data:`TRIM_THRESHOLD` to this process (glibc only).

    Called whenever a classifier is built. Idempotent; returns whether the settings
    are in force. Set ``CWOX_MALLOC_TUNING=0`` to leave the allocator alone.
    """
    global _tuned
    if _tuned is None:
        _tuned = False
        if sys.platform.startswith("linux") and allocator_tuning_enabled():
            try:
                libc = ctypes.CDLL("libc.so.6")
                _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                )
            except (OSError, AttributeError):  # musl or another libc: nothing to tune
                _tuned = False
    return _tuned


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` into a :class:`torch.device`.

    ``auto`` (or ``None``) picks CUDA when a GPU is present, else the CPU. Asking for
    CUDA on a machine without one is an error, not a silent fallback.
    """
    if isinstance(device, torch.device):
        chosen = device
    elif device is None or str(device).lower() == "auto":
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            chosen = torch.device(str(device).lower())
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda[:N]") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is available here")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use auto, cpu or cuda[:N]")
    return chosen


def default_batch_size(device: torch.device) -> int:
    """A sane batch size for forward passes on ``device``."""
    return DEFAULT_BATCH_SIZE.get(device.type, 32)


def cpu_count() -> int:
    """Cores this process may use (respects CPU affinity, e.g. in containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
