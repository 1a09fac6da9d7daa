"""What the benchmarks share: the cats tree, fair timing, pass counts, peak memory.

Imported by ``bench_explainers.py``, ``bench_whole_output.py``, ``bench_metrics.py`` and
``bench_evaluate_calls.py`` (run as scripts
from the repository, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import networkx as nx
import torch
from cwox.hlta.tree import tree_from_groups

#: ImageNet ids of tabby, tiger cat, Egyptian cat and lynx: the cats cluster.
CATS = (281, 282, 285, 287)


def cats_tree(class_names: list[str]) -> nx.DiGraph:
    """A structure-only contract tree: the cats under one level-1 latent, every other class alone."""
    tree = tree_from_groups([CATS], class_names)
    tree.graph["version"] = "bench-cats"
    return tree


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a timer stops when the work does."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_passes(model: torch.nn.Module, fn) -> int:
    """Images ``fn()`` sends through ``model`` (counted by a forward pre-hook, removed after)."""
    counted = [0]

    def count(_module, args):
        counted[0] += args[0].shape[0]

    handle = model.register_forward_pre_hook(count)
    try:
        fn()
    finally:
        handle.remove()
    return counted[0]


def timed(fn, device: torch.device) -> tuple[float, float, Any]:
    """Wall-clock and process CPU seconds of one call, and its result."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0, out


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    """The CUDA allocator's peak on a GPU, else this process's peak RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
