"""Rebuild the embedded default FG-VCE reference bank (``cwox/data/default_bank.zarr``).

The one command (also part of ``make default-tree``)::

    make photos && python -m cwox.pipelines.default_bank

It takes the same real photos the default tree is built from
(:func:`cwox.pipelines.photos.bundled_photos`), each with ``--views`` fixed views
(:func:`cwox.pipelines.photos.fixed_views`: the photo and up to three crops of it),
runs them through EfficientNet-Lite0 in this process and keeps, per class, the first
``--per-class`` views whose top class has probability >= ``--min-confidence`` (no
labels: a confident prediction stands in for the label, FG-VCE Sec. 3.2's
"correctly classified images"), each with its ``--top-m`` candidate features at the
last convolutional layer (FG-VCE Eq. 1-4). Images are named by file (not by the
path on the building machine), so the bank is the same wherever it is rebuilt.

Size: one candidate is a 1280-float vector at ``_conv_head`` (5 KiB, and it hardly
compresses; the layer is the model's), so the bank costs ``views kept x top_m x 5 KiB``.
Measured on the 273 photos (1,092 views, 476 confident, 157 classes): 3 per class with
the top 5 gave 1,915 candidates, 8.6 MiB; 2 per class with the top 2 (the defaults)
give 283 views and 566 candidates, about 2.8 MiB. Crops add classes the whole photos
miss; more views per class add similar views of the same photo, so coverage, not depth,
was kept. The figures of each build are printed. The committed bank, from the 633 photos
of the default tree (2,532 views): 490 views of 284 classes, 980 candidates, 4.4 MiB.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from cwox.offline.reference_bank import bank_from_tensors
from cwox.pipelines.photos import bundled_photos, fixed_views
from cwox.store.default_tree import DEFAULT_BANK
from cwox.store.ownership import REFERENCE_BANK, remove_store
from cwox.store.reference_bank import ReferenceBank, save_reference_bank

from cwox.core.images import ImageError, load_image
from cwox.core.models import DEFAULT_MODEL, load_model

#: Where the pipeline writes the bank: FG-VCE reads it from the same constant.
EMBEDDED_BANK = DEFAULT_BANK

#: Views per photo (the photo and fixed crops), reference views per class, candidates per view.
DEFAULT_VIEWS = 4
DEFAULT_PER_CLASS = 2
DEFAULT_TOP_M = 2
DEFAULT_MIN_CONFIDENCE = 0.5


def _name(path: Path, photo_dir: Path) -> str:
    """A machine-independent name: the file name for photos saved from arrays, else the path
    below ``site-packages`` or ``/usr/share`` (``foolbox/data/...``, ``tuxpaint/stamps/...``)."""
    if path.parent == photo_dir:
        return path.name
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1:])
    if parts[:3] == ("/", "usr", "share"):
        return "/".join(parts[3:])
    return path.name


def build_default_bank(
    build: str | Path = "build",
    *,
    views: int = DEFAULT_VIEWS,
    per_class: int = DEFAULT_PER_CLASS,
    top_m: int = DEFAULT_TOP_M,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    batch_size: int = 32,
) -> tuple[ReferenceBank, list[str]]:
    """The default bank from the default tree's photos; also the photos that failed to load."""
    if not 1 <= views <= 4:
        raise ValueError(f"views must be 1..4 (the photo and up to three fixed crops), got {views}")
    photo_dir = (Path(build) / "photos").resolve()
    classifier = load_model(DEFAULT_MODEL, device="cpu")
    tensors, names, failed = [], [], []
    for path in bundled_photos(photo_dir):
        try:
            image = load_image(path)
        except ImageError as exc:
            failed.append(f"{path}: {exc.reason}")
            continue
        for k, view in enumerate(fixed_views(image)[:views]):
            tensors.append(classifier.preprocess(view))
            names.append(_name(Path(path), photo_dir) + (f"#crop{k}" if k else ""))
    bank = bank_from_tensors(
        classifier, torch.stack(tensors), names=names, per_class=per_class, top_m=top_m,
        min_confidence=min_confidence, batch_size=batch_size,
    )
    bank.attrs.update({"views_per_photo": views, "photos": len(tensors) // views, "views_seen": len(tensors),
                       "built_by": "cwox.pipelines.default_bank"})
    return bank, failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="folder for the photos")
    ap.add_argument("--views", type=int, default=DEFAULT_VIEWS)
    ap.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS)
    ap.add_argument("--top-m", type=int, default=DEFAULT_TOP_M)
    ap.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE)
    ap.add_argument("--out", default=str(EMBEDDED_BANK))
    args = ap.parse_args(argv)

    bank, failed = build_default_bank(args.build, views=args.views, per_class=args.per_class,
                                      top_m=args.top_m, min_confidence=args.min_confidence)
    for line in failed:
        print(f"skipped {line}")
    out = Path(args.out)
    tmp = Path(args.build) / "default_bank.zarr"
    remove_store(tmp, REFERENCE_BANK)  # only ever a bank cwox made; anything else is refused
    save_reference_bank(bank, tmp, group=None)
    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    remove_store(out, REFERENCE_BANK)
    shutil.copytree(tmp, out)
    print(f"default bank: {len(bank.image_paths)} reference views of {bank.attrs['views_seen']} "
          f"({bank.attrs['photos']} photos x {args.views}), {bank.classes.size} classes, "
          f"{len(bank)} candidates, {size / 2**20:.2f} MiB, written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
