"""FG-VCE out of the box: the embedded default reference bank, used unless ``--reference-bank`` is given."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from cwox.hlta.tree import tree_from_groups
from cwox.online.explainers.fgvce import (
    BANK_KEY,
    DEFAULT_BANK,  # what explain's default_params hands FG-VCE
    bank_record,
    bank_text,
)
from cwox.pipelines.default_bank import EMBEDDED_BANK
from cwox.store.reference_bank import load_reference_bank
from PIL import Image
from skimage import data

from cwox.cli import main

CATS = [281, 282, 285, 287]  # tabby, tiger cat, Egyptian cat, lynx


def test_the_embedded_bank_is_small_and_for_the_default_model():
    assert DEFAULT_BANK == EMBEDDED_BANK  # the command reads what the pipeline writes
    size = sum(p.stat().st_size for p in DEFAULT_BANK.rglob("*") if p.is_file())
    # 4.4 MiB from the 633 photos of the default tree (284 classes); a guard against a
    # rebuild that keeps far more candidates per class (3 per class x top 5 was 8.6 MiB).
    assert size < 6 * 2**20, f"the committed bank grew to {size / 2**20:.1f} MiB"
    bank = load_reference_bank(DEFAULT_BANK)
    assert bank.model == "efficientnet_lite0" and bank.layer == "_conv_head" and bank.grid == (7, 7)
    assert bank.attrs["built_by"] == "cwox.pipelines.default_bank"
    assert len(bank.image_paths) >= 50 and 30 <= bank.classes.size < 1000
    assert not any(p.startswith("/") for p in bank.image_paths)  # no path of the building machine
    assert max(bank.per_class_counts().values()) <= bank.attrs["per_class"]


def test_bank_record_names_the_missing_classes():
    names = [f"class {i}" for i in range(10)]
    rec = bank_record("default", {"images": 4, "candidates": 20}, [1, 2], [2, 7, 1, 9], names)
    assert rec["missing"] == [7, 9] and rec["classes"] == 2 and rec["asked"] == [1, 2, 7, 9]
    text = bank_text(rec)
    assert "4 images of 2 of 10 classes" in text and "no image of class 7, class 9" in text
    assert "every class" in text
    assert "every class asked about" in bank_text(bank_record("b", {"images": 1}, [3], [3], names))


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    Image.fromarray(data.chelsea()).save(root / "chelsea.png")
    return root


@pytest.mark.slow
def test_fgvce_question_runs_with_the_default_bank(chelsea):
    out = chelsea / "why"
    res = CliRunner().invoke(main, [
        "explain", str(chelsea / "chelsea.png"), "--explainer", "fgvce", "--why", "tiger cat",
        "--rather-than", "tabby", "--device", "cpu", "-p", "max_steps=8", "--out", str(out)],
        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "FG-VCE reference bank default" in res.output
    doc = json.loads((out / "chelsea" / "why.json").read_text())
    rec = doc[BANK_KEY]
    bank = load_reference_bank(DEFAULT_BANK)
    assert rec["name"].startswith("default") and rec["images"] == len(bank.image_paths)
    assert rec["asked"] == [281, 282]
    assert rec["missing"] == [c for c in (281, 282) if c not in set(bank.classes.tolist())]
    assert doc["settings"]["reference_bank"]["images"] == len(bank.image_paths)
    assert doc["report"]["pool"] == ("all" if 281 in rec["missing"] else "goal")
    assert "FG-VCE reference bank default" in doc["note"]


@pytest.mark.slow
def test_whole_output_fgvce_names_the_default_bank(chelsea):
    from cwox.store.trees import save_tree

    from cwox.core.models import load_model

    names = load_model(device="cpu").class_names
    store = chelsea / "cats.zarr"
    save_tree(tree_from_groups([CATS], names), store, meta={"model": "efficientnet_lite0"}, publish=True)
    out = chelsea / "whole"
    res = CliRunner().invoke(main, [
        "explain", str(chelsea / "chelsea.png"), "--explainer", "fgvce", "--tree", str(store), "--top-k", "3",
        "--device", "cpu", "-p", "max_steps=4", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "chelsea" / "explanation.json").read_text())
    (rec,) = doc["diagnostics"][BANK_KEY]
    assert rec["name"].startswith("default") and rec["asked"] == sorted(doc["classes"])
    assert doc["settings"]["explainer"]["reference_bank"]["images"] == rec["images"]
    index = (out / "index.html").read_text()
    assert "FG-VCE reference bank default" in index
    assert 'href="tree.html"' in index and "tree.html#classes=" in index
    assert np.load(out / "chelsea" / "maps.npz")["class_maps"].shape[0] == 3
