"""The library's face: ``from cwox import ...`` lazily, and the README's example as a plain script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import real_photos
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FACE = ["load_model", "load_tree", "default_tree", "Engine", "explain_image", "get_explainer", "HLTA",
        "fit_tree", "build_documents", "evaluate_images"]


def _run(code: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_import_cwox_loads_no_torch_and_every_name_resolves():
    code = (
        "import sys, cwox\n"
        "assert 'torch' not in sys.modules, 'import cwox loaded torch'\n"
        "assert all(n in dir(cwox) for n in {!r})\n"
        "from cwox import {}\n"
        "import cwox.online.engine as e\n"
        "assert Engine is e.Engine and explain_image is e.explain_image\n"
        "print('torch' in sys.modules)\n".format(FACE, ", ".join(FACE))
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"  # the names themselves did import their modules
    missing = _run("import cwox; cwox.no_such_name")
    assert "has no attribute 'no_such_name'" in missing.stderr


def readme_example() -> str:
    """The first python block of the README's "The library" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The library"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_the_readme_library_example_runs_as_a_script(tmp_path):
    """Real photos, a real LocalCluster, a fitted tree and an explanation, from a plain script."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, arr in real_photos().items():
        Image.fromarray(arr).save(photos / f"{name}.jpg")
    Image.fromarray(real_photos()["chelsea"]).save(tmp_path / "photo.jpg")
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "docs.zarr").is_dir() and (tmp_path / "trees.zarr").is_dir()
    assert re.search(r"\(\d+, 224, 224\)", done.stdout), done.stdout  # the class maps' shape
