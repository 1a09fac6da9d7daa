"""Tests of ``cwox.online.metrics``: hand-worked answers on a tiny model, batched vs one-at-a-time.

The hand model. The image is 1 x 4 x 4, every pixel 1 (normalised units). Block ``A`` is the
top-left 2 x 2 square (raster indices 0, 1, 4, 5), block ``B`` the bottom-right one
(10, 11, 14, 15). The model is linear with three classes:

    logit_0 = ln 2 * (sum of the pixels in A),  logit_1 = ln 2 * (sum over B),  logit_2 = 0,

so with ``kA``, ``kB`` pixels of A, B left undeleted (zero substrate)

    P0 = 2^kA / (2^kA + 2^kB + 1),  P1 = 2^kB / (2^kA + 2^kB + 1),  P2 = 1 / (same).

For target {0} and contrast {1} the contrastive score (CWOX Eq. 3) is
``s(kA, kB) = P0 * (1 - P1) = 2^kA (2^kA + 1) / (2^kA + 2^kB + 1)^2`` when kB = 4:
s(4,4) = 16*17/33^2 = 272/1089, s(3,4) = 8*9/25^2 = 72/625, s(2,4) = 4*5/21^2 = 20/441,
s(1,4) = 2*3/19^2 = 6/361, s(0,4) = 1*2/18^2 = 1/162.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from cwox.online.metrics import (
    cauc,
    cauc_sample_weights,
    causal_curves,
    cdrop,
    class_deviation_score,
    compact_activation_score,
    contrastive_curve,
    contrastive_scores,
    deletion_auc,
    energy_pointing_game,
    insertion_auc,
    n_salient,
    saliency_attack_score,
    step_pixels,
)
from cwox.online.metrics._batch import gaussian_blur, pixel_ranks

LN2 = math.log(2.0)


def block(rows: slice, cols: slice) -> torch.Tensor:
    m = torch.zeros(4, 4)
    m[rows, cols] = 1.0
    return m


A = block(slice(0, 2), slice(0, 2))
B = block(slice(2, 4), slice(2, 4))


class HandModel(torch.nn.Module):
    """The linear model of the module docstring; counts the images of each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        weight = torch.stack([A.flatten(), B.flatten(), torch.zeros(16)]) * LN2
        self.linear = torch.nn.Linear(16, 3, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.linear(x.flatten(1))


def s(k_a: int, k_b: int) -> float:
    """Contrastive score P0 * (1 - P1) with kA, kB pixels of A, B left."""
    z = 2**k_a + 2**k_b + 1
    return 2**k_a / z * (1 - 2**k_b / z)


@pytest.fixture
def hand():
    return HandModel(), torch.ones(1, 4, 4)


# ----------------------------------------------------------------- CWOX Eq. 3-5 by hand
def test_contrastive_curve_by_hand(hand):
    model, image = hand
    # H = A: its four pixels are the only 0.5-salient ones (n_delta = 4), deleted first.
    curve = contrastive_curve(model, image, A, [0], [1], step=1)
    np.testing.assert_array_equal(curve.deleted, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(
        curve.score, [272 / 1089, 72 / 625, 20 / 441, 6 / 361, 1 / 162], rtol=1e-6
    )
    np.testing.assert_allclose(curve.p_target, [16 / 33, 8 / 25, 4 / 21, 2 / 19, 1 / 18], rtol=1e-6)


def test_cauc_step_one_is_eq4_exactly(hand):
    model, image = hand
    # Eq. 4: (1/16) * (s(1) + s(2) + s(3) + s(4)), deleting A's pixels one by one.
    expected = (272 / 1089 + 72 / 625 + 20 / 441 + 6 / 361) / 16
    assert cauc(model, image, A, [0], [1], step=1) == pytest.approx(expected, rel=1e-6)


def test_cdrop_by_hand(hand):
    model, image = hand
    # tau = 0.05 * 16 = 0.8; n_delta = 4 > tau: CDROP = (s(1) - s(5)) / log2(1 + 4 / 0.8).
    expected = (272 / 1089 - 1 / 162) / math.log2(6)
    for step in (1, 3, 16):  # CDROP reads s(1) and s(n_delta + 1) only: exact for any step
        assert cdrop(model, image, A, [0], [1], step=step) == pytest.approx(expected, rel=1e-6)
    # tau = 4 = n_delta: the penalty is log2(2) = 1; tau = 8 > n_delta: still max(4, 8)/8 -> 1.
    assert cdrop(model, image, A, [0], [1], tau=4.0) == pytest.approx(
        272 / 1089 - 1 / 162, rel=1e-6
    )
    assert cdrop(model, image, A, [0], [1], tau=8.0) == pytest.approx(
        272 / 1089 - 1 / 162, rel=1e-6
    )


def test_cauc_step_interpolates_between_sampled_points(hand):
    model, image = hand
    # step = 2, n_delta = 4: the model runs at d = 0, 2 and 3 (the last, n_delta - 1).
    # Segment 0 -> 2 (L = 2): S(0) gets 3/2, S(2) gets 1/2; segment 2 -> 3 (L = 1): S(2) gets 1;
    # the last point counts once: S(3) gets 1. S(d) = s(4 - d, 4).
    expected = (1.5 * s(4, 4) + 1.5 * s(2, 4) + 1.0 * s(1, 4)) / 16
    assert cauc(model, image, A, [0], [1], step=2) == pytest.approx(expected, rel=1e-6)
    points, weights = cauc_sample_weights(4, 2)
    np.testing.assert_array_equal(points, [0, 2, 3])
    np.testing.assert_allclose(weights, [1.5, 1.5, 1.0])


def test_cauc_n_delta_smaller_than_step(hand):
    model, image = hand
    # step = 16 > n_delta = 4: sampled at d = 0 and d = 3 only; one segment of L = 3 gives
    # S(0) weight 2 and S(3) weight 1 + 1 = 2 (the line through them summed at d = 0..3).
    expected = (2 * s(4, 4) + 2 * s(1, 4)) / 16
    assert cauc(model, image, A, [0], [1], step=16) == pytest.approx(expected, rel=1e-6)
    # n_delta = 1 < step: a single point, s(1) / n.
    assert cauc(model, image, A, [0], [1], step=16, n_delta=1) == pytest.approx(
        s(4, 4) / 16, rel=1e-6
    )


def test_constant_and_all_zero_heatmaps_delete_in_raster_order(hand):
    model, image = hand
    # Every pixel ties, so every pixel is 0.5-salient (H >= 0.5 * max H holds for all,
    # also for the all-zero map where max H = 0): n_delta = 16, pixels deleted in raster
    # order 0, 1, ..., 15. (kA, kB) after d = 0..15 deletions: pixels 0, 1 are in A (d=1,2),
    # 2, 3 in neither, 4, 5 in A (d=5,6), 6..9 in neither, 10, 11 in B (d=11,12), 12, 13 in
    # neither, 14 in B (d=15).
    seq = [(4, 4), (3, 4), (2, 4), (2, 4), (2, 4), (1, 4), (0, 4), (0, 4),
           (0, 4), (0, 4), (0, 4), (0, 3), (0, 2), (0, 2), (0, 2), (0, 1)]  # fmt: skip
    expected_cauc = sum(s(*k) for k in seq) / 16
    # CDROP: s(1) - s(17) with everything deleted (kA = kB = 0: s = 1/3 * 2/3 = 2/9);
    # penalty log2(1 + 16 / 0.8) = log2(21).
    expected_cdrop = (s(4, 4) - 2 / 9) / math.log2(21)
    for heatmap in (torch.zeros(4, 4), torch.full((4, 4), 7.5)):
        assert n_salient(heatmap) == 16
        assert cauc(model, image, heatmap, [0], [1], step=1) == pytest.approx(
            expected_cauc, rel=1e-6
        )
        assert cdrop(model, image, heatmap, [0], [1]) == pytest.approx(expected_cdrop, rel=1e-6)


def test_ties_are_broken_by_raster_index():
    h = torch.tensor([[1.0, 3.0, 1.0], [3.0, 2.0, 1.0]])
    # Descending: the two 3s (raster 1, 3), the 2 (raster 4), then the 1s (raster 0, 2, 5).
    order = [1, 3, 4, 0, 2, 5]
    ranks = pixel_ranks(h[None])[0].tolist()
    assert [ranks[p] for p in order] == list(range(6))


def test_n_delta_override_and_min(hand):
    model, image = hand
    # n_delta = 2: (s(1) + s(2)) / 16 whatever the map's own count.
    assert cauc(model, image, A, [0], [1], step=1, n_delta=2) == pytest.approx(
        (s(4, 4) + s(3, 4)) / 16, rel=1e-6
    )
    # Two maps for the same pair: A (n_delta 4) and the constant map (n_delta 16). With
    # "min" both CAUCs sum the first 4 pixels: A's as above, the constant map's in raster
    # order d = 0..3 -> (4,4), (3,4), (2,4), (2,4).
    result = contrastive_scores(
        model, image, torch.stack([A, torch.ones(4, 4)]), [([0], [1])], step=1, n_delta="min"
    )
    np.testing.assert_array_equal(result.n_delta, [4, 16])
    np.testing.assert_array_equal(result.n_summed, [4, 4])
    np.testing.assert_allclose(
        result.cauc,
        [(s(4, 4) + s(3, 4) + s(2, 4) + s(1, 4)) / 16, (s(4, 4) + s(3, 4) + 2 * s(2, 4)) / 16],
        rtol=1e-6,
    )
    # CDROP keeps each map's own n_delta.
    assert result.cdrop[1] == pytest.approx((s(4, 4) - 2 / 9) / math.log2(21), rel=1e-6)


def test_n_delta_per_heatmap_shares_the_images_of_several_pairs(hand):
    model, image = hand
    # Two pairs, each with its own "min" rule, in one call: the map A for pair (0 | 1)
    # summed over 2 pixels and the same map A for pair (0 | 2) over 3 pixels. Hand values
    # for (0 | 2): P0 * (1 - P2) with kB = 4, P2 = 1 / z.
    def s02(k_a: int) -> float:
        z = 2**k_a + 2**4 + 1
        return 2**k_a / z * (1 - 1 / z)

    maps = torch.stack([A, A])
    pairs = [([0], [1]), ([0], [2])]
    result = contrastive_scores(model, image, maps, pairs, step=1, n_delta=[2, 3])
    np.testing.assert_array_equal(result.n_summed, [2, 3])
    np.testing.assert_allclose(
        result.cauc, [(s(4, 4) + s(3, 4)) / 16, (s02(4) + s02(3) + s02(2)) / 16], rtol=1e-6
    )
    np.testing.assert_allclose(
        result.cdrop,
        [(s(4, 4) - s(0, 4)) / math.log2(6), (s02(4) - s02(0)) / math.log2(6)],
        rtol=1e-6,
    )
    # Both pairs read the same deletion images: d = 0, 1, 2 and 4 (CDROP's end), once each.
    model.batch_sizes.clear()
    contrastive_scores(model, image, maps, pairs, step=1, n_delta=[2, 3], batch_size=64)
    assert sum(model.batch_sizes) == 4
    # The same scores from one call per pair, which runs the shared images twice.
    for k, (pair, count) in enumerate(zip(pairs, (2, 3))):
        alone = contrastive_scores(model, image, A, [pair], step=1, n_delta=count)
        assert alone.cauc[0] == pytest.approx(result.cauc[k], rel=1e-6)
        assert alone.cdrop[0] == pytest.approx(result.cdrop[k], rel=1e-6)


def test_n_delta_per_heatmap_is_checked(hand):
    model, image = hand
    maps = torch.stack([A, B])
    with pytest.raises(ValueError, match="give one per heatmap"):
        contrastive_scores(model, image, maps, [([0], [1])], n_delta=[2])
    with pytest.raises(ValueError, match=r"integers in \[0, 16\]"):
        contrastive_scores(model, image, maps, [([0], [1])], n_delta=[2, 17])
    with pytest.raises(ValueError, match="integers"):
        contrastive_scores(model, image, maps, [([0], [1])], n_delta=[2.5, 1.0])


def test_negative_heatmap_and_delta_one(hand):
    model, image = hand
    # max H < 0: no pixel has H >= 0.5 * max H, so n_delta = 0: CAUC sums nothing (0) and
    # CDROP = (s(1) - s(1)) / log2(2) = 0.
    negative = -1.0 - torch.arange(16.0).view(4, 4)
    assert n_salient(negative) == 0
    assert cauc(model, image, negative, [0], [1]) == 0.0
    assert cdrop(model, image, negative, [0], [1]) == 0.0
    # delta = 1 keeps only the maximum: a map peaking at pixel 0 (in A) deletes one A pixel;
    # n_delta = 1 > tau = 0.8, so the penalty is log2(1 + 1 / 0.8) = log2(2.25).
    peak = torch.zeros(4, 4)
    peak[0, 0] = 2.0
    peak[3, 3] = 1.0
    assert n_salient(peak, delta=1.0) == 1
    assert cdrop(model, image, peak, [0], [1], delta=1.0) == pytest.approx(
        (s(4, 4) - s(3, 4)) / math.log2(2.25), rel=1e-6
    )


def test_set_probabilities_and_several_pairs(hand):
    model, image = hand
    # Target {0}, contrast {1, 2} on H = A: s = P0 * (1 - P1 - P2) = P0^2.
    # P0 after d deletions of A: 2^(4-d) / (2^(4-d) + 17).
    p0 = [16 / 33, 8 / 25, 4 / 21, 2 / 19]
    result = contrastive_scores(model, image, A, [([0], [1, 2]), ([1], [0])], step=1)
    assert result.cauc[0] == pytest.approx(sum(p * p for p in p0) / 16, rel=1e-6)
    # Target {1} against {0}: P1 * (1 - P0) with P1 = 16 / (2^kA + 17).
    p1 = [16 / 33, 16 / 25, 16 / 21, 16 / 19]
    assert result.cauc[1] == pytest.approx(
        sum(a * (1 - b) for a, b in zip(p1, p0, strict=True)) / 16, rel=1e-6
    )


# ----------------------------------------------------------------- batched vs reference loop
def conv_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 5, 1),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(20, 5),
    ).eval()


def reference_probs(model, image, substrate, heatmap, counts, insert=False):
    """One image at a time, pixels ordered by a plain Python sort on (-H, raster index)."""
    h, w = heatmap.shape
    flat = heatmap.flatten().tolist()
    order = sorted(range(h * w), key=lambda p: (-flat[p], p))
    start, end = (substrate, image) if insert else (image, substrate)
    out = []
    with torch.no_grad():
        for d in counts:
            x = start.clone()
            for p in order[:d]:
                x[:, p // w, p % w] = end[:, p // w, p % w]
            out.append(torch.softmax(model(x[None]).double(), dim=1)[0])
    return torch.stack(out)


def test_batched_contrastive_scores_match_one_at_a_time_loop():
    model = conv_model()
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(3, 8, 8, generator=gen)
    # Rounded random maps: plenty of ties. Map 2 is constant.
    maps = torch.stack(
        [
            torch.rand(8, 8, generator=gen).mul(4).round(),
            torch.rand(8, 8, generator=gen),
            torch.ones(8, 8),
        ]
    )
    pairs = [([0], [1, 2]), ([3], [4]), ([1, 2], [0])]
    substrate = torch.randn(3, 8, 8, generator=gen)
    n, tau = 64, 0.05 * 64
    expected_cauc, expected_cdrop = [], []
    for heatmap, (t, c) in zip(maps, pairs, strict=True):
        nd = int((heatmap >= 0.5 * heatmap.max()).sum())
        p = reference_probs(model, image, substrate, heatmap, range(nd + 1))
        score = p[:, t].sum(1) * (1 - p[:, c].sum(1))
        expected_cauc.append(float(score[:nd].sum()) / n)
        expected_cdrop.append(float(score[0] - score[nd]) / math.log2(1 + max(nd, tau) / tau))
    for batch_size in (1, 7, 1000):
        result = contrastive_scores(
            model, image, maps, pairs, step=1, substrate=substrate, batch_size=batch_size
        )
        np.testing.assert_allclose(result.cauc, expected_cauc, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(result.cdrop, expected_cdrop, rtol=1e-5, atol=1e-8)
    for k, (t, c) in enumerate(pairs):  # the single-map functions agree with the batch
        assert cauc(model, image, maps[k], t, c, step=1, substrate=substrate) == pytest.approx(
            expected_cauc[k], rel=1e-5
        )
        assert cdrop(model, image, maps[k], t, c, substrate=substrate) == pytest.approx(
            expected_cdrop[k], rel=1e-5, abs=1e-8
        )


def test_forward_passes_come_in_full_batches(hand):
    model, image = hand
    maps = torch.stack([A, B, torch.ones(4, 4), torch.arange(16.0).view(4, 4)])
    pairs = [([0], [1]), ([1], [0]), ([0], [2]), ([2], [0, 1])]
    contrastive_scores(model, image, maps, pairs, step=1, batch_size=5)
    sizes = model.batch_sizes
    assert sum(sizes) > 5 and all(b == 5 for b in sizes[:-1]) and 1 <= sizes[-1] <= 5


def test_coinciding_heatmaps_share_their_deletion_images(hand):
    model, image = hand
    # One map for three pairs: its n_delta = 4 deletion images (d = 0..4, step 1) run once
    # and every pair's P(target), P(contrast) are read off the same forward pass.
    pairs = [([0], [1]), ([1], [0]), ([0], [1, 2])]
    once = contrastive_scores(model, image, A, pairs, step=1, batch_size=100)
    assert sum(model.batch_sizes) == 5
    model.batch_sizes.clear()
    # The same map given three times (and a copy with the same order but other values).
    maps = torch.stack([A, A.clone(), 2 * A])
    thrice = contrastive_scores(model, image, maps, pairs, step=1, batch_size=100)
    assert sum(model.batch_sizes) == 5
    np.testing.assert_array_equal(once.cauc, thrice.cauc)
    np.testing.assert_array_equal(once.cdrop, thrice.cdrop)
    assert once.cauc[0] == pytest.approx((272 / 1089 + 72 / 625 + 20 / 441 + 6 / 361) / 16)


def test_batched_deletion_and_insertion_match_reference_loop():
    model = conv_model()
    gen = torch.Generator().manual_seed(2)
    image = torch.randn(3, 8, 8, generator=gen)
    maps = torch.stack([torch.rand(8, 8, generator=gen), torch.rand(8, 8, generator=gen).round()])
    targets = [1, [2, 3]]
    blurred = gaussian_blur(image)
    # step 0.1 of 64 pixels = 6 pixels: curve at 0, 6, ..., 60 and 64 (last step 4 wide).
    counts = [*range(0, 64, 6), 64]
    assert step_pixels(0.1, 64) == 6
    for mode in ("deletion", "insertion"):
        result = causal_curves(model, image, maps, targets, mode=mode, step=0.1, batch_size=4)
        np.testing.assert_array_equal(result.changed, counts)
        for k, target in enumerate(targets):
            p = reference_probs(model, image, blurred, maps[k], counts, insert=mode == "insertion")
            curve = p[:, target].reshape(len(counts), -1).sum(1).numpy()
            np.testing.assert_allclose(result.probability[k], curve, rtol=1e-5, atol=1e-9)
            x = np.asarray(counts) / 64
            expected_auc = float(((curve[1:] + curve[:-1]) / 2 * np.diff(x)).sum())
            assert result.auc[k] == pytest.approx(expected_auc, rel=1e-6)
        one = deletion_auc if mode == "deletion" else insertion_auc
        assert one(model, image, maps[0], 1, step=0.1) == pytest.approx(result.auc[0], rel=1e-6)


def test_blur_substrate_matches_scipy_gaussian_filter():
    image = torch.randn(3, 9, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # kernel 11 = radius 5 = truncate 1.0 x sigma 5; replicated edges = scipy's "nearest".
    expected = scipy.ndimage.gaussian_filter(
        image.numpy(), sigma=(0, 5, 5), mode="nearest", truncate=1.0
    )
    np.testing.assert_allclose(gaussian_blur(image).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_insertion_deletion_by_hand(hand):
    model, image = hand
    # Zero substrate, H = A, 4 pixels per step (0.25 of 16): A goes first (raster 0, 1, 4, 5),
    # then raster 2, 3, 6, 7 | 8, 9, 10, 11 | 12, 13, 14, 15. Deletion, (kA, kB) at 0, 4, 8,
    # 12, 16 changed: (4,4) (0,4) (0,4) (0,2) (0,0): P0 = 16/33, 1/18, 1/18, 1/6, 1/3.
    p_del = [16 / 33, 1 / 18, 1 / 18, 1 / 6, 1 / 3]
    # Insertion from zeros: (0,0) (4,0) (4,0) (4,2) (4,4): P0 = 1/3, 16/18, 16/18, 16/21, 16/33.
    p_ins = [1 / 3, 16 / 18, 16 / 18, 16 / 21, 16 / 33]

    def trapezoid(p):
        return sum((a + b) / 2 * 0.25 for a, b in zip(p[:-1], p[1:], strict=True))

    for step in (4, 0.25):
        assert deletion_auc(model, image, A, 0, step=step, substrate="zero") == pytest.approx(
            trapezoid(p_del), rel=1e-6
        )
        assert insertion_auc(model, image, A, 0, step=step, substrate="zero") == pytest.approx(
            trapezoid(p_ins), rel=1e-6
        )
    # The blur of a constant image is the image: deleting changes nothing, the curve stays
    # at P0 = 16/33 and so does its area (over [0, 1]).
    assert deletion_auc(model, image, A, 0) == pytest.approx(16 / 33, rel=1e-6)
    assert insertion_auc(model, image, A, 0, step=0.036) == pytest.approx(16 / 33, rel=1e-6)


# ----------------------------------------------------------------- CCE, FG-VCE, SUNY scores
def test_class_deviation_score_by_hand(hand):
    """The probability reading of Eq. 8 (the logits default: tests/test_evaluation_protocol.py)."""
    model, image = hand
    without_a = image * (1 - A)
    without_b = image * (1 - B)
    # x0: P = (16, 16, 1)/33. Deleting A: P = (1, 16, 1)/18; non-target classes {1, 2}
    # renormalised: (16/17, 1/17) before and after, KL = 0: CDS = 16/33 - 1/18.
    assert class_deviation_score(model, image, without_a[None], 0, z="probabilities") == pytest.approx(
        16 / 33 - 1 / 18, rel=1e-6
    )
    # Deleting B: P = (16, 1, 1)/18; non-target (16/17, 1/17) -> (1/2, 1/2):
    # KL = 16/17 ln(32/17) + 1/17 ln(2/17); CDS = (16/33 - 16/18) / (1 + KL) < 0.
    kl = 16 / 17 * math.log(32 / 17) + 1 / 17 * math.log(2 / 17)
    assert class_deviation_score(model, image, without_b[None], [0], z="probabilities") == pytest.approx(
        (16 / 33 - 16 / 18) / (1 + kl), rel=1e-6
    )
    # Both perturbations: the drop and the KL are averaged over them.
    both = class_deviation_score(model, image, torch.stack([without_a, without_b]), 0, z="probabilities")
    assert both == pytest.approx((16 / 33 - (1 / 18 + 16 / 18) / 2) / (1 + kl / 2), rel=1e-6)


def test_compact_activation_score_by_hand():
    fine = np.zeros((4, 4))
    fine[0, :2] = [0.3, 0.1]  # sum 0.4 over P_A = 2 non-zero elements
    glob = np.zeros((4, 4))
    glob[:2, :2] = [[2.0, 1.0], [1.0, -3.0]]  # rectified, / max 2: sum 0.5 + 0.5 + 1 = 2
    # C = 0.4 / 2 = 0.2; P_T = 16: xi = 0.2 * 16 / 2 = 1.6.
    assert compact_activation_score(fine, glob) == pytest.approx(1.6)
    assert compact_activation_score(np.zeros((4, 4)), glob) == 0.0
    with pytest.raises(ValueError, match="no positive activation"):
        compact_activation_score(fine, -np.ones((4, 4)))


class SignModel(torch.nn.Module):
    """Class 1 wins iff the pixels of A sum above 4 + 1e-4 (their clean value is exactly 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mass = (x[:, 0] * A).flatten(1).sum(1)
        return torch.stack([torch.full_like(mass, 0.1), (mass - 4.0) * 1000.0], dim=1)


def test_saliency_attack_score():
    images = torch.ones(400, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    # Noise only on A (a quarter of the pixels): the decision flips iff the noise over A sums
    # above 1e-4, i.e. with probability about 1/2 (sum of 4 N(0, 0.03) draws, sd 0.35).
    result = saliency_attack_score(SignModel(), images, A.expand(400, 4, 4) * 0.5, generator=gen)
    assert result.avg_attack_size == pytest.approx(0.25)
    assert 0.4 < result.flip_rate < 0.6
    assert result.score == pytest.approx(result.flip_rate / 0.25)
    # Noise only on B, which the model ignores: no flip. Variance 0: no flip either.
    assert (
        saliency_attack_score(SignModel(), images, B.expand(400, 4, 4), generator=gen).flip_rate
        == 0.0
    )
    assert (
        saliency_attack_score(SignModel(), images, A.expand(400, 4, 4), variance=0.0).flip_rate
        == 0.0
    )


def test_energy_pointing_game_by_hand():
    m = np.zeros((4, 4))
    m[0, 0], m[0, 3], m[3, 3] = 2.0, 1.0, -5.0  # negatives clipped: total energy 3
    # Box x in [0, 2), y in [0, 2) holds 2 of 3; adding the box around (row 0, col 3) holds all.
    np.testing.assert_allclose(energy_pointing_game(m, (0, 0, 2, 2)), [2 / 3])
    both = energy_pointing_game(np.stack([m, m]), [[(0, 0, 2, 2), (3, 0, 4, 1)], [(1, 1, 4, 4)]])
    np.testing.assert_allclose(both, [1.0, 0.0])
    assert np.isnan(energy_pointing_game(np.zeros((4, 4)), (0, 0, 4, 4))[0])
    with pytest.raises(ValueError, match="inverted"):
        energy_pointing_game(m, (2, 0, 1, 4))


# ----------------------------------------------------------------- modes and bad input
def test_train_mode_model_is_evaluated_in_eval_mode_and_restored():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 1),
        torch.nn.BatchNorm2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 3),
    )
    image = torch.randn(1, 4, 4)
    heat = torch.arange(16.0).view(4, 4)
    expected = cauc(model.eval(), image, heat, [0], [1], step=1)
    model.train()
    assert cauc(model, image, heat, [0], [1], step=1, batch_size=3) == pytest.approx(
        expected, rel=1e-6
    )
    assert model.training


def test_each_submodule_keeps_its_own_mode():
    # A wrapper in train mode around a classifier in eval mode (and the other way round):
    # the metric runs everything in eval mode and gives each module its own flag back.
    torch.manual_seed(0)
    inner = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 3)
    ).eval()
    wrapper = torch.nn.Sequential(inner)  # train mode, as nn.Module starts
    image = torch.randn(1, 4, 4)
    heat = torch.arange(16.0).view(4, 4)
    expected = cauc(inner, image, heat, [0], [1], step=1)
    assert cauc(wrapper, image, heat, [0], [1], step=1, batch_size=3) == pytest.approx(expected, rel=1e-6)
    assert wrapper.training and not inner.training and not inner[1].training
    wrapper.eval()
    inner[1].train()  # a BatchNorm left in train mode under an eval-mode wrapper
    assert cauc(wrapper, image, heat, [0], [1], step=1, batch_size=3) == pytest.approx(expected, rel=1e-6)
    assert inner[1].training and not wrapper.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    model = conv_model()
    image = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(4))
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(5))
    pairs = [([0], [1]), ([2], [3, 4])]
    cpu = contrastive_scores(model, image, maps, pairs, step=2)
    gpu = contrastive_scores(model.cuda(), image.cuda(), maps, pairs, step=2)
    np.testing.assert_allclose(gpu.cauc, cpu.cauc, rtol=1e-4)
    np.testing.assert_allclose(gpu.cdrop, cpu.cdrop, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": [1], "contrast": [1, 2]}, "share class ids"),
        ({"target": [], "contrast": [1]}, "target is empty"),
        ({"target": [0], "contrast": []}, "contrast is empty"),
        ({"target": [0, 0], "contrast": [1]}, "repeats"),
        ({"target": [7], "contrast": [1]}, "out of range"),
        ({"heatmap": torch.zeros(4, 5)}, "does not match the image size"),
        ({"heatmap": torch.zeros(2, 4, 4)}, "must be H x W"),
        ({"heatmap": torch.full((4, 4), float("nan"))}, "NaN or infinite"),
        ({"heatmap": torch.tensor([[float("inf")] * 4] * 4)}, "NaN or infinite"),
        ({"substrate": "noise"}, "unknown substrate"),
        ({"substrate": torch.zeros(1, 3, 3)}, "does not match the image"),
        ({"delta": 0.0}, r"delta must lie in \(0, 1\]"),
        ({"delta": 1.5}, r"delta must lie in \(0, 1\]"),
        ({"delta": float("nan")}, r"delta must lie in \(0, 1\]"),
        ({"step": 0}, "step must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"n_delta": 17}, "n_delta must be"),
        ({"image": torch.ones(1, 1, 4, 4)}, "one C x H x W tensor"),
    ],
)
def test_bad_arguments_raise(hand, kwargs, match):
    model, image = hand
    args = {"image": image, "heatmap": A, "target": [0], "contrast": [1]} | kwargs
    with pytest.raises(ValueError, match=match):
        cauc(model, **args)
    if "n_delta" not in kwargs:
        with pytest.raises(ValueError, match=match):
            cdrop(model, **args)


def test_bad_arguments_of_batched_forms(hand):
    model, image = hand
    with pytest.raises(ValueError, match="as many of each"):
        contrastive_scores(model, image, torch.stack([A, B]), [([0], [1])] * 3)
    with pytest.raises(ValueError, match="pairs must be a list"):
        contrastive_scores(model, image, A, [0, 1])
    with pytest.raises(ValueError, match="tau must be positive"):
        contrastive_scores(model, image, A, [([0], [1])], tau=0.0)
    with pytest.raises(ValueError, match="n_delta must be"):
        contrastive_scores(model, image, A, [([0], [1])], n_delta="max")
    with pytest.raises(ValueError, match="mode must be"):
        causal_curves(model, image, A, [0], mode="sideways")
    with pytest.raises(ValueError, match="step must be a fraction"):
        deletion_auc(model, image, A, 0, step=1.5)
    with pytest.raises(ValueError, match="B x K logits"):
        cauc(lambda x: x.sum(), image, A, [0], [1])
    with pytest.raises(ValueError, match="targets must be a list"):
        causal_curves(model, image, A, 0)
