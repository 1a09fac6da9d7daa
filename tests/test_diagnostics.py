"""Diagnostics of the counterfactual explainers: FG-VCE's loop reports and CCE's counterfactuals.

The engine in the contrast role keeps, per contrast pair, what the explainer's
counterfactual did (``Explanation.diagnostics``); ``Explanation.warnings()`` turns
failures into sentences, and the report writes both (JSON, HTML table).

Real model, real photo (chelsea: tiger cat 0.38, Egyptian cat 0.37, tabby 0.16,
lynx 0.02), a reference bank of photo crops (Egyptian cat, tiger cat, espresso: no
tabby, no lynx) and a tree that splits the cats into {tiger cat, Egyptian cat} and
{tabby, lynx}: with top-4, both CWOX-2s stages ask contrasts, and "tabby rather
than lynx" cannot flip in a few steps with candidates from every class.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re

import pytest
import torch
from cwox.hlta.tree import tree_from_groups
from cwox.online.diagnostics import (
    diagnostic_warnings,
    merge_diagnostics,
    question_text,
    target_json,
)
from cwox.online.engine import Engine
from cwox.online.explainers.cce import CCE, CCE_KEY
from cwox.online.explainers.fgvce import FGVCE, FGVCE_KEY
from cwox.online.report import IndexEntry, load_report, write_index, write_report
from cwox.online.targets import as_target, plan_targets
from cwox.pipelines.photos import photo_crop_bank
from PIL import Image
from skimage import data

TABBY, TIGER_CAT, EGYPTIAN_CAT, LYNX = 281, 282, 285, 287
#: Few steps: enough for tiger cat -> Egyptian cat (1 step), not for tabby -> lynx.
MAX_STEPS = 4
#: CCE at its smallest: every part runs once.
TINY_CCE = {"iterations": 1, "n_counterfactuals": 2, "n_noise": 1, "batch_size": 8}
HOSTILE = '<script>alert("x")</script> & <b>'


@pytest.fixture(scope="module")
def clf(default_classifier):
    return default_classifier


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(data.chelsea())


@pytest.fixture(scope="module")
def x(clf, photo) -> torch.Tensor:
    return clf.preprocess(photo)


@pytest.fixture(scope="module")
def bank(clf):
    return photo_crop_bank(clf)


@pytest.fixture(scope="module")
def split_cats(clf):
    return tree_from_groups([(TIGER_CAT, EGYPTIAN_CAT), (TABBY, LYNX)], clf.class_names)


@pytest.fixture(scope="module")
def fgvce_run(clf, bank, split_cats, photo):
    """The CWOX-2s explanation with FG-VCE in the contrast role, top-4."""
    return Engine(clf, split_cats, FGVCE(clf, reference_bank=bank, max_steps=MAX_STEPS), role="contrast", top_k=4).explain(photo)


def _asked(explanation) -> list[tuple[str, object, object]]:
    """(stage, fact, foil) of every contrast pair the mode asks, in the engine's order, as JSON."""
    plan = plan_targets(explanation.classes, explanation.clusters, explanation.mode)
    return [
        (stage, target_json(f), target_json(g)) for stage, pairs in plan.contrast_pairs().items() for f, g in pairs
    ]


# --------------------------------------------------------------------------- FG-VCE through the engine


def test_engine_keeps_one_fgvce_record_per_contrast_pair(fgvce_run, bank):
    e = fgvce_run
    assert e.classes == [TIGER_CAT, EGYPTIAN_CAT, TABBY, LYNX]
    records = e.diagnostics[FGVCE_KEY]
    assert set(e.diagnostics) == {FGVCE_KEY}
    asked = _asked(e)
    assert {s for s, _, _ in asked} == {"cluster", "class"} and len(asked) == 6
    assert [(r["stage"], r["fact"], r["foil"]) for r in records] == asked
    for r in records:
        # oriented from the class the model prefers; reversed pairs ran foil -> fact
        assert (r["source"], r["goal"]) == ((r["foil"], r["fact"]) if r["reversed"] else (r["fact"], r["foil"]))
        assert 1 <= r["steps"] <= r["max_steps"] == MAX_STEPS
        assert len(r["positions"]) == len(r["candidates"]) == len(r["candidate_classes"]) == r["steps"]
        assert r["flipped"] == (r["stopped"] == "flipped")
        assert r["layer"] == bank.layer  # where the features were replaced
        assert set(r["names"]) >= {str(i) for i in (r["top1_before"], r["top1_after"])}
        json.dumps(r, allow_nan=False)  # plain JSON
    # "C_1 rather than C_2" and "C_2 rather than C_1" share one loop: same record but for the question
    strip = ("fact", "foil", "reversed")
    mirror = {(r["stage"], json.dumps(r["foil"]), json.dumps(r["fact"])): r for r in records}
    for a in records:
        b = mirror[(a["stage"], json.dumps(a["fact"]), json.dumps(a["foil"]))]
        assert a["reversed"] != b["reversed"]
        assert {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}
    # the bank has Egyptian cats: tiger cat -> Egyptian cat flips; no lynx: tabby -> lynx draws from every class
    mine = {(r["fact"], r["foil"]): r for r in records if r["stage"] == "class"}
    assert mine[(TIGER_CAT, EGYPTIAN_CAT)]["flipped"] and mine[(TIGER_CAT, EGYPTIAN_CAT)]["pool"] == "goal"
    assert mine[(TIGER_CAT, EGYPTIAN_CAT)]["top1_after"] == EGYPTIAN_CAT
    tabby = mine[(TABBY, LYNX)]
    assert not tabby["flipped"] and tabby["pool"] == "all" and tabby["stopped"] == "step limit"


def test_fgvce_records_agree_with_direct_questions(fgvce_run, clf, bank, x):
    """Each record is the report of ``FGVCE.why`` asked the same oriented question alone."""
    seen = {}
    for r in fgvce_run.diagnostics[FGVCE_KEY]:
        key = (json.dumps(r["source"]), json.dumps(r["goal"]))
        if key not in seen:
            ex = FGVCE(clf, reference_bank=bank, max_steps=MAX_STEPS)
            seen[key] = ex.why(x, as_target(r["source"]), as_target(r["goal"]))["report"].as_dict()
        rep = seen[key]
        for field in ("steps", "flipped", "stopped", "pool", "criterion", "top1_before", "top1_after", "candidates"):
            assert r[field] == rep[field], field
        assert r["positions"] == [list(p) for p in rep["positions"]]
        assert r["source_prob_start"] == pytest.approx(rep["source_probs"][0], abs=1e-5)
        assert r["goal_prob_end"] == pytest.approx(rep["goal_probs"][-1], abs=1e-5)
    assert len(seen) == 3  # six pairs, three loops


def test_failed_counterfactual_gives_a_warning_naming_it(fgvce_run):
    records = fgvce_run.diagnostics[FGVCE_KEY]
    failed = [r for r in records if not r["flipped"]]
    assert 0 < len(failed) < len(records)
    warnings = fgvce_run.warnings()
    assert warnings[0] == (
        f"FG-VCE: {len(failed)} of {len(records)} counterfactuals did not flip the prediction; "
        "their contrast maps come from failed searches."
    )
    assert len(warnings) == 1 + len(failed)  # the flipped ones drew from the goal's classes: no sentence
    tabby = next(w for w in warnings if "'tabby rather than lynx'" in w)
    assert tabby == (
        f"FG-VCE: the counterfactual 'tabby rather than lynx' (class stage) did not flip within {MAX_STEPS} steps "
        "(step limit reached); its map comes from a failed search; the reference bank has no image of lynx, "
        "so candidates came from every class"
    )
    lynx = next(w for w in warnings if "'lynx rather than tabby'" in w)
    assert "run from tabby to lynx since the model prefers the foil" in lynx
    cluster = next(w for w in warnings if "'{tiger cat, Egyptian cat} rather than {tabby, lynx}'" in w)
    assert "(cluster stage)" in cluster and "no image of any of {tabby, lynx}" in cluster
    assert not any("'tiger cat rather than Egyptian cat'" in w for w in warnings)


def test_report_round_trips_diagnostics_and_shows_the_table(fgvce_run, tmp_path):
    e = fgvce_run
    paths = write_report(e, tmp_path / "r")
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["diagnostics"] == e.diagnostics and doc["warnings"] == e.warnings()
    back = load_report(tmp_path / "r")
    assert back.diagnostics == e.diagnostics and back.warnings() == e.warnings()
    entry = IndexEntry.from_explanation(e, tmp_path / "r")
    assert IndexEntry.from_report(tmp_path / "r") == entry
    page = write_index([entry], tmp_path / "site").read_text(encoding="utf-8")
    table = re.search(r'<table class="top diag"><caption>(.*?)</caption>(.*?)</table>', page)
    assert table is not None
    records = e.diagnostics[FGVCE_KEY]
    failed = sum(not r["flipped"] for r in records)
    assert table.group(1) == f"FG-VCE counterfactuals ({failed} of {len(records)} did not flip)"
    head, *rows = re.findall(r"<tr[^>]*>.*?</tr>", table.group(2))
    assert re.findall(r"<th>(.*?)</th>", head) == ["question", "stage", "steps", "flipped", "stopped", "pool"]
    assert len(rows) == len(records)
    for row, r in zip(rows, records, strict=True):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert cells == [
            html.escape(question_text(r)), r["stage"], f"{r['steps']} / {MAX_STEPS}",
            "yes" if r["flipped"] else "no", r["stopped"], r["pool"],
        ]
        assert row.startswith('<tr class="bad">') == (not r["flipped"])  # failures marked
    for w in e.warnings():
        assert f"<li>{html.escape(w)}</li>" in page
    # names from the records are escaped
    hostile = json.loads(json.dumps(e.diagnostics))
    hostile[FGVCE_KEY][0]["names"][str(TIGER_CAT)] = HOSTILE
    page = write_index([dataclasses.replace(entry, diagnostics=hostile)], tmp_path / "evil").read_text(encoding="utf-8")
    assert HOSTILE not in page and html.escape(HOSTILE) in page


def test_base_role_and_gradcam_have_no_diagnostics(clf, bank, split_cats, photo, x, tmp_path):
    ex = FGVCE(clf, reference_bank=bank, max_steps=1, class_layer=clf.cluster_layer)  # 7 x 7 partitions only
    answer = ex.contrast_role(x, [(TIGER_CAT, EGYPTIAN_CAT)], "cluster")
    assert len(answer.diagnostics[FGVCE_KEY]) == 1  # a direct call returns its own record
    assert ex.base_role(x, {"cluster": [TIGER_CAT]}).diagnostics == {}  # the base role has no counterfactual
    assert not hasattr(ex, "last_diagnostics")  # results come back from the call, none stays behind
    ex.contrast(x, [(TIGER_CAT, EGYPTIAN_CAT)])
    base = Engine(clf, split_cats, ex, role="base", top_k=2).explain(photo)  # nothing left over
    grad = Engine(clf, split_cats, "gradcam", top_k=4).explain(photo)
    for e in (base, grad):
        assert e.diagnostics == {} and e.warnings() == []
        write_report(e, tmp_path / e.explainer)
        assert load_report(tmp_path / e.explainer).diagnostics == {}
        page = write_index([IndexEntry.from_explanation(e, tmp_path / e.explainer)], tmp_path / f"site-{e.explainer}")
        text = page.read_text(encoding="utf-8")
        assert '<table class="top diag">' not in text and '<ul class="warnings' not in text


# --------------------------------------------------------------------------- CCE


def test_cce_records_meet_the_bound_and_match_the_counterfactuals(clf, x, split_cats, photo):
    ex = CCE(clf, **TINY_CCE)
    pairs = [(TIGER_CAT, EGYPTIAN_CAT), (EGYPTIAN_CAT, TIGER_CAT)]
    records = ex.contrast_role(x, pairs, "class").diagnostics[CCE_KEY]
    assert [(r["stage"], r["fact"], r["foil"]) for r in records] == [("class", f, g) for f, g in pairs]
    direct = ex.counterfactuals(x, [f for f, _ in pairs], [g for _, g in pairs])  # the same PGD, alone
    l2 = direct.deltas.flatten(2).norm(dim=2)
    for k, r in enumerate(records):
        assert len(r["l2"]) == TINY_CCE["n_counterfactuals"] and r["epsilon"] == 2.0
        assert all(v <= r["epsilon"] + 1e-4 for v in r["l2"])  # Eq. 2: ||x_0 - x_c||_2 <= epsilon
        assert r["l2"] == pytest.approx(l2[k].tolist(), abs=1e-4)
        z_after = direct.logits_after[k]
        assert r["fact_logit_after"] == pytest.approx(z_after[:, r["fact"]].tolist(), abs=1e-3)
        assert r["foil_logit_after"] == pytest.approx(z_after[:, r["foil"]].tolist(), abs=1e-3)
        assert r["fact_logit_before"] == pytest.approx(float(direct.logits_before[k, r["fact"]]), abs=1e-3)
        assert r["top1_before"] == TIGER_CAT and r["top1_after"] == z_after.argmax(1).tolist()
        reached = int((z_after[:, r["foil"]] > z_after[:, r["fact"]]).sum())
        assert r["reached_foil"] == reached
        assert r["changed_top1"] == sum(t != TIGER_CAT for t in r["top1_after"])
        json.dumps(r, allow_nan=False)
    # through the engine: the "why" of the lone cluster and the class stage's pairs
    e = Engine(clf, split_cats, CCE(clf, **TINY_CCE), role="contrast", top_k=2).explain(photo)
    got = [(r["stage"], r["fact"], r["foil"]) for r in e.diagnostics[CCE_KEY]]
    assert got == [("cluster", [TIGER_CAT, EGYPTIAN_CAT], None)] + [("class", f, g) for f, g in pairs]
    why = e.diagnostics[CCE_KEY][0]
    assert why["reached_foil"] is None and why["foil_logit_after"] is None
    assert all(v <= 2.0 + 1e-4 for r in e.diagnostics[CCE_KEY] for v in r["l2"])


# --------------------------------------------------------------------------- the sentences


def _fgvce(**kw):
    r = {
        "stage": "class", "fact": 1, "foil": [2, 3], "reversed": False, "source": 1, "goal": [2, 3],
        "steps": 5, "max_steps": 5, "flipped": False, "stopped": "step limit", "pool": "goal",
        "names": {"1": "tabby", "2": "lynx"},
    }
    return {**r, **kw}


def test_warning_sentences():
    names = {"3": "cougar"}
    assert diagnostic_warnings({}) == [] and diagnostic_warnings(None) == []
    ok = _fgvce(flipped=True, stopped="flipped", steps=2)
    assert diagnostic_warnings({FGVCE_KEY: [ok]}, names) == []
    assert diagnostic_warnings({FGVCE_KEY: [{**ok, "pool": "all"}]}, names) == [
        "FG-VCE: the counterfactual 'tabby rather than {lynx, cougar}' (class stage) flipped in 2 steps, "
        "but the reference bank has no image of any of {lynx, cougar}, so candidates came from every class"
    ]
    stuck = _fgvce(stopped="no position left", steps=1, fact=[2, 3], foil=1, source=1, goal=[2, 3], reversed=True)
    assert diagnostic_warnings({FGVCE_KEY: [ok, stuck]}) == [
        "FG-VCE: 1 of 2 counterfactuals did not flip the prediction; their contrast maps come from failed searches.",
        "FG-VCE: the counterfactual '{lynx, class 3} rather than tabby' (class stage, run from tabby to "
        "{lynx, class 3} since the model prefers the foil) did not flip within 1 step (no position left to "
        "replace); its map comes from a failed search",
    ]
    cce = {"stage": "cluster", "fact": 1, "foil": 2, "epsilon": 2.0, "l2": [2.0, 1.5], "reached_foil": 0}
    assert diagnostic_warnings({CCE_KEY: [cce, {**cce, "reached_foil": 1}, {**cce, "foil": None}]}, {"1": "a", "2": "b"}) == [
        "CCE: none of the 2 counterfactuals of 'a rather than b' (cluster stage) made the model prefer b within "
        "the L2 bound epsilon=2; the map compares perturbations that moved towards the foil without reaching it"
    ]
    merged: dict = {}
    merge_diagnostics(merged, {FGVCE_KEY: [ok]})
    merge_diagnostics(merged, None)
    merge_diagnostics(merged, {FGVCE_KEY: [stuck], CCE_KEY: [cce]})
    assert merged == {FGVCE_KEY: [ok, stuck], CCE_KEY: [cce]}


def test_cli_prints_the_warnings(clf, bank, split_cats, tmp_path):
    """``cwox explain --explainer fgvce --reference-bank B``: a failed search is said on stderr, exit 0."""
    from click.testing import CliRunner
    from cwox.store.reference_bank import save_reference_bank
    from cwox.store.trees import save_tree

    from cwox.cli import main

    store = save_reference_bank(bank, tmp_path / "bank.zarr", group=None)
    save_tree(split_cats, tmp_path / "tree", meta={"model": clf.name}, publish=True)
    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.png")
    res = CliRunner().invoke(main, [
        "explain", str(tmp_path / "chelsea.png"), "--explainer", "fgvce", "--reference-bank", str(store),
        "--tree", str(tmp_path / "tree"), "--top-k", "4", "--device", "cpu", "-p", f"max_steps={MAX_STEPS}",
        "--out", str(tmp_path / "out"),
    ], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "warning: FG-VCE: the counterfactual 'tabby rather than lynx' (class stage) did not flip" in res.stderr
    saved = json.loads(next((tmp_path / "out").glob("*/explanation.json")).read_text())
    assert saved["warnings"] and all(f"warning: {w}" in res.stderr for w in saved["warnings"])
