"""``Explainer.default_params``: what an explainer ships with for a model reaches the command
line for whichever explainer is selected, under the user's own parameters (no command names
an explainer; FG-VCE's embedded reference bank comes this way)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner
from cwox.online.explainers import explainer_class, register
from cwox.online.explainers.gradcam import GradCAM
from cwox.pipelines.default_bank import EMBEDDED_BANK
from PIL import Image
from skimage import data

from cwox.cli import main

NAME = "gradcam_shipped_test"


@register(NAME)
class ShippedLayer(GradCAM):
    """Grad-CAM that ships a cluster layer of its own for the default model only."""

    @classmethod
    def default_params(cls, classifier) -> dict[str, Any]:
        return {"cluster_layer": classifier.class_layer} if classifier.name == "efficientnet_lite0" else {}


def _settings(tmp_path, *extra: str) -> dict[str, Any]:
    photo = tmp_path / "chelsea.png"
    if not photo.exists():
        Image.fromarray(data.chelsea()).save(photo)
    out = tmp_path / f"out{len(extra)}"
    res = CliRunner().invoke(main, ["explain", str(photo), "--explainer", NAME, "--tree", "none", "--top-k", "2",
                                    "--device", "cpu", "--out", str(out), *extra], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads((out / "chelsea" / "explanation.json").read_text())["settings"]["explainer"]


def test_default_params_reach_the_cli_under_the_users_own(tmp_path, default_classifier):
    clf = default_classifier
    assert clf.class_layer != clf.cluster_layer  # else the test could not tell the defaults from the class's
    assert _settings(tmp_path)["cluster_layer"] == clf.class_layer  # the explainer's default for this model
    assert _settings(tmp_path, "-p", f"cluster_layer={clf.cluster_layer}")["cluster_layer"] == clf.cluster_layer
    # FG-VCE ships its embedded bank for the default model this way.
    assert explainer_class("fgvce").default_params(clf) == {"reference_bank": str(EMBEDDED_BANK)}
    assert explainer_class("gradcam").default_params(clf) == {}
