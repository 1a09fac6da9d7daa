"""The explainer contract, checked for every registered explainer on a tiny CNN.

Each explainer, at tiny settings, on a 64 x 64 image: maps of the right shape, dtype and
device, finite; no hooks left on the model; the same maps from two instances with the
same seed; the same maps (within ``BATCH_RTOL``) whatever its internal batch size, in the
style of captum's tests that rerun a case at several internal batch sizes; a contrast role
and a direct question exactly as declared (``supports_contrast``, ``question_maps``), and
diagnostics only of the kinds it declares (``records``), as JSON.

An explainer added to the registry is checked here without a line of this file changed
(at its default settings; :data:`TINY` keeps the built-in ones fast).
"""

from __future__ import annotations

import json

import pytest
import torch
from cwox.online.explainers import available_explainers, count_hooks, explainer_class, get_explainer

#: Tiny settings: every part of each method runs, a few passes each.
TINY = {
    "rise": {"n_masks": 24, "cells": 4},
    "cce": {"iterations": 2, "n_counterfactuals": 2, "n_noise": 2},
    "suny": {"n_causes": 2, "n_samples": 2},
    "fgvce": {"max_steps": 2},
}
#: Batch sizes each case is rerun at: one row at a time, an odd split, everything at once.
BATCH_SIZES = (1, 3, 64)
#: How far maps may move with the internal batch size, relative to the largest map value.
#: Only float rounding may differ (a batch's shape picks the convolution kernels: about
#: 1e-7 relative on a forward); CCE's PGD carries it through its steps and is the loosest.
BATCH_RTOL = 1e-3
TARGETS = [0, frozenset({1, 2})]
PAIRS = [(0, 1), (frozenset({1, 2}), 3)]
NAMES = sorted(available_explainers())


@pytest.fixture(scope="module")
def bank(tiny):
    """A reference bank of random images labelled by the tiny model's own predictions (FG-VCE)."""
    from cwox.offline.reference_bank import bank_from_tensors

    images = torch.randn(24, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    labels = tiny.logits(images).argmax(1)
    return bank_from_tensors(tiny, images, labels, top_m=2, min_confidence=0.0, per_class=4)


def make(name, tiny, bank, **extra):
    params = {**TINY.get(name, {}), **extra}
    cls = explainer_class(name)
    if "reference_bank" in cls.cli_options.values():
        params["reference_bank"] = bank
    return get_explainer(name, tiny, **params)


def _answers(ex, image):
    base = ex.base_role(image, {"cluster": TARGETS, "class": TARGETS})
    contrast = ex.contrast_role(image, PAIRS, "cluster") if ex.supports_contrast else None
    return base, contrast


@pytest.mark.parametrize("name", NAMES)
def test_maps_shape_dtype_device_finite_and_no_hooks(name, tiny, bank, image):
    ex = make(name, tiny, bank)
    base, contrast = _answers(ex, image)
    answers = [base] + ([contrast] if contrast is not None else [])
    assert set(base.maps) == {"cluster", "class"}
    for a in answers:
        for m in [*a.maps.values(), *a.extra_maps.values()]:
            assert m.shape[-2:] == (64, 64) and m.dtype == torch.float32 and m.device == tiny.device
            assert torch.isfinite(m).all()
        assert json.loads(json.dumps(a.diagnostics)) == a.diagnostics  # plain JSON
        assert set(a.diagnostics) <= {kind.key for kind in ex.records}  # only declared kinds
    assert base.maps["cluster"].shape == (len(TARGETS), 64, 64)
    torch.testing.assert_close(ex.explain(image, TARGETS, stage="class"), base.maps["class"], rtol=0, atol=0)
    if contrast is not None:
        assert contrast.maps["cluster"].shape == (len(PAIRS), 64, 64)
    else:
        with pytest.raises(NotImplementedError, match="no native contrast role"):
            ex.contrast(image, PAIRS)
    assert count_hooks(tiny.module) == 0
    assert not hasattr(ex, "last_diagnostics") and not hasattr(ex, "last_extra_maps")


@pytest.mark.parametrize("name", NAMES)
def test_direct_question_as_declared(name, tiny, bank, image):
    ex = make(name, tiny, bank)
    if not ex.question_maps:
        with pytest.raises(NotImplementedError, match="no direct question"):
            ex.why(image, 0, 1)
        return
    probs = tiny.probabilities(image[None])[0]
    fact, foil = (int(i) for i in probs.argsort(descending=True)[:2])  # the model prefers the fact
    answer = ex.why(image, fact, foil)
    for key in ex.question_maps:
        assert answer[key].shape == (64, 64) and torch.isfinite(answer[key]).all()
    assert count_hooks(tiny.module) == 0


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_maps(name, tiny, bank, image):
    first, second = (_answers(make(name, tiny, bank), image) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        if a is None:
            continue
        for stage in a.maps:
            assert torch.equal(a.maps[stage], b.maps[stage]), stage
        assert a.diagnostics == b.diagnostics


@pytest.mark.parametrize("name", NAMES)
def test_maps_do_not_depend_on_the_internal_batch_size(name, tiny, bank, image):
    runs = [_answers(make(name, tiny, bank, batch_size=b), image) for b in BATCH_SIZES]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            if a is None:
                continue
            for stage, m in a.maps.items():
                scale = float(m.abs().max()) or 1.0
                torch.testing.assert_close(b.maps[stage], m, rtol=0, atol=BATCH_RTOL * scale)
