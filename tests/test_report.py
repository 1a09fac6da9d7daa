"""Tests of the per-image report files and the HTML index (online/report.py, online/render.py).

Explanations are built by hand on a real photo (scikit-image's chelsea, cropped to
224 x 224) with Gaussian-blob maps, so no model is needed.
"""

from __future__ import annotations

import dataclasses
import gc
import html
import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from cwox.online.explanation import Explanation
from cwox.online.render import ALL_ZERO_NOTE, dimmed_photo, overlay, rendered_size, scale_map
from cwox.online.report import (
    GRID_NAME,
    JSON_NAME,
    MAPS_NAME,
    IndexEntry,
    load_report,
    to_jsonable,
    write_index,
    write_report,
)
from PIL import Image
from skimage import data

HOSTILE = '<script>alert("x")</script> & <b>bold</b>'


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(data.chelsea()[50:274, 100:324])


def blob(cy: float, cx: float, sigma: float, size: int = 224) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def make(
    photo: np.ndarray,
    sizes: list[int],
    *,
    mode: str = "cwox2s",
    names: list[str] | None = None,
    probs: list[float] | None = None,
    zero: bool = False,
    seed: int = 0,
) -> Explanation:
    """An explanation with clusters of the given sizes and one blob per map at random places."""
    rng = np.random.default_rng(seed)
    k = sum(sizes)
    classes = [int(c) for c in rng.choice(1000, size=k, replace=False)]
    if probs is None:
        p = np.sort(rng.dirichlet(np.ones(k + 1)))[::-1][:k]
        probs = [float(v) for v in p]
    names = names or [f"class {c}" for c in classes]
    bounds = np.cumsum([0] + sizes)
    clusters = [classes[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def maps(n: int) -> np.ndarray:
        if zero:
            return np.zeros((n, 224, 224), np.float32)
        centres = rng.uniform(30, 194, size=(n, 2))
        return np.stack([blob(cy, cx, 25) * rng.uniform(0.5, 3) for cy, cx in centres])

    return Explanation(
        image_path="photos/chelsea.png",
        image=photo,
        classes=classes,
        class_names=names,
        probs=probs,
        clusters=clusters,
        mode=mode,
        explainer="gradcam",
        cluster_maps=maps(len(sizes)) if mode == "cwox2s" else None,
        class_maps=maps(k),
        settings={"k": k, "threshold": np.float32(0.5), "model": Path("m.pt"), "seed": np.int64(3)},
        timings={"total": 0.25},
    )


def warm_fraction(rgb: np.ndarray) -> float:
    """Fraction of bright yellow-orange pixels: the top of 'inferno', never in the dimmed photo."""
    f = rgb[..., :3].astype(np.float32) / 255.0
    warm = (f[..., 0] > 0.8) & (f[..., 1] > 0.3) & (f[..., 2] < 0.45)
    return float(warm.mean())


def maps_area(grid: np.ndarray) -> np.ndarray:
    """The heatmaps' part of a grid: right of the (undimmed) photo column, above the colour bar."""
    return grid[:-70, 260:]


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def strict_json(path: Path) -> dict:
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# --------------------------------------------------------------------------- write_report


def test_cwox2s_two_clusters_files_json_and_arrays(photo, tmp_path):
    e = make(photo, [2, 3])
    e.extra_maps["necessity"] = np.stack([blob(100, 100, 10)] * 5)
    paths = write_report(e, tmp_path / "deep" / "r")

    assert set(paths) == {"json", "maps", "grid"}
    assert all(p.is_file() and p.parent == tmp_path / "deep" / "r" for p in paths.values())
    assert sorted(p.name for p in (tmp_path / "deep" / "r").iterdir()) == sorted(
        [JSON_NAME, MAPS_NAME, GRID_NAME]
    )  # no temporary files left behind

    doc = strict_json(paths["json"])
    assert doc["classes"] == e.classes
    assert [c["classes"] for c in doc["clusters"]] == e.clusters
    assert [c["names"] for c in doc["clusters"]] == [[e.name_of(c) for c in cl] for cl in e.clusters]
    assert doc["clusters"][0]["prob"] == pytest.approx(sum(e.probs[:2]))
    assert [t["name"] for t in doc["top"]] == e.class_names
    assert doc["files"] == {"json": JSON_NAME, "maps": MAPS_NAME, "grid": GRID_NAME}
    assert doc["settings"] == {"k": 5, "threshold": 0.5, "model": "m.pt", "seed": 3}
    assert doc["extra_maps"] == ["necessity"]
    assert doc["image_size"] == [224, 224]

    with np.load(paths["maps"], allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["image"], photo)
        np.testing.assert_array_equal(npz["class_maps"], e.class_maps)
        np.testing.assert_array_equal(npz["cluster_maps"], e.cluster_maps)
        np.testing.assert_array_equal(npz["classes"], e.classes)
        np.testing.assert_array_equal(npz["probs"], e.probs)
        assert npz["class_names"].tolist() == e.class_names
        np.testing.assert_array_equal(npz["extra_necessity"], e.extra_maps["necessity"])
        np.testing.assert_array_equal(npz["cluster_of_class"], [0, 0, 1, 1, 1])
        offsets, members = npz["cluster_offsets"], npz["cluster_members"]
        assert [members[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)] == e.clusters


def test_grid_png_size_and_content(photo, tmp_path):
    e = make(photo, [2, 3])
    grid = read_png(write_report(e, tmp_path)["grid"])
    height, width = grid.shape[:2]
    assert 1300 <= width <= 1700, "a 5-class report should be a readable ~1500 px wide"
    assert (width, height) == rendered_size(e)
    assert grid.std() > 30, "the picture is blank"
    assert warm_fraction(maps_area(grid)) > 0.002, "no heatmap colours in the picture"


def test_load_report_round_trip(photo, tmp_path):
    e = make(photo, [2, 3])
    e.extra_maps["sufficiency"] = np.arange(12, dtype=np.float64).reshape(3, 2, 2)
    write_report(e, tmp_path)
    back = load_report(tmp_path)
    for f in ("image_path", "classes", "class_names", "probs", "clusters", "mode", "explainer", "timings"):
        assert getattr(back, f) == getattr(e, f), f
    np.testing.assert_array_equal(back.image, e.image)
    np.testing.assert_array_equal(back.class_maps, e.class_maps)
    np.testing.assert_array_equal(back.cluster_maps, e.cluster_maps)
    np.testing.assert_array_equal(back.extra_maps["sufficiency"], e.extra_maps["sufficiency"])


@pytest.mark.parametrize(
    ("sizes", "mode"),
    [([3], "cwox2s"), ([1, 2], "cwox2s"), ([1], "cwox2s"), ([2, 3], "swox"), ([1, 1, 2], "cwox1sa")],
    ids=["one-cluster", "singleton", "single-class", "swox", "cwox1sa"],
)
def test_shapes_of_output(photo, tmp_path, sizes, mode):
    e = make(photo, sizes, mode=mode, seed=len(sizes))
    paths = write_report(e, tmp_path)
    doc = strict_json(paths["json"])
    assert [c["classes"] for c in doc["clusters"]] == e.clusters
    with np.load(paths["maps"]) as npz:
        assert ("cluster_maps" in npz.files) == (mode == "cwox2s")
        assert npz["cluster_offsets"].tolist() == np.cumsum([0] + sizes).tolist()
    if mode != "cwox2s":
        assert all(c["map_stats"] is None for c in doc["clusters"])
    grid = read_png(paths["grid"])
    assert grid.shape[1::-1] == rendered_size(e)
    assert warm_fraction(maps_area(grid)) > 0.001


def test_cluster_row_only_with_cluster_maps(photo, tmp_path):
    two_stage = make(photo, [2, 3])
    one_stage = dataclasses.replace(two_stage, cluster_maps=None, mode="swox")
    a = read_png(write_report(two_stage, tmp_path / "a")["grid"])
    b = read_png(write_report(one_stage, tmp_path / "b")["grid"])
    assert a.shape[1] == b.shape[1]
    assert a.shape[0] > b.shape[0] + 150, "the cluster row is missing from the CWOX-2s grid"


def test_all_zero_maps_are_drawn_without_heat(photo, tmp_path):
    e = make(photo, [2, 3], zero=True)
    paths = write_report(e, tmp_path)
    assert warm_fraction(maps_area(read_png(paths["grid"]))) == 0
    doc = strict_json(paths["json"])
    assert all(s["max"] == 0 and s["nonzero_fraction"] == 0 for s in doc["class_map_stats"])


def test_scale_map_edge_cases(photo):
    zero = scale_map(np.zeros((4, 4)))
    assert zero.note == ALL_ZERO_NOTE and not zero.values.any()
    negative = scale_map(-np.ones((4, 4)))
    assert "no positive evidence" in negative.note and not negative.values.any()
    with_nan = np.array([[0.0, 2.0], [np.nan, 1.0]])
    s = scale_map(with_nan)
    assert s.peak == 2.0 and s.note == "non-finite values shown as 0"
    np.testing.assert_allclose(s.values, [[0, 1], [0, 0.5]])
    assert scale_map(np.full((2, 2), np.nan)).note == "no finite values"
    with pytest.raises(ValueError, match="2-D"):
        scale_map(np.zeros((2, 2, 2)))
    background = dimmed_photo(photo)
    assert background.max() <= 0.6 + 1e-6
    np.testing.assert_allclose(overlay(background, zero.values.repeat(56, 0).repeat(56, 1)), background)


def test_nan_probability_and_nan_map_become_null(photo, tmp_path):
    e = make(photo, [2, 3], probs=[0.5, float("nan"), 0.2, 0.1, 0.05])
    e.class_maps[0, 0, 0] = np.nan
    paths = write_report(e, tmp_path)
    text = paths["json"].read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = strict_json(paths["json"])
    assert doc["probs"][1] is None and doc["top"][1]["prob"] is None
    assert doc["clusters"][0]["prob"] is None
    assert doc["class_map_stats"][0]["max"] is None
    with np.load(paths["maps"]) as npz:
        assert np.isnan(npz["probs"][1]) and npz["probs"][0] == 0.5
    assert np.isnan(load_report(tmp_path).probs[1])


def test_long_and_hostile_names_round_trip(photo, tmp_path):
    names = [HOSTILE, "x" * 200, "tabby, tabby cat", "ünïcødé 猫", "a\nb"]
    e = make(photo, [2, 3], names=names)
    paths = write_report(e, tmp_path)
    assert strict_json(paths["json"])["class_names"] == names
    assert load_report(tmp_path).class_names == names
    assert read_png(paths["grid"]).shape[1] < 1700, "long names must wrap, not widen the picture"


def test_many_classes_wrap_into_bands(photo, tmp_path):
    e = make(photo, [3, 4, 2, 3])
    grid = read_png(write_report(e, tmp_path, max_columns=6)["grid"])
    assert grid.shape[1::-1] == rendered_size(e, max_columns=6)
    one_band = rendered_size(e, max_columns=12)
    assert grid.shape[1] < one_band[0] and grid.shape[0] > one_band[1]


def test_bad_input_is_refused_before_writing(photo, tmp_path):
    e = make(photo, [2, 3])
    with pytest.raises(TypeError, match="Explanation"):
        write_report(e.to_json(), tmp_path / "x")
    wrong = dataclasses.replace(e, class_maps=np.zeros((5, 7, 7), np.float32))
    with pytest.raises(ValueError, match=r"class_maps must be n x 224 x 224"):
        write_report(wrong, tmp_path / "x")
    bad_name = dataclasses.replace(e, extra_maps={"a/b": np.zeros((1, 2, 2))})
    with pytest.raises(ValueError, match="extra map name"):
        write_report(bad_name, tmp_path / "x")
    not_image = dataclasses.replace(e, image=np.zeros((224, 224, 2), np.uint8))
    with pytest.raises(ValueError, match="H x W x 3"):
        write_report(not_image, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_no_figures_leak(photo, tmp_path):
    from matplotlib.figure import Figure

    e = make(photo, [1, 1], seed=5)
    for i in range(3):
        write_report(e, tmp_path / str(i))
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Figure)]


def test_to_jsonable():
    value = {1: (np.float32(1.5), np.inf), "s": {3, 1}, "a": np.arange(3), "b": np.bool_(True)}
    assert to_jsonable(value) == {"1": [1.5, None], "s": [1, 3], "a": [0, 1, 2], "b": True}


# --------------------------------------------------------------------------- write_index


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []
        self.href: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.src.append(a["src"])
        if tag == "a":
            self.href.append(a["href"])

    def handle_data(self, data):
        self.text.append(data)


def test_index_escapes_links_and_lists_failures(photo, tmp_path):
    e = make(photo, [2, 3], names=[HOSTILE, "tiger cat", "tabby", "lynx", "Egyptian cat"])
    report_dir = tmp_path / 'reports' / 'odd <name> & "dir" #1'
    write_report(e, report_dir)
    swox = make(photo, [1, 1], mode="swox", seed=9)
    write_report(swox, tmp_path / "reports" / "b")
    entries = [
        IndexEntry.from_explanation(e, report_dir),
        IndexEntry.failed('bad <img src=x onerror="alert(1)">.jpg', "cannot identify image file <&>"),
        # The dict form, as Explanation.to_json() gives it, plus the report folder.
        {**swox.to_json(), "report_dir": tmp_path / "reports" / "b"},
    ]
    assert IndexEntry.from_report(report_dir) == entries[0]
    index = write_index(entries, tmp_path / "site")
    page = index.read_text(encoding="utf-8")

    assert "<script" not in page and "onerror=" not in page.replace("onerror=&quot;", "")
    assert html.escape(HOSTILE) in page
    parser = _Links()
    parser.feed(page)
    text = "".join(parser.text)
    assert HOSTILE in text, "the hostile name must show as text"
    assert "cannot identify image file <&>" in text
    assert "2 explained, 1 failed" in text
    assert 'bad <img src=x onerror="alert(1)">.jpg: failed' in text
    assert "script" not in parser.tags and parser.tags.count("img") == 2

    # Every image and file link resolves to a real file, relative to the page.
    assert len(parser.src) == 2
    for url in parser.src + [h for h in parser.href if not h.startswith("#")]:
        assert not url.startswith(("http:", "https:", "//", "/")), url
        assert (index.parent / unquote(url)).is_file(), url
    files = [Path(unquote(h)).name for h in parser.href if not h.startswith("#")]
    assert files.count(JSON_NAME) == 2 and files.count(MAPS_NAME) == 2

    # Top classes grouped by cluster, with the cluster's summed probability.
    assert f"cluster (a) p={e.cluster_prob(0):.2f}" in text
    assert text.index(html.unescape(html.escape(HOSTILE))) < text.index("cluster (b)")


def test_index_without_grid_and_with_nothing(tmp_path):
    empty = write_index([], tmp_path)
    assert "0 images: 0 explained, 0 failed" in empty.read_text()
    page = write_index([{"image_path": "a.jpg", "report_dir": tmp_path / "missing"}], tmp_path)
    assert "<img" not in page.read_text() and "grid.png is missing" in page.read_text()
    with pytest.raises(ValueError, match="image_path"):
        write_index([{"report_dir": "x"}], tmp_path)
    with pytest.raises(TypeError, match="IndexEntry or dict"):
        write_index(["a.jpg"], tmp_path)
