"""The evaluation protocol's pieces, by hand: plain support, Finer-CAM, cluster sources,
class sensitivity, and the corrected CCE / SUNY scores.

Tiny networks and hand-made maps only (no pretrained model), so every test runs in well
under a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cwox.online.compose import compose, support_mask
from cwox.online.engine import Engine
from cwox.online.evaluation import PAPER_EXPLAINER_PARAMS, EvaluationSetup, stage_setup
from cwox.online.metrics import (
    class_deviation_score,
    class_sensitivity,
    rank_correlation,
    saliency_attack_score,
)
from cwox.online.targets import nearest_logit_classes, plan_targets, source_clusters
from PIL import Image
from tiny_net import N_CLASSES, TinyNet  # the tiny CNN of the explainer tests
from torch import nn

from cwox.core.models import from_module


@pytest.fixture(scope="module")
def tiny():
    return from_module(TinyNet(), [f"class{i}" for i in range(N_CLASSES)], name="tiny", input_size=64,
                       cluster_layer="head", class_layer="features", device="cpu")


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))


# ----------------------------------------------------------------- Eq. 2's plain support


def test_plain_support_scoring_equals_a_hand_computation():
    """CWOX-2s with the paper's support (percentile 0) on a 2 x 2 map, by hand.

    Two clusters {0, 1} and {2}; the cluster maps are chosen so that Eq. 1 gives
    Ĥ_{C_1} = [[2, 0], [0.5, 0]]: its plain support is the two positive pixels.
    """
    plan = plan_targets([0, 1, 2], [[0, 1], [2]], "cwox2s")
    clu = {t: i for i, t in enumerate(plan.stage_targets["cluster"])}
    cls = {t: i for i, t in enumerate(plan.stage_targets["class"])}
    h_c1 = torch.tensor([[3.0, 1.0], [1.0, 0.0]])
    h_c2 = torch.tensor([[1.0, 2.0], [0.5, 1.0]])
    cluster = torch.zeros(len(clu), 2, 2)
    cluster[clu[frozenset({0, 1})]] = h_c1
    cluster[clu[2]] = h_c2
    h0 = torch.tensor([[1.0, 5.0], [2.0, 1.0]])
    h1 = torch.tensor([[0.5, 0.0], [3.0, 0.0]])
    klass = torch.zeros(len(cls), 2, 2)
    klass[cls[0]], klass[cls[1]] = h0, h1
    klass[cls[2]] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    hat, maps = compose(plan, {"cluster": cluster, "class": klass}, support=0.0)
    supp = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # relu(h_c1 - h_c2) = [[2, 0], [0.5, 0]] > 0
    assert torch.equal(hat[0], torch.tensor([[2.0, 0.0], [0.5, 0.0]]))
    assert torch.equal(support_mask(hat[:1], 0.0)[0], supp)
    assert torch.equal(maps[0], supp * torch.relu(h0 - h1))  # [[0.5, 0], [0, 0]]
    assert torch.equal(maps[0], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    assert torch.equal(maps[1], supp * torch.relu(h1 - h0))  # [[0, 0], [1, 0]]
    # The display percentile (50) keeps only the cluster map's pixels at or above its
    # median (0.25): the same two pixels here, but the 70th (0.95) keeps one.
    _, maps70 = compose(plan, {"cluster": cluster, "class": klass}, support=70.0)
    assert torch.equal(maps70[1], torch.zeros(2, 2))


def test_paper_protocol_is_the_default_of_evaluation(tiny):
    setup = EvaluationSetup.build(explainers=["gradcam", "rise"])
    assert setup.protocol == "paper" and setup.support == 0.0
    assert setup.params_of("rise") == PAPER_EXPLAINER_PARAMS["rise"]
    rise = setup.engine(tiny, None, "rise")
    assert rise.support == 0.0
    masks = rise.explainer.settings()["class_masks"]
    assert (masks["n"], masks["cells"], masks["p"]) == (3000, 10, 0.14)
    assert rise.explainer.settings()["cluster_masks"]["n"] == 5000
    # what settings.json records: per mode, the stages it reads and their setup
    info = stage_setup(setup.engine(tiny, None, "gradcam"), ("swox", "cwox2s"))
    assert info["support_percentile"] == 0.0
    assert info["modes"] == {"swox": {"cluster": {"layer": "head"}},
                             "cwox2s": {"cluster": {"layer": "head"}, "class": {"layer": "features"}}}
    # the explain protocol leaves each explainer's display defaults alone
    shown = EvaluationSetup.build(explainers=["rise"], protocol="explain")
    assert shown.support is None and shown.params_of("rise") == {}
    assert shown.engine(tiny, None, "rise").support == 70.0
    # a parameter given by the user wins over the protocol's
    mine = EvaluationSetup.build(explainers=["rise"], explainer_params={"rise": {"class_n_masks": 10}})
    assert mine.params_of("rise")["class_n_masks"] == 10 and mine.params_of("rise")["class_cells"] == 10


# ----------------------------------------------------------------- Finer-CAM


def _gradcam_of(clf, x, layer, score):
    store = {}
    handle = clf.layer(layer).register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = clf.module(x[None].clone().requires_grad_(True))[0]
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(score(logits), store["a"])
    cam = (g.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].detach(), logits


@pytest.mark.parametrize(("n", "gamma"), [(3, 1.0), (2, 0.6)])
def test_finercam_equals_the_formula_on_a_tiny_network(tiny, photo, n, gamma):
    """ReLU of Grad-CAM of ``y_c - gamma * mean_{d in D(c)} y_d``, D(c) the n nearest logits."""
    engine = Engine(tiny, None, "gradcam", "finercam", top_k=3, finer_classes=n, finer_gamma=gamma)
    exp = engine.explain(photo)
    _, _, x = engine.prepare(photo)
    logits = tiny.module(x[None])[0].detach()
    for k, c in enumerate(exp.classes):
        dist = (logits - logits[c]).abs()
        dist[c] = math.inf
        near = [int(i) for i in torch.argsort(dist, stable=True)[:n]]
        assert near == nearest_logit_classes(torch.softmax(logits, 0), c, n)

        def score(z, c=c, near=near):
            return z[c] - gamma * z[near].mean()

        cam, _ = _gradcam_of(tiny, x, "head", score)
        assert np.allclose(exp.class_maps[k], torch.relu(cam).numpy(), atol=1e-5)
    assert exp.settings["finer_classes"] == n and exp.settings["finer_gamma"] == gamma


def test_finercam_is_a_mode_of_evaluation(tiny, photo):
    engine = Engine(tiny, None, "gradcam", top_k=3)
    out = engine.explain_modes(photo, ("swox", "finercam"))
    assert set(out) == {"swox", "finercam"}
    # the mode-by-mode path gives the same maps
    one = Engine(tiny, None, "gradcam", "finercam", top_k=3).explain(photo)
    assert np.allclose(out["finercam"].class_maps, one.class_maps, atol=1e-6)
    with pytest.raises(ValueError, match="comparison classes"):
        plan_targets([1, 2], [[1], [2]], "finercam")


# ----------------------------------------------------------------- cluster sources


def test_random_cluster_source_is_seeded_and_keeps_sizes(monkeypatch):
    labels = [9, 4, 7, 1, 3]
    tree_groups = [[9, 4], [7], [1, 3]]
    monkeypatch.setattr("cwox.online.targets.cut_clusters", lambda tree, labels, level=1: tree_groups)
    a = source_clusters("random", object(), labels, seed=5)
    b = source_clusters("random", object(), labels, seed=5)
    assert a == b  # seeded: the same photo gets the same clusters
    assert sorted(len(g) for g in a) == [1, 2, 2]
    assert sorted(c for g in a for c in g) == sorted(labels)
    draws = {tuple(map(tuple, source_clusters("random", object(), labels, seed=s))) for s in range(30)}
    assert len(draws) > 3  # the seed changes the grouping
    # groups are ordered by first member, members in label (probability) order
    rank = {c: i for i, c in enumerate(labels)}
    for g in a:
        assert [rank[c] for c in g] == sorted(rank[c] for c in g)
    assert [rank[g[0]] for g in a] == sorted(rank[g[0]] for g in a)
    # logits: the tree's sizes, in its order, filled with runs in logit order
    assert source_clusters("logits", object(), labels) == [[9, 4], [7], [1, 3]]
    monkeypatch.setattr("cwox.online.targets.cut_clusters", lambda tree, labels, level=1: [[9, 1], [4, 7, 3]])
    assert source_clusters("logits", object(), labels) == [[9, 4], [7, 1, 3]]
    assert source_clusters("none", object(), labels) == [[c] for c in labels]
    with pytest.raises(ValueError, match="cluster source"):
        source_clusters("kmeans", None, labels)


# ----------------------------------------------------------------- class sensitivity


def test_class_sensitivity_on_hand_made_maps():
    a = np.arange(64, dtype=float).reshape(8, 8)
    same = class_sensitivity(a, 3 * a + 1)  # a rescaled copy: not class-sensitive at all
    assert same["spearman"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0)
    flipped = class_sensitivity(a, a[::-1, ::-1])  # reversed ranking
    assert flipped["spearman"] == pytest.approx(-1.0)
    assert flipped["ssim"] < 0.5
    # monotone but non-linear: Spearman sees the same ranking, SSIM a different picture
    bent = class_sensitivity(a, a**3)
    assert bent["spearman"] == pytest.approx(1.0) and bent["ssim"] < 0.99
    # ties get average ranks: [0, 0, 1, 1] vs [0, 1, 0, 1] -> rho 0
    top = np.zeros((4, 4))
    top[:2] = 1.0
    left = np.zeros((4, 4))
    left[:, :2] = 1.0
    assert rank_correlation(top, left) == pytest.approx(0.0)
    assert math.isnan(class_sensitivity(np.zeros((8, 8)), a)["spearman"])


# ----------------------------------------------------------------- CCE and SUNY scores


class Linear3(nn.Module):
    """Logits z = W x.sum over pixels, three classes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(2).sum(2)  # N x C
        return torch.stack([s[:, 0], 0.5 * s[:, 0], torch.zeros_like(s[:, 0])], 1)


def test_class_deviation_score_takes_logits_by_default():
    image = torch.ones(1, 2, 2)  # z = (4, 2, 0)
    perturbed = torch.zeros(1, 1, 2, 2)  # z = (0, 0, 0)
    rest_before = torch.log_softmax(torch.tensor([2.0, 0.0], dtype=torch.float64), 0)
    rest_after = torch.log_softmax(torch.tensor([0.0, 0.0], dtype=torch.float64), 0)
    kl = float((rest_before.exp() * (rest_before - rest_after)).sum())
    assert class_deviation_score(Linear3(), image, perturbed, 0) == pytest.approx((4.0 - 0.0) / (1 + kl))
    p0 = float(torch.softmax(torch.tensor([4.0, 2.0, 0.0], dtype=torch.float64), 0)[0])
    assert class_deviation_score(Linear3(), image, perturbed, 0, z="probabilities") == pytest.approx(
        (p0 - 1 / 3) / (1 + kl))
    with pytest.raises(ValueError, match="logits"):
        class_deviation_score(Linear3(), image, perturbed, 0, z="softmax")


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return torch.zeros(x.shape[0], 2)


def test_saliency_attack_noise_is_in_pixel_space():
    """Undo the normalisation of what the model saw: the noise is N(0, 0.03) x map on [0, 1] pixels."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = (pixels - m) / sd
    maps = torch.zeros(4, 32, 32)
    maps[:, 8:24, 8:24] = 2.0  # scaled to 1 inside, 0 outside
    model = Recorder()
    saliency_attack_score(model, images, maps, generator=torch.Generator().manual_seed(7), mean=mean, std=std)
    attacked = model.seen[0][4:] * sd + m  # back to pixels
    noise = attacked - pixels
    expected = 0.03**0.5 * torch.randn(images.shape, generator=torch.Generator().manual_seed(7))
    inside = maps[:, None].expand_as(noise) > 0
    assert torch.allclose(noise[inside], expected[inside], atol=1e-5)
    assert noise[~inside].abs().max() < 1e-5
    assert float(noise[inside].var()) == pytest.approx(0.03, rel=0.1)  # variance 0.03 in pixel units
    with pytest.raises(ValueError, match="mean and std"):
        saliency_attack_score(model, images, maps, mean=mean)


# ----------------------------------------------------------------- the summary's paired test


def test_summary_prints_the_paired_wilcoxon_p():
    """The summary's p is the two-sided signed-rank p of CWOX-2s minus the baseline, pair by pair.

    Eight hand-made pairs where CWOX-2s's CDROP is higher in seven: the p printed must be
    scipy's on those differences (zeros dropped), and an all-equal baseline gives n/a.
    """
    from cwox.online.evaluation import summarize, wilcoxon_p
    from scipy.stats import wilcoxon

    ours = [0.30, 0.25, 0.41, 0.12, 0.33, 0.27, 0.05, 0.38]
    swox = [0.10, 0.20, 0.15, 0.13, 0.21, 0.07, 0.04, 0.18]
    rows = []
    for i, (a, b) in enumerate(zip(ours, swox, strict=True)):
        for mode, v in (("cwox2s", a), ("swox", b), ("cwox1sa", a)):
            rows.append({"image": f"p{i}.jpg", "explainer": "gradcam", "mode": mode, "metric": "cdrop",
                         "class": str(i), "value": v, "n_delta": 10, "n_summed": 10, "error": ""})
    diff = np.subtract(ours, swox)
    expected = wilcoxon(diff).pvalue
    assert wilcoxon_p(diff) == pytest.approx(expected)
    assert wilcoxon_p(np.append(diff, [0.0, 0.0])) == pytest.approx(expected)  # zeros dropped
    assert math.isnan(wilcoxon_p([0.0, 0.0]))
    text = summarize(rows)
    line = next(ln for ln in text.splitlines() if ln.startswith("| gradcam | cdrop | SWOX |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4] == "7/8 pairs"
    assert float(cells[5]) == pytest.approx(expected, rel=0.05)  # printed to 2 significant digits
    same = next(ln for ln in text.splitlines() if ln.startswith("| gradcam | cdrop | CWOX-1sA |"))
    assert same.rstrip().endswith("| n/a |")
