"""``-p/--param``: explainer parameters on the command line (``cwox explain``, ``cwox evaluate``).

The parser and its checks on their own, then both commands end to end on chelsea with the
default model and cheap settings (FG-VCE's base role, a few CCE steps, a large CAUC step).
"""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from tree_factories import cat_tree, photo_folder

from cwox.cli import main
from cwox.commands.common import explainer_keys, explainer_params, parse_params


@pytest.fixture(scope="module")
def setup(tmp_path_factory, default_classifier):
    from cwox.store.trees import save_tree

    root = tmp_path_factory.mktemp("params")
    photos = photo_folder(root / "photos")
    store = root / "trees"
    save_tree(cat_tree(default_classifier.class_names), store, meta={"model": "efficientnet_lite0"}, publish=True)
    return {"root": root, "chelsea": photos / "chelsea.jpg", "store": store}


def run(*args) -> click.testing.Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# --------------------------------------------------------------------------- the parser


def test_values_are_python_literals_else_strings():
    params = parse_params([
        "suny.n_causes=5", "suny.layer=_blocks.14", "fgvce.sigma=1e-3", "cce.class_layer=None",
        "rise.p='0.3'", "cce.score=probability", "SUNY.n_samples = 3", "gradcam.class_layer=a=b",
        "rise.cells=(1, 2)", "cce.base_map=True",
    ])
    assert params == {
        "suny": {"n_causes": 5, "layer": "_blocks.14", "n_samples": 3},
        "fgvce": {"sigma": 1e-3},
        "cce": {"class_layer": None, "score": "probability", "base_map": True},
        "rise": {"p": "0.3", "cells": (1, 2)},
        "gradcam": {"class_layer": "a=b"},
    }
    assert isinstance(params["suny"]["n_causes"], int) and isinstance(params["fgvce"]["sigma"], float)


def test_key_without_a_name_is_for_the_default_explainer():
    assert parse_params(["n_causes=5", "suny.n_samples=2"], default="suny") == {
        "suny": {"n_causes": 5, "n_samples": 2}
    }
    with pytest.raises(click.BadParameter, match="name the explainer"):
        parse_params(["n_causes=5"])


@pytest.mark.parametrize("item", [
    "suny.n_causes", "suny.=5", ".n_causes=5", "suny.n causes=5", "suny.n_causes=", "suny.a.b=1", "=5",
])
def test_malformed_items_are_refused(item):
    with pytest.raises(click.BadParameter, match="EXPLAINER.KEY=VALUE"):
        parse_params([item], default="suny")


def test_a_key_given_twice_is_refused():
    with pytest.raises(click.BadParameter, match="suny.n_causes is given twice"):
        parse_params(["n_causes=5", "suny.n_causes=6"], default="suny")


def test_keys_come_from_the_explainer_signature():
    assert explainer_keys("gradcam") == ["cluster_layer", "class_layer", "batch_size"]
    assert {"n_causes", "n_samples", "layer", "seed"} <= set(explainer_keys("suny"))
    assert "classifier" not in explainer_keys("fgvce")


def test_checks_names_keys_and_dedicated_options():
    assert explainer_params(["fgvce.class_layer=_conv_head", "rise.p=0.5"], ["fgvce", "rise"],
                            option="--explainers") == {"fgvce": {"class_layer": "_conv_head"}, "rise": {"p": 0.5}}
    with pytest.raises(click.BadParameter, match=r"'suny' is not among the explainers --explainers selects"):
        explainer_params(["suny.n_causes=5"], ["gradcam", "rise"], option="--explainers")
    with pytest.raises(click.BadParameter, match="name the explainer"):
        explainer_params(["n_masks=5"], ["gradcam", "rise"], option="--explainers")
    with pytest.raises(click.BadParameter, match="it takes cluster_layer, class_layer .batch_size by --batch-size"):
        explainer_params(["layer=x"], ["gradcam"], option="--explainer")
    with pytest.raises(click.BadParameter, match="rise.seed is set by --seed"):
        explainer_params(["seed=1"], ["rise"], option="--explainer")
    with pytest.raises(click.BadParameter, match="rise.n_masks is set by --n-masks"):
        explainer_params(["n_masks=8"], ["rise"], option="--explainer",
                         dedicated={"rise": {"n_masks": "--n-masks"}})
    assert explainer_params(["n_masks=8"], ["rise"], option="--explainer") == {"rise": {"n_masks": 8}}


# --------------------------------------------------------------------------- cwox explain


def test_explain_records_the_parameter_and_the_default_without_it(setup):
    docs = {}
    for label, extra in (("given", ["-p", "class_layer=_conv_head"]), ("default", [])):
        out = setup["root"] / f"explain-{label}"
        res = run("explain", setup["chelsea"], "--tree", "none", "--device", "cpu", "--explainer", "fgvce",
                  "--mode", "swox", "--top-k", "2", *extra, "--out", out)  # swox: the cluster layer only
        assert res.exit_code == 0, res.output
        docs[label] = json.loads((out / "chelsea" / "explanation.json").read_text())["settings"]["explainer"]
    assert docs["given"]["class_layer"] == "_conv_head"
    assert docs["default"]["class_layer"] != "_conv_head"
    assert docs["given"]["cluster_layer"] == docs["default"]["cluster_layer"] == "_conv_head"


def test_explain_why_takes_parameters_and_seed(setup):
    out = setup["root"] / "why"
    res = run("explain", setup["chelsea"], "--device", "cpu", "--explainer", "cce", "--why", "tiger cat",
              "--rather-than", "tabby", "-p", "iterations=1", "-p", "cce.n_counterfactuals=1",
              "-p", "n_noise=1", "--seed", "3", "--out", out)
    assert res.exit_code == 0, res.output
    (meta,) = (out / "chelsea").glob("*.json")
    settings = json.loads(meta.read_text())["settings"]
    assert (settings["iterations"], settings["n_counterfactuals"], settings["n_noise"]) == (1, 1, 1)
    assert settings["seed"] == 3


@pytest.mark.parametrize(("args", "words"), [
    (["--explainer", "fgvce", "-p", "n_causes=5"],
     ["fgvce has no parameter 'n_causes'", "reference_bank, cluster_layer, class_layer, sigma, max_steps"]),
    (["--explainer", "rise", "--n-masks", "10", "-p", "rise.n_masks=5"], ["rise.n_masks is set by --n-masks"]),
    (["--explainer", "rise", "-p", "seed=5"], ["rise.seed is set by --seed"]),
    (["--explainer", "gradcam", "-p", "suny.n_causes=5"], ["'suny' is not among", "--explainer", "(gradcam)"]),
    (["--explainer", "gradcam", "-p", "class_layer"], ["use EXPLAINER.KEY=VALUE"]),
])
def test_explain_bad_parameters_exit_2(setup, args, words):
    out = setup["root"] / "refused"
    res = run("explain", setup["chelsea"], "--tree", "none", "--device", "cpu", *args, "--out", out)
    assert res.exit_code == 2, res.output
    assert "-p' / '--param'" in res.output
    for word in words:
        assert word in res.output
    assert not out.exists()


def test_explain_bad_value_is_the_explainers_message(setup):
    out = setup["root"] / "bad-value"
    res = run("explain", setup["chelsea"], "--tree", "none", "--device", "cpu", "--explainer", "suny",
              "-p", "n_causes=-3", "--out", out)
    assert res.exit_code == 2, res.output
    assert "n_causes (the size of F_N and F_S) must be >= 1, got -3" in res.output
    assert "Traceback" not in res.output and not out.exists()


def test_explain_value_of_the_wrong_type_names_the_parameter(setup):
    out = setup["root"] / "bad-type"
    res = run("explain", setup["chelsea"], "--tree", "none", "--device", "cpu", "--explainer", "fgvce",
              "-p", "max_steps=None", "--out", out)
    assert res.exit_code == 2, res.output
    assert "-p max_steps=None" in res.output  # Python's own message alone would not say which
    assert "Traceback" not in res.output and not out.exists()


# --------------------------------------------------------------------------- cwox evaluate


def evaluate_args(setup, out, *extra) -> list:
    return ["evaluate", setup["chelsea"], "--tree", setup["store"], "--device", "cpu", "--modes", "cwox2s",
            "--metrics", "cauc", "--max-k", "2", "--step", "100000", "--no-plot", "--quiet", *extra,
            "--out", out]


def test_evaluate_records_the_parameter(setup):
    out = setup["root"] / "evaluate"
    res = run(*evaluate_args(setup, out, "--explainers", "fgvce", "-p", "fgvce.class_layer=_conv_head"))
    assert res.exit_code == 0, res.output
    settings = json.loads((out / "settings.json").read_text())
    assert settings["explainer_params"] == {"fgvce": {"class_layer": "_conv_head"}}
    assert settings["explainer_settings"]["fgvce"]["class_layer"] == "_conv_head"
    assert settings["explainers"] == ["fgvce"] and settings["modes"] == ["cwox2s"]
    assert "Explainer parameters: fgvce class_layer='_conv_head'." in (out / "summary.md").read_text()
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) > 1 and all(",fgvce,cwox2s," in r for r in rows[1:])


@pytest.mark.parametrize(("args", "words"), [
    (["--explainers", "gradcam,fgvce", "-p", "class_layer=_conv_head"], ["name the explainer"]),
    (["--explainers", "gradcam", "-p", "fgvce.class_layer=_conv_head"], ["'fgvce' is not among", "--explainers"]),
    (["--explainers", "rise", "--n-masks", "8", "-p", "rise.n_masks=8"], ["rise.n_masks is set by --n-masks"]),
    (["--explainers", "gradcam", "-p", "gradcam.sigma=1"], ["gradcam has no parameter 'sigma'",
                                                             "cluster_layer, class_layer"]),
    (["--explainers", "gradcam,suny", "-p", "suny.n_causes=-3"], ["must be >= 1, got -3"]),
])
def test_evaluate_bad_parameters_exit_2(setup, args, words):
    out = setup["root"] / "evaluate-refused"
    res = run(*evaluate_args(setup, out, *args))
    assert res.exit_code == 2, res.output
    for word in words:
        assert word in res.output
    assert not out.exists()
