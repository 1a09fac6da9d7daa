"""FG-VCE: saliency partition (Eq. 1-4), feature-replacement counterfactuals, Eq. 10-11, the bank."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from cwox.offline.reference_bank import bank_from_tensors, build_reference_bank
from cwox.online.explainers import get_explainer
from cwox.online.explainers.base import count_hooks
from cwox.online.explainers.fgvce import FGVCE, partition_kernels
from cwox.pipelines.photos import photo_crop_bank
from cwox.store.reference_bank import load_reference_bank, save_reference_bank
from PIL import Image
from skimage import data

from cwox.core.models import from_module

TIGER_CAT, TABBY, EGYPTIAN_CAT = 282, 281, 285


@pytest.fixture(scope="module")
def clf(default_classifier):
    return default_classifier


@pytest.fixture(scope="module")
def chelsea(clf) -> torch.Tensor:
    return clf.preprocess(Image.fromarray(data.chelsea()))


@pytest.fixture(scope="module")
def bank(clf):
    """A small bank from real photos: crops of chelsea (Egyptian cat) and of coffee (espresso)."""
    return photo_crop_bank(clf)


def _not_constant(m: torch.Tensor) -> bool:
    return bool((m.amax(dim=(-2, -1)) - m.amin(dim=(-2, -1)) > 1e-7).all())


# --------------------------------------------------------------------------- partition (Eq. 1-4)


def test_partition_kernels_dip_at_their_centres():
    g = partition_kernels(3, 4, sigma=0.8)
    assert g.shape == (12, 3, 4)
    k = 1 * 4 + 2  # centre (1, 2)
    assert g[k, 1, 2] == 0.0
    assert torch.isclose(g[k, 1, 3], torch.tensor(1 - np.exp(-1 / (2 * 0.64)), dtype=torch.float32))
    assert bool((g[k] >= 0).all() and (g[k] <= 1).all())
    assert int(g.argmin(dim=-1).flatten(1).shape[1]) == 3 and torch.equal(
        g.view(12, -1).argmin(1), torch.arange(12)
    )
    with pytest.raises(ValueError, match="sigma"):
        partition_kernels(3, 3, sigma=0)


def test_base_role_maps(clf, chelsea):
    ex = get_explainer("fgvce", clf)
    maps = ex.explain(chelsea, [TIGER_CAT, EGYPTIAN_CAT, {TIGER_CAT, TABBY, EGYPTIAN_CAT}])
    assert maps.shape == (3, 224, 224)
    assert bool(torch.isfinite(maps).all()) and _not_constant(maps)
    # the compound class's probability is the sum, so removing a region costs it at least as much at the peak
    assert float(maps[2].max()) >= float(maps[0].max())
    assert count_hooks(clf.module) == 0


def test_partition_equals_an_explicit_per_partition_loop(clf, chelsea):
    """s[k] = p(h) - p(h * G~[k]) computed by running the full model with a hook, one partition at a time."""
    ex = FGVCE(clf)
    grid = ex.grid_saliency(chelsea, [TIGER_CAT, {TIGER_CAT, TABBY}])
    assert grid.shape == (2, 7, 7)
    kernels = partition_kernels(7, 7, 0.8)
    layer = clf.layer(clf.cluster_layer)
    with torch.inference_mode():
        p_h = clf.probabilities(chelsea[None])[0]
        for k in (0, 17, 24, 48):
            handle = layer.register_forward_hook(lambda _m, _i, out, k=k: out * kernels[k])
            try:
                p_k = clf.probabilities(chelsea[None])[0]
            finally:
                handle.remove()
            want = p_h[TIGER_CAT] - p_k[TIGER_CAT]
            want_pair = (p_h[TIGER_CAT] + p_h[TABBY]) - (p_k[TIGER_CAT] + p_k[TABBY])
            assert torch.isclose(grid[0].flatten()[k], want, atol=1e-5)
            assert torch.isclose(grid[1].flatten()[k], want_pair, atol=1e-5)


def test_partition_saliency_is_highest_on_the_cat(clf, chelsea):
    """Attenuating features on the cat (the centre of the crop) costs 'tiger cat' more than at the border."""
    grid = FGVCE(clf).grid_saliency(chelsea, [TIGER_CAT])[0]
    border = torch.ones(7, 7, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert float(grid[~border].mean()) > 1.5 * float(grid[border].mean())
    assert not bool(border.flatten()[grid.argmax()])
    assert float(grid.max()) > 3 * float(grid[[0, 0, -1, -1], [0, -1, 0, -1]].abs().max())


def test_one_set_of_partitions_serves_every_target(clf, chelsea):
    ex = FGVCE(clf)
    ex.explain(chelsea, [TIGER_CAT])
    one = ex.forward_passes
    ex.forward_passes = 0
    ex.explain_stages(chelsea, {"cluster": [TIGER_CAT, TABBY, EGYPTIAN_CAT, {TABBY, EGYPTIAN_CAT}]})
    assert one == ex.forward_passes == 1 + 49
    # Stage two partitions the finer class layer by default: its own 14 x 14 partitions.
    ex.forward_passes = 0
    ex.explain_stages(chelsea, {"cluster": [TABBY], "class": [TABBY]})
    assert ex.forward_passes == (1 + 49) + (1 + 14 * 14)
    # Both stages on one layer on request: one set of passes serves both.
    one_layer = FGVCE(clf, class_layer=clf.cluster_layer)
    both = one_layer.explain_stages(chelsea, {"cluster": [{TABBY, EGYPTIAN_CAT}], "class": [TABBY, EGYPTIAN_CAT]})
    assert one_layer.forward_passes == 1 + 49
    torch.testing.assert_close(both["class"][0], one_layer.explain(chelsea, [TABBY], stage="class")[0])


def test_randomised_model_changes_the_maps(clf, chelsea):
    net = copy.deepcopy(clf.module)
    torch.manual_seed(1)
    for name in ("_fc", "_conv_head"):
        torch.nn.init.normal_(net.get_submodule(name).weight, std=0.05)
    rand = from_module(
        net, clf.class_names, name="random", mean=clf.mean, std=clf.std,
        cluster_layer=clf.cluster_layer, class_layer=clf.class_layer, device="cpu",
    )
    a = FGVCE(clf).explain(chelsea, [TIGER_CAT])[0].flatten()
    b = FGVCE(rand).explain(chelsea, [TIGER_CAT])[0].flatten()
    assert bool(torch.isfinite(b).all())
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
    assert float(corr) < 0.5


# --------------------------------------------------------------------------- bad arguments


def test_bad_arguments_are_clear_errors(clf, chelsea, bank):
    with pytest.raises(ValueError, match="no layer 'nope'"):
        FGVCE(clf, cluster_layer="nope")
    with pytest.raises(ValueError, match="sigma"):
        FGVCE(clf, sigma=-1.0)
    ex = FGVCE(clf, reference_bank=bank, max_steps=2)
    with pytest.raises(ValueError, match="outside 0..999"):
        ex.explain(chelsea, [1000])
    with pytest.raises(ValueError, match="outside"):
        ex.why(chelsea, TIGER_CAT, 5000)
    with pytest.raises(ValueError, match="equals the fact"):
        ex.why(chelsea, TIGER_CAT, TIGER_CAT)
    with pytest.raises(ValueError, match="contains classes of the fact"):
        ex.why(chelsea, TIGER_CAT, {TIGER_CAT, TABBY})
    with pytest.raises(ValueError, match="equals the fact"):
        ex.contrast(chelsea, [(TABBY, TABBY)])
    with pytest.raises(ValueError, match="does not prefer"):
        ex.why(chelsea, TABBY, TIGER_CAT)
    with pytest.raises(ValueError, match="unknown stage"):
        ex.explain(chelsea, [TABBY], stage="pixel")
    with pytest.raises(ValueError, match="reference bank"):
        FGVCE(clf).why(chelsea, TIGER_CAT, EGYPTIAN_CAT)
    assert FGVCE(clf).supports_contrast is False and ex.supports_contrast is True


# --------------------------------------------------------------------------- counterfactuals (Eq. 5-11)


def test_replacement_loop_flips_tiger_cat_into_egyptian_cat(clf, chelsea, bank):
    ex = FGVCE(clf, reference_bank=bank)
    out = ex.why(chelsea, TIGER_CAT, EGYPTIAN_CAT)
    rep = out["report"]
    assert rep.flipped and rep.stopped == "flipped" and rep.pool == "goal"
    assert 1 <= rep.steps <= 100 and len(rep.positions) == rep.steps == len(set(rep.positions))
    assert rep.top1_before == TIGER_CAT and rep.top1_after == EGYPTIAN_CAT
    assert set(rep.candidate_classes) == {EGYPTIAN_CAT}
    assert rep.goal_probs[-1] > rep.goal_probs[0]
    for key in ("invariant", "dominant", "contrast", "fact_saliency", "foil_saliency"):
        m = out[key]
        assert m.shape == (224, 224) and bool(torch.isfinite(m).all()) and _not_constant(m[None]), key
    torch.testing.assert_close(out["contrast"], out["invariant"] - out["dominant"])
    # Eq. 10/11: only replaced positions can differ between h^(0) and h*, so both maps live
    # there; the dominant map's weight sums to 1 over the grid, times s*.
    assert float(out["dominant"].abs().max()) > 0
    # without a foil, Q is the most probable class outside P
    assert ex.why(chelsea, TIGER_CAT)["report"].goal == EGYPTIAN_CAT


def test_loop_reports_failure_within_the_step_limit(clf, chelsea, bank):
    """The bank has no tabby: every candidate is tried; 3 steps are not enough."""
    ex = FGVCE(clf, reference_bank=bank, max_steps=3)
    rep = ex.why(chelsea, TIGER_CAT, TABBY)["report"]
    assert not rep.flipped and rep.steps == 3 and rep.stopped == "step limit" and rep.pool == "all"
    assert rep.as_dict()["goal"] == TABBY


def test_contrast_is_antisymmetric_and_batched_loops_match_single_ones(clf, chelsea, bank):
    ex = FGVCE(clf, reference_bank=bank, max_steps=4)
    both = ex.contrast(chelsea, [(TIGER_CAT, EGYPTIAN_CAT), (EGYPTIAN_CAT, TIGER_CAT), (TIGER_CAT, TABBY)])
    assert both.shape == (3, 224, 224) and bool(torch.isfinite(both).all())
    torch.testing.assert_close(both[1], -both[0])
    alone = ex.contrast(chelsea, [(TIGER_CAT, TABBY)], stage="class")
    torch.testing.assert_close(alone[0], both[2], atol=1e-6, rtol=1e-5)


def test_engine_base_and_contrast_roles(clf, bank):
    from cwox.online.engine import explain_image

    photo = Image.fromarray(data.chelsea())
    base = explain_image(clf, photo, None, explainer="fgvce", mode="cwox2s", top_k=3)
    assert base.class_maps.shape == (3, 224, 224) and np.isfinite(base.class_maps).all()
    ex = FGVCE(clf, reference_bank=bank, max_steps=3)
    contrast = explain_image(clf, photo, None, explainer=ex, mode="cwox2s", top_k=3)
    assert np.isfinite(contrast.cluster_maps).all()
    assert contrast.settings["explainer"]["reference_bank"]["candidates"] == len(bank)
    assert not np.allclose(contrast.cluster_maps, base.cluster_maps)


# --------------------------------------------------------------------------- the bank


def test_bank_holds_top_m_candidates_of_confident_images(clf, bank):
    assert bank.layer == clf.cluster_layer and bank.grid == (7, 7) and bank.channels == 1280
    assert bank.attrs["label_source"] == "prediction" and bank.attrs["top_m"] == 5
    counts = bank.per_class_counts()
    assert EGYPTIAN_CAT in counts and len(bank) == 5 * sum(counts.values())
    assert bool((bank.image_probs >= 0.3).all())
    # candidates are the top-5 positions: Shapley values sorted within each image
    s = bank.shapley.reshape(-1, 5)
    assert bool((np.diff(s, axis=1) <= 1e-7).all())


def test_bank_with_labels_keeps_correct_images_only(clf):
    x = torch.stack([clf.preprocess(Image.fromarray(a)) for a in (data.chelsea(), data.coffee())])
    bank = bank_from_tensors(clf, x, [TIGER_CAT, TABBY], per_class=1, top_m=2)
    assert bank.attrs["label_source"] == "given"
    assert bank.image_labels.tolist() == [TIGER_CAT] and len(bank) == 2  # coffee is no tabby
    with pytest.raises(ValueError, match="2 labels for 1 images"):
        bank_from_tensors(clf, x[:1], [1, 2])


def test_bank_store_round_trip_beside_documents(tmp_path, bank):
    import zarr

    docs = tmp_path / "DOCS.zarr"
    zarr.open_group(str(docs), mode="w").attrs["format"] = "cwox.documents/1"
    where = save_reference_bank(bank, docs)
    assert where.endswith("reference_bank")
    back = load_reference_bank(docs)
    np.testing.assert_array_equal(back.features, bank.features)
    np.testing.assert_array_equal(back.positions, bank.positions)
    assert back.image_paths == bank.image_paths and back.attrs["label_source"] == "prediction"
    assert zarr.open_group(str(docs), mode="r").attrs["format"] == "cwox.documents/1"
    with pytest.raises(FileExistsError):
        save_reference_bank(bank, docs)
    save_reference_bank(bank, docs, overwrite=True)
    with pytest.raises(ValueError, match="no cwox reference bank"):
        load_reference_bank(tmp_path / "DOCS.zarr", group="elsewhere")


def test_build_reference_bank_from_files(clf, photo_dir, tmp_path, chelsea):
    out = tmp_path / "bank.zarr"
    bank = build_reference_bank([photo_dir], out, classifier=clf, per_class=2, top_m=3, min_confidence=0.3, chunk_size=4)
    assert len(bank) == 3 * len(bank.image_paths) > 0
    assert all(p.startswith(str(photo_dir)) for p in bank.image_paths)
    loaded = load_reference_bank(out)
    ex = FGVCE(clf, reference_bank=out, max_steps=2)  # a path works too
    assert ex.settings()["reference_bank"]["candidates"] == len(loaded)
    with pytest.raises(FileExistsError):
        build_reference_bank([photo_dir], out, classifier=clf)


def test_shared_passes_answer_exactly_as_separate_loops(clf, chelsea, bank):
    """Identical questions run once, identical maps (same replacements) share their passes:
    the maps and reports must be those of one loop per pair, with fewer passes."""
    lynx = 287
    # tiger->tabby and tiger->lynx start from the same position with the same pool ("all"):
    # their first candidate maps are identical; (TABBY, TIGER_CAT) is the first question again.
    pairs = [(TIGER_CAT, TABBY), (TIGER_CAT, lynx), (TABBY, TIGER_CAT), (TIGER_CAT, EGYPTIAN_CAT)]
    ex = FGVCE(clf, reference_bank=bank, max_steps=5)
    together = ex.contrast(chelsea, pairs)
    shared = ex.forward_passes
    alone, separate = [], 0
    for pair in pairs:
        one = FGVCE(clf, reference_bank=bank, max_steps=5)
        alone.append(one.contrast(chelsea, [pair])[0])
        separate += one.forward_passes
    torch.testing.assert_close(together, torch.stack(alone), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(together[2], -together[0])
    # One h^(0) partition (50 passes) and one loop of the repeated question saved, and more.
    assert shared < separate - 3 * 50
    x = clf.preprocess(Image.fromarray(data.chelsea()))
    from cwox.online.explainers.fgvce import _Question

    probs = clf.probabilities(x[None])[0]
    qs = [_Question(TIGER_CAT, g, ex._criterion(probs, TIGER_CAT)) for g in (TABBY, lynx)]
    both = ex._counterfactuals(x, qs)
    for q, res in zip(qs, both):
        (single,) = FGVCE(clf, reference_bank=bank, max_steps=5)._counterfactuals(x, [q])
        assert res["report"].positions == single["report"].positions
        assert res["report"].candidates == single["report"].candidates
        for key in ("invariant", "dominant", "foil_saliency"):
            torch.testing.assert_close(res[key], single[key], atol=1e-6, rtol=1e-5)
    assert both[0]["report"].positions[0] == both[1]["report"].positions[0]  # the shared first step
