"""The HTML index opens in a real browser (headless Chromium) and shows the heatmap grids.

Needs the Debian package ``chromium`` (``/usr/bin/chromium``). Without it the test
is skipped locally, but fails when the environment variable ``CI`` is set: CI
installs Chromium and must not skip this silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import unquote

import numpy as np
import pytest
from cwox.online.explanation import Explanation
from cwox.online.report import IndexEntry, write_index, write_report
from PIL import Image
from skimage import data

CHROMIUM = "/usr/bin/chromium"
WINDOW = (1400, 2000)


def chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing on CI: install the Debian package 'chromium'")
        pytest.skip(f"{CHROMIUM} is not installed")
    return path


def blob(cy: float, cx: float, sigma: float, size: int = 224) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def explanation(photo: np.ndarray, name: str, seed: int) -> Explanation:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(40, 184, size=(7, 2))
    maps = np.stack([blob(cy, cx, 30) for cy, cx in centres])
    return Explanation(
        image_path=name,
        image=photo,
        classes=[281, 282, 285, 287, 292],
        class_names=["tabby, tabby cat", "tiger cat", "Egyptian cat", "lynx, catamount", "tiger"],
        probs=[0.4, 0.3, 0.15, 0.1, 0.05],
        clusters=[[281, 282], [285, 287, 292]],
        mode="cwox2s",
        explainer="rise",
        cluster_maps=maps[:2],
        class_maps=maps[2:],
    )


def warm_mask(rgb: np.ndarray) -> np.ndarray:
    """Bright yellow-orange pixels: the top of 'inferno'; the page itself has none."""
    f = rgb[..., :3].astype(np.float32) / 255.0
    return (f[..., 0] > 0.8) & (f[..., 1] > 0.3) & (f[..., 2] < 0.45)


class _Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src.append(dict(attrs)["src"])


def test_index_renders_grids_in_chromium(tmp_path):
    browser = chromium()
    chelsea = np.ascontiguousarray(data.chelsea()[50:274, 100:324])
    gray = np.repeat(data.camera()[::2, ::2][:224, :224, None], 3, axis=2)  # no orange in it
    site = tmp_path / "site"
    entries, grids = [], []
    for i, (photo, name) in enumerate([(gray, "camera & <co>.png"), (chelsea, "chelsea.png")]):
        e = explanation(photo, name, seed=i)
        folder = site / "reports" / f"{i} {name}"
        grids.append(write_report(e, folder)["grid"])
        entries.append(IndexEntry.from_explanation(e, folder))
    entries.append(IndexEntry.failed("broken.jpg", "cannot identify image file"))
    index = write_index(entries, site)

    # Every <img src> resolves to an existing file next to the page.
    parser = _Sources()
    parser.feed(index.read_text(encoding="utf-8"))
    assert len(parser.src) == 2
    for src in parser.src:
        assert (index.parent / unquote(src)).is_file(), src

    shot = tmp_path / "shot.png"
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars", index.resolve().as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert shot.is_file(), f"no screenshot (rc={result.returncode}): {result.stderr[-2000:]}"

    with Image.open(shot) as im:
        page = np.asarray(im.convert("RGB"))
    assert page.shape[1] >= WINDOW[0] * 0.9
    with Image.open(grids[0]) as im:
        grid = np.asarray(im.convert("RGB"))
    # The first grid (a gray photo, so its only warm pixels are heatmap colour) lies
    # fully inside the window, scaled to the page's width at most; its heat must show.
    scale = min(1.0, (page.shape[1] - 60) / grid.shape[1])
    expected = warm_mask(grid).sum() * scale**2
    seen = warm_mask(page).sum()
    assert expected > 2000
    assert 0.5 * expected < seen, f"heatmaps not rendered: {seen} warm pixels, expected ~{expected:.0f}"
    # And the page is not just white space and text: the dimmed photos cover much of it.
    assert (page.max(axis=2) < 200).mean() > 0.1
