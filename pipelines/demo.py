"""``make demo``: explain scikit-image's chelsea photo with the embedded default tree.

Saves the photo, explains it with the library (EfficientNet-Lite0, the embedded
default tree, Grad-CAM, CWOX-2s), writes the report the CLI writes
(``OUT/chelsea/``, ``OUT/index.html`` and the tree's page ``OUT/tree.html``, linked from
the index) and prints where it is. Chelsea is a textbook confusion: tiger cat / Egyptian
cat / tabby (the README says how the default tree cuts it).

    python -m cwox.pipelines.demo [--out demo-out] [--explainer gradcam]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def run_demo(out: str | Path = "demo-out", explainer: str = "gradcam") -> Path:
    """Explain chelsea into ``out`` and return the index page's path."""
    from cwox.online.engine import Engine
    from cwox.online.report import IndexEntry, write_index, write_report
    from cwox.online.tree_page import PAGE_NAME, write_tree_page
    from cwox.store.default_tree import default_tree
    from skimage import data

    from cwox.core.models import load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    photo = out / "chelsea.png"
    Image.fromarray(data.chelsea()).save(photo)
    classifier = load_model()
    tree = default_tree(classifier)
    explanation = Engine(classifier, tree, explainer, "cwox2s").explain(photo)
    report = out / "chelsea"
    write_report(explanation, report)
    for cluster in explanation.clusters:
        print(", ".join(f"{explanation.name_of(c)} {explanation.prob_of(c):.3f}" for c in cluster))
    for warning in explanation.warnings():
        print(f"warning: {warning}")
    page = write_tree_page(tree, out / PAGE_NAME, source="the embedded default tree")
    return write_index([IndexEntry.from_explanation(explanation, report)], out, tree_page=page)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo-out", help="report folder")
    ap.add_argument("--explainer", default="gradcam")
    args = ap.parse_args(argv)
    index = run_demo(args.out, args.explainer)
    print(f"\nreport: {index.resolve()}  (grid: {(Path(args.out) / 'chelsea' / 'grid.png').resolve()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
