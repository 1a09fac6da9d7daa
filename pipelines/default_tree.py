"""Rebuild the embedded default tree (``cwox/data/default_tree.zarr``) from real photos.

The one command (also ``make default-tree``)::

    make photos && python -m cwox.pipelines.default_tree

It gathers every real photo that installs here (:mod:`cwox.pipelines.photos`: scikit-image,
scikit-learn, foolbox, ai-benchmark, opencv-doc — 273 photos with all of them), runs
the documents pipeline on EfficientNet-Lite0 with 31 seeded augmented views per photo
(8,736 documents, top 5), fits PEM-HLTA with seed 0, and replaces the embedded tree.
Intermediate stores go to ``build/``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cwox.offline.documents import build_documents
from cwox.pipelines.photos import bundled_photos
from cwox.pipelines.trees import fit_tree
from cwox.store.ownership import TREES, remove_store

EMBEDDED = Path(__file__).resolve().parents[1] / "cwox" / "data" / "default_tree.zarr"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="folder for the photos and stores")
    ap.add_argument("--augment", type=int, default=31)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(EMBEDDED))
    args = ap.parse_args(argv)

    build = Path(args.build).resolve()
    photos = [p.resolve() for p in bundled_photos(build / "photos")]
    print(f"{len(photos)} photos")
    docs = build / "default_docs.zarr"
    summary = build_documents(photos, docs, augment=args.augment, seed=args.seed, device="cpu")
    print("\n".join(summary.lines()))
    tmp = build / "default_tree.zarr"
    remove_store(tmp, TREES)  # only ever a tree store cwox made; anything else is refused
    fit = fit_tree(docs, tmp, publish=True, random_state=args.seed)
    print(f"tree {fit.version}: {fit.n_latents} latents, BIC {fit.estimator.bic_:.6g}, {fit.seconds:.1f} s")
    out = Path(args.out)
    remove_store(out, TREES)
    shutil.copytree(tmp, out)
    print(f"embedded tree written to {out}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
