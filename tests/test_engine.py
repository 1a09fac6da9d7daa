"""Targets (compound classes, top-K, clusters from a tree) and the engine end to end."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from cwox.hlta.tree import leaf_id, tree_from_groups
from cwox.online.compose import compose, normalize_maps
from cwox.online.engine import Engine, explain_image
from cwox.online.explainers import get_explainer
from cwox.online.explanation import Explanation
from cwox.online.targets import (
    as_target,
    cut_clusters,
    plan_targets,
    target_logits,
    target_probabilities,
    top_k,
)
from PIL import Image
from torch import nn

from cwox.core.models import from_module

N = 8


def make_tree(groups: dict[str, list[int]], n_labels: int, names=None, missing=()) -> nx.DiGraph:
    """:func:`cwox.hlta.tree.tree_from_groups` (``Z1``, ``Z2``... in order), minus the leaves in ``missing``."""
    assert list(groups) == [f"Z{k}" for k in range(1, len(groups) + 1)]
    names = list(names) if names is not None else [f"class{i}" for i in range(n_labels)]
    tree = tree_from_groups(list(groups.values()), names)
    tree.remove_nodes_from(leaf_id(lab) for lab in missing)
    return tree


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, N)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.5

    def forward(self, x):
        return self.fc(self.head(self.features(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def small():
    return from_module(SmallNet(), [f"class{i}" for i in range(N)], name="small", input_size=48,
                       cluster_layer="head", class_layer="features", device="cpu")


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return Image.fromarray(data.coffee())


# --------------------------------------------------------------------------- targets


def test_compound_logit_is_logsumexp_and_probability_is_sum():
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    targets = [1, frozenset({0, 1}), frozenset({0, 2, 3})]
    z = target_logits(logits, targets)[0]
    assert torch.isclose(z[0], torch.tensor(2.0))
    assert torch.isclose(z[1], torch.log(torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(2.0))))
    probs = torch.softmax(logits, -1)
    p = target_probabilities(probs, targets)[0]
    assert torch.isclose(p[2], probs[0, [0, 2, 3]].sum())
    # consistency of the two definitions: softmax of compound logits against the rest
    assert torch.isclose(p[1], torch.exp(z[1]) / torch.exp(logits).sum())
    with pytest.raises(ValueError, match="outside 0..3"):
        target_probabilities(probs, [frozenset({1, 9})])


def test_as_target_normalises():
    assert as_target(5) == 5 and as_target(np.int64(5)) == 5
    assert as_target([3]) == 3 and as_target({2, 1}) == frozenset({1, 2})
    with pytest.raises(ValueError):
        as_target([])


def test_top_k_fixed_and_cumulative():
    probs = torch.tensor([0.05, 0.5, 0.3, 0.1, 0.05])
    assert top_k(probs, 2) == ([1, 2], [pytest.approx(0.5), pytest.approx(0.3)])
    assert top_k(probs, None, cum=0.85)[0] == [1, 2, 3]  # 0.5 + 0.3 + 0.1 = 0.9 > 0.85
    assert top_k(probs, None, cum=0.85, max_k=2)[0] == [1, 2]
    assert len(top_k(probs, 50)[0]) == 5
    with pytest.raises(ValueError, match="not both"):
        top_k(probs, 2, cum=0.9)
    with pytest.raises(ValueError, match="threshold must be in"):
        top_k(probs, None, cum=1.5)


def test_cut_clusters_level_one_with_absent_and_unclustered_labels():
    tree = make_tree({"Z1": [0, 1, 2], "Z2": [3, 4]}, n_labels=N, missing=(6,))
    # 5 hangs under the root (its own cluster); 6 has no leaf at all (its own cluster)
    got = cut_clusters(tree, [4, 0, 6, 5, 2, 3])
    assert got == [[4, 3], [0, 2], [6], [5]]
    assert cut_clusters(None, [2, 1]) == [[2], [1]]
    with pytest.raises(ValueError, match="duplicates"):
        cut_clusters(tree, [1, 1])


def test_plan_for_single_cluster_and_single_class():
    plan = plan_targets([7], [[7]], "cwox2s")
    assert plan.stage_targets == {"cluster": [7], "class": [7]}
    assert plan.cluster_foil == [None] and plan.class_foil == [None]
    with pytest.raises(ValueError, match="do not partition"):
        plan_targets([1, 2], [[1]], "cwox2s")
    with pytest.raises(ValueError, match="unknown mode"):
        plan_targets([1], [[1]], "cwox3s")


# --------------------------------------------------------------------------- engine


@pytest.mark.parametrize("explainer", ["gradcam", "rise"])
@pytest.mark.parametrize("mode", ["cwox2s", "cwox1sa", "cwox1sb", "swox"])
def test_engine_all_modes(small, photo, mode, explainer):
    tree = make_tree({"Z1": [0, 1, 2], "Z2": [3, 4, 5]}, n_labels=N)
    params = {"n_masks": 48, "cells": 4} if explainer == "rise" else {}
    exp = explain_image(small, photo, tree, explainer, mode, top_k=4, batch_size=16, **params)
    assert isinstance(exp, Explanation)
    assert exp.image.shape == (48, 48, 3) and exp.image.dtype == np.uint8
    assert len(exp.classes) == 4 and exp.probs == sorted(exp.probs, reverse=True)
    assert exp.clusters == cut_clusters(tree, exp.classes)
    assert exp.class_maps.shape == (4, 48, 48) and exp.class_maps.dtype == np.float32
    assert np.isfinite(exp.class_maps).all()
    if mode == "cwox2s":
        assert exp.cluster_maps.shape == (len(exp.clusters), 48, 48)
        if len(exp.clusters) > 1:
            assert (exp.cluster_maps >= 0).all()
    else:
        assert exp.cluster_maps is None
    if mode in ("cwox1sa", "cwox1sb"):
        assert (exp.class_maps >= 0).all()
    assert set(exp.timings) >= {"forward", "clusters", "maps", "compose", "total"}
    assert exp.settings["explainer"]["name"] == explainer and exp.settings["mode"] == mode


def test_engine_equals_explainer_plus_compose(small, photo):
    """The engine's maps are exactly Eq. (1)/(2) applied to the explainer's maps for the plan."""
    tree = make_tree({"Z1": [0, 1, 2, 3], "Z2": [4, 5, 6, 7]}, n_labels=N)
    engine = Engine(small, tree, "gradcam", "cwox2s", top_k=5, support=40.0)
    exp = engine.explain(photo)
    plan = plan_targets(exp.classes, exp.clusters, "cwox2s")
    x = small.preprocess(photo)
    maps = get_explainer("gradcam", small).explain_stages(x, plan.stage_targets)
    cl, cs = compose(plan, {k: normalize_maps(v, "none") for k, v in maps.items()}, support=40.0)
    np.testing.assert_allclose(exp.cluster_maps, cl.numpy(), atol=1e-5)
    np.testing.assert_allclose(exp.class_maps, cs.numpy(), atol=1e-5)
    # classes of a multi-class cluster are non-zero only inside the support of their cluster map
    for k, c in enumerate(exp.classes):
        i = next(j for j, g in enumerate(exp.clusters) if c in g)
        outside = exp.cluster_maps[i] <= 0
        assert np.all(exp.class_maps[k][outside] == 0)


def test_engine_cumulative_top_k_and_path_input(small, photo, tmp_path):
    path = tmp_path / "coffee.png"
    photo.save(path)
    exp = explain_image(small, path, None, "gradcam", "swox", cum=0.5, max_k=3)
    assert exp.image_path == str(path)
    assert 1 <= len(exp.classes) <= 3
    assert exp.clusters == [[c] for c in exp.classes]  # no tree: every class alone
    probs = small.probabilities(small.preprocess(photo)[None])[0].sort(descending=True).values
    k = len(exp.classes)
    assert k == 3 or (float(probs[:k].sum()) > 0.5 >= float(probs[: k - 1].sum()))


def test_engine_rejects_bad_settings(small):
    tree = make_tree({"Z1": [0, 1]}, n_labels=N + 1, names=[f"c{i}" for i in range(N + 1)])
    with pytest.raises(ValueError, match="9 labels but model 'small' has 8"):
        Engine(small, tree)
    with pytest.raises(ValueError, match="unknown mode"):
        Engine(small, None, mode="cwox9")
    with pytest.raises(ValueError, match="not both"):
        Engine(small, None, top_k=3, cum=0.9)
    with pytest.raises(ValueError, match="support percentile"):
        Engine(small, None, support=150)
    with pytest.raises(ValueError, match="unknown explainer"):
        Engine(small, None, explainer="lime")


def test_engine_real_model_groups_the_cats(default_classifier):
    from skimage import data

    names = default_classifier.class_names
    tree = make_tree({"Z1": [281, 282, 285, 287], "Z2": [904, 905]}, n_labels=1000, names=names)
    exp = explain_image(default_classifier, Image.fromarray(data.chelsea()), tree, "gradcam", "cwox2s", top_k=5)
    assert set(exp.classes[:3]) == {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    cat_cluster = next(g for g in exp.clusters if 282 in g)
    assert {281, 282, 285} <= set(cat_cluster)
    i = exp.clusters.index(cat_cluster)
    assert exp.cluster_maps[i].max() > 0  # the cats' cluster has evidence over the rest


def test_plan_base_targets_in_the_contrast_role():
    """With native contrasts only the base maps Eq. (1)-(2) still read are drawn."""
    plan = plan_targets([0, 1, 2, 5], [[0, 1, 2], [5]], "cwox2s")
    assert plan.base_targets() == plan.stage_targets
    needed = plan.base_targets(with_contrasts=True)
    assert needed == {"cluster": [], "class": [5]}  # both clusters have a foil; 5 is alone
    one = plan_targets([0, 1], [[0, 1]], "cwox2s")  # one cluster: Eq. (1) reads H_C itself
    assert one.base_targets(with_contrasts=True) == {"cluster": [frozenset({0, 1})], "class": []}
    sb = plan_targets([0, 1], [[0], [1]], "cwox1sb")  # no native pairs in this mode: everything
    assert sb.base_targets(with_contrasts=True) == sb.stage_targets


def test_engine_contrast_role_skips_unread_base_maps_exactly(small, photo):
    """Drawing only the read base maps gives the same composed maps as drawing all of them."""
    from cwox.online.explainers.cce import CCE

    tree = make_tree({"Z1": [0, 1, 2, 3], "Z2": [4, 5, 6, 7]}, n_labels=N)
    params = {"iterations": 2, "n_counterfactuals": 1, "n_noise": 1, "seed": 3}
    engine = Engine(small, tree, CCE(small, **params), "cwox2s", top_k=5, role="contrast", support=40.0)
    exp = engine.explain(photo)
    plan = plan_targets(exp.classes, exp.clusters, "cwox2s")
    needed = plan.base_targets(with_contrasts=True)
    assert exp.settings["n_base_maps"] == {s: len(t) for s, t in needed.items()}
    assert sum(exp.settings["n_base_maps"].values()) < plan.n_targets
    x = small.preprocess(photo)
    ref = CCE(small, **params)
    maps = ref.explain_stages(x, plan.stage_targets)  # every target, as before
    contrasts = {s: ref.contrast(x, pairs, stage=s) for s, pairs in plan.contrast_pairs().items()}
    cl, cs = compose(plan, maps, support=40.0, contrasts=contrasts)
    np.testing.assert_allclose(exp.cluster_maps, cl.numpy(), atol=1e-5)
    np.testing.assert_allclose(exp.class_maps, cs.numpy(), atol=1e-5)
