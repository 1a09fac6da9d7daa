"""What the progress bar costs: one RISE explanation at its defaults, with and without the bar.

RISE at its defaults (5000 masks) on the default model and skimage's chelsea, the
top class's map, in one process: runs alternate between stderr on a
pseudo-terminal (so :func:`cwox.core.progress.progress` draws its bar) and bars
switched off (``--quiet``), ``--reps`` times each, side by side so that the
machine's noise falls on both. Prints each run, the medians, their ratio, and
whether the maps are bitwise identical.

Run::

    python benchmarks/bench_progress.py            # 2 runs each, about 5 min on 2 cores
    python benchmarks/bench_progress.py --reps 3 --n-masks 2000
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import sys
import threading

import torch
from _common import timed
from cwox.online.explainers import get_explainer
from PIL import Image
from skimage import data

from cwox.core import progress
from cwox.core.models import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--n-masks", type=int, default=5000)
    args = ap.parse_args()

    classifier = load_model(device="cpu")
    x = classifier.preprocess(Image.fromarray(data.chelsea()))
    top = int(classifier.probabilities(x.unsqueeze(0))[0].argmax())
    master, slave = pty.openpty()
    drawn = bytearray()

    def drain() -> None:  # keep reading the terminal, as a terminal would
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            drawn.extend(chunk)

    threading.Thread(target=drain, daemon=True).start()
    terminal = os.fdopen(slave, "w", buffering=1)
    times: dict[str, list[float]] = {"bar": [], "quiet": []}
    maps: dict[str, torch.Tensor] = {}
    for rep in range(args.reps):
        for kind in ("bar", "quiet"):
            rise = get_explainer("rise", classifier, n_masks=args.n_masks)
            saved, sys.stderr = sys.stderr, terminal
            try:
                with progress.quiet(kind == "quiet"):
                    wall, _cpu, out = timed(lambda r=rise: r.explain(x, [top]), classifier.device)
            finally:
                sys.stderr = saved
            times[kind].append(wall)
            maps.setdefault(kind, out)
            print(f"rep {rep + 1} {kind:5s}: {wall:.2f} s", flush=True)
    terminal.close()
    bar, quiet = statistics.median(times["bar"]), statistics.median(times["quiet"])
    print(f"RISE n_masks={args.n_masks}, chelsea, CPU x{torch.get_num_threads()} threads, {args.reps} runs each")
    print(f"median with bar {bar:.2f} s, without {quiet:.2f} s, ratio {bar / quiet:.3f}")
    print(f"bar drawn: {b'RISE masks' in drawn} ({len(drawn)} bytes on the terminal)")
    print(f"maps bitwise identical: {torch.equal(maps['bar'], maps['quiet'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
