"""Join the rows of several ``cwox evaluate`` runs of the same photos into one results.csv and summary.md.

    python benchmarks/evaluation/join_runs.py OUT_DIR gradcam-run/results.csv fgvce-run/results.csv
    python benchmarks/evaluation/join_runs.py --only cce_20/images.txt OUT_DIR a/results.csv b/results.csv

Each explainer becomes a column of the summary's tables (as one ``cwox evaluate
--explainers a,b`` run would write them); the rows are copied unchanged, in the order
given; ``--only LIST`` keeps the rows of the photos named in LIST (a photo list as
``cwox evaluate`` reads it), so runs over more photos can be compared on a subset's
pairs. Refuses to write into a folder that already holds a results.csv or summary.md.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from cwox.online.evaluation import summarize, write_results_csv


def main(out: str, *paths: str, only: str | None = None) -> None:
    target = Path(out)
    keep = None if only is None else {ln.strip() for ln in Path(only).read_text().splitlines() if ln.strip()}
    for name in ("results.csv", "summary.md"):
        if (target / name).exists():
            raise SystemExit(f"{target / name} exists: choose an empty folder")
    rows: list[dict[str, str]] = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as fh:
            rows += [r for r in csv.DictReader(fh) if keep is None or r["image"] in keep]
    write_results_csv(rows, target / "results.csv")
    (target / "summary.md").write_text(summarize(rows) + "\n", encoding="utf-8")
    print(f"{len(rows)} rows from {len(paths)} runs -> {target}/results.csv, summary.md")


if __name__ == "__main__":
    args = sys.argv[1:]
    only = None
    if args[:1] == ["--only"] and len(args) > 1:
        only, args = args[1], args[2:]
    if len(args) < 2:
        raise SystemExit(__doc__)
    main(args[0], *args[1:], only=only)
