"""Image loading: every mode becomes correct RGB, every bad file gets its reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from cwox.core.images import ImageError, collect_inputs, load_image


@pytest.fixture()
def photo() -> Image.Image:
    return Image.fromarray(data.chelsea())  # 451 x 300 RGB


def test_rgb_photo_round_trips(tmp_path, photo):
    photo.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(photo))


def test_grayscale_becomes_three_equal_channels(tmp_path, photo):
    photo.convert("L").save(tmp_path / "g.png")
    arr = np.asarray(load_image(tmp_path / "g.png"))
    assert arr.shape == (300, 451, 3)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    assert np.array_equal(arr[..., 0], np.asarray(photo.convert("L")))


def test_palette_and_transparent_palette(tmp_path, photo):
    photo.convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.png")
    arr = np.asarray(load_image(tmp_path / "p.png")).astype(int)
    assert np.abs(arr - np.asarray(photo)).mean() < 12  # adaptive palette: close, not exact
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([10, 20, 30] + [200, 0, 0] * 255)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "pt.png"))[0, 0].tolist() == [255, 255, 255]


def test_cmyk_jpeg(tmp_path, photo):
    photo.convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    arr = np.asarray(load_image(tmp_path / "c.jpg")).astype(int)
    assert np.abs(arr - np.asarray(photo)).mean() < 10


def test_rgba_composited_on_white(tmp_path, photo):
    rgba = photo.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:50, :50, 3] = 0  # fully transparent corner
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    arr = np.asarray(load_image(tmp_path / "t.png"))
    assert (arr[:50, :50] == 255).all()
    assert np.array_equal(arr[100:, 100:], np.asarray(photo)[100:, 100:])


def test_16bit_grayscale_is_rescaled_not_clipped(tmp_path, photo):
    gray8 = np.asarray(photo.convert("L")).astype(np.uint16)
    Image.fromarray(gray8 * 257).save(tmp_path / "g16.png")  # full 16-bit range
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    arr = np.asarray(load_image(tmp_path / "g16.png"))[..., 0].astype(int)
    assert np.abs(arr - gray8).max() <= 1


def test_exif_rotation_is_applied(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    photo.save(tmp_path / "r.jpg", exif=exif.tobytes())
    out = load_image(tmp_path / "r.jpg")
    assert out.size == (300, 451)  # width and height swapped


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "missing"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("just some text, not pixels"), "not an image"),
    ],
)
def test_bad_files_have_specific_reasons(tmp_path, make, reason):
    p = tmp_path / "bad.jpg"
    make(p)
    with pytest.raises(ImageError) as err:
        load_image(p)
    assert reason in err.value.reason and err.value.path == str(p)


def test_truncated_jpeg(tmp_path, photo):
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "t.jpg")


def test_pixel_limit_refuses_before_decoding(tmp_path, photo):
    photo.save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "big.png", max_pixels=1000)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_collect_inputs_folders_lists_and_missing(tmp_path, photo):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    photo.save(tmp_path / "sub" / "a.jpg")
    photo.save(tmp_path / "sub" / "deeper" / "b.PNG")
    (tmp_path / "sub" / "notes.md").write_text("not an image")
    (tmp_path / "list.txt").write_text("# a comment\nsub/a.jpg\n\nmissing.jpg\n")
    got = collect_inputs([tmp_path / "sub", tmp_path / "list.txt"])
    assert got == [
        str(tmp_path / "sub" / "a.jpg"),
        str(tmp_path / "sub" / "deeper" / "b.PNG"),
        str(tmp_path / "missing.jpg"),
    ]
