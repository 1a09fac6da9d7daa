"""What the progress bar costs: one RISE explanation at its defaults, with and without the bar.

RISE at its defaults (5000 masks) on the default model and skimage's chelsea, the
top class's map, in one process: runs alternate between stderr on a
pseudo-terminal (so :func:`cwox.core.progress.progress` draws its bar) and bars
switched off (``--quiet``), ``--reps`` times each, side by side so that the
machine's noise falls on both (the order alternates: bar first, then quiet first).
Prints each run, the medians, their ratio, whether the maps are bitwise identical,
and the hook's own cost: the same batches with an empty loop body, bar drawn.

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
import time

import torch
from _common import timed
from cwox.online.explainers import get_explainer
from PIL import Image
from skimage import data

from cwox.core import progress
from cwox.core.batching import batch_slices
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
        for kind in (("bar", "quiet") if rep % 2 == 0 else ("quiet", "bar")):  # ABBA: drift falls on both
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
    # The hook alone, free of the machine's noise: the same batches with an empty loop body.
    batches = list(batch_slices(args.n_masks, rise.batch_size))
    saved, sys.stderr = sys.stderr, terminal
    os.environ["CWOX_PROGRESS_DELAY"] = "0"  # draw from the first batch (tqdm still redraws at most every 0.1 s)
    try:
        hook = []
        for _ in range(20):
            t0 = time.perf_counter()
            for _sl in progress.progress(iter(batches), total=args.n_masks, desc="RISE masks", unit="mask"):
                pass
            hook.append(time.perf_counter() - t0)
        # Every redraw, as in a real run (a batch takes longer than tqdm's 0.1 s redraw interval).
        from tqdm import tqdm

        bar = tqdm(total=args.n_masks, desc="RISE masks", unit="mask", file=sys.stderr, ncols=80, nrows=24)
        t0 = time.perf_counter()
        for sl in batches:
            bar.update(sl.stop - sl.start)
            bar.refresh()
        redraws = time.perf_counter() - t0
        bar.close()
    finally:
        sys.stderr = saved
    terminal.close()
    bar, quiet = statistics.median(times["bar"]), statistics.median(times["quiet"])
    print(f"RISE n_masks={args.n_masks}, chelsea, CPU x{torch.get_num_threads()} threads, {args.reps} runs each")
    print(f"median with bar {bar:.2f} s, without {quiet:.2f} s, ratio {bar / quiet:.3f}")
    print(f"bar drawn: {b'RISE masks' in drawn} ({len(drawn)} bytes on the terminal)")
    print(f"the hook alone over the same {len(batches)} batches (empty body, bar on the terminal): "
          f"median {statistics.median(hook) * 1e3:.2f} ms per explanation")
    print(f"one redraw per batch, {len(batches)} redraws: {redraws * 1e3:.2f} ms per explanation")
    print(f"maps bitwise identical: {torch.equal(maps['bar'], maps['quiet'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
