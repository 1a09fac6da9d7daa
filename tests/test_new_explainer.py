"""An explainer is one file plus one registry line: a new one, declared in this test file only,
gets a CLI run (both roles and a direct question), a report with its diagnostics, and
evaluation rows, with no other file of cwox changed.

The explainer is small but real: occlusion on a coarse grid of the default model's input
(the drop of a target's probability when a cell is greyed out), with a native contrast
role (P's map minus Q's) that records, per pair, whether the model prefers P to Q.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from cwox.online.diagnostics import (
    RecordKind,
    Table,
    class_ids,
    class_names_json,
    question_text,
    target_json,
)
from cwox.online.explainers import (
    Answer,
    Explainer,
    available_explainers,
    explainer_class,
    register,
)
from cwox.online.explainers.base import upsample
from cwox.online.targets import Target, membership_matrix
from tree_factories import cat_tree, photo_folder

from cwox.cli import main

NAME = "occlusion_test"
KEY = "occlusion_test_pairs"


def _warnings(records: Sequence[Mapping[str, Any]], names: Mapping[str, str] | None) -> list[str]:
    return [f"occlusion: the model prefers the foil in '{question_text(r, names)}'" for r in records
            if r["gap"] < 0]


def _table(records: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> Table:
    rows = [(r["gap"] < 0, [(question_text(r, names), False), (f"{r['gap']:.3f}", r["gap"] < 0)]) for r in records]
    return Table("Occlusion pairs", ("question", "p(P) - p(Q)"), rows)


@register(NAME)
class Occlusion(Explainer):
    """Grey out each cell of a ``cells x cells`` grid; a target's map is its probability drop."""

    supports_contrast = True
    question_maps = ("fact", "foil")
    records = (RecordKind(KEY, _warnings, _table),)
    default_normalization = "max"

    def __init__(self, classifier, *, cells: int = 3, batch_size: int | None = None) -> None:
        super().__init__(classifier, batch_size=batch_size)
        self.cells = int(cells)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "cells": self.cells}

    @torch.no_grad()
    def _maps(self, x: torch.Tensor, targets: list[Target]) -> tuple[torch.Tensor, torch.Tensor]:
        """``T x H x W`` probability drops, and the targets' probabilities on ``x``."""
        h, w = x.shape[-2:]
        n = self.cells
        variants = [x]
        for i in range(n * n):
            v = x.clone()
            r, c = divmod(i, n)
            v[:, r * h // n:(r + 1) * h // n, c * w // n:(c + 1) * w // n] = 0.0
            variants.append(v)
        member = membership_matrix(targets, self.classifier.n_classes, self.device)
        p = self.classifier.probabilities(torch.stack(variants)) @ member.T  # (1 + n*n) x T
        drops = (p[:1] - p[1:]).T.reshape(len(targets), n, n)
        return upsample(drops.float(), (h, w)), p[0]

    def base_role(self, image, requests) -> Answer:
        x = self.prepare(image)
        return Answer({s: self._maps(x, t)[0] for s, t in self.checked_requests(requests).items()})

    def contrast_role(self, image, pairs, stage) -> Answer:
        x = self.prepare(image)
        facts = self.check_targets([f for f, _ in pairs], self.classifier.n_classes)
        foils = self.check_targets([g for _, g in pairs], self.classifier.n_classes)
        maps, p = self._maps(x, facts + foils)
        k = len(facts)
        names = self.classifier.class_names
        records = [{"stage": stage, "fact": target_json(f), "foil": target_json(g), "gap": float(p[i] - p[k + i]),
                    "names": class_names_json(class_ids(f, g), names)}
                   for i, (f, g) in enumerate(zip(facts, foils, strict=True))]
        return Answer({stage: maps[:k] - maps[k:]}, diagnostics={KEY: records})

    def why(self, image, fact, foil=None, **options) -> dict[str, Any]:
        x = self.prepare(image)
        targets = self.check_targets([fact] if foil is None else [fact, foil], self.classifier.n_classes)
        maps, _ = self._maps(x, targets)
        return {"fact": maps[0], "foil": maps[-1] - maps[0] if foil is not None else -maps[0]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, default_classifier):
    from cwox.store.trees import save_tree

    root = tmp_path_factory.mktemp("new_explainer")
    photos = photo_folder(root / "photos")
    (photos / "broken.jpg").unlink()
    store = root / "trees"
    save_tree(cat_tree(default_classifier.class_names), store, meta={"model": "efficientnet_lite0"}, publish=True)
    return {"root": root, "photos": photos, "store": store}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_registered_at_run_time():
    assert NAME in available_explainers() and explainer_class(NAME) is Occlusion


@pytest.mark.slow
def test_cli_run_and_report_of_a_new_explainer(setup):
    out = setup["root"] / "explain"
    res = run("explain", setup["photos"] / "chelsea.jpg", "--tree", setup["store"], "--explainer", NAME,
              "-p", "cells=2", "--top-k", "4", "--out", out)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "chelsea" / "explanation.json").read_text())
    assert doc["explainer"] == NAME and doc["settings"]["role"] == "contrast"
    assert doc["settings"]["explainer"]["cells"] == 2
    records = doc["diagnostics"][KEY]  # the cats' cluster rather than the rest, and pairs inside it
    assert records and all(set(r) == {"stage", "fact", "foil", "gap", "names"} for r in records)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Occlusion pairs" in page and page.count("<tr") > len(records)
    for r in records:  # the table has the explainer's own rows
        assert f"{r['gap']:.3f}" in page
    # Its warnings: one per pair whose foil the model prefers (Explanation.warnings() asked the kind).
    assert doc["warnings"] == _warnings(records, None) and len(doc["warnings"]) == sum(r["gap"] < 0 for r in records)
    base = run("explain", setup["photos"] / "chelsea.jpg", "--tree", setup["store"], "--explainer", NAME,
               "--role", "base", "--top-k", "4", "--out", setup["root"] / "base")
    assert base.exit_code == 0, base.output
    assert json.loads((setup["root"] / "base" / "chelsea" / "explanation.json").read_text())["diagnostics"] == {}


@pytest.mark.slow
def test_direct_question_of_a_new_explainer(setup):
    out = setup["root"] / "why"
    res = run("explain", setup["photos"] / "chelsea.jpg", "--explainer", NAME, "--why", "tabby",
              "--rather-than", "tiger cat", "--out", out)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "chelsea" / "why.json").read_text())
    assert doc["maps"] == ["fact", "foil"] and doc["explainer"] == NAME
    other = run("explain", setup["photos"] / "chelsea.jpg", "--explainer", NAME, "--why", "tabby",
                "--other", setup["photos"] / "coffee.png", "--out", out)
    assert other.exit_code == 2 and "O-contrast" in other.output  # it does not declare other_image


@pytest.mark.slow
def test_evaluation_rows_of_a_new_explainer(setup):
    out = setup["root"] / "evaluate"
    res = run("evaluate", setup["photos"] / "chelsea.jpg", "--tree", setup["store"], "--device", "cpu",
              "--explainers", NAME, "-p", "cells=2", "--modes", "cwox2s,swox", "--metrics", "cauc,cdrop",
              "--step", "112", "--quiet",
              "--out", out)
    assert res.exit_code == 0, res.output
    with (out / "results.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if not r["error"]]
    assert rows and {r["explainer"] for r in rows} == {NAME} and {r["mode"] for r in rows} == {"cwox2s", "swox"}
    assert {"cauc", "cdrop"} <= {r["metric"] for r in rows}
    # Every pair scored by the contrastive metrics (Sec. 5.1); a similarity of a constant map may be nan.
    assert all(r["value"] not in ("", "nan") for r in rows if r["metric"] in ("cauc", "cdrop"))
