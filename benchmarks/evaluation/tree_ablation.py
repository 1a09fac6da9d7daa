"""Does the tree matter? One table from ``cwox evaluate --cluster-source ...`` runs.

    python benchmarks/evaluation/tree_ablation.py hlta=out-hlta/results.csv \
        none=out-none/results.csv random=out-random/results.csv logits=out-logits/results.csv

Every run scores the same pairs (the reference tree's ``(c, C_i \\ c)``, whatever source
made the clusters), so CWOX-2s's values pair up by (image, explainer, class) across
sources. Per explainer and source: CWOX-2s's mean CAUC, CDROP and class-sensitivity
(Spearman) with the paired difference to the ``hlta`` source and its Wilcoxon
signed-rank p; SWOX (which no clustering touches) is printed from the first run as the
anchor. Prints a markdown table.
"""

from __future__ import annotations

import csv
import math
import sys

import numpy as np
from scipy.stats import wilcoxon

METRICS = ("cauc", "cdrop", "spearman")
BETTER = {"cauc": "lower", "cdrop": "higher", "spearman": "lower"}


def load(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if not r["error"]]


def values(rows, explainer: str, mode: str, metric: str) -> dict[tuple[str, str], float]:
    out = {}
    for r in rows:
        if r["explainer"] == explainer and r["mode"] == mode and r["metric"] == metric:
            v = float(r["value"])
            if math.isfinite(v):
                out[(r["image"], r["class"])] = v
    return out


def cell(vals: dict, ref: dict | None) -> str:
    if not vals:
        return "n/a"
    text = f"{np.mean(list(vals.values())):.3e}"
    if ref is None:
        return text
    keys = sorted(set(vals) & set(ref))
    diff = np.array([vals[k] - ref[k] for k in keys])
    if diff.size == 0 or not np.any(diff):
        return text + " (= hlta)"
    return text + f" ({diff.mean():+.2e}, p {wilcoxon(diff).pvalue:.2g}, n {diff.size})"


def main(args: list[str]) -> None:
    runs = dict(a.split("=", 1) for a in args)
    rows = {name: load(path) for name, path in runs.items()}
    first = next(iter(rows.values()))
    explainers = list(dict.fromkeys(r["explainer"] for r in first))
    print("| explainer | clusters from | " + " | ".join(f"CWOX-2s {m} ({BETTER[m]} better)" for m in METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for ex in explainers:
        print(f"| {ex} | SWOX (no clusters) | "
              + " | ".join(cell(values(first, ex, "swox", m), None) for m in METRICS) + " |")
        ref = rows.get("hlta")
        for name, rs in rows.items():
            cells = []
            for m in METRICS:
                vals = values(rs, ex, "cwox2s", m)
                base = None if ref is None or name == "hlta" else values(ref, ex, "cwox2s", m)
                cells.append(cell(vals, base))
            print(f"| {ex} | {name} | " + " | ".join(cells) + " |")
    print()
    print("Cells: mean over pairs; in brackets the mean paired difference to the hlta source, "
          "the Wilcoxon signed-rank p and the number of pairs.")


if __name__ == "__main__":
    main(sys.argv[1:])
