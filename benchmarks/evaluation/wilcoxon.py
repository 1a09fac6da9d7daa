"""Wilcoxon signed-rank p of CWOX-2s against each baseline (Finer-CAM too), paired by (image, class).

    python benchmarks/evaluation/wilcoxon.py benchmarks/evaluation/results.csv

Prints a markdown table of p-values. ``cwox evaluate``'s own summary.md carries the same
p (:func:`cwox.online.evaluation.wilcoxon_p`) in its paired-differences table; this script
reads a results.csv written before it did.
"""

from __future__ import annotations

import csv
import sys

import numpy as np
from cwox.online.evaluation import wilcoxon_p

BASELINES = ("swox", "cwox1sa", "cwox1sb", "finercam")


def values(rows: list[dict[str, str]], explainer: str, mode: str, metric: str) -> dict[tuple[str, str], float]:
    """``{(image, class): value}`` of one explainer, mode and metric."""
    return {
        (r["image"], r["class"]): float(r["value"])
        for r in rows
        if r["explainer"] == explainer and r["mode"] == mode and r["metric"] == metric and not r["error"]
        and np.isfinite(float(r["value"]))
    }


def main(path: str) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    print("| explainer | metric | baseline | Wilcoxon signed-rank p (CWOX-2s vs baseline, paired) |")
    print("|---|---|---|---|")
    for ex in dict.fromkeys(r["explainer"] for r in rows if not r["error"]):
        for metric in ("cauc", "cdrop", "spearman", "ssim"):
            ours = values(rows, ex, "cwox2s", metric)
            for base in BASELINES:
                theirs = values(rows, ex, base, metric)
                diff = np.array([ours[k] - theirs[k] for k in sorted(ours) if k in theirs])
                p = wilcoxon_p(diff)
                if np.isfinite(p):
                    print(f"| {ex} | {metric} | {base} | {p:.2g} |")


if __name__ == "__main__":
    main(sys.argv[1])
