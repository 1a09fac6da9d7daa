"""``cwox explain`` end to end on real photos with the default model and a hand-made tree."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from tree_factories import cat_tree, photo_folder

from cwox.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory, default_classifier):
    from cwox.store.trees import save_tree

    root = tmp_path_factory.mktemp("cli")
    photos = photo_folder(root / "photos")
    tree = cat_tree(default_classifier.class_names)
    good = root / "trees"
    save_tree(tree, good, meta={"model": "efficientnet_lite0"}, publish=True)
    other = root / "trees_resnet"
    save_tree(tree, other, meta={"model": "resnet50"}, publish=True)
    return {"photos": photos, "tree": good, "other": other, "root": root}


def run(args):
    return CliRunner().invoke(main, ["explain", *map(str, args)], catch_exceptions=False)


def test_explain_folder_with_a_corrupt_file(setup):
    out = setup["root"] / "out"
    res = run([setup["photos"], "--tree", setup["tree"], "--device", "cpu", "--out", out])
    assert res.exit_code == 1, res.output
    assert "broken.jpg" in res.output and "skipped" in res.output
    assert "2 of 3 images explained" in res.output
    # chelsea: the three cats are grouped into one cluster, printed with probabilities
    assert any("tiger cat" in line and "tabby" in line and "Egyptian cat" in line and "cluster" in line
               for line in res.output.splitlines())
    for stem in ("chelsea", "coffee"):
        doc = json.loads((out / stem / "explanation.json").read_text())
        assert doc["mode"] == "cwox2s" and doc["explainer"] == "gradcam"
        assert len(doc["top"]) == 5
        maps = np.load(out / stem / "maps.npz")
        assert maps["class_maps"].shape == (5, 224, 224)
        assert (out / stem / "grid.png").stat().st_size > 0
    assert not (out / "broken").exists()
    assert "broken.jpg" in (out / "index.html").read_text()


def test_explain_rise_one_image_exit_zero(setup):
    out = setup["root"] / "out_rise"
    res = run([setup["photos"] / "chelsea.jpg", "--tree", setup["tree"], "--explainer", "rise",
               "--n-masks", "24", "--batch-size", "12", "--cum", "0.9", "--max-k", "3", "--out", out])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "chelsea" / "explanation.json").read_text())
    assert doc["explainer"] == "rise" and 1 <= len(doc["top"]) <= 3
    assert doc["settings"]["explainer"]["cluster_masks"]["n"] == 24


def test_tree_for_another_model_is_refused(setup):
    res = run([setup["photos"] / "chelsea.jpg", "--tree", setup["other"], "--out", setup["root"] / "x"])
    assert res.exit_code == 2
    assert "resnet50" in res.output and "efficientnet_lite0" in res.output


def test_usage_errors_exit_2(setup):
    chelsea = setup["photos"] / "chelsea.jpg"
    res = run([chelsea, "--top-k", "3", "--cum", "0.9"])
    assert res.exit_code == 2 and "not both" in res.output
    res = run([chelsea, "--tree", setup["root"] / "nope.zarr"])
    assert res.exit_code == 2 and "no such tree store" in res.output
    res = run([chelsea, "--tree", "none", "--explainer", "lime"])
    assert res.exit_code == 2 and "unknown --explainer 'lime'" in res.output
    res = run([chelsea, "--mode", "cwox3"])
    assert res.exit_code == 2


def test_default_tree_missing_is_a_clear_error(setup, monkeypatch, tmp_path):
    import cwox.commands.explain as explain_module

    monkeypatch.setattr(explain_module, "DEFAULT_TREE", tmp_path / "absent.zarr")
    res = run([setup["photos"] / "chelsea.jpg", "--out", setup["root"] / "y"])
    assert res.exit_code == 2 and "no default tree is installed" in res.output


def test_embedded_default_tree_cuts_chelsea_into_cat_clusters(setup):
    """The committed tree (built by pipelines.default_tree) groups the confusable cats."""
    from cwox.store.trees import load_tree, tree_info

    from cwox.commands.explain import DEFAULT_TREE

    assert DEFAULT_TREE.exists(), "cwox/data/default_tree.zarr is missing"
    assert tree_info(DEFAULT_TREE)["model"] == "efficientnet_lite0"
    out = setup["root"] / "default"
    res = run([setup["photos"] / "chelsea.jpg", "--tree", "default", "--out", out])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "chelsea" / "explanation.json").read_text())
    names = [sorted(c["names"]) for c in data["clusters"]]
    cats = {"tiger cat", "Egyptian cat", "tabby", "lynx"}
    cat_clusters = [n for n in names if set(n) & cats]
    assert all(set(n) <= cats for n in cat_clusters)  # cats never share a cluster with non-cats
    assert any(len(n) >= 2 for n in cat_clusters)  # and some cats are confused with each other
    tree = load_tree(DEFAULT_TREE)
    assert tree.graph["class_names"][282] == "tiger cat"
