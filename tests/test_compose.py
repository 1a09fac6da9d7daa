"""The modes' formulas (online.compose) on small hand-made maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cwox.online.compose import (
    compose,
    contrast,
    cwox1sa,
    cwox1sb,
    cwox2s,
    cwox2s_class_maps,
    cwox2s_cluster_maps,
    normalize_maps,
    support_mask,
    swox,
)
from cwox.online.targets import plan_targets


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --------------------------------------------------------------------------- helpers


def test_contrast_is_relu_of_difference():
    fact = t([[1.0, 0.0], [2.0, -1.0]])
    foil = t([[0.0, 1.0], [1.0, 1.0]])
    assert torch.equal(contrast(fact, foil), t([[1.0, 0.0], [1.0, 0.0]]))


def test_normalize_minmax_max_none_and_constant():
    maps = t([[0.0, 2.0], [4.0, -4.0]], [[3.0, 3.0], [3.0, 3.0]])
    mm = normalize_maps(maps, "minmax")
    assert torch.allclose(mm[0], t([0.5, 0.75], [1.0, 0.0]))
    assert torch.equal(mm[1], torch.zeros(2, 2))  # constant map -> 0, no NaN
    mx = normalize_maps(maps, "max")
    assert torch.allclose(mx[0], t([0.0, 0.5], [1.0, -1.0]))
    assert normalize_maps(maps, "none") is maps
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_maps(maps, "zscore")


def test_support_mask_percentile_matches_numpy_and_ignores_negatives():
    m = torch.arange(1.0, 17.0).view(1, 4, 4)
    s50 = support_mask(m, 50.0)
    thr = np.percentile(m.numpy(), 50)  # 8.5
    assert torch.equal(s50.bool(), m > thr)
    assert int(s50.sum()) == 8
    assert int(support_mask(m, 0.0).sum()) == 16  # percentile 0: every positive pixel
    # a constant positive map is all support (not emptied by a strict threshold)
    assert int(support_mask(torch.full((1, 3, 3), 2.0), 50.0).sum()) == 9
    # a map that is negative everywhere has an empty support, whatever the percentile
    neg = -m
    assert int(support_mask(neg, 0.0).sum()) == 0
    assert int(support_mask(neg, 90.0).sum()) == 0
    # a ReLU'd map at percentile 0: its plain support (non-zero pixels)
    relu = t([[0.0, 0.0], [0.5, 2.0]])
    assert torch.equal(support_mask(relu, 0.0), t([[0.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="percentile"):
        support_mask(m, 120.0)


def test_shape_errors_are_specific():
    with pytest.raises(ValueError, match="n x H x W"):
        swox(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        cwox1sa(torch.zeros(2, 3, 3), torch.zeros(2, 3, 4))


# --------------------------------------------------------------------------- single stage


def test_swox_is_the_plain_maps():
    maps = torch.randn(3, 5, 5)
    out = swox(maps)
    assert torch.equal(out, maps) and out is not maps


def test_cwox1sa_known_answer_and_k1():
    fact = t([[1.0, 3.0], [0.0, -2.0]])
    rest = t([[2.0, 1.0], [0.0, -3.0]])
    assert torch.equal(cwox1sa(fact, rest), t([[0.0, 2.0], [0.0, 1.0]]))
    # K = 1: no foil, the map itself (signed, as Eq. 1 for I = 1)
    assert torch.equal(cwox1sa(fact, None), fact)


def test_cwox1sb_is_fact_times_inverse_of_foil():
    fact = t([[0.0, 1.0], [2.0, 4.0]])  # minmax -> [0, .25, .5, 1]
    foil = t([[10.0, 0.0], [5.0, 10.0]])  # minmax -> [1, 0, .5, 1]
    out = cwox1sb(fact, foil)
    assert torch.allclose(out, t([[0.0, 0.25], [0.25, 0.0]]))
    assert torch.allclose(cwox1sb(fact, None), normalize_maps(fact, "minmax"))


# --------------------------------------------------------------------------- CWOX-2s


def test_eq1_two_clusters_and_single_cluster():
    clusters = t([[1.0, 2.0], [0.0, 0.0]], [[0.0, 1.0], [3.0, -1.0]])
    complements = t([[0.0, 1.0], [3.0, -1.0]], [[1.0, 2.0], [0.0, 0.0]])
    hat = cwox2s_cluster_maps(clusters, complements)
    assert torch.equal(hat[0], t([1.0, 1.0], [0.0, 1.0]))
    assert torch.equal(hat[1], t([0.0, 0.0], [3.0, 0.0]))
    # I = 1: H_C itself, negatives kept, no complement needed
    one = t([[1.0, -2.0], [0.5, 0.0]])
    assert torch.equal(cwox2s_cluster_maps(one, None), one)
    with pytest.raises(ValueError, match="complement"):
        cwox2s_cluster_maps(clusters, None)


def test_eq2_j_greater_than_one_restricted_to_support():
    hat = t([[0.0, 1.0], [2.0, 3.0]])  # one cluster of two classes
    class_maps = t([[5.0, 5.0], [1.0, 0.0]], [[0.0, 1.0], [3.0, 2.0]])
    rest = torch.stack([class_maps[1], class_maps[0]])  # C_i \ c is the other class
    out = cwox2s_class_maps(hat, class_maps, rest, [0, 0], support=0.0)
    supp = t([0.0, 1.0], [1.0, 1.0])  # hat > 0
    assert torch.equal(out[0], supp * t([5.0, 4.0], [0.0, 0.0]))
    assert torch.equal(out[1], supp * t([0.0, 0.0], [2.0, 2.0]))
    # a higher percentile keeps only the strongest cluster evidence (hat > 2.5: one pixel)
    out75 = cwox2s_class_maps(hat, class_maps, rest, [0, 0], support=75.0)
    assert torch.equal(out75[1], t([0.0, 0.0], [0.0, 2.0]))


def test_eq2_j_equal_one_is_support_times_plain_map():
    hat = t([[0.0, 1.0], [2.0, 3.0]], [[4.0, 0.0], [0.0, 0.0]])
    class_maps = t([[1.0, -1.0], [2.0, -2.0]], [[7.0, 7.0], [7.0, 7.0]])
    out = cwox2s_class_maps(hat, class_maps, None, [0, 1], support=0.0)
    assert torch.equal(out[0], t([0.0, -1.0], [2.0, -2.0]))  # no ReLU for a singleton
    assert torch.equal(out[1], t([7.0, 0.0], [0.0, 0.0]))


def test_eq2_mixed_clusters_rest_rows_of_singletons_ignored():
    hat = torch.ones(2, 3, 3)
    class_maps = torch.randn(3, 3, 3)
    rest = torch.randn(3, 3, 3)
    rest_garbage = rest.clone()
    rest_garbage[2] = float("nan")  # class 2 is alone in cluster 1: its rest row is ignored
    a = cwox2s_class_maps(hat, class_maps, rest, [0, 0, 1], support=0.0)
    b = cwox2s_class_maps(hat, class_maps, rest_garbage, [0, 0, 1], support=0.0)
    assert torch.equal(a, b)
    assert torch.equal(a[2], class_maps[2])
    assert torch.equal(a[0], torch.relu(class_maps[0] - rest[0]))


def test_eq2_index_errors():
    with pytest.raises(ValueError, match="one cluster index per class"):
        cwox2s_class_maps(torch.ones(1, 2, 2), torch.ones(2, 2, 2), None, [0])
    with pytest.raises(ValueError, match="outside"):
        cwox2s_class_maps(torch.ones(1, 2, 2), torch.ones(1, 2, 2), None, [3])


def test_cwox2s_i1_j1_single_class():
    cluster = t([[0.0, 2.0], [-1.0, 4.0]])
    cls = t([[3.0, 3.0], [3.0, -3.0]])
    hat, out = cwox2s(cluster, None, cls, None, [0], support=0.0)
    assert torch.equal(hat, cluster)
    assert torch.equal(out[0], t([0.0, 3.0], [0.0, -3.0]))


# --------------------------------------------------------------------------- plans


def test_plan_deduplicates_targets_and_compose_follows_it():
    classes = [10, 11, 12, 13]
    clusters = [[10, 12], [11, 13]]
    plan = plan_targets(classes, clusters, "cwox2s")
    # the complement of one of two clusters is the other: 2 cluster-stage targets, not 4
    assert plan.stage_targets["cluster"] == [frozenset({10, 12}), frozenset({11, 13})]
    assert plan.cluster_foil == [1, 0]
    # classes: in-cluster rest of 10 is 12 and vice versa: 4 class-stage targets, not 8
    assert sorted(plan.stage_targets["class"]) == [10, 11, 12, 13]
    gen = torch.Generator().manual_seed(0)
    maps = {s: torch.randn(len(v), 6, 6, generator=gen) for s, v in plan.stage_targets.items()}
    cluster_out, class_out = compose(plan, maps, support=30.0)
    clu, cls = maps["cluster"], maps["class"]
    idx = {tg: i for i, tg in enumerate(plan.stage_targets["class"])}
    hat0 = torch.relu(clu[0] - clu[1])
    assert torch.allclose(cluster_out[0], hat0)
    expect_11 = support_mask(cluster_out[1:2], 30.0)[0] * torch.relu(cls[idx[11]] - cls[idx[13]])
    assert torch.allclose(class_out[1], expect_11)


@pytest.mark.parametrize("mode", ["swox", "cwox1sa", "cwox1sb"])
def test_single_stage_plans(mode):
    plan = plan_targets([1, 2, 3], [[1, 2], [3]], mode)
    assert plan.class_stage == "cluster" and plan.cluster_fact == []
    gen = torch.Generator().manual_seed(1)
    maps = {"cluster": torch.randn(len(plan.stage_targets["cluster"]), 4, 4, generator=gen)}
    none, out = compose(plan, maps)
    assert none is None and out.shape == (3, 4, 4)
    h = maps["cluster"]
    fact = h[plan.class_fact]
    if mode == "swox":
        assert plan.stage_targets["cluster"] == [1, 2, 3]
        assert torch.equal(out, fact)
    else:
        foil = h[plan.class_foil]
        assert plan.stage_targets["cluster"][plan.class_foil[0]] == frozenset({2, 3})
        ref = cwox1sa(fact, foil) if mode == "cwox1sa" else cwox1sb(fact, foil)
        assert torch.allclose(out, ref)


def test_native_contrasts_replace_subtraction():
    plan = plan_targets([1, 2, 3], [[1, 2], [3]], "cwox2s")
    pairs = plan.contrast_pairs()
    assert pairs["cluster"] == [(frozenset({1, 2}), 3), (3, frozenset({1, 2}))]
    assert pairs["class"] == [(1, 2), (2, 1)]  # class 3 is alone: no pair
    maps = {s: torch.zeros(len(v), 2, 2) for s, v in plan.stage_targets.items()}
    diffs = {"cluster": torch.stack([torch.ones(2, 2), -torch.ones(2, 2)]), "class": torch.full((2, 2, 2), 2.0)}
    hat, out = compose(plan, maps, contrasts=diffs)
    assert torch.equal(hat[0], torch.ones(2, 2)) and torch.equal(hat[1], torch.zeros(2, 2))
    assert torch.equal(out[0], torch.full((2, 2), 2.0))  # support of hat[0] is everything
    assert torch.equal(out[2], torch.zeros(2, 2))
    with pytest.raises(ValueError, match="contrast maps"):
        compose(plan, maps, contrasts={"class": torch.ones(3, 2, 2)})


def test_compose_checks_map_counts():
    plan = plan_targets([1, 2], [[1, 2]], "cwox2s")
    with pytest.raises(ValueError, match="no maps for stage"):
        compose(plan, {"class": torch.zeros(2, 2, 2)})
    with pytest.raises(ValueError, match="maps for"):
        compose(plan, {"cluster": torch.zeros(3, 2, 2), "class": torch.zeros(2, 2, 2)})
