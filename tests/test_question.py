"""The direct question (--why/--rather-than/--other), the engine's role switch, and the CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from cwox.online.engine import Engine
from cwox.online.explainers import get_explainer
from cwox.online.question import answer_question, resolve_classes, write_question_report
from PIL import Image
from skimage import data

from cwox.commands.explain import explain


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory):
    p = tmp_path_factory.mktemp("q") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(p)
    return p


def test_resolve_classes(default_classifier):
    names = default_classifier.class_names
    assert resolve_classes("tiger cat, 281", names) == [282, 281]
    assert resolve_classes(["Egyptian Cat"], names) == [285]
    with pytest.raises(ValueError, match="did you mean tiger cat"):
        resolve_classes("tiger kat", names)
    with pytest.raises(ValueError, match="outside"):
        resolve_classes("1000", names)


def test_suny_question_writes_its_pair_of_maps(default_classifier, tmp_path):
    clf = default_classifier
    suny = get_explainer("suny", clf, layer="_blocks.14", n_causes=3, n_samples=2)
    image = Image.fromarray(data.chelsea())
    answer = answer_question(suny, clf, image, [282], [285])
    assert {"sufficiency", "necessity"} <= set(answer["maps"])
    for m in answer["maps"].values():
        assert m.shape == (224, 224) and np.isfinite(m).all()
    files = write_question_report(tmp_path, np.asarray(clf.crop(image)), answer,
                                  {"question": "why tiger cat rather than Egyptian cat"},
                                  order=("sufficiency", "necessity"))
    meta = json.loads(files["json"].read_text())
    assert meta["maps"][:2] == ["sufficiency", "necessity"]
    with np.load(files["npz"]) as z:
        assert z["sufficiency"].shape == (224, 224) and z["image"].shape == (224, 224, 3)
    png = np.asarray(Image.open(files["png"]).convert("L"), dtype=float)
    assert png.std() > 10  # a picture, not a blank page
    with pytest.raises(ValueError, match="must differ"):
        answer_question(suny, clf, image, [282], [282, 281])
    with pytest.raises(ValueError, match="O-contrast"):
        answer_question(suny, clf, image, [282], [285], other=image)


def test_engine_role_switch(default_classifier):
    clf = default_classifier
    with pytest.raises(ValueError, match="no native contrast role"):
        Engine(clf, None, "gradcam", role="contrast")
    with pytest.raises(ValueError, match="unknown role"):
        Engine(clf, None, "gradcam", role="sideways")
    assert Engine(clf, None, "gradcam").role == "base"
    params = {"layer": "_blocks.14", "n_causes": 3, "n_samples": 2}
    assert Engine(clf, None, "suny", explainer_params=params).role == "contrast"
    assert Engine(clf, None, "suny", role="base", explainer_params=params).role == "base"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--explainer", "cce", "--why", "tiger kat"], "did you mean tiger cat"),
        (["--explainer", "suny", "--why", "282", "--rather-than", "282"], "must differ"),
        (["--explainer", "gradcam", "--why", "282"], "--why needs --explainer"),
        (["--rather-than", "281"], "go with --why"),
        (["--explainer", "gradcam", "--role", "contrast", "--tree", "none"], "no native contrast role"),
        (["--reference-bank", "x.zarr"], "fgvce only"),
    ],
)
def test_question_cli_errors(chelsea, tmp_path, args, message):
    res = CliRunner().invoke(explain, [str(chelsea), "--out", str(tmp_path), "--device", "cpu", *args])
    assert res.exit_code == 2 and message in res.output, res.output
