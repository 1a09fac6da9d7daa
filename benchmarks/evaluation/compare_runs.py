"""CWOX-2s across several ``cwox evaluate`` runs of the same photos, in one table.

Does the tree matter (``--cluster-source``)?

    python benchmarks/evaluation/compare_runs.py hlta=out-hlta/results.csv \
        none=out-none/results.csv random=out-random/results.csv logits=out-logits/results.csv

Which stage-two layer (``-p gradcam.class_layer=...``)?

    python benchmarks/evaluation/compare_runs.py _blocks.10=a/results.csv _conv_head=b/results.csv

Every run scores the same pairs (the reference tree's ``(c, C_i \\ c)``, whatever source
made the clusters), so CWOX-2s's values pair up by (image, explainer, class) across runs.
The first run may hold more explainers than the others (a joined run): only the
explainers some other run has are printed.
Per explainer and run: CWOX-2s's mean CAUC, CDROP and class sensitivity (Spearman) with
the paired difference to the FIRST run and its Wilcoxon signed-rank p, the share of
pairs where deleting the map's salient pixels raised the contrastive score (CDROP < 0)
and the median ``n_delta``; SWOX (which neither clusters nor stage two touch) is printed
from the first run as the anchor. CAUC compares only between runs with the same modes
(it sums over the pair's smallest ``n_delta`` among the modes scored); the script says so when the
runs' sums cover different pixel counts. Prints markdown.
"""

from __future__ import annotations

import csv
import math
import sys

import numpy as np
from cwox.online.evaluation import wilcoxon_p

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
    p = wilcoxon_p(diff)
    if not math.isfinite(p):
        return text + " (= first run)"
    return text + f" ({diff.mean():+.2e}, p {p:.2g}, n {diff.size})"


def extras(rows, explainer: str, mode: str) -> str:
    """The share of pairs with CDROP < 0 and the median n_delta."""
    cdrop = values(rows, explainer, mode, "cdrop")
    nd = [int(r["n_delta"]) for r in rows if r["explainer"] == explainer and r["mode"] == mode
          and r["metric"] == "cdrop"]
    if not cdrop:
        return "n/a | n/a"
    neg = sum(v < 0 for v in cdrop.values())
    return f"{neg}/{len(cdrop)} | {int(np.median(nd)):,}"


def main(args: list[str]) -> None:
    runs = dict(a.split("=", 1) for a in args)
    rows = {name: load(path) for name, path in runs.items()}
    first = next(iter(rows.values()))
    ref_name = next(iter(rows))
    # the first run's explainers that some other run has too (all of them for one run):
    # a joined reference run may hold explainers the runs compared with it do not
    others = {r["explainer"] for name, rs in rows.items() if name != ref_name for r in rs}
    explainers = [ex for ex in dict.fromkeys(r["explainer"] for r in first) if len(rows) == 1 or ex in others]
    print("| explainer | run | " + " | ".join(f"{m} ({BETTER[m]} better)" for m in METRICS)
          + " | CDROP < 0 | median n_delta |")
    print("|---|---|" + "---|" * (len(METRICS) + 2))
    for ex in explainers:
        if values(first, ex, "swox", "cdrop"):
            print(f"| {ex} | SWOX (from {ref_name}) | "
                  + " | ".join(cell(values(first, ex, "swox", m), None) for m in METRICS)
                  + " | " + extras(first, ex, "swox") + " |")
        for name, rs in rows.items():
            cells = []
            for m in METRICS:
                vals = values(rs, ex, "cwox2s", m)
                base = None if name == ref_name else values(rows[ref_name], ex, "cwox2s", m)
                cells.append(cell(vals, base))
            print(f"| {ex} | CWOX-2s, {name} | " + " | ".join(cells) + " | " + extras(rs, ex, "cwox2s") + " |")
    print()
    print(f"Cells: mean over pairs; in brackets the mean paired difference to {ref_name}, "
          "the Wilcoxon signed-rank p and the number of pairs.")
    summed = {name: {(r["image"], r["explainer"], r["class"]): r["n_summed"] for r in rs
                     if r["mode"] == "cwox2s" and r["metric"] == "cauc"} for name, rs in rows.items()}
    ref = summed[ref_name]
    differ = [name for name, s in summed.items() if any(s.get(k, v) != v for k, v in ref.items())]
    if differ:
        print()
        print(f"CAUC (Eq. 4) sums the contrastive score over each pair's n_summed deleted pixels, and "
              f"{', '.join(differ)} summed over other counts than {ref_name}: a map with more salient "
              "pixels sums more terms, so CAUC does not compare across these runs. Read CDROP (Eq. 5 "
              "divides the drop by log2(1 + n_delta / tau)) and the class sensitivity.")


if __name__ == "__main__":
    main(sys.argv[1:])
