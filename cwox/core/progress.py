"""One progress hook for long loops of passes (masks, interventions, counterfactual steps).

Explainers wrap their pass loops in :func:`progress`::

    for sl in progress(batch_slices(n, bs), total=n, desc="RISE masks", unit="mask"):
        ...

and get a tqdm bar on stderr when it is a terminal, nothing when it is piped or
redirected (tqdm's ``disable=None``), and nothing at all inside :func:`quiet` (the
``--quiet`` of ``explain`` and ``evaluate``) or when :func:`set_enabled` turned bars
off. A ``slice`` item advances the bar by its length (a batch of passes), any other
item by one. Bars appear only after :data:`DELAY` seconds (the environment variable
``CWOX_PROGRESS_DELAY`` overrides it), so quick loops never flash one, and vanish
when done (``leave=False``): only the command's own lines stay on screen.

The hook never touches the loop's values: maps are the same, bit for bit, with or
without a bar.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["DELAY", "enabled", "progress", "quiet", "set_enabled"]

T = TypeVar("T")

#: Seconds a loop runs before its bar appears.
DELAY = 0.5

_enabled = True


def enabled() -> bool:
    """Whether bars may show (they still need a terminal on stderr)."""
    return _enabled


def set_enabled(flag: bool) -> bool:
    """Allow (True) or forbid (False) bars in this process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


@contextmanager
def quiet(flag: bool = True) -> Iterator[None]:
    """No bars inside the block (when ``flag``); the previous setting comes back after it."""
    previous = set_enabled(_enabled and not flag)
    try:
        yield
    finally:
        set_enabled(previous)


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "pass") -> Iterator[T]:
    """Yield ``items`` unchanged, drawing a bar of ``total`` units on a terminal.

    Args:
        items: the loop's items; a ``slice`` counts as ``stop - start`` units.
        total: units in all (None: ``len(items)`` when it has one).
        desc: the bar's label, e.g. ``"RISE masks"``.
        unit: what one unit is, e.g. ``"mask"``.
    """
    if not _enabled:
        yield from items
        return
    from tqdm import tqdm

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    # The size from the environment, 80 x 24 where a terminal reports none: ``script`` and
    # some CI pseudo-terminals say 0 x 0, and tqdm then draws nothing at all.
    size = shutil.get_terminal_size()
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False,
               delay=float(os.environ.get("CWOX_PROGRESS_DELAY", DELAY)), ncols=size.columns, nrows=size.lines)
    try:
        for item in items:
            yield item
            bar.update(item.stop - item.start if isinstance(item, slice) else 1)
    finally:
        bar.close()
