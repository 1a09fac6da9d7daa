"""``cwox evaluate`` and :mod:`cwox.online.evaluation`: CAUC / CDROP of the whole-output modes.

Real photos (chelsea, coffee), the default model, a hand-made tree that puts the cat
classes (and the coffee-cup classes) in one cluster each; Grad-CAM and a RISE with few
masks; a large CAUC step so that every test stays small.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tree_factories import cat_tree, photo_folder

from cwox.cli import main

STEP = 1024  # CAUC samples the curve every STEP pixels (exact: 1); small runs only
MODES = ("swox", "cwox1sa", "cwox1sb", "cwox2s")


def expected_pairs(classifier, tree, path) -> set[tuple[int, str]]:
    """Every (c, C_i minus c) of the photo's multi-class clusters, K = min(5, Cum(0.95))."""
    from cwox.online.targets import cut_clusters, top_k

    from cwox.core.images import load_image

    x = classifier.preprocess(load_image(path))[None].to(classifier.device)
    classes, _ = top_k(classifier.probabilities(x)[0], None, cum=0.95, max_k=5)
    pairs = set()
    for cluster in cut_clusters(tree, classes):
        if len(cluster) >= 2:
            for c in cluster:
                pairs.add((c, "+".join(str(o) for o in cluster if o != c)))
    return pairs


@pytest.fixture(scope="module")
def setup(tmp_path_factory, default_classifier):
    from cwox.store.trees import save_tree

    root = tmp_path_factory.mktemp("evaluate")
    photos = photo_folder(root / "photos")
    tree = cat_tree(default_classifier.class_names)
    store = root / "trees"
    save_tree(tree, store, meta={"model": "efficientnet_lite0"}, publish=True)
    return {"root": root, "photos": photos, "tree": tree, "store": store}


@pytest.fixture(scope="module")
def cli_run(setup):
    out = setup["root"] / "out"
    res = CliRunner().invoke(main, [
        "evaluate", str(setup["photos"]), "--tree", str(setup["store"]), "--device", "cpu",
        "--explainers", "gradcam,rise", "--n-masks", "24", "-p", "rise.class_n_masks=24", "--step", str(STEP),
        "--modes", ",".join(MODES), "--metrics", "cauc,cdrop", "--curve-points", "5", "--quiet", "--out", str(out),
    ], catch_exceptions=False)
    with (out / "results.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {"res": res, "out": out, "rows": rows}


def test_corrupt_file_is_reported_and_the_others_finish(cli_run):
    res, rows = cli_run["res"], cli_run["rows"]
    assert res.exit_code == 1, res.output
    assert "broken.jpg" in res.output and "skipped" in res.output
    assert "2/3 images scored" in res.output
    failed = [r for r in rows if r["error"]]
    assert [r["image"].endswith("broken.jpg") for r in failed] == [True]
    # coffee is scored but its K = min(5, Cum(0.95)) = 1 class forms a singleton cluster: no pair
    assert {r["image"].rsplit("/", 1)[-1] for r in rows if not r["error"]} == {"chelsea.jpg"}


def test_rows_cover_every_in_cluster_pair_for_every_mode_and_metric(cli_run, setup, default_classifier):
    rows = [r for r in cli_run["rows"] if not r["error"]]
    assert not expected_pairs(default_classifier, setup["tree"], setup["photos"] / "coffee.png")
    for image in [str(setup["photos"] / "chelsea.jpg")]:
        want = expected_pairs(default_classifier, setup["tree"], image)
        assert len(want) == 4, f"{image}: the cats should form one cluster of four"
        for explainer in ("gradcam", "rise"):
            for mode in MODES:
                for metric in ("cauc", "cdrop"):
                    got = [(int(r["class"]), r["contrast"]) for r in rows
                           if r["image"] == image and r["explainer"] == explainer
                           and r["mode"] == mode and r["metric"] == metric]
                    assert sorted(got) == sorted(want), (image, explainer, mode, metric)
    for r in rows:
        assert math.isfinite(float(r["value"]))
        assert 1 <= int(r["n_delta"]) <= 224 * 224
        assert r["class_name"] == default_classifier.class_names[int(r["class"])]


def test_cauc_sums_over_the_smallest_n_delta_of_the_pair(cli_run):
    rows = [r for r in cli_run["rows"] if not r["error"]]
    by_pair = defaultdict(dict)
    for r in rows:
        by_pair[(r["image"], r["explainer"], r["class"])][(r["mode"], r["metric"])] = r
    for key, cells in by_pair.items():
        own = [int(cells[(m, "cdrop")]["n_delta"]) for m in MODES]
        for m in MODES:
            assert int(cells[(m, "cauc")]["n_delta"]) == int(cells[(m, "cdrop")]["n_delta"])
            assert int(cells[(m, "cauc")]["n_summed"]) == min(own), key
            assert int(cells[(m, "cdrop")]["n_summed"]) == int(cells[(m, "cdrop")]["n_delta"])
    # the modes' maps differ, so their n_delta do too somewhere: the rule is not vacuous
    assert any(len({int(c[(m, "cdrop")]["n_delta"]) for m in MODES}) > 1 for c in by_pair.values())


def test_summary_tables_and_curves_png(cli_run):
    out = cli_run["out"]
    text = (out / "summary.md").read_text(encoding="utf-8")
    for title in ("Table 1: CAUC", "Table 2: CDROP", "Table 3: CWOX-2s per base explainer"):
        assert title in text
    table1 = text.split("## Table 1")[1].split("##")[0]
    lines = [ln for ln in table1.splitlines() if ln.startswith("| ") and "±" in ln]
    assert [ln.split("|")[1].strip() for ln in lines] == ["SWOX", "CWOX-1sA", "CWOX-1sB", "CWOX-2s"]
    rows = [r for r in cli_run["rows"] if not r["error"]]
    swox_gradcam = [float(r["value"]) for r in rows
                    if r["explainer"] == "gradcam" and r["mode"] == "swox" and r["metric"] == "cauc"]
    cell = lines[0].split("|")[2].strip()
    assert float(cell.split("±")[0]) == pytest.approx(np.mean(swox_gradcam), rel=1e-3)
    png = np.asarray(Image.open(out / "curves.png").convert("L"), dtype=np.float64)
    assert png.shape[0] > 100 and png.std() > 10  # drawn, not blank


@pytest.mark.parametrize(("option", "value", "word"), [
    ("--explainers", "gradcam,lime", "lime"),
    ("--modes", "cwox2s,cwox3", "cwox3"),
    ("--metrics", "cauc,auroc", "auroc"),
])
def test_bad_arguments_exit_2(setup, option, value, word):
    res = CliRunner().invoke(main, ["evaluate", str(setup["photos"]), option, value, "--device", "cpu"])
    assert res.exit_code == 2
    assert word in res.output and "choose from" in res.output


def test_explain_modes_matches_one_engine_per_mode(setup, default_classifier):
    from cwox.online.engine import Engine
    from cwox.online.evaluation import explain_modes
    from skimage import data

    image = Image.fromarray(data.chelsea())
    engine = Engine(default_classifier, setup["tree"], "gradcam", cum=0.95, max_k=5)
    _, exps = explain_modes(engine, image, MODES)
    for mode in MODES:
        ref = Engine(default_classifier, setup["tree"], "gradcam", mode, cum=0.95, max_k=5).explain(image)
        assert exps[mode].classes == ref.classes and exps[mode].clusters == ref.clusters
        np.testing.assert_allclose(exps[mode].class_maps, ref.class_maps, rtol=1e-5, atol=1e-6)


def test_local_cluster_gives_the_same_numbers(setup, default_classifier):
    from cwox.offline.documents import dask_client
    from cwox.offline.worker import ModelSpec
    from cwox.online.evaluation import evaluate_images

    paths = [str(setup["photos"] / "chelsea.jpg"), str(setup["photos"] / "broken.jpg")]
    kwargs = dict(explainers=["gradcam"], modes=["swox", "cwox2s"], step=STEP, progress=False)
    local = evaluate_images(default_classifier, paths, setup["tree"], **kwargs)
    with dask_client(None, 1) as client:
        remote = evaluate_images(default_classifier, paths, setup["tree"], client=client,
                                 # same torch thread count as the in-process run: CPU sums
                                 # change order with it, and this test compares like with like
                                 model_spec=ModelSpec("efficientnet_lite0", device="cpu",
                                                      torch_threads=torch.get_num_threads()),
                                 **kwargs)
    assert len(local) == len(remote) > 1
    assert [r["error"] != "" for r in remote] == [r["error"] != "" for r in local]
    for a, b in zip(local, remote, strict=True):
        assert {k: v for k, v in a.items() if k != "value"} == {k: v for k, v in b.items() if k != "value"}
        if not a["error"]:
            assert b["value"] == pytest.approx(a["value"], rel=1e-4, abs=1e-7)


def test_library_rejects_unknown_names(default_classifier):
    from cwox.online.evaluation import evaluate_images

    with pytest.raises(ValueError, match="unknown mode"):
        evaluate_images(default_classifier, [], None, modes=["cwox9"], progress=False)
    with pytest.raises(ValueError, match="explainer_params for explainers not evaluated"):
        evaluate_images(default_classifier, [], None, explainers=["gradcam"],
                        explainer_params={"rise": {"n_masks": 8}}, progress=False)


def test_role_decides_whether_cwox2s_takes_native_contrasts(setup, default_classifier):
    """``role``: "auto" gives CWOX-2s the explainer's own "P rather than Q" maps, "base" the subtraction."""
    from cwox.online.engine import Engine
    from cwox.online.evaluation import EvaluationSetup, explain_modes
    from cwox.pipelines.photos import photo_crop_bank
    from skimage import data

    clf = default_classifier
    image = Image.fromarray(data.chelsea())
    params = {"reference_bank": photo_crop_bank(clf), "max_steps": 2, "class_layer": clf.cluster_layer}
    maps = {}
    for role in ("auto", "base"):
        engine = EvaluationSetup.build(explainers=["fgvce"], explainer_params={"fgvce": params}, role=role,
                                       protocol="explain").engines(clf, setup["tree"])["fgvce"]
        _, exps = explain_modes(engine, image, ("swox", "cwox2s"))
        ref = Engine(clf, setup["tree"], "fgvce", "cwox2s", cum=0.95, max_k=5, explainer_params=params,
                     role="contrast" if role == "auto" else "base").explain(image)
        np.testing.assert_allclose(exps["cwox2s"].class_maps, ref.class_maps, rtol=1e-5, atol=1e-7)
        maps[role] = exps
    np.testing.assert_array_equal(maps["auto"]["swox"].class_maps, maps["base"]["swox"].class_maps)
    assert not np.allclose(maps["auto"]["cwox2s"].class_maps, maps["base"]["cwox2s"].class_maps)
    with pytest.raises(ValueError, match="role"):
        EvaluationSetup.build(role="native")


def test_cli_role_is_recorded(setup):
    import json

    out = setup["root"] / "out-role"
    res = CliRunner().invoke(main, [
        "evaluate", str(setup["photos"] / "chelsea.jpg"), "--tree", str(setup["store"]), "--device", "cpu",
        "--explainers", "gradcam", "--modes", "cwox2s", "--metrics", "cauc", "--step", str(STEP),
        "--role", "base", "--no-plot", "--quiet", "--out", str(out),
    ], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "settings.json").read_text())["role"] == "base"
    assert "Role: base (CWOX-2s subtracts base maps" in (out / "summary.md").read_text()


def test_cli_cluster_source_finercam_and_class_sensitivity(setup, default_classifier):
    """``--cluster-source random`` and Finer-CAM rows; the pairs stay the reference tree's."""
    import json

    out = setup["root"] / "out-source"
    image = str(setup["photos"] / "chelsea.jpg")
    res = CliRunner().invoke(main, [
        "evaluate", image, "--tree", str(setup["store"]), "--device", "cpu", "--explainers", "gradcam",
        "--modes", "swox,cwox2s,finercam", "--metrics", "spearman,ssim", "--cluster-source", "random",
        "--finer-classes", "2", "--no-plot", "--quiet", "--out", str(out),
    ], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    settings = json.loads((out / "settings.json").read_text())
    assert settings["cluster_source"] == "random" and settings["protocol"] == "paper"
    assert settings["support"] == 0.0 and settings["finer_classes"] == 2
    layers = settings["stage_setup"]["gradcam"]["modes"]
    assert set(layers["cwox2s"]) == {"cluster", "class"} and set(layers["finercam"]) == {"cluster"}
    with (out / "results.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    got = {(int(r["class"]), r["contrast"]) for r in rows}
    assert got == expected_pairs(default_classifier, setup["tree"], image)
    assert {r["mode"] for r in rows} == {"swox", "cwox2s", "finercam"}
    assert {r["metric"] for r in rows} == {"spearman", "ssim"}
    for r in rows:
        v = float(r["value"])
        assert math.isnan(v) or -1.0 <= v <= 1.0
    summary = (out / "summary.md").read_text()
    assert "Finer-CAM" in summary and "Class sensitivity" in summary and "clusters of the maps: random" in summary
