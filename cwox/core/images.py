"""Reading photos safely: every failure gets a specific reason, every mode becomes RGB.

:func:`load_image` turns any file Pillow can read into an 8-bit RGB image, applying
the EXIF orientation, and raises :class:`ImageError` with a short reason otherwise.
:func:`collect_inputs` expands the command line's inputs (files, folders, list files)
into one ordered list of paths.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Refuse images larger than this many pixels before decoding them (memory guard).
DEFAULT_MAX_PIXELS = 64_000_000

#: Refuse images with a side below this many pixels: the classifier scales every photo
#: to 224 x 224, and a 1 x 1 or 4 x 4 picture becomes a few flat blocks whose top labels
#: are noise (they reached the latent tree as junk documents).
DEFAULT_MIN_SIDE = 8

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})

#: Transparent pixels are composited onto this background colour.
BACKGROUND = (255, 255, 255)


class ImageError(Exception):
    """An input that is not a usable image; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_image(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE
) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image, or raise :class:`ImageError`.

    Handles grayscale, palette (with transparency), CMYK, RGBA/LA (composited onto
    white), 16- and 32-bit integer and float images (rescaled to 0..255), and
    EXIF-rotated photos. Images above ``max_pixels`` or with a side below
    ``min_side`` are refused from their header, before any pixel is decoded.
    """
    p = Path(path)
    link = _link_problem(p)
    if link:
        raise ImageError(path, link)
    if not p.exists():
        raise ImageError(path, "missing: no such file")
    if p.is_dir():
        if p.is_symlink():
            raise ImageError(path, "symbolic link to a folder (folder scans do not follow links; "
                                   "give the folder itself)")
        raise ImageError(path, "is a directory, not an image file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageError(path, f"unreadable: {exc.strerror or exc}") from exc
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(
                        path, f"too large: {w}x{h} = {w * h:,} pixels exceeds the limit {max_pixels:,}"
                    )
                if w == 0 or h == 0:
                    raise ImageError(path, f"degenerate size {w}x{h}")
                if min(w, h) < min_side:
                    raise ImageError(
                        path, f"too small: {w}x{h} pixels, below the minimum side of {min_side} pixels"
                    )
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(path, "not an image (unrecognised format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, f"too large: {exc}") from exc
    except PermissionError as exc:
        raise ImageError(path, "unreadable: permission denied") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc)
        if "truncated" in msg or isinstance(exc, EOFError):
            raise ImageError(path, f"truncated image ({msg or 'unexpected end of file'})") from exc
        raise ImageError(path, f"corrupt image ({msg})") from exc


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB without clipping high-bit-depth data."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I", "F") or mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64)
        if mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            top = 1.0 if hi <= 1.0 and lo >= 0.0 else hi
        else:
            top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(np.nan_to_num(arr) / max(top, 1e-12) * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV: Pillow's conversions are exact enough.
    return im.convert("RGB")


def _link_problem(p: Path) -> str | None:
    """Why the symbolic link ``p`` cannot be followed (None when it is no link or resolves)."""
    if not p.is_symlink():
        return None
    try:
        p.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link points back at itself)"
        if exc.errno == errno.ENOENT:
            return f"dangling symbolic link (its target {os.readlink(p)} does not exist)"
        return f"unreadable symbolic link: {exc.strerror or exc}"
    return None


def _scan_folder(folder: Path) -> Iterator[Path]:
    """The entries of a folder scan, recursively, sorted: image files, and every entry a
    user may have meant as one but that cannot be read as a file — a dangling symbolic
    link, a link loop, a folder named like an image (``x.jpg/``), a link to a folder
    (not followed: a loop would never end). They are kept so that :func:`load_image`
    reports each with its reason instead of the scan dropping it silently."""
    for f in sorted(folder.rglob("*")):
        if f.is_symlink() and _link_problem(f):
            yield f
        elif f.is_symlink() and f.is_dir():
            yield f
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            yield f


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expand files, folders (recursively, image files only, sorted) and list files.

    A list file (``.txt``/``.lst``/``.list``) holds one path per line; blank lines and
    lines starting with ``#`` are skipped; relative paths are taken relative to the
    list file's folder. Paths that do not exist are kept, so that they are reported
    as missing rather than silently dropped; so are the entries of a folder that
    look like images but cannot be read as files (see :func:`_scan_folder`).
    Duplicates are kept once, first place.
    """
    out: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in _scan_folder(p):
                add(str(f))
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line)
                    add(str(q if q.is_absolute() else p.parent / q))
        else:
            add(str(p))
    return out
