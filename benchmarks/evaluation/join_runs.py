"""Join the rows of several ``cwox evaluate`` runs of the same photos into one results.csv and summary.md.

    python benchmarks/evaluation/join_runs.py OUT_DIR gradcam-run/results.csv fgvce-run/results.csv

Each explainer becomes a column of the summary's tables (as one ``cwox evaluate
--explainers a,b`` run would write them); the rows are copied unchanged, in the order
given. Refuses to write into a folder that already holds a results.csv or summary.md.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from cwox.online.evaluation import summarize, write_results_csv


def main(out: str, *paths: str) -> None:
    target = Path(out)
    for name in ("results.csv", "summary.md"):
        if (target / name).exists():
            raise SystemExit(f"{target / name} exists: choose an empty folder")
    rows: list[dict[str, str]] = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as fh:
            rows += list(csv.DictReader(fh))
    write_results_csv(rows, target / "results.csv")
    (target / "summary.md").write_text(summarize(rows) + "\n", encoding="utf-8")
    print(f"{len(rows)} rows from {len(paths)} runs -> {target}/results.csv, summary.md")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], *sys.argv[2:])
