"""Real photographs that install on this kind of machine, found where packages put them.

No dataset can be downloaded here, so the embedded default tree is built from the
photos that ship inside packages (see ``../shared/MISSION.md``):

* scikit-image's bundled data (``chelsea`` the cat, ``coffee``, ``astronaut``...) and
  scikit-learn's sample images — always installed with cwox;
* PyPI ``foolbox`` (20 labelled ImageNet validation photos) and ``ai-benchmark``
  (about 230 photos) — installed with ``make photos`` (``pip install --no-deps``);
* Debian ``opencv-doc`` (a dozen natural photos among its sample data);
* Debian ``tuxpaint-stamps-default``: the photographs among Tux Paint's stamps (animals,
  food, plants, tools, instruments, vehicles... cut out on a transparent background,
  which :func:`cwox.core.images.load_image` composites onto a plain one). Drawings,
  symbols and renders are left out by folder and by name (:data:`TUXPAINT_SKIP_DIRS`,
  :data:`TUXPAINT_SKIP`), each looked at;
* Debian desktop backgrounds that are photographs (``plasma-workspace-wallpapers``,
  ``mate-backgrounds``, ``lomiri-wallpapers``), named one by one (:data:`WALLPAPERS`);
  abstract and rendered backgrounds (all of ``gnome-backgrounds``, most of Plasma's and
  MATE's) are not used.

:data:`DEBIAN_PACKAGES` lists the Debian packages; ``make photos`` installs them.

:func:`bundled_photos` writes the array-only ones to a folder and returns the paths of
all photos found, sorted, so that a rebuild sees the same list on every machine that
has the same packages.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

#: scikit-image data sets that are colour photographs of real scenes.
SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
#: Natural photos among opencv-doc's sample data (logos, charts and renders left out).
OPENCV_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_PHOTOS = (
    "apple.jpg", "baboon.jpg", "butterfly.jpg", "fruits.jpg", "orange.jpg", "messi5.jpg",
    "building.jpg", "home.jpg", "HappyFish.jpg", "aero1.jpg", "aero3.jpg", "lena.jpg",
    "starry_night.jpg", "basketball1.png", "graf1.png", "leuvenA.jpg", "chicky_512.png",
)


#: Debian packages that ship photos used here (``make photos`` installs the missing ones).
DEBIAN_PACKAGES = (
    "opencv-doc", "tuxpaint-stamps-default", "plasma-workspace-wallpapers", "mate-backgrounds",
    "lomiri-wallpapers",
)
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
#: Tux Paint stamp folders of drawings, symbols or renders (any path component).
TUXPAINT_SKIP_DIRS = frozenset({
    "symbols", "cartoon", "roadsigns", "flags", "alphabets", "hats", "easter", "hanukkah", "newyears",
    "planets", "naturalforces",
})
#: Single Tux Paint stamps that are drawings, silhouettes or renders (relative paths).
TUXPAINT_SKIP = frozenset({
    "animals/insects/bee.png", "animals/insects/fly.png", "animals/mammals/echidna.png",
    "animals/mammals/hedgehog.png", "clothes/button.png", "clothes/t_baseballcap.png", "clothes/t_glove.png",
    "clothes/t_jacket.png", "clothes/t_pants.png", "clothes/t_poloshirt.png", "clothes/t_scarf.png",
    "clothes/t_shirt.png", "clothes/t_sock.png", "clothes/t_tshirt.png", "food/pizza.png", "medical/tooth.png",
    "military/ammunition/old_naval_shell.png", "people/body_parts/eye.png",
    "seasonal/christmas/Santa.png", "seasonal/christmas/bow.png", "seasonal/christmas/candy_cane.png",
    "seasonal/christmas/hard_candy.png", "seasonal/christmas/lamp.png", "seasonal/christmas/santahat.png",
    "seasonal/christmas/star.png", "seasonal/christmas/stocking.png", "seasonal/christmas/tree.png",
    "seasonal/christmas/xmas_tp_bulb.png", "seasonal/halloween/bat_left.png",
    "seasonal/halloween/blackcat.png", "seasonal/halloween/ghost.png",
    "seasonal/halloween/jackolantern_mean.png", "seasonal/halloween/skull.png",
    "seasonal/halloween/spider.png", "space/moon/moon_crescent.png", "space/voyager2.png",
    "sports/rugby_goal_posts.png", "town/monuments/inukshuk-outline.png", "vehicles/7spoke256.png",
    "vehicles/emergency/sedan_police.png", "vehicles/emergency/sedan_police_mirror.png",
    "vehicles/race/indycar.png",
})
#: Desktop backgrounds that are photographs (the rest of those packages are renders).
WALLPAPERS = tuple(sorted({
    *(f"/usr/share/wallpapers/{n}/contents/images/{size}" for n, size in (
        ("BytheWater", "1920x1080.jpg"), ("ColdRipple", "1920x1080.jpg"), ("ColorfulCups", "2560x1600.jpg"),
        ("EveningGlow", "1920x1080.jpg"), ("FallenLeaf", "1920x1080.jpg"), ("Grey", "1920x1080.jpg"),
        ("Kite", "1920x1080.jpg"), ("OneStandsOut", "1920x1080.jpg"), ("Path", "1920x1080.jpg"),
        ("Volna", "5120x2880.jpg"), ("summer_1am", "1920x1080.jpg"),
    )),
    *(f"/usr/share/backgrounds/mate/nature/{n}.jpg" for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower",
    )),
    *(f"/usr/share/backgrounds/{n}.jpg" for n in (
        "Kleiber_by_Lukas_Baubkus", "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly",
        "Picture_0B_by_freespace", "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede",
        "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
        "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
        "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
    )),
}))


def tuxpaint_photos(root: Path = TUXPAINT_DIR) -> list[Path]:
    """The photographs among the installed Tux Paint stamps, sorted (empty if not installed)."""
    out = []
    for p in sorted(root.rglob("*.png")) if root.is_dir() else []:
        rel = p.relative_to(root)
        if TUXPAINT_SKIP_DIRS.isdisjoint(rel.parts[:-1]) and rel.as_posix() not in TUXPAINT_SKIP:
            out.append(p)
    return out


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def array_photos() -> dict[str, np.ndarray]:
    """Photos that come as arrays from installed libraries (name -> H x W x 3 uint8)."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    out = {f"skimage_{n}": getattr(data, n)() for n in SKIMAGE_PHOTOS}
    out.update({f"sklearn_{n.split('.')[0]}": load_sample_image(n) for n in SKLEARN_PHOTOS})
    return out


def package_photo_files() -> list[Path]:
    """Photo files shipped by foolbox, ai-benchmark and the Debian packages, where installed."""
    files: list[Path] = []
    foolbox = _package_dir("foolbox")
    if foolbox is not None:  # found by path: importing foolbox needs packages we skip
        files += sorted((foolbox / "data").glob("imagenet_*.jpg"))
    aib = _package_dir("ai_benchmark")
    if aib is not None:  # never imported: its __init__ starts a benchmark
        files += sorted((aib / "data" / "classification").glob("*.jpg"))
        files += sorted((aib / "data" / "enhancement").glob("*.jpg"))
        files += sorted(p for p in (aib / "data" / "segmentation").glob("*.jpg") if "segmented" not in p.name)
    files += [OPENCV_DIR / n for n in OPENCV_PHOTOS if (OPENCV_DIR / n).is_file()]
    files += tuxpaint_photos()
    files += [Path(p) for p in WALLPAPERS if Path(p).is_file()]
    return files


def bundled_photos(folder: str | Path) -> list[Path]:
    """Every real photo available here: array photos saved into ``folder``, plus files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arr in array_photos().items():
        p = folder / f"{name}.png"
        if not p.exists():
            Image.fromarray(arr).save(p)
        paths.append(p)
    return paths + package_photo_files()


def fixed_views(image: Image.Image) -> list[Image.Image]:
    """The photo and three fixed crops of it (two thirds top-left, bottom-right, top-centre)."""
    w, h = image.size
    boxes = [(0, 0, w * 2 // 3, h * 2 // 3), (w // 3, h // 3, w, h), (w // 6, 0, w * 5 // 6, h * 2 // 3)]
    return [image, *(image.crop(b) for b in boxes)]


def photo_crop_bank(classifier, names: tuple[str, ...] = ("chelsea", "coffee")):
    """A small FG-VCE reference bank from scikit-image photos and their :func:`fixed_views`.

    Built in memory in seconds (chelsea is an Egyptian/tiger cat, coffee an espresso),
    for tests, benchmarks and trying FG-VCE's contrast role without a bank built by
    ``cwox documents --reference-bank``; far too small for real use.
    """
    import torch
    from cwox.offline.reference_bank import bank_from_tensors
    from skimage import data

    views = [classifier.preprocess(v) for n in names for v in fixed_views(Image.fromarray(getattr(data, n)()))]
    return bank_from_tensors(classifier, torch.stack(views), top_m=5, min_confidence=0.3, per_class=20)
