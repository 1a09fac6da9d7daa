"""Check that today's code reproduces stored rows of ``results.csv`` (same code path).

    python benchmarks/evaluation/reproduce_rows.py PHOTO_FOLDER skimage_chelsea.png [gradcam]

Scores one photo of ``benchmarks/evaluation/images.txt`` (its path relative to
PHOTO_FOLDER) as the 2026-11-23 run did (``--protocol explain``, the paper's four
modes, CAUC and CDROP, step 64, RISE with 1,000 masks) with the default tree, and
compares every row with the stored one: pairs, modes, ``n_delta`` and ``n_summed``
must be equal, values within 1e-5 (the stored run summed in single-thread Dask
workers; another thread count or batch layout moves the last float digits).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch
from cwox.online.evaluation import EvaluationSetup, evaluate_image
from cwox.store.default_tree import DEFAULT_TREE
from cwox.store.trees import load_tree

from cwox.core.models import load_model

STORED = Path(__file__).resolve().parent / "results.csv"


def main(folder: str, image: str, explainer: str = "gradcam") -> None:
    torch.set_num_threads(1)
    clf = load_model("efficientnet_lite0", device="cpu")
    setup = EvaluationSetup.build(explainers=[explainer], modes=["swox", "cwox1sa", "cwox1sb", "cwox2s"],
                                  metrics=["cauc", "cdrop"], step=64, protocol="explain",
                                  explainer_params={"rise": {"n_masks": 1000}} if explainer == "rise" else None)
    rows = evaluate_image(clf, str(Path(folder) / image), setup.engines(clf, load_tree(DEFAULT_TREE)), setup,
                          name=image)
    with STORED.open(newline="", encoding="utf-8") as fh:
        stored = [r for r in csv.DictReader(fh) if r["image"] == image and r["explainer"] == explainer]
    if len(rows) != len(stored):
        raise SystemExit(f"{len(rows)} rows now, {len(stored)} stored")
    worst = 0.0
    for a, b in zip(rows, stored, strict=True):
        for k in ("mode", "class", "contrast", "metric", "n_delta", "n_summed"):
            if str(a[k]) != b[k]:
                raise SystemExit(f"{k} differs: {a[k]} now, {b[k]} stored ({b['mode']}, {b['class']}, {b['metric']})")
        worst = max(worst, abs(float(a["value"]) - float(b["value"])))
    print(f"{image}, {explainer}: {len(rows)} rows; pairs, modes, n_delta, n_summed equal; "
          f"max |now - stored| = {worst:.2e}")
    if worst > 1e-5:
        raise SystemExit("values differ by more than 1e-5")


if __name__ == "__main__":
    main(*sys.argv[1:])
