"""Wilcoxon signed-rank p of CWOX-2s against each baseline (Finer-CAM too), paired by (image, class).

    python benchmarks/evaluation/wilcoxon.py benchmarks/evaluation/results.csv

Prints the markdown table appended to summary.md.
"""

from __future__ import annotations

import csv
import sys

import numpy as np
from scipy.stats import wilcoxon

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
                if diff.size == 0 or not np.any(diff):
                    continue
                print(f"| {ex} | {metric} | {base} | {wilcoxon(diff).pvalue:.2g} |")


if __name__ == "__main__":
    main(sys.argv[1])
