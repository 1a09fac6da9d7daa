"""Drawing an :class:`~cwox.online.explanation.Explanation` as one picture, laid out like CWOX Fig. 3.

The figure reads left to right and top to bottom:

* column one: the photo as the model saw it, and under it the top classes with
  their probabilities, grouped by confusion cluster;
* a row of cluster maps, one per confusion cluster ``C_i`` (CWOX Eq. 1: evidence
  for ``C_i`` over the other clusters), each titled with the cluster's class
  names and its probability ``P(C_i|x) = sum_{c in C_i} P(c|x)`` (Sec. 4.1);
* under each cluster map, that cluster's class maps (Eq. 2 for CWOX-2s: evidence
  for ``c_ij`` over the other classes of ``C_i``), each titled ``name (p=0.38)``.

Modes without a cluster stage (``cluster_maps is None``: SWOX, CWOX-1sA, CWOX-1sB)
keep the grouping by cluster but have no cluster row; each group gets a header
line instead.

Every heatmap is scaled to its own ``[0, max]`` (negative values show as 0) and
drawn over a dimmed, desaturated photo with the opacity growing with the value,
so that pixels without evidence show the photo. A map whose maximum is not
positive is drawn as the bare photo with the words "no evidence (all zero)".

The pixels (photo, overlays, colour bar) are composed in one NumPy canvas and
shown with ``figimage`` at their own resolution; matplotlib only adds the text.
Only its object-oriented API is used, on an explicit Agg canvas: no ``pyplot``
state, no global backend switch (so importing or calling this never changes the
backend of a caller's interactive session), nothing left open after a call.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from cwox.online.explanation import Explanation

#: Heatmap colours; perceptually uniform and distinct from the page's own colours.
DEFAULT_CMAP = "inferno"
#: Largest opacity of a heatmap over the photo (reached at the map's maximum).
MAX_ALPHA = 0.8
#: How bright the photo stays under the heatmaps (1 = unchanged).
PHOTO_BRIGHTNESS = 0.6
#: How much colour the photo keeps (0 = gray, 1 = unchanged).
PHOTO_SATURATION = 0.35

#: Label shown on a map whose maximum is 0.
ALL_ZERO_NOTE = "no evidence (all zero)"

_MODE_TEXT = {
    "cwox2s": "CWOX-2s: cluster maps contrast each confusion cluster with the others (Eq. 1); "
    "class maps contrast each class with the rest of its cluster (Eq. 2)",
    "cwox1sa": "CWOX-1sA: each class map is ReLU[H_c - H_(C\\c)], the class against all other top classes",
    "cwox1sb": "CWOX-1sB: each class map is H_c times the inverse of H_(C\\c) (SCOUT)",
    "swox": "SWOX: each class map is the base explainer's saliency map for that class alone",
}

# Layout, in inches (the figure is drawn at ``dpi`` pixels per inch).
_TITLE_H = 0.56  # room for a three-line title above a panel
_HEADER_H = 0.42  # group header line (modes without cluster maps)
_COL_GAP = 0.10
_BLOCK_GAP = 0.34
_MARGIN = 0.18
_TOP_H = 0.42  # figure title
_CAPTION_H = 0.62  # caption and colour bar, at least
_CAPTION_LINE_H = 0.145
_LINE_H = 0.17  # one line of the top-class list
_BAND_GAP = 0.2
_MAX_LIST_LINES = 36


@dataclass(frozen=True)
class ScaledMap:
    """A heatmap scaled to ``[0, 1]`` by its own maximum.

    Attributes:
        values: ``H x W`` float32 in ``[0, 1]``; non-finite and negative values are 0.
        peak: the maximum used for scaling (``nan`` when the map has no finite value).
        note: why the map is shown as it is (all zero, non-finite values), or ``None``.
    """

    values: np.ndarray
    peak: float
    note: str | None


def scale_map(heat: np.ndarray) -> ScaledMap:
    """Scale one map to its own ``[0, max]``; never fails on zero, negative or NaN maps."""
    m = np.asarray(heat, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"a heatmap must be 2-D (H x W), got shape {m.shape}")
    finite = np.isfinite(m)
    if not finite.any():
        return ScaledMap(np.zeros(m.shape, np.float32), float("nan"), "no finite values")
    m = np.where(finite, m, 0.0)
    peak = float(m.max())
    if peak <= 0.0:
        note = ALL_ZERO_NOTE if not m.any() else f"no positive evidence (max {peak:.3g})"
        return ScaledMap(np.zeros(m.shape, np.float32), peak, note)
    values = np.clip(m / peak, 0.0, 1.0).astype(np.float32)
    note = None if finite.all() else "non-finite values shown as 0"
    return ScaledMap(values, peak, note)


def dimmed_photo(image: np.ndarray) -> np.ndarray:
    """The photo as a dimmed, mostly gray float ``H x W x 3`` background in ``[0, 1]``."""
    rgb = image.astype(np.float32) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    mixed = PHOTO_SATURATION * rgb + (1.0 - PHOTO_SATURATION) * gray[..., None]
    return PHOTO_BRIGHTNESS * mixed


def overlay(
    background: np.ndarray, scaled: np.ndarray, cmap_name: str = DEFAULT_CMAP
) -> np.ndarray:
    """Blend a ``[0, 1]`` map over a float background; opacity ``MAX_ALPHA * sqrt(value)``."""
    from matplotlib import colormaps

    colours = colormaps[cmap_name](scaled)[..., :3].astype(np.float32)
    alpha = (MAX_ALPHA * np.sqrt(scaled))[..., None]
    return (1.0 - alpha) * background + alpha * colours


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check the photo and return it as ``H x W x 3`` uint8 (gray is repeated, alpha dropped)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"the image must be H x W x 3 (or H x W), got shape {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {img.shape})")
    img = img[..., :3]
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1:
            return np.round(img * 255).astype(np.uint8)
        raise ValueError(f"the image must be uint8 (or float in [0, 1]), got {img.dtype}")
    return img


def check_maps(explanation: Explanation) -> None:
    """Raise ``ValueError`` if maps and photo do not align pixel for pixel."""
    h, w = np.asarray(explanation.image).shape[:2]
    named = [("class_maps", explanation.class_maps)]
    if explanation.cluster_maps is not None:
        named.append(("cluster_maps", explanation.cluster_maps))
    for name, maps in named:
        shape = np.asarray(maps).shape
        if len(shape) != 3 or shape[1:] != (h, w):
            raise ValueError(f"{name} must be n x {h} x {w} to match the image, got shape {shape}")


def panel_letter(i: int) -> str:
    """Spreadsheet-style letters for panel labels: a, b, ..., z, aa, ab, ..."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(ord("a") + r) + out
    return out


def format_prob(p: float) -> str:
    """``0.38``; small values in scientific notation; non-finite as ``n/a``."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2f}" if p >= 0.01 or p == 0 else f"{p:.1e}"


def wrap(text: str, width: int, max_lines: int = 3) -> str:
    """Wrap long labels (class names can be long) onto at most ``max_lines`` lines."""
    lines = textwrap.wrap(
        text, width=max(width, 8), max_lines=max_lines, placeholder=" …", break_on_hyphens=False
    )
    return "\n".join(lines) if lines else ""


@dataclass(frozen=True)
class _Block:
    """Consecutive columns of one cluster; a cluster wider than a band is split."""

    cluster: int
    members: tuple[int, ...]  # indices into explanation.classes
    first: bool  # the first block of its cluster carries the cluster map


def _blocks(explanation: Explanation, max_columns: int) -> list[list[_Block]]:
    """Pack the clusters, in order, into bands of at most ``max_columns`` class columns."""
    index = {c: k for k, c in enumerate(explanation.classes)}
    blocks: list[_Block] = []
    for i, cluster in enumerate(explanation.clusters):
        members = [index[c] for c in cluster]
        for start in range(0, len(members), max_columns):
            blocks.append(_Block(i, tuple(members[start : start + max_columns]), start == 0))
    bands: list[list[_Block]] = [[]]
    used = 0
    for block in blocks:
        if bands[-1] and used + len(block.members) > max_columns:
            bands.append([])
            used = 0
        bands[-1].append(block)
        used += len(block.members)
    return bands


def _top_class_lines(explanation: Explanation) -> list[str]:
    lines: list[str] = []
    for i, cluster in enumerate(explanation.clusters):
        lines.append(f"({panel_letter(i)}) p={format_prob(explanation.cluster_prob(i))}")
        for c in cluster:
            name = textwrap.shorten(explanation.name_of(c), width=26, placeholder="…")
            lines.append(f"   {name}  {format_prob(explanation.prob_of(c))}")
    if len(lines) > _MAX_LIST_LINES:
        lines = lines[: _MAX_LIST_LINES - 1] + [f"… ({len(lines) - _MAX_LIST_LINES + 1} more lines)"]
    return lines


def draw_grid(
    explanation: Explanation,
    path: str | Path | IO[bytes],
    *,
    dpi: int = 100,
    panel_inches: float = 2.3,
    max_columns: int = 8,
    cmap: str = DEFAULT_CMAP,
) -> None:
    """Draw the Fig. 3 style grid of ``explanation`` into the PNG file ``path``.

    Args:
        explanation: the maps to draw; maps must have the photo's height and width.
        path: the PNG file to write, or a binary file object.
        dpi: pixels per inch; with the defaults a 5-class report is about 1500 px wide.
        panel_inches: width of one heatmap panel.
        max_columns: class maps per band; more classes wrap onto further bands,
            clusters kept whole where they fit.
        cmap: a matplotlib colormap name for the heatmaps.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    if max_columns < 1:
        raise ValueError(f"max_columns must be at least 1, got {max_columns}")
    if cmap not in colormaps:
        raise ValueError(f"unknown matplotlib colormap {cmap!r}")
    image = as_rgb_uint8(explanation.image)
    check_maps(explanation)
    if not explanation.classes:
        raise ValueError("the explanation has no classes to draw")

    layout = _layout(explanation, panel_inches, max_columns)
    panel_w, panel_h = panel_inches, layout.panel_h
    has_clusters = explanation.cluster_maps is not None
    fig_w, fig_h = layout.width, layout.height
    width_px, height_px = round(fig_w * dpi), round(fig_h * dpi)
    panel_px = (round(panel_w * dpi), round(panel_h * dpi))  # (width, height)

    # All pixels go into one RGB canvas, shown with ``figimage`` at its own resolution;
    # only the text is left to matplotlib. One image instead of an axes per panel keeps
    # a report well under a second.
    canvas = np.ones((height_px, width_px, 3), np.float32)
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)

    def text(x: float, y: float, s: str, **kwargs) -> None:
        """Text at ``x`` inches from the left and ``y`` inches from the top."""
        fig.text(x / fig_w, 1.0 - y / fig_h, s, **kwargs)

    def paste(rgb: np.ndarray, x: float, y: float) -> None:
        """Put a panel-sized float image with its top-left corner at ``(x, y)`` inches."""
        col, row = round(x * dpi), round(y * dpi)
        canvas[row : row + rgb.shape[0], col : col + rgb.shape[1]] = rgb

    photo_px = np.asarray(Image.fromarray(image).resize(panel_px, Image.Resampling.BILINEAR))
    background = dimmed_photo(photo_px)

    def heat_panel(heat: np.ndarray, x: float, y: float, title: str) -> None:
        """A heatmap panel with its title above; ``(x, y)`` is the panel's top-left, inches."""
        scaled = scale_map(heat)
        values = Image.fromarray(scaled.values, mode="F").resize(panel_px, Image.Resampling.BILINEAR)
        paste(np.clip(overlay(background, np.clip(np.asarray(values), 0, 1), cmap), 0, 1), x, y)
        text(x + panel_w / 2, y - 0.04, title, ha="center", va="bottom", fontsize=9)
        if scaled.note is not None:
            text(
                x + panel_w / 2, y + panel_h / 2, wrap(scaled.note, 28), ha="center", va="center",
                fontsize=8, color="white",
                bbox={"boxstyle": "round", "facecolor": "black", "alpha": 0.6, "edgecolor": "none"},
            )
        if scaled.note != ALL_ZERO_NOTE and math.isfinite(scaled.peak):
            text(x + 0.04, y + panel_h - 0.04, f"max {scaled.peak:.3g}", ha="left", va="bottom",
                 fontsize=7, color="white")

    chars_per_panel = int(panel_w * 72 / (9 * 0.55))
    name = Path(explanation.image_path).name or explanation.image_path
    title = f"{explanation.mode} / {explanation.explainer} — {name}"
    text(fig_w / 2, 0.22, wrap(title, int(fig_w * 72 / (11 * 0.6)), 1), ha="center", va="center",
         fontsize=11, weight="bold")

    # Column one: the photo and the top classes grouped by cluster.
    y0 = _TOP_H
    paste(photo_px.astype(np.float32) / 255.0, _MARGIN, y0 + _TITLE_H)
    text(_MARGIN + panel_w / 2, y0 + _TITLE_H - 0.04, wrap(f"input: {name}", chars_per_panel, 2),
         ha="center", va="bottom", fontsize=9)
    text(_MARGIN, y0 + _TITLE_H + panel_h + 0.12, "\n".join(layout.list_lines), ha="left", va="top",
         fontsize=8, family="monospace", linespacing=1.25)

    # The bands of cluster and class maps.
    y = y0
    for band, height in zip(layout.bands, layout.band_heights, strict=True):
        x = _MARGIN + panel_w + _BLOCK_GAP
        for block in band:
            n = len(block.members)
            block_w = n * panel_w + (n - 1) * _COL_GAP
            i = block.cluster
            names = "; ".join(explanation.name_of(c) for c in explanation.clusters[i])
            head = f"({panel_letter(i)}) p={format_prob(explanation.cluster_prob(i))}"
            if not block.first:
                head += " (cont.)"
            head_chars = int(block_w * 72 / (9 * 0.55))
            if has_clusters:
                if block.first:  # the cluster map, centred over its class maps (Eq. 1)
                    heat_panel(explanation.cluster_maps[i], x + (block_w - panel_w) / 2,
                               y + _TITLE_H, wrap(f"{head}: {names}", head_chars))
                class_top = y + _TITLE_H + panel_h
            else:  # no cluster stage: a header line over the cluster's class maps
                text(x + block_w / 2, y + _HEADER_H - 0.1, wrap(f"cluster {head}", head_chars, 1),
                     ha="center", va="bottom", fontsize=9, weight="bold")
                row = round((y + _HEADER_H - 0.06) * dpi)
                canvas[row : row + 2, round(x * dpi) : round((x + block_w) * dpi)] = 0.5
                class_top = y + _HEADER_H
            for j, k in enumerate(block.members):  # the class maps (Eq. 2)
                sub = explanation.clusters[i].index(explanation.classes[k]) + 1
                label = (
                    f"({panel_letter(i)}.{sub}) {explanation.class_names[k]} "
                    f"(p={format_prob(explanation.probs[k])})"
                )
                heat_panel(explanation.class_maps[k], x + j * (panel_w + _COL_GAP),
                           class_top + _TITLE_H, wrap(label, chars_per_panel))
            x += block_w + _BLOCK_GAP
        y += height + _BAND_GAP

    # Colour bar and caption.
    cap_y = fig_h - layout.caption_h
    bar_w, bar_h = round(1.6 * dpi), round(0.14 * dpi)
    gradient = colormaps[cmap](np.linspace(0.0, 1.0, bar_w))[:, :3].astype(np.float32)
    bar = np.zeros((bar_h, bar_w, 3), np.float32)  # black frame
    bar[1:-1, 1:-1] = gradient[None, 1:-1]
    paste(bar, _MARGIN, cap_y + 0.12)
    text(_MARGIN, cap_y + 0.3, "0", ha="left", va="top", fontsize=7)
    text(_MARGIN + 1.6, cap_y + 0.3, "max", ha="right", va="top", fontsize=7)
    text(_MARGIN + 1.8, cap_y + 0.1, layout.caption, ha="left", va="top", fontsize=8, color="0.25")

    rgba = np.empty((height_px, width_px, 4), np.uint8)  # RGBA uint8: matplotlib's fast path
    np.multiply(canvas, 255, out=canvas)
    np.round(canvas, out=canvas)
    rgba[..., :3] = canvas
    rgba[..., 3] = 255
    fig.figimage(rgba, 0, 0, origin="upper")
    with warnings.catch_warnings():
        # Scripts missing from the bundled fonts (e.g. CJK names) show as boxes in the
        # PNG; the JSON and the HTML index keep the real text, so do not warn per image.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        fig.canvas.draw()
    # Saved by Pillow as RGB at a moderate compression level: a third of the time of
    # matplotlib's RGBA level-6 PNG, for files about 10% larger.
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    Image.fromarray(pixels).save(path, format="png", compress_level=3, dpi=(dpi, dpi))
    fig.clear()


@dataclass(frozen=True)
class _Layout:
    """Sizes in inches of one grid figure."""

    bands: list[list[_Block]]
    band_heights: list[float]
    list_lines: list[str]
    caption: str
    caption_h: float
    panel_h: float
    width: float
    height: float


def _caption(explanation: Explanation, width: float) -> str:
    """What the maps are (the mode's formula) and how they are scaled, wrapped to ``width`` inches."""
    mode_text = _MODE_TEXT.get(explanation.mode, f"mode {explanation.mode}")
    if explanation.mode == "cwox2s" and len(explanation.clusters) == 1:
        mode_text = (
            "CWOX-2s with one confusion cluster: the cluster map is its plain saliency map "
            "(Eq. 1, I = 1); class maps contrast each class with the rest of the cluster (Eq. 2)"
        )
    text = (
        mode_text
        + f"; base explainer {explanation.explainer}. Each heatmap is scaled to its own [0, max]"
        " (its max is printed in its corner; negative values show as 0)."
    )
    return wrap(text, int(width * 72 / (8 * 0.55)), max_lines=8)


def _layout(explanation: Explanation, panel_inches: float, max_columns: int) -> _Layout:
    h, w = np.asarray(explanation.image).shape[:2]
    panel_h = panel_inches * h / w
    bands = _blocks(explanation, max_columns)
    list_lines = _top_class_lines(explanation)
    if explanation.cluster_maps is not None:
        band_h = 2 * (_TITLE_H + panel_h)  # cluster row, then class row
    else:
        band_h = _HEADER_H + _TITLE_H + panel_h  # group header, then class row
    photo_col_h = _TITLE_H + panel_h + 0.12 + _LINE_H * len(list_lines)
    heights = [band_h] * len(bands)
    heights[0] = max(band_h, photo_col_h)

    def band_width(band: list[_Block]) -> float:
        cols = sum(len(b.members) for b in band)
        return cols * panel_inches + (cols - len(band)) * _COL_GAP + (len(band) - 1) * _BLOCK_GAP

    width = _MARGIN + panel_inches + _BLOCK_GAP + max(band_width(b) for b in bands) + _MARGIN
    caption = _caption(explanation, width - _MARGIN - 2.0)
    caption_h = max(_CAPTION_H, 0.2 + _CAPTION_LINE_H * (caption.count("\n") + 1))
    height = _TOP_H + sum(heights) + _BAND_GAP * (len(bands) - 1) + caption_h
    return _Layout(bands, heights, list_lines, caption, caption_h, panel_h, width, height)


def rendered_size(
    explanation: Explanation, *, dpi: int = 100, panel_inches: float = 2.3, max_columns: int = 8
) -> tuple[int, int]:
    """Predicted ``(width, height)`` in pixels of :func:`draw_grid`'s PNG."""
    layout = _layout(explanation, panel_inches, max_columns)
    return round(layout.width * dpi), round(layout.height * dpi)
