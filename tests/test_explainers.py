"""Base explainers: batched Grad-CAM, shared-pass RISE, hooks, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cwox.online.explainers import (
    available_explainers,
    capture_activations,
    count_hooks,
    get_explainer,
)
from cwox.online.explainers.gradcam import GradCAM
from cwox.online.explainers.rise import RISE, MaskSet, MaskSetup
from tiny_net import N_CLASSES


def reference_gradcam(clf, x, layer, ids):
    """Grad-CAM the textbook way: one forward and one backward of one (compound) logit."""
    store = {}
    handle = clf.layer(layer).register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = clf.module(x[None].clone().requires_grad_(True))
    finally:
        handle.remove()
    z = torch.logsumexp(logits[0, list(ids)], dim=0)
    (g,) = torch.autograd.grad(z, store["a"])
    cam = (g.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].detach()


# --------------------------------------------------------------------------- Grad-CAM


def test_gradcam_batched_equals_one_at_a_time(tiny, image):
    targets = [0, 3, frozenset({1, 2}), frozenset({0, 4, 5})]
    ex = GradCAM(tiny, batch_size=3)  # two backward chunks
    both = ex.explain_stages(image, {"cluster": targets, "class": targets})
    for stage, layer in (("cluster", "head"), ("class", "features")):
        assert both[stage].shape == (4, 64, 64)
        for k, tg in enumerate(targets):
            ids = [tg] if isinstance(tg, int) else sorted(tg)
            single = ex.explain(image, [tg], stage=stage)[0]
            assert torch.allclose(both[stage][k], single, atol=1e-5)
            assert torch.allclose(single, reference_gradcam(tiny, image, layer, ids), atol=1e-5)
    assert count_hooks(tiny.module) == 0


def test_gradcam_real_model_batched_equals_single(default_classifier):
    from PIL import Image
    from skimage import data

    x = default_classifier.preprocess(Image.fromarray(data.chelsea()))
    ex = GradCAM(default_classifier)
    targets = [281, 282, 285, frozenset({281, 282, 285})]
    many = ex.explain_stages(x, {"cluster": targets, "class": targets})
    for stage in ("cluster", "class"):
        for k, tg in enumerate(targets):
            single = ex.explain(x, [tg], stage=stage)[0]
            scale = single.abs().max()
            assert torch.allclose(many[stage][k], single, atol=1e-5 * max(1.0, float(scale)))


def test_gradcam_class_basis_path_equals_direct_path(tiny, image):
    # 7 targets over 3 classes: one backward per class, targets mixed (exact);
    # each target alone (or a set of 2 targets over 3 classes): backward of its own logit.
    targets = [0, 1, 2, frozenset({0, 1}), frozenset({1, 2}), frozenset({0, 2}), frozenset({0, 1, 2})]
    ex = GradCAM(tiny, batch_size=2)
    mixed = ex.explain_stages(image, {"cluster": targets[:3], "class": targets})
    direct = ex.explain(image, [frozenset({0, 1, 2}), frozenset({1, 2})], stage="class")
    assert torch.allclose(mixed["class"][6], direct[0], atol=1e-5)
    assert torch.allclose(mixed["class"][4], direct[1], atol=1e-5)
    ref = reference_gradcam(tiny, image, "head", [2])
    assert torch.allclose(mixed["cluster"][2], ref, atol=1e-5)


def test_gradcam_compound_is_probability_weighted_mix(tiny, image):
    # d logsumexp / dz_c = softmax over the members, and Grad-CAM is linear in the gradient
    ex = GradCAM(tiny)
    maps = ex.explain(image, [1, 2, frozenset({1, 2})])
    with torch.no_grad():
        z = tiny.module(image[None])[0, [1, 2]]
    w = torch.softmax(z, 0)
    assert torch.allclose(maps[2], w[0] * maps[0] + w[1] * maps[1], atol=1e-5)


def test_gradcam_keeps_signed_maps(tiny, image):
    maps = GradCAM(tiny).explain(image, list(range(N_CLASSES)))
    assert (maps < 0).any() and (maps > 0).any()  # no ReLU inside the base explainer


def test_gradcam_fallback_without_vmap_matches(tiny, image):
    targets = [0, 1, frozenset({2, 3})]
    ex = GradCAM(tiny)
    fast = ex.explain(image, targets)
    ex._vmap_ok = False
    slow = ex.explain(image, targets)
    assert torch.allclose(fast, slow, atol=1e-6)


def test_hooks_removed_after_success_and_after_exception(tiny, image):
    assert count_hooks(tiny.module) == 0
    GradCAM(tiny).explain(image, [0, 1], stage="class")
    assert count_hooks(tiny.module) == 0
    tiny.module.boom = True
    try:
        with pytest.raises(RuntimeError, match="boom"):
            GradCAM(tiny).explain_stages(image, {"cluster": [0], "class": [1]})
    finally:
        tiny.module.boom = False
    assert count_hooks(tiny.module) == 0
    with pytest.raises(KeyError):
        with capture_activations(tiny.module, ["head"]):
            assert count_hooks(tiny.module) == 1
            raise KeyError("inside")
    assert count_hooks(tiny.module) == 0


def test_session_shares_the_clean_forward(tiny, image):
    ex = GradCAM(tiny)
    with ex.session(image) as session:
        expect = tiny.probabilities(image[None])[0]
        assert torch.allclose(session.probabilities, expect, atol=1e-6)
        assert count_hooks(tiny.module) == 0  # hooks lived only during the forward
        first = session.explain_stages({"class": [0, 1]})
        again = session.explain_stages({"class": [0, 1], "cluster": [2]})  # graph still usable
        assert torch.allclose(first["class"], again["class"], atol=1e-6)
    with pytest.raises(RuntimeError, match="closed"):
        session.explain_stages({"class": [0]})
    rise = RISE(tiny, n_masks=8, cells=4)
    with rise.session(image) as session:
        assert torch.allclose(session.probabilities, expect, atol=1e-6)
        assert session.explain_stages({"cluster": [1]})["cluster"].shape == (1, 64, 64)


def test_bad_inputs_have_clear_errors(tiny, image):
    ex = GradCAM(tiny)
    with pytest.raises(ValueError, match="outside 0..5"):
        ex.explain(image, [7])
    with pytest.raises(ValueError, match="unknown stage"):
        ex.explain(image, [0], stage="pixel")
    with pytest.raises(ValueError, match="3 x H x W"):
        ex.explain(torch.zeros(1, 64, 64), [0])
    with pytest.raises(ValueError, match="no layer"):
        GradCAM(tiny, class_layer="nope")
    with pytest.raises(ValueError, match="batch_size"):
        GradCAM(tiny, batch_size=0)
    with pytest.raises(NotImplementedError, match="no native contrast"):
        ex.contrast(image, [(0, 1)])


# --------------------------------------------------------------------------- RISE


def test_masks_are_smooth_shifted_and_independent_of_batching():
    setup = MaskSetup(n=40, cells=4, p=0.5, seed=3)
    a = MaskSet(setup, (32, 32), torch.device("cpu"))
    whole = a.batch(slice(0, 40))
    parts = torch.cat([a.batch(slice(0, 7)), a.batch(slice(7, 40))])
    assert torch.equal(whole, parts)
    assert whole.shape == (40, 32, 32) and whole.min() >= 0 and whole.max() <= 1
    assert ((whole > 0) & (whole < 1)).any()  # bilinear, not binary
    b = MaskSet(setup, (32, 32), torch.device("cpu")).batch(slice(0, 40))
    assert torch.equal(whole, b)  # same seed, same masks
    c = MaskSet(MaskSetup(40, 4, 0.5, seed=4), (32, 32), torch.device("cpu")).batch(slice(0, 40))
    assert not torch.equal(whole, c)


def test_rise_many_targets_equal_single_target_maps(tiny, image):
    targets = [0, 2, frozenset({1, 3}), frozenset({0, 4, 5})]
    ex = RISE(tiny, n_masks=96, cells=4, p=0.5, seed=7, batch_size=20)
    many = ex.explain(image, targets)
    assert ex.forward_passes == 96  # one set of passes for all four targets
    for k, tg in enumerate(targets):
        single = RISE(tiny, n_masks=96, cells=4, p=0.5, seed=7, batch_size=64).explain(image, [tg])[0]
        assert torch.allclose(many[k], single, atol=1e-5)
    # a compound target scores the summed probability: its map is the sum of members' maps
    members = ex.explain(image, [1, 3])
    assert torch.allclose(many[2], members.sum(0), atol=1e-5)


def test_rise_matches_its_formula(tiny, image):
    ex = RISE(tiny, n_masks=32, cells=4, p=0.4, seed=2, batch_size=32)
    sal = ex.explain(image, [frozenset({0, 1})])[0]
    masks = MaskSet(ex.setups["cluster"], (64, 64), torch.device("cpu")).batch(slice(0, 32))
    with torch.no_grad():
        probs = torch.softmax(tiny.module(image[None] * masks[:, None]), -1)
    score = probs[:, 0] + probs[:, 1]
    expect = (score[:, None, None] * masks).sum(0) / (32 * 0.4)
    assert torch.allclose(sal, expect, atol=1e-5)


def test_rise_stages_share_passes_unless_told_otherwise(tiny, image):
    shared = RISE(tiny, n_masks=64, cells=4, p=0.5, batch_size=32)
    out = shared.explain_stages(image, {"cluster": [0, frozenset({1, 2})], "class": [1, 2]})
    assert shared.shared_stages and shared.forward_passes == 64
    assert out["cluster"].shape == (2, 64, 64) and out["class"].shape == (2, 64, 64)
    assert torch.allclose(out["class"].sum(0), out["cluster"][1], atol=1e-5)
    separate = RISE(tiny, n_masks=64, cells=4, p=0.5, class_cells=8, class_p=0.25, class_n_masks=32, batch_size=32)
    separate.explain_stages(image, {"cluster": [0], "class": [1, 2]})
    assert not separate.shared_stages and separate.forward_passes == 64 + 32
    assert separate.settings()["class_masks"] == {"n": 32, "cells": 8, "p": 0.25, "seed": 1}


def test_rise_parameter_errors(tiny):
    with pytest.raises(ValueError, match="keep probability"):
        RISE(tiny, p=0.0)
    with pytest.raises(ValueError, match="at least one mask"):
        RISE(tiny, n_masks=0)


# --------------------------------------------------------------------------- registry


def test_registry(tiny):
    assert {"gradcam", "rise"} <= set(available_explainers())
    ex = get_explainer("rise", tiny, n_masks=8, batch_size=4)
    assert isinstance(ex, RISE) and ex.batch_size == 4 and ex.device == tiny.device
    assert isinstance(get_explainer("GradCAM".lower(), tiny), GradCAM)
    with pytest.raises(ValueError, match="unknown explainer 'lime'; available: .*gradcam"):
        get_explainer("lime", tiny)
    with pytest.raises(ValueError, match="bad parameters for explainer 'gradcam'"):
        get_explainer("gradcam", tiny, n_masks=5)
