"""SUNY: effects (Eq. 1-2), Shapley responsibilities (Eq. 3-4), maps (Alg. 1), shared passes, roles.

Runs the default model (EfficientNet-Lite0) on real photos with SMALL settings: the
causes are the 24 feature maps of ``_blocks.2`` (not the 1280 of ``_conv_head``),
``|F_N| = |F_S| = 4`` and 3 Shapley orderings, so the whole file stays well under a
minute on two busy cores.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cwox.online.explainers import get_explainer
from cwox.online.explainers.base import capture_activations, count_hooks
from cwox.online.explainers.suny import SUNY
from PIL import Image
from skimage import data

from cwox.core.models import from_module

LAYER = "_blocks.2"
SMALL = {"layer": LAYER, "n_causes": 4, "n_samples": 3, "seed": 0, "batch_size": 32}
TIGER_CAT, TABBY, EGYPTIAN_CAT = 282, 281, 285
CATS = frozenset({TIGER_CAT, TABBY, EGYPTIAN_CAT})
TARGETS = [TIGER_CAT, EGYPTIAN_CAT, TABBY, CATS]


@pytest.fixture(scope="module")
def clf(default_classifier):
    return default_classifier


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.fromarray(data.chelsea())


@pytest.fixture(scope="module")
def x(clf, chelsea) -> torch.Tensor:
    return clf.preprocess(chelsea)


@pytest.fixture(scope="module")
def explainer(clf):
    return get_explainer("suny", clf, **SMALL)


@pytest.fixture(scope="module")
def result(explainer, x):
    """One analysis of four targets (three cats and the cat cluster) on chelsea."""
    before = explainer.forward_passes
    res = explainer.analyse(x, TARGETS)
    res.passes = explainer.forward_passes - before
    return res


# --------------------------------------------------------------------------- direct references


def layer_maps(clf, x: torch.Tensor, layer: str) -> torch.Tensor:
    with capture_activations(clf.module, [layer]) as acts:
        clf.logits(x[None])
        return acts[layer][0].float().clone()


def cause_mask(act: torch.Tensor, channel: int, size: tuple[int, int]) -> torch.Tensor:
    """``norm(upsample(A^i))`` written out for one channel."""
    up = F.interpolate(act[channel][None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return (up - up.min()) / (up.max() - up.min())


def prob_of(clf, images: torch.Tensor, target) -> torch.Tensor:
    ids = [target] if isinstance(target, int) else sorted(target)
    return clf.probabilities(images)[:, ids].double().sum(1)


def image01(clf, x):
    mean = torch.tensor(clf.mean).view(3, 1, 1)
    std = torch.tensor(clf.std).view(3, 1, 1)
    return x * std + mean, mean, std


# --------------------------------------------------------------------------- maps


def test_maps_have_image_size_are_finite_and_not_constant(result):
    for name in ("necessity", "sufficiency", "importance"):
        maps = getattr(result, name)
        assert maps.shape == (len(TARGETS), 224, 224), name
        assert torch.isfinite(maps).all(), name
        assert (maps.flatten(1).std(dim=1) > 1e-3).all(), f"{name} has a constant map"
        assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    # Alg. 1 lines 21-22 min-max normalise each N and S map: each spans [0, 1].
    for maps in (result.necessity, result.sufficiency):
        assert torch.allclose(maps.flatten(1).amax(1), torch.ones(len(TARGETS)), atol=1e-6)
        assert torch.allclose(maps.flatten(1).amin(1), torch.zeros(len(TARGETS)), atol=1e-6)
    torch.testing.assert_close(result.importance, (result.necessity + result.sufficiency) / 2)
    assert result.outcome == "probability" and result.layer == LAYER and result.cause == "feature"


def test_sets_are_the_top_single_effects_and_responsibilities_vanish_outside(result):
    k = SMALL["n_causes"]
    for effects, causes, resp in (
        (result.effects_n, result.causes_n, result.responsibility_n),
        (result.effects_s, result.causes_s, result.responsibility_s),
    ):
        assert causes.shape == (len(TARGETS), k)
        for t in range(len(TARGETS)):
            chosen = set(causes[t].tolist())
            others = [c for c in range(effects.shape[1]) if c not in chosen]
            assert effects[t, causes[t]].min() >= effects[t, others].max()
            assert (resp[t, others] == 0).all()
            assert (resp[t, causes[t]] != 0).any()
    # Different targets rank the feature maps differently.
    assert not torch.equal(result.causes_n[0], result.causes_n[1]) or not torch.equal(
        result.causes_s[0], result.causes_s[1]
    )


def test_single_effects_match_a_direct_per_feature_computation(clf, x, result):
    """E_N(f) = relative drop when f is masked out (Eq. 1); E_S(f) = outcome with only f kept (Eq. 2)."""
    act = layer_maps(clf, x, LAYER)
    x01, mean, std = image01(clf, x)
    channels = [int(result.causes_n[0, 0]), int(result.causes_s[0, 0]), 5]
    for t, target in ((0, TIGER_CAT), (3, CATS)):
        p0 = prob_of(clf, x[None], target)[0]
        for c in channels:
            m = cause_mask(act, c, (224, 224))
            removed = (x01 * (1 - m) - mean) / std
            kept = (x01 * m - mean) / std
            p_rem, p_keep = prob_of(clf, torch.stack([removed, kept]), target)
            assert float(result.effects_n[t, c]) == pytest.approx(float((p0 - p_rem) / p0), abs=2e-4)
            assert float(result.effects_s[t, c]) == pytest.approx(float(p_keep / p0), rel=2e-3, abs=1e-5)


def test_shapley_estimates_are_efficient_over_the_directly_computed_set_effect(clf, x, result):
    """Every sampled ordering telescopes: sum_f R_N(f) = E_N(F_N) and sum_f R_S(f) = E_S(F_S) - E_S({})."""
    act = layer_maps(clf, x, LAYER)
    x01, mean, std = image01(clf, x)
    t = 0
    p0 = prob_of(clf, x[None], TIGER_CAT)[0]
    keep_none = prob_of(clf, ((x01 * 0 - mean) / std)[None], TIGER_CAT)[0]
    survive_n = torch.ones(224, 224)
    for c in result.causes_n[t].tolist():
        survive_n = survive_n * (1 - cause_mask(act, c, (224, 224)))
    survive_s = torch.ones(224, 224)
    for c in result.causes_s[t].tolist():
        survive_s = survive_s * (1 - cause_mask(act, c, (224, 224)))
    removed = (x01 * survive_n - mean) / std  # remove every cause of F_N
    kept = (x01 * (1 - survive_s) - mean) / std  # keep the (soft) union of F_S
    p_rem, p_keep = prob_of(clf, torch.stack([removed, kept]), TIGER_CAT)
    assert float(result.responsibility_n[t].sum()) == pytest.approx(float((p0 - p_rem) / p0), abs=5e-4)
    assert float(result.responsibility_s[t].sum()) == pytest.approx(
        float((p_keep - keep_none) / p0), rel=5e-3, abs=1e-4
    )


def test_one_pass_set_serves_several_targets(clf, x, result):
    """A single target alone gives the same maps (same seed), and four cost far less than four runs."""
    alone = get_explainer("suny", clf, **SMALL)
    res = alone.analyse(x, [EGYPTIAN_CAT])
    for name in ("necessity", "sufficiency", "importance"):
        torch.testing.assert_close(getattr(res, name)[0], getattr(result, name)[1], atol=1e-4, rtol=0)
    assert torch.equal(res.causes_n[0], result.causes_n[1])
    single_cost = alone.forward_passes
    n_channels = result.effects_n.shape[1]
    assert single_cost >= 2 * n_channels  # step 1: every feature map removed and kept
    assert result.passes < 2 * single_cost  # four targets for less than two single runs
    assert result.passes < len(TARGETS) * single_cost - (len(TARGETS) - 1) * 2 * n_channels + 1


def test_base_role_through_the_registry_and_extra_maps(explainer, x, result):
    answer = explainer.base_role(x, {"cluster": [TIGER_CAT, CATS]})
    maps = answer.maps["cluster"]
    torch.testing.assert_close(maps, explainer.explain(x, [TIGER_CAT, CATS], stage="cluster"), atol=0, rtol=0)
    assert maps.shape == (2, 224, 224) and maps.dtype == torch.float32
    torch.testing.assert_close(maps, result.importance[[0, 3]], atol=1e-5, rtol=0)
    extra = answer.extra_maps
    torch.testing.assert_close(extra["necessity_cluster"], result.necessity[[0, 3]], atol=1e-5, rtol=0)
    torch.testing.assert_close(extra["sufficiency_cluster"], result.sufficiency[[0, 3]], atol=1e-5, rtol=0)
    answer = explainer.base_role(x, {"cluster": [TIGER_CAT], "class": [TABBY]})
    both = answer.maps
    torch.testing.assert_close(both["class"][0], result.importance[2], atol=1e-5, rtol=0)
    assert set(answer.extra_maps) == {"necessity_cluster", "sufficiency_cluster", "necessity_class", "sufficiency_class"}
    assert count_hooks(explainer.classifier.module) == 0


def test_contrast_uses_the_log_odds_and_reuses_the_interventions(explainer, x, result):
    before = explainer.forward_passes
    res = explainer.analyse(x, [TIGER_CAT], foils=[EGYPTIAN_CAT])
    # No new single-cause interventions: only the Shapley coalitions of the new sets.
    assert explainer.forward_passes - before <= 2 * SMALL["n_samples"] * (SMALL["n_causes"] - 1)
    assert res.outcome == "log_odds"
    # E_N = g(I) - g(do(F \ f)) with g = log p_P - log p_Q: log(1 - E_N^Q) - log(1 - E_N^P).
    expected_n = torch.log1p(-result.effects_n[1].double()) - torch.log1p(-result.effects_n[0].double())
    torch.testing.assert_close(res.effects_n[0].double(), expected_n, atol=2e-4, rtol=1e-3)
    expected_s = torch.log(result.effects_s[0].double()) - torch.log(result.effects_s[1].double())
    torch.testing.assert_close(res.effects_s[0].double(), expected_s, atol=2e-4, rtol=1e-3)
    maps = explainer.contrast(x, [(TIGER_CAT, EGYPTIAN_CAT), (frozenset({TIGER_CAT, TABBY}), EGYPTIAN_CAT)])
    assert maps.shape == (2, 224, 224) and torch.isfinite(maps).all()
    assert (maps.flatten(1).std(1) > 1e-3).all()
    torch.testing.assert_close(maps[0], res.importance[0], atol=1e-5, rtol=0)
    assert (maps[0] - result.importance[0]).abs().mean() > 0.02  # not the plain map of the fact
    assert "contrast_necessity_cluster" in explainer.contrast_role(x, [(TIGER_CAT, EGYPTIAN_CAT)], "cluster").extra_maps
    why = explainer.why(x, TIGER_CAT, EGYPTIAN_CAT)
    assert set(why) == {"sufficiency", "necessity", "importance"}
    torch.testing.assert_close(why["necessity"], res.necessity[0], atol=1e-5, rtol=0)
    plain = explainer.why(x, TIGER_CAT)
    torch.testing.assert_close(plain["sufficiency"], result.sufficiency[0], atol=1e-5, rtol=0)


def test_filter_cause_zeroes_channels_at_the_layer(clf, x):
    ex = SUNY(clf, cause="filter", layer=LAYER, n_causes=3, n_samples=2, batch_size=32)
    res = ex.analyse(x, [TIGER_CAT])
    assert res.cause == "filter" and res.necessity.shape == (1, 224, 224)
    assert torch.isfinite(res.importance).all() and res.importance.std() > 1e-3
    assert count_hooks(clf.module) == 0
    p0 = prob_of(clf, x[None], TIGER_CAT)[0]
    c = int(res.causes_n[0, 0])
    zero = {}

    def hook(_m, _i, out):
        out = out.clone()
        if zero["keep"]:
            out[:, [i for i in range(out.shape[1]) if i != c]] = 0
        else:
            out[:, c] = 0
        return out

    handle = clf.layer(LAYER).register_forward_hook(hook)
    try:
        zero["keep"] = False
        p_rem = prob_of(clf, x[None], TIGER_CAT)[0]
        zero["keep"] = True
        p_keep = prob_of(clf, x[None], TIGER_CAT)[0]
    finally:
        handle.remove()
    assert float(res.effects_n[0, c]) == pytest.approx(float((p0 - p_rem) / p0), abs=2e-4)
    assert float(res.effects_s[0, c]) == pytest.approx(float(p_keep / p0), rel=2e-3, abs=1e-6)


def test_randomised_model_changes_the_maps(clf, x, result):
    """Sanity check (Sec. 3.6), in small: re-initialise the top of the network."""
    module = copy.deepcopy(clf.module)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("_fc", "_conv_head", "_blocks.15", "_blocks.14", "_blocks.13"):
            for p in module.get_submodule(name).parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    rand = from_module(module, clf.class_names, name="random-top", mean=clf.mean, std=clf.std,
                       cluster_layer=clf.cluster_layer, class_layer=clf.class_layer, device="cpu")
    res = get_explainer("suny", rand, **SMALL).analyse(x, [TIGER_CAT])
    for name in ("necessity", "sufficiency"):
        a = getattr(res, name)[0].flatten().numpy()
        b = getattr(result, name)[0].flatten().numpy()
        assert np.corrcoef(a, b)[0, 1] < 0.9, name
        assert np.abs(a - b).mean() > 0.05, name


# --------------------------------------------------------------------------- errors


def test_bad_arguments_get_clear_errors(clf, explainer, x):
    with pytest.raises(ValueError, match="no layer"):
        SUNY(clf, layer="_blocks.99")
    with pytest.raises(ValueError, match="no layer"):
        get_explainer("suny", clf, class_layer="nope")
    with pytest.raises(ValueError, match="cause type"):
        SUNY(clf, cause="pixel")
    with pytest.raises(ValueError, match="n_causes"):
        SUNY(clf, n_causes=0)
    with pytest.raises(ValueError, match="n_samples"):
        SUNY(clf, n_samples=0)
    with pytest.raises(ValueError, match="outside 0..999"):
        explainer.why(x, 1000)
    with pytest.raises(ValueError, match="outside 0..999"):
        explainer.why(x, TIGER_CAT, -1)
    with pytest.raises(ValueError, match="equals the fact"):
        explainer.why(x, TIGER_CAT, TIGER_CAT)
    with pytest.raises(ValueError, match="shares classes"):
        explainer.why(x, TIGER_CAT, {TIGER_CAT, TABBY})
    with pytest.raises(ValueError, match="shares classes"):
        explainer.contrast(x, [(CATS, EGYPTIAN_CAT)])
    with pytest.raises(ValueError, match="one foil per target"):
        explainer.analyse(x, [TIGER_CAT, TABBY], foils=[EGYPTIAN_CAT])
    with pytest.raises(ValueError, match="unknown stage"):
        explainer.explain(x, [TIGER_CAT], stage="pixel")
    with pytest.raises(ValueError, match="no targets"):
        explainer.explain(x, [])
    with pytest.raises(ValueError, match="3 x H x W"):
        explainer.explain(torch.zeros(224, 224), [TIGER_CAT])


def test_cache_is_dropped_when_the_weights_change(clf, x):
    module = copy.deepcopy(clf.module)
    own = from_module(module, clf.class_names, mean=clf.mean, std=clf.std, cluster_layer=clf.cluster_layer,
                      class_layer=clf.class_layer, device="cpu")
    ex = SUNY(own, layer="_blocks.0", n_causes=2, n_samples=1)
    first = ex.analyse(x, [TIGER_CAT])
    passes = ex.forward_passes
    ex.analyse(x, [TIGER_CAT])
    assert ex.forward_passes == passes  # same image, same weights: everything cached
    with torch.no_grad():
        module._fc.weight.mul_(-1.0)
    second = ex.analyse(x, [TIGER_CAT])
    assert ex.forward_passes > passes
    assert not torch.allclose(first.effects_n, second.effects_n)


# --------------------------------------------------------------------------- engine


def test_cwox2s_through_the_engine(clf, chelsea, explainer):
    from cwox.online.engine import explain_image

    exp = explain_image(clf, chelsea, tree=None, explainer=explainer, mode="cwox2s", top_k=2)
    assert exp.explainer == "suny"
    assert exp.class_maps.shape == (2, 224, 224) and np.isfinite(exp.class_maps).all()
    assert exp.cluster_maps is not None and exp.cluster_maps.shape == (2, 224, 224)
    assert (exp.cluster_maps.reshape(2, -1).std(1) > 1e-4).all()
    assert exp.settings["explainer"]["name"] == "suny"
    # The engine used the native contrast role ("this cluster rather than the other").
    assert exp.extra_maps["contrast_necessity_cluster"].shape == (2, 224, 224)
