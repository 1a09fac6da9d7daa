"""Documents pipeline throughput against a plain single-process batched torch loop.

Both sides do the same work on the same files: decode each photo, make its views
(``--augment``), classify in batches, keep the top 5. Measured in one run:

* ``plain``: one Python process, torch using every core, a loop over batches; it loads
  the model with :func:`cwox.core.models.load_model`, which sets glibc's allocator as
  :mod:`cwox.core.devices` explains; the same loop is also timed in a child process that
  leaves the allocator at glibc's defaults (``CWOX_MALLOC_TUNING=0``), to show that gain;
* ``pipeline (cold)``: :func:`cwox.offline.documents.build_documents` end to end, starting
  its LocalCluster and loading the model in each worker;
* ``pipeline (warm)``: the same on an already running cluster (how a nightly job on a
  standing cluster sees it).

The ratios are pipeline rate / plain rate (goal: at least 0.9). Peak resident memory
is printed for this process and for the largest child (a Dask worker).

    python benchmarks/bench_documents.py [--copies 16] [--augment 3] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cwox.offline.documents import build_documents, dask_client  # noqa: E402
from cwox.offline.worker import _view_tensor  # noqa: E402
from cwox.store.documents import open_documents  # noqa: E402

from cwox.core.batching import batched_forward  # noqa: E402
from cwox.core.devices import DEFAULT_BATCH_SIZE, cpu_count  # noqa: E402
from cwox.core.images import collect_inputs, load_image  # noqa: E402
from cwox.core.models import load_model  # noqa: E402
from cwox.core.topk import TopKRule  # noqa: E402


def make_photos(folder: Path, copies: int) -> list[str]:
    from skimage import data
    from sklearn.datasets import load_sample_image

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket(),
              load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    for c in range(copies):
        for i, arr in enumerate(photos):
            Image.fromarray(arr).save(folder / f"p{i}_{c:03d}.jpg", quality=92)
    return collect_inputs([folder])


def plain_loop(paths: list[str], augment: int, seed: int, batch_size: int) -> tuple[float, np.ndarray]:
    """The baseline: the same decode, views and top-5, in one process, batch by batch."""
    torch.set_num_threads(cpu_count())
    t0 = time.perf_counter()
    clf = load_model(device="cpu")
    rule = TopKRule(k=5)
    views = 1 + augment
    labels = []
    pending: list[torch.Tensor] = []

    def flush():
        p = batched_forward(clf.probabilities, torch.stack(pending), batch_size)
        labels.append(rule.apply(p)[0].numpy())
        pending.clear()

    for i, path in enumerate(paths):
        image = load_image(path)
        for v in range(views):
            pending.append(_view_tensor(clf, image, v, seed, i * views + v))
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return time.perf_counter() - t0, np.concatenate(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=16, help="copies of each of the 6 photos")
    ap.add_argument("--augment", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE["cpu"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain-only", metavar="FOLDER", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_only:  # child process of the untuned-allocator baseline
        t, labels = plain_loop(collect_inputs([args.plain_only]), args.augment, args.seed, args.batch_size)
        print(json.dumps({"seconds": t, "labels": labels.tolist()}))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_docs_"))
    try:
        (tmp / "photos").mkdir()
        paths = make_photos(tmp / "photos", args.copies)
        n_docs = len(paths) * (1 + args.augment)
        print(f"{len(paths)} photos x {1 + args.augment} views = {n_docs} documents; "
              f"{cpu_count()} cores; {platform.processor() or platform.machine()}")

        t_plain, plain_labels = plain_loop(paths, args.augment, args.seed, args.batch_size)
        # the same loop in a process where cwox leaves glibc's allocator at its defaults
        child = subprocess.run(
            [sys.executable, __file__, "--plain-only", str(tmp / "photos"), "--augment", str(args.augment),
             "--seed", str(args.seed), "--batch-size", str(args.batch_size)],
            env={**os.environ, "CWOX_MALLOC_TUNING": "0"}, capture_output=True, text=True, check=True,
        )
        untuned = json.loads(child.stdout.strip().splitlines()[-1])
        t_untuned = untuned["seconds"]
        common = dict(augment=args.augment, seed=args.seed, batch_size=args.batch_size,
                      progress=False, device="cpu", chunk_size=64)

        t0 = time.perf_counter()
        cold = build_documents(paths, tmp / "cold.zarr", **common)
        t_cold = time.perf_counter() - t0

        with dask_client() as client:
            build_documents(paths[:6], tmp / "warmup.zarr", client=client, **common)  # load models
            t0 = time.perf_counter()
            build_documents(paths, tmp / "warm.zarr", client=client, **common)
            t_warm = time.perf_counter() - t0

        same = np.array_equal(open_documents(tmp / "cold.zarr").labels(), plain_labels)
        peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rate = {k: n_docs / t for k, t in (("plain", t_plain), ("cold", t_cold), ("warm", t_warm),
                                            ("untuned", t_untuned))}
        print(f"plain loop, glibc malloc defaults  {t_untuned:7.2f} s  {rate['untuned']:7.1f} docs/s  "
              f"(same labels: {np.array_equal(np.asarray(untuned['labels']), plain_labels)})")
        print(f"plain loop        {t_plain:7.2f} s  {rate['plain']:7.1f} docs/s  "
              f"({rate['plain'] / rate['untuned']:.2f}x the untuned loop)")
        print(f"pipeline (cold)   {t_cold:7.2f} s  {rate['cold']:7.1f} docs/s  ratio {rate['cold'] / rate['plain']:.2f}")
        print(f"pipeline (warm)   {t_warm:7.2f} s  {rate['warm']:7.1f} docs/s  ratio {rate['warm'] / rate['plain']:.2f}")
        print(f"same top-5 labels as the plain loop: {same}; failures: {len(cold.failed_images)}")
        print(f"peak RSS: this process {peak_self:.0f} MiB, largest worker {peak_child:.0f} MiB")
        print("| documents | plain, malloc defaults, docs/s | plain docs/s | pipeline cold docs/s (ratio) | "
              "pipeline warm docs/s (ratio) | peak RSS main / worker |")
        print(f"| {n_docs} | {rate['untuned']:.1f} | {rate['plain']:.1f} | {rate['cold']:.1f} ({rate['cold'] / rate['plain']:.2f}) | "
              f"{rate['warm']:.1f} ({rate['warm'] / rate['plain']:.2f}) | {peak_self:.0f} / {peak_child:.0f} MiB |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
