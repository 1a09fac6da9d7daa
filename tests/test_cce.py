"""CCE (counterfactual contrastive explanation) on the default model and real photos.

Small settings throughout (few PGD iterations, starts and noise samples); the
paper's full settings belong in the benchmarks.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from cwox.hlta.tree import tree_from_groups
from cwox.online.explainers import available_explainers, count_hooks, get_explainer
from cwox.online.explainers.cce import CCE
from PIL import Image
from skimage import data

from cwox.core.models import from_module

TABBY, TIGER_CAT, EGYPTIAN_CAT, LYNX = 281, 282, 285, 287
#: Small but real settings: every part of the method runs, a few passes each.
SMALL = {"iterations": 3, "n_counterfactuals": 2, "n_noise": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def clf():
    from cwox.core.models import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="module")
def cat(clf):
    return clf.preprocess(Image.fromarray(data.chelsea()))


@pytest.fixture(scope="module")
def cce(clf):
    return get_explainer("cce", clf, **SMALL)


def _check_maps(maps: torch.Tensor, n: int) -> None:
    assert maps.shape == (n, 224, 224)
    assert maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0  # min-max normalised parts (Sec. 3.3)
    assert (maps.flatten(1).std(dim=1) > 1e-3).all()  # not constant


#: How far a map may move when the same question shares its batch with other questions.
#: Not a bug in CCE: every row of a PGD batch is computed independently, but the CPU
#: convolution library (oneDNN) picks its kernels and blocking by batch shape, so the same
#: image's logits differ by about 1.5e-6 between a batch of 2 rows and one of 4 (measured on
#: an AMD EPYC; bit-identical on the Intel CPU these tests were written on). PGD steps along
#: the L2-normalised gradient, so that rounding moves the counterfactuals (about 1e-3 per
#: pixel after 3 steps) and the maps: measured max 1.7e-3 (mean 4.6e-4, correlation
#: 0.99999) for the mixed map of "why tabby" asked with or without a second target, 8.4e-5
#: for the contrast map; the same at the paper's 30 iterations. Below one level of an 8-bit
#: heat map (1/255 = 3.9e-3), so no rendered pixel changes by more than one level, and far
#: below the difference between two targets' maps (> 0.2, checked below).
BATCH_ATOL = 1.0 / 255


def _assert_batch_noise(a: torch.Tensor, b: torch.Tensor) -> None:
    """The same maps computed in batches of different composition (see ``BATCH_ATOL``)."""
    torch.testing.assert_close(a, b, atol=BATCH_ATOL, rtol=0.0)


def _assert_same_maps(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float noise.

    The batch composition changes the convolutions' rounding (about 1e-6), and PGD
    carries such differences on through its steps, so the maps agree closely but
    not bit for bit; maps of different targets differ far more (checked by callers).
    """
    assert a.shape == b.shape
    diff = (a - b).abs()
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert diff.max() < 2e-2 and corr > 0.995, (float(diff.max()), float(corr))


def test_registered_with_the_papers_defaults(clf):
    assert "cce" in available_explainers()
    e = get_explainer("cce", clf)
    assert isinstance(e, CCE) and e.supports_contrast
    s = e.settings()
    assert (s["epsilon"], s["gamma"], s["n_counterfactuals"], s["n_noise"], s["sigma"], s["alpha"]) == (
        2.0, 20.0, 5, 5, 0.05, 0.7)
    assert s["iterations"] == 30 and s["step_size"] == pytest.approx(2.5 * 2.0 / 30)
    assert s["cluster_layer"] == clf.cluster_layer and s["class_layer"] == clf.class_layer


def test_base_role_maps_on_a_real_photo(cce, cat, clf):
    targets = [TABBY, frozenset({TIGER_CAT, EGYPTIAN_CAT})]
    maps = cce.explain(cat, targets, stage="cluster")
    _check_maps(maps, 2)
    assert count_hooks(clf.module) == 0
    # The base map is the appendix's mix alpha * M_sup + (1 - alpha) * M_pro of "why t".
    why = cce.why(cat, TABBY)
    _assert_batch_noise(maps[0], why["mixed"])  # one target alone: a smaller batch
    torch.testing.assert_close(why["mixed"], 0.7 * why["positive"] + 0.3 * why["negative"])
    for kind in ("positive", "negative"):
        _check_maps(why[kind][None], 1)
        assert why[kind].max() > 0.99  # min-max normalised, upsampled without overshoot
    assert not torch.allclose(why["positive"], why["negative"])


def test_counterfactuals_meet_the_bound_and_follow_the_objective(cce, cat, clf):
    cf = cce.counterfactuals(cat, [TABBY, TABBY], [None, EGYPTIAN_CAT])
    assert cf.deltas.shape == (2, 2, 3, 224, 224) and cf.logits_after.shape == (2, 2, 1000)
    norms = cf.deltas.flatten(2).norm(dim=2)
    assert (norms <= cce.epsilon * (1 + 1e-5)).all()
    assert (norms > 0.5 * cce.epsilon).all()  # PGD used the ball
    std = torch.tensor(clf.std).view(3, 1, 1)
    mean = torch.tensor(clf.mean).view(3, 1, 1)
    x01 = cf.inputs * std + mean
    assert x01.min() >= -1e-5 and x01.max() <= 1 + 1e-5  # stays a valid image
    before, after = cf.logits_before, cf.logits_after
    # Eq. (1) minimises Z_P^2: the (positive) tabby logit falls towards 0.
    assert before[0, TABBY] > 0
    assert (after[0, :, TABBY] ** 2 < 0.8 * before[0, TABBY] ** 2).all()
    # Eq. (2) minimises Z_P^2 - Z_Q^2: the gap Z_P - Z_Q falls.
    gap_before = before[1, TABBY] - before[1, EGYPTIAN_CAT]
    gap_after = after[1, :, TABBY] - after[1, :, EGYPTIAN_CAT]
    assert (gap_after < gap_before - 1.0).all()
    # gamma * D_mse keeps the other logits near their values: far less change than the targets'.
    rest = torch.ones(1000, dtype=torch.bool)
    rest[[TABBY, EGYPTIAN_CAT]] = False
    moved_rest = (after[1][:, rest] - before[1][rest]).abs().mean()
    assert moved_rest < (gap_after - gap_before).abs().min()


def test_batched_over_targets_equals_one_target_at_a_time(clf, cat):
    e = CCE(clf, seed=3, **SMALL)
    targets = [TABBY, frozenset({TIGER_CAT, EGYPTIAN_CAT})]
    together = e.explain(cat, targets, stage="class")
    alone = torch.cat([e.explain(cat, [t], stage="class") for t in targets])
    _assert_same_maps(together, alone)
    assert (together[0] - together[1]).abs().max() > 0.2  # the targets' maps do differ
    pairs = [(TABBY, EGYPTIAN_CAT), (EGYPTIAN_CAT, frozenset({TABBY, TIGER_CAT}))]
    both = e.contrast(cat, pairs, stage="cluster")
    one_by_one = torch.cat([e.contrast(cat, [p], stage="cluster") for p in pairs])
    _assert_same_maps(both, one_by_one)
    # Counterfactuals are shared by the stages of one call: both stages equal separate calls.
    staged = e.explain_stages(cat, {"cluster": [TABBY], "class": [TABBY]})
    _assert_same_maps(staged["class"], together[:1])
    assert not torch.allclose(staged["cluster"], staged["class"])  # different layers


def test_contrast_role_answers_p_rather_than_q(cce, cat):
    maps = cce.contrast(cat, [(TABBY, EGYPTIAN_CAT), (TIGER_CAT, frozenset({TABBY, EGYPTIAN_CAT}))])
    _check_maps(maps, 2)
    why = cce.why(cat, TABBY, EGYPTIAN_CAT)
    _assert_batch_noise(maps[0], why["positive"])  # contrast_map="positive" (Sec. 3.3); one pair alone
    # "Rather than Q" compares Q's representation (Sec. 3.3), so it differs from "why P".
    assert (why["positive"] - cce.why(cat, TABBY)["positive"]).abs().mean() > 1e-2


def test_o_contrast_with_another_image(cce, clf, cat):
    cup = clf.preprocess(Image.fromarray(data.coffee()))
    cup_class = int(clf.logits(cup[None])[0].argmax())
    out = cce.why(cat, TABBY, other=cup)
    assert set(out) == {"positive", "negative", "mixed", "other_positive", "other_negative", "other_mixed"}
    for v in out.values():
        _check_maps(v[None], 1)
    # Image a's half is the P-contrast "a: P rather than Q" (Q = the other image's top class).
    _assert_same_maps(out["positive"], cce.why(cat, TABBY, cup_class)["positive"])
    assert not torch.allclose(out["positive"], out["other_positive"])


def test_randomised_model_changes_the_maps(clf, cat):
    module = copy.deepcopy(clf.module)
    gen = torch.Generator().manual_seed(0)
    for name in ("_conv_head", "_bn1", "_fc"):  # cascade randomisation, the last layers
        for p in module.get_submodule(name).parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.05
    rand = from_module(module, clf.class_names, name="randomised", mean=clf.mean, std=clf.std,
                       cluster_layer=clf.cluster_layer, class_layer=clf.class_layer, device="cpu")
    trained = CCE(clf, **SMALL).explain(cat, [TABBY])[0]
    randomised = CCE(rand, **SMALL).explain(cat, [TABBY])[0]
    assert torch.isfinite(randomised).all()
    assert (trained - randomised).abs().mean() > 0.05
    corr = torch.corrcoef(torch.stack([trained.flatten(), randomised.flatten()]))[0, 1]
    assert corr < 0.9


def test_bad_arguments_get_clear_errors(cce, clf, cat):
    with pytest.raises(ValueError, match="outside 0..999"):
        cce.why(cat, 1000)
    with pytest.raises(ValueError, match="outside 0..999"):
        cce.contrast(cat, [(TABBY, 5000)])
    with pytest.raises(ValueError, match="must not contain the fact"):
        cce.why(cat, TABBY, TABBY)
    with pytest.raises(ValueError, match="must not contain the fact"):
        cce.contrast(cat, [(TABBY, frozenset({TABBY, TIGER_CAT}))])
    with pytest.raises(ValueError, match="no layer 'nope'"):
        get_explainer("cce", clf, cluster_layer="nope")
    with pytest.raises(ValueError, match="unknown stage"):
        cce.explain(cat, [TABBY], stage="pixel")
    with pytest.raises(ValueError, match="epsilon"):
        CCE(clf, epsilon=0)
    with pytest.raises(ValueError, match="base_map"):
        CCE(clf, base_map="both")
    with pytest.raises(ValueError, match="differ in size"):
        cce.why(cat, TABBY, other=torch.zeros(3, 100, 100))
    with pytest.raises(ValueError, match="give the foil Q explicitly"):
        cce.why(cat, TIGER_CAT, other=cat)  # the other image's top class is the fact itself
    with pytest.raises(TypeError, match="pairs"):
        cce.contrast(cat, (TABBY, TIGER_CAT))
    assert count_hooks(clf.module) == 0


def test_through_the_engine_in_cwox2s(clf):
    engine = pytest.importorskip("cwox.online.engine")
    tiny = {"iterations": 2, "n_counterfactuals": 2, "n_noise": 2}
    photo = Image.fromarray(data.chelsea())
    kwargs = {}
    if "role" in inspect.signature(engine.Engine).parameters:
        kwargs["role"] = "contrast"
    tree = tree_from_groups([[TABBY, TIGER_CAT, EGYPTIAN_CAT]], clf.class_names)
    exp = engine.explain_image(clf, photo, tree, "cce", "cwox2s", top_k=4, **kwargs, **tiny)
    assert exp.explainer == "cce"
    assert set(exp.classes[:3]) == {TABBY, TIGER_CAT, EGYPTIAN_CAT}
    assert exp.class_maps.shape == (4, 224, 224) and exp.cluster_maps.shape[1:] == (224, 224)
    cats = next(i for i, g in enumerate(exp.clusters) if TABBY in g)
    assert exp.cluster_maps[cats].max() > 0
    assert all(exp.class_maps[exp.classes.index(c)].max() > 0 for c in (TABBY, TIGER_CAT, EGYPTIAN_CAT))
    assert count_hooks(clf.module) == 0


def test_vmapped_backward_equals_one_backward_per_target(clf, cat):
    """Eq. (5)'s noisy copies serve all targets from one forward; the batched gradients are exact."""
    targets = [TABBY, TIGER_CAT, frozenset({TABBY, EGYPTIAN_CAT})]
    fast = CCE(clf, **SMALL)
    noisy = fast._normalize(fast._setup(cat[None])[0][0] + fast._setup(cat[None])[5][0])
    layers = [clf.cluster_layer, clf.class_layer]
    batched = fast._noisy_representations(noisy, targets, layers)
    assert fast._vmap_ok  # the default model's backward vmaps
    slow = CCE(clf, **SMALL)
    slow._vmap_ok = False
    looped = slow._noisy_representations(noisy, targets, layers)
    for name in layers:
        assert batched[name].shape[0] == 3
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(batched[clf.cluster_layer][0], batched[clf.cluster_layer][1])
