"""``make demo``: explain scikit-image's chelsea photo with the embedded default tree.

Saves the photo, runs ``explain`` on it (EfficientNet-Lite0, the embedded default
tree, Grad-CAM, CWOX-2s) and prints where the report is. Chelsea is a textbook
confusion cluster: tiger cat / Egyptian cat / tabby.

    python -m cwox.pipelines.demo [--out demo-out] [--explainer gradcam]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo-out", help="report folder")
    ap.add_argument("--explainer", default="gradcam")
    args = ap.parse_args(argv)

    from skimage import data

    from cwox.commands.explain import explain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photo = out / "chelsea.png"
    Image.fromarray(data.chelsea()).save(photo)
    try:
        explain.main(
            [str(photo), "--tree", "default", "--explainer", args.explainer, "--mode", "cwox2s",
             "--out", str(out)],
            prog_name="explain",
        )
        code = 0
    except SystemExit as done:  # the command ends with its exit code
        code = done.code
    index = out / "index.html"
    print(f"\nreport: {index.resolve()}  (grid: {(out / 'chelsea' / 'grid.png').resolve()})")
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
