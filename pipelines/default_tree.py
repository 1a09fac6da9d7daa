"""Rebuild the embedded default tree (``cwox/data/default_tree.zarr``) from real photos.

The one command (also ``make default-tree``, which first installs the photo packages)::

    make photos && python -m cwox.pipelines.default_tree

It gathers every real photograph that installs here (:mod:`cwox.pipelines.photos`:
scikit-image, scikit-learn, foolbox, ai-benchmark, opencv-doc, Tux Paint's photographic
stamps and the photographic desktop backgrounds — 633 photos with all of them), runs
the documents pipeline on EfficientNet-Lite0 with 15 seeded augmented views per photo
and the reference's document rule (top labels up to cumulative probability 0.95, no
cap; one-label documents left out of the corpus: :meth:`cwox.core.topk.TopKRule.reference`),
fits PEM-HLTA with seed 0, prints the tree-quality report on a held-out split by photo,
and replaces the embedded tree (fitted on every document). Intermediate stores go to
``build/``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cwox.offline.documents import build_documents
from cwox.pipelines.photos import bundled_photos
from cwox.pipelines.trees import fit_tree, quality_report

from cwox.core.topk import TopKRule

EMBEDDED = Path(__file__).resolve().parents[1] / "cwox" / "data" / "default_tree.zarr"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="folder for the photos and stores")
    ap.add_argument("--augment", type=int, default=15, help="extra seeded random views per photo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(EMBEDDED))
    ap.add_argument("--documents-only", action="store_true", help="stop after the documents store")
    args = ap.parse_args(argv)

    build = Path(args.build).resolve()
    photos = [p.resolve() for p in bundled_photos(build / "photos")]
    print(f"{len(photos)} photos")
    docs = build / "default_docs.zarr"
    summary = build_documents(photos, docs, augment=args.augment, seed=args.seed, device="cpu",
                              rule=TopKRule.reference())
    print("\n".join(summary.lines()))
    if args.documents_only:
        return 0 if summary.ok else 1
    print("tree quality on a held-out split by photo (fit on the rest):")
    for line in quality_report(docs, random_state=args.seed).lines():
        print(f"  {line}")
    tmp = build / "default_tree.zarr"
    shutil.rmtree(tmp, ignore_errors=True)
    fit = fit_tree(docs, tmp, publish=True, random_state=args.seed)
    print(f"tree {fit.version}: {fit.n_latents} latents, BIC {fit.estimator.bic_:.6g}, {fit.seconds:.1f} s")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(tmp, out)
    print(f"embedded tree written to {out}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
