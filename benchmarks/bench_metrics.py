"""Benchmark: batched CAUC/CDROP against a one-image-at-a-time loop of the same metric.

On the default model (EfficientNet-Lite0) and ``skimage.data.chelsea()``, for the pairs
``(c, top5 \\ {c})`` of the top-5 classes, with one heatmap per pair: the
input-gradient map of the pair's log-odds ``z_c - logsumexp(z_C')`` (absolute value summed
over channels), smoothed by a Gaussian blur (sigma 8 px) so that it is a smooth map like a
CAM or RISE map. Both paths evaluate the same deletion images and must agree; each runs in
its own fresh child process (model loaded and warmed up there, untimed), so that the peak
memory printed is that path's own (peak RSS of the whole child; peak GPU memory of the timed
part on CUDA).

    python benchmarks/bench_metrics.py [--step 16] [--pairs 5] [--batch-size N] [--device auto]

``--against quantus`` instead times the single-class deletion curve against Quantus's
``PixelFlipping`` (same model, photos, heatmaps, step and substrate; values checked equal),
per image: ``python benchmarks/bench_metrics.py --against quantus --step 256 --images 2``
(Quantus is in the ``bench`` extra: ``pip install -e .[bench]``; ``--step`` must divide
192 * 192 / 3 = 12288). ``--workload shared --classes K``: every class's curve of every
class's map (one Quantus call per class). ``--workload evaluate``: CAUC and CDROP of
every pair and mode as ``cwox evaluate`` scores them (Grad-CAM, default tree) against the
one-class curves a Quantus user needs for them.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import count_passes, peak_rss_mib, sync
from cwox.online.metrics import cauc_sample_weights, contrastive_scores
from cwox.online.metrics._batch import n_salient_pixels, pixel_ranks
from PIL import Image

from cwox.core.devices import default_batch_size, resolve_device
from cwox.core.models import load_model


def gradient_maps(
    model: torch.nn.Module, image: torch.Tensor, pairs: list[tuple[list[int], list[int]]]
) -> torch.Tensor:
    """One smoothed input-gradient map per pair, all pairs in one batched backward pass."""
    x = image[None].repeat(len(pairs), 1, 1, 1).requires_grad_(True)
    logits = model(x)
    objective = torch.stack(
        [logits[k, t].logsumexp(0) - logits[k, c].logsumexp(0) for k, (t, c) in enumerate(pairs)]
    ).sum()
    (grad,) = torch.autograd.grad(objective, x)
    raw = grad.abs().sum(1, keepdim=True)
    sigma, radius = 8.0, 24
    t = torch.arange(-radius, radius + 1, dtype=raw.dtype, device=raw.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    out = F.conv2d(F.pad(raw, (radius,) * 4, mode="replicate"), g.view(1, 1, 1, -1))
    out = F.conv2d(out, g.view(1, 1, -1, 1))
    return out[:, 0].detach()


@torch.inference_mode()
def one_at_a_time(model, image, maps, pairs, step, tau):
    """The same metric, one deletion image per forward pass (the reference loop).

    For each pair, every image its CAUC (Eq. 4, sampled every ``step`` pixels) and CDROP
    (Eq. 5) read is scored once, one image per call of the model; the undeleted image is
    scored once per pair, as a per-heatmap loop does.
    """
    n = maps.shape[1] * maps.shape[2]
    caucs, cdrops = [], []
    ranks = pixel_ranks(maps)
    own = n_salient_pixels(maps, 0.5).tolist()
    for k, (t, c) in enumerate(pairs):
        points, weights = cauc_sample_weights(own[k], step)
        scores = {}
        for d in sorted({*points.tolist(), 0, own[k]}):
            x = torch.where(
                (ranks[k] < d).view(1, *image.shape[1:]), torch.zeros_like(image), image
            )
            p = torch.softmax(model(x[None]).double(), dim=1)[0]
            scores[d] = float(p[t].sum() * (1 - p[c].sum()))
        caucs.append(sum(w * scores[int(d)] for d, w in zip(points, weights, strict=True)) / n)
        cdrops.append((scores[0] - scores[own[k]]) / math.log2(1 + max(own[k], tau) / tau))
    return np.asarray(caucs), np.asarray(cdrops)


def image_counts(n_delta: list[int], step: int) -> tuple[int, int]:
    """Images scored by the batched path (distinct ones) and by the loop (per pair)."""
    loop = [{*cauc_sample_weights(nd, step)[0].tolist(), 0, nd} for nd in n_delta]
    return 1 + sum(len(s - {0}) for s in loop), sum(len(s) for s in loop)


def run_child(which: str, state_path: str) -> None:
    """Time one path in this fresh process; print its figures as one JSON line."""
    state = torch.load(state_path, weights_only=False)
    device = torch.device(state["device"])
    clf = load_model("efficientnet_lite0").to(device)
    model = clf.module
    image, maps, pairs = state["image"].to(device), state["maps"].to(device), state["pairs"]
    step, tau, batch_size = state["step"], state["tau"], state["batch_size"]

    # Warm-up (allocator, kernels), not timed: full batches for the batched path, single
    # images for the loop.
    with torch.inference_mode():
        for _ in range(2):
            model(image[None].expand(batch_size if which == "batched" else 1, -1, -1, -1))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if which == "batched":
        res = contrastive_scores(model, image, maps, pairs, step=step, batch_size=batch_size)
        caucs, cdrops = res.cauc, res.cdrop
    else:
        caucs, cdrops = one_at_a_time(model, image, maps, pairs, step, tau)
    sync(device)
    seconds = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mib": peak_rss_mib(),
                "peak_gpu_mib": gpu,
                "cauc": [float(v) for v in caucs],
                "cdrop": [float(v) for v in cdrops],
            }
        )
    )


def child(which: str, state_path: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, "--state", state_path],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- against Quantus


def quantus_side_by_side(n_images: int, step: int, batch_size: int | None, device: torch.device) -> None:
    """The single-class deletion curve (pixel flipping) of cwox and of Quantus, side by side.

    Same model (EfficientNet-Lite0), the same ``n_images`` scikit-image photos, the same
    heatmaps (the smoothed input-gradient map of the top class against the rest of the top
    5, as above), the same curve:
    the top class's softmax probability after deleting the ``k * step`` most salient
    pixels, ``k = 1 .. n / step``, deleted pixels set to 0 in the normalised input (cwox's
    ``"zero"`` substrate; Quantus's ``PixelFlipping`` with ``perturb_baseline=0.0`` and
    ``features_in_step = 3 * step``: it ranks the map broadcast over the 3 channels, so 3
    features are one pixel; the maps have no ties, so each step deletes whole pixels).
    The images are the central 192 x 192 of the 224 crops (Quantus's step must divide
    H * W, and whole pixels need steps of 3 elements). Both are timed in this process
    after one untimed warm-up each, alternating (cwox,
    Quantus, cwox, Quantus) and keeping each one's best; the curves must agree to 1e-4.
    """
    from cwox.online.metrics import causal_curves

    clf, names, images, top5 = _quantus_inputs(n_images, device, 5)
    model = clf.module
    top = [t[0] for t in top5]
    # the map of (top class, rest of the top-5), as the CAUC benchmark above draws them
    maps = _tie_free(
        torch.cat([gradient_maps(model, images[i], [([t[0]], t[1:])]) for i, t in enumerate(top5)])
    )
    n = maps.shape[1] * maps.shape[2]
    if n % (3 * step):
        raise SystemExit(f"3 x --step must divide the {n} pixels so that both curves have the same points")
    bs = batch_size or default_batch_size(device)
    metric = _pixel_flipping(step)

    def ours() -> np.ndarray:
        return np.stack([
            causal_curves(model, images[i], maps[i], [top[i]], "deletion", step=step, substrate="zero",
                          batch_size=bs).probability[0, 1:]
            for i in range(len(names))
        ])

    def theirs() -> np.ndarray:
        return _quantus_curves(metric, model, images.cpu().numpy(), top, maps[:, None].cpu().numpy(), device,
                               len(names))

    times, curves = _alternate(ours, theirs, device)
    _report(device, times, curves, len(names), [
        f"images: {', '.join(names)}; top classes: {[clf.class_names[c] for c in top]}",
        f"deletion curve: {n // step} points per image (step {step} pixels), zero substrate, batch {bs}",
    ])


def _report(device: torch.device, times: dict[str, float], curves: dict[str, np.ndarray], n_images: int,
            lines: list[str]) -> None:
    """Print the setting, both times per image and their ratio; refuse curves that differ."""
    import quantus

    diff = float(np.abs(curves["cwox"] - curves["quantus"]).max())
    per = {k: v / n_images for k, v in times.items()}
    print(f"device: {device} ({platform.processor() or platform.machine()}), torch threads {torch.get_num_threads()}, "
          f"quantus {quantus.__version__}")
    for line in lines:
        print(line)
    print(f"cwox:    {per['cwox']:.2f} s per image")
    print(f"quantus: {per['quantus']:.2f} s per image")
    print(f"ratio (quantus / cwox): {per['quantus'] / per['cwox']:.2f}x   max |cwox - quantus| = {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit(f"the curves differ by {diff:.2e} (> 1e-4): not the same metric")


def _alternate(ours, theirs, device: torch.device, *, theirs_runs: int = 2,
               warm_theirs=None) -> tuple[dict[str, float], dict]:
    """Best of alternating timings after one warm-up each: cwox, Quantus, cwox, Quantus.

    ``theirs_runs=1`` runs Quantus once (cwox, Quantus, cwox) when it is the long one;
    ``warm_theirs`` warms Quantus up with a smaller call than ``theirs``.
    """
    times: dict[str, float] = {"cwox": math.inf, "quantus": math.inf}
    curves: dict = {}
    ours()  # warm-up
    (warm_theirs or theirs)()  # warm-up
    for r in range(2):
        for fn, name in ((ours, "cwox"), (theirs, "quantus")):
            if name == "quantus" and r >= theirs_runs:
                continue
            sync(device)
            t0 = time.perf_counter()
            curves[name] = fn()
            sync(device)
            times[name] = min(times[name], time.perf_counter() - t0)
    return times, curves


def _quantus_curves(metric, model: torch.nn.Module, x_rows: np.ndarray, ys, a_rows: np.ndarray,
                    device: torch.device, batch_size: int) -> np.ndarray:
    """Quantus's deletion curves of the rows (image, target class, map): ``R x (n / step)``."""
    out = metric(model=model, x_batch=x_rows, y_batch=np.asarray(ys), a_batch=a_rows, device=str(device),
                 softmax=True, batch_size=batch_size)
    return np.asarray(out, dtype=np.float64)


def _quantus_inputs(n_images: int, device: torch.device, k: int):
    """Model, photo names, central 192 x 192 crops and their top-``k`` classes (see below)."""
    import skimage.data

    clf = load_model("efficientnet_lite0").to(device)
    names = ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field")[:n_images]
    # Quantus ranks the map broadcast over the 3 channels and needs its step to divide
    # H * W; whole pixels per step need a step of 3 * k elements, so H * W must be a
    # multiple of 3: the central 192 x 192 of the 224 crop (the network pools globally).
    images = torch.stack([clf.preprocess(Image.fromarray(getattr(skimage.data, nm)())) for nm in names])
    images = images[..., 16:208, 16:208].contiguous().to(device)
    with torch.inference_mode():
        top = clf.module(images).topk(k, dim=1).indices.tolist()
    return clf, names, images, top


def _tie_free(maps: torch.Tensor) -> torch.Tensor:
    """The maps as their rank order (``n - rank``, distinct whole numbers, exact in float32).

    The smoothed maps hold a few equal values (58 of 36,864 pixels on chelsea), and two
    sorts may order ties differently, which moved a curve point by 1e-3. Both sides are
    given these tie-free maps, so they delete the same pixels in the same order.
    """
    flat = maps.flatten(-2)
    ranks = pixel_ranks(flat.reshape(-1, *maps.shape[-2:])).reshape(flat.shape)
    return (flat.shape[-1] - ranks).to(maps.dtype).reshape(maps.shape)


def _pixel_flipping(step: int):
    import quantus

    return quantus.PixelFlipping(features_in_step=3 * step, perturb_baseline=0.0, normalise=False,
                                 abs=False, disable_warnings=True, display_progressbar=False)


def quantus_shared_workload(n_images: int, step: int, n_classes: int, batch_size: int | None,
                            device: torch.device) -> None:
    """Every class's deletion curve of every class's map, cwox against Quantus.

    The workload of a contrastive evaluation (Eq. 4 reads P of the target set and of the
    contrast set after each deletion): for each photo, one map per top-``n_classes``
    class (class against the rest, as above), and for each map the curves of all
    ``n_classes`` classes. cwox reads every class's probability from the same deletion
    images (``causal_curves`` with one map and ``n_classes`` targets: one set of passes
    per map); Quantus's ``PixelFlipping`` scores one target per curve, so a user calls it
    once per target class, ``n_classes`` times the passes. Same crops, step, substrate
    and alternating timing as :func:`quantus_side_by_side`; the curves must agree to 1e-4.
    """
    from cwox.online.metrics import causal_curves

    clf, names, images, top = _quantus_inputs(n_images, device, n_classes)
    model = clf.module
    # maps[i, j]: the map of class top[i][j] against the rest of photo i's top classes
    maps = _tie_free(torch.stack([
        gradient_maps(model, images[i], [([c], [o for o in t if o != c]) for c in t]) for i, t in enumerate(top)
    ]))
    n = maps.shape[2] * maps.shape[3]
    if n % (3 * step):
        raise SystemExit(f"3 x --step must divide the {n} pixels so that both curves have the same points")
    bs = batch_size or default_batch_size(device)
    metric = _pixel_flipping(step)
    k = n_classes

    def ours() -> np.ndarray:  # [photo, map, class, point]
        return np.stack([
            np.stack([
                causal_curves(model, images[i], maps[i, j], top[i], "deletion", step=step, substrate="zero",
                              batch_size=bs).probability[:, 1:]
                for j in range(k)
            ])
            for i in range(len(names))
        ])

    x_rows = images.repeat_interleave(k, dim=0).cpu().numpy()  # row (i, j): photo i, map j
    a_rows = maps.reshape(-1, 1, *maps.shape[2:]).cpu().numpy()

    def theirs() -> np.ndarray:
        per_class = []
        for c in range(k):  # one call per target class: every map's curve of class c
            y = np.asarray([top[i][c] for i in range(len(names)) for _ in range(k)])
            per_class.append(_quantus_curves(metric, model, x_rows, y, a_rows, device, bs).reshape(len(names), k, -1))
        return np.stack(per_class, axis=2)

    times, curves = _alternate(ours, theirs, device)
    points = n // step
    _report(device, times, curves, len(names), [
        f"images: {', '.join(names)}; {k} classes per photo, {k} maps per photo, {k * k} curves per photo",
        f"deletion curves: {points} points each (step {step} pixels), zero substrate, batch {bs}",
        f"forward passes per photo: cwox {k * points} (one set per map), quantus {k * k * points} (one per curve)",
    ])


def quantus_evaluate_workload(n_images: int, step: int, batch_size: int | None, device: torch.device) -> None:
    """What ``cwox evaluate`` scores for one explainer, cwox against Quantus.

    For each photo: the default tree's in-cluster pairs ``(c, C_i \\ c)`` of its top
    classes, every mode's Grad-CAM map (the engine and modes ``cwox evaluate`` runs) and
    CAUC (Eq. 4, over the pair's smallest ``n_delta``) and CDROP (Eq. 5) of every (pair,
    mode): cwox's own :func:`cwox.online.evaluation.score_explanations`, timed. Quantus's
    ``PixelFlipping`` reads one class's probability along the whole curve; Eq. 3 needs P of
    the target and of the contrast set, so a Quantus user runs one curve per (map, class of
    ``t`` and ``C'``) (identical rows merged, which favours Quantus), to the last pixel,
    plus one pass for the undeleted image, then reads CAUC and CDROP off the curve's points
    (linear between them, as cwox's CAUC between its samples). Maps and photos are the
    central 192 x 192 of the 224 crops on both sides (Quantus's step must divide H * W in
    whole pixels, see :func:`_quantus_inputs`). Times: one warm-up each, then cwox, Quantus,
    cwox (cwox's best of two; Quantus runs once, being the long one). Checked: Quantus's
    curves equal cwox's at every point for two rows (same deletion images, 1e-4), and the
    differences of the CAUC and CDROP read off Quantus's points are printed.
    """
    import dataclasses

    import quantus  # noqa: F401  (fail early when the bench extra is missing)
    import skimage.data
    from cwox.online.evaluation import (
        EvaluationSetup,
        contrast_pairs,
        explain_modes,
        score_explanations,
    )
    from cwox.online.metrics import causal_curves
    from cwox.online.targets import cut_clusters
    from cwox.store.default_tree import DEFAULT_TREE
    from cwox.store.trees import load_tree

    clf = load_model("efficientnet_lite0").to(device)
    model = clf.module
    tree = load_tree(DEFAULT_TREE)
    bs = batch_size or default_batch_size(device)
    setup = EvaluationSetup.build(explainers=["gradcam"], metrics=["cauc", "cdrop"], step=step, batch_size=bs)
    engine = setup.engines(clf, tree)["gradcam"]
    crop = (..., slice(16, 208), slice(16, 208))
    work = []  # (name, x, explanations, clusters, pairs)
    for name in ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field"):
        if len(work) == n_images:
            break
        x, exps = explain_modes(engine, Image.fromarray(getattr(skimage.data, name)()), setup.modes)
        first = next(iter(exps.values()))
        clusters = cut_clusters(tree, first.classes, level=engine.level)
        pairs = contrast_pairs(first, clusters)
        if not pairs:
            continue  # cwox evaluate scores nothing on a photo without a two-class cluster
        exps = {m: dataclasses.replace(e, class_maps=np.ascontiguousarray(e.class_maps[crop])) for m, e in exps.items()}
        work.append((name, x[crop].contiguous(), exps, clusters, pairs))
    if not work:
        raise SystemExit("no photo has a cluster of two or more classes")
    modes = list(work[0][2])
    n = 192 * 192
    if n % (3 * step):
        raise SystemExit(f"3 x --step must divide the {n} pixels so that both curves have the same points")
    metric = _pixel_flipping(step)

    def ours() -> list[np.ndarray]:
        out = []
        for name, x, exps, clusters, _ in work:
            rows = score_explanations(clf, x, exps, setup, name, clusters)
            out.append(np.array([r["value"] for r in rows]))
        return out

    # Quantus's rows: one per distinct (map, class) that some (pair, mode) reads. Per photo:
    # the rows' maps and classes, and per (pair, mode) its rows by class and its own n_delta
    quantus_rows = []
    for _name, _x, exps, _clusters, pairs in work:
        index: dict[tuple[bytes, int], int] = {}
        maps, ys, reads = [], [], []
        for c, rest in pairs:
            k = exps[modes[0]].classes.index(c)
            own = n_salient_pixels(torch.as_tensor(np.stack([exps[m].class_maps[k] for m in modes])), 0.5).tolist()
            for m, nd in zip(modes, own):
                mp = _tie_free(torch.as_tensor(exps[m].class_maps[k])[None])[0].numpy()
                row_of = {}
                for cls in (c, *rest):
                    key = (mp.tobytes(), cls)
                    if key not in index:
                        index[key] = len(ys)
                        maps.append(mp)
                        ys.append(cls)
                    row_of[cls] = index[key]
                reads.append((c, rest, row_of, int(nd), min(own)))
        quantus_rows.append((np.stack(maps)[:, None], np.asarray(ys), reads))

    def theirs() -> list[np.ndarray]:
        out = []
        for (_name, x, *_), (a_rows, ys, reads) in zip(work, quantus_rows):
            x_rows = x[None].expand(len(ys), -1, -1, -1).cpu().numpy()
            curves = _quantus_curves(metric, model, x_rows, ys, a_rows, device, bs)  # R x (n / step)
            with torch.inference_mode():
                p0 = torch.softmax(model(x[None]).double(), -1)[0].cpu().numpy()
            out.append(_scores_from_curves(curves, p0, reads, step, n))
        return out

    x0, (a_rows, ys, _) = work[0][1], quantus_rows[0]
    times, values = _alternate(
        ours, theirs, device, theirs_runs=1,
        warm_theirs=lambda: _quantus_curves(metric, model, x0[None].cpu().numpy(), ys[:1], a_rows[:1], device, bs),
    )
    t_ours, t_theirs = times["cwox"], times["quantus"]
    # the same deletion images: two rows' whole curves, cwox against Quantus
    mine = causal_curves(model, x0, torch.as_tensor(a_rows[:2, 0]), [[int(y)] for y in ys[:2]], "deletion",
                         step=step, substrate="zero", batch_size=bs).probability[:, 1:]
    theirs_two = _quantus_curves(metric, model, x0[None].expand(2, -1, -1, -1).cpu().numpy(), ys[:2], a_rows[:2],
                                 device, bs)
    curve_diff = float(np.abs(mine - theirs_two).max())
    ours_all, theirs_all = np.concatenate(values["cwox"]), np.concatenate(values["quantus"])
    n_scores = ours_all.size
    cauc_rel = np.abs(ours_all[0::2] - theirs_all[0::2]) / np.maximum(np.abs(ours_all[0::2]), 1e-12)
    cdrop_abs = np.abs(ours_all[1::2] - theirs_all[1::2])
    passes_ours = count_passes(model, ours)
    n_rows = sum(len(r[1]) for r in quantus_rows)
    passes_theirs = n_rows * (n // step) + len(work)
    print(f"device: {device} ({platform.processor() or platform.machine()}), torch threads {torch.get_num_threads()}, "
          f"quantus {quantus.__version__}")
    print(f"photos: {', '.join(w[0] for w in work)}; pairs: {sum(len(w[4]) for w in work)}; modes: {', '.join(modes)}; "
          f"{n_scores} scores (CAUC and CDROP of every pair and mode)")
    print(f"Grad-CAM maps of the default tree's engine, step {step}, zero substrate, batch {bs}, 192 x 192")
    print(f"forward passes: cwox {passes_ours} (CAUC to n_delta, CDROP's two points, shared images once); "
          f"quantus {passes_theirs} ({n_rows} curves of {n // step} points, one per (map, class))")
    print(f"cwox:    {t_ours:.2f} s")
    print(f"quantus: {t_theirs:.2f} s")
    print(f"ratio (quantus / cwox): {t_theirs / t_ours:.2f}x   passes {passes_theirs / passes_ours:.1f}x")
    print(f"same deletion images: max |cwox - quantus| over two whole curves = {curve_diff:.2e}")
    print(f"read off Quantus's points: CAUC relative difference median {np.median(cauc_rel):.1e}, max {cauc_rel.max():.1e}; "
          f"CDROP absolute difference max {cdrop_abs.max():.1e} (cwox samples n_delta - 1 and n_delta themselves)")
    if curve_diff > 1e-4:
        raise SystemExit(f"the curves differ by {curve_diff:.2e} (> 1e-4): not the same deletion images")


def _scores_from_curves(curves: np.ndarray, p0: np.ndarray, reads, step: int, n: int) -> np.ndarray:
    """CAUC and CDROP of every (pair, mode), in ``score_explanations``'s order, from one-class curves.

    ``reads``: per (pair, mode), ``(c, rest, row of each class, the map's n_delta, the pair's
    smallest n_delta)``; ``p0`` the undeleted image's probabilities (the curves start after
    the first step).
    """
    grid = np.arange(0, n + 1, step)
    tau = 0.05 * n
    out = []
    for c, rest, row_of, nd, summed in reads:
        def prob(classes, row_of=row_of):
            return sum(np.concatenate([[p0[cls]], curves[row_of[cls]]]) for cls in classes)

        score = np.interp(np.arange(n + 1), grid, prob([c]) * (1.0 - prob(rest)))
        out += [score[:summed].sum() / n, (score[0] - score[nd]) / math.log2(1.0 + max(nd, tau) / tau)]
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--step", type=int, default=16, help="CAUC curve step in pixels (default 16)"
    )
    parser.add_argument(
        "--pairs", type=int, default=5, help="how many (class, rest of top-5) pairs (1-5)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per forward pass (device default)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--against", choices=("loop", "quantus"), default="loop",
                        help="loop: our batched CAUC/CDROP vs a one-image loop; quantus: the deletion "
                             "curve vs Quantus's PixelFlipping (pip install cwox[bench])")
    parser.add_argument("--images", type=int, default=2, help="--against quantus: photos (1-6); "
                        "--step must then divide 12288")
    parser.add_argument("--workload", choices=("single", "shared", "evaluate"), default="single",
                        help="--against quantus: single = the top class's curve of one map per photo; shared = "
                             "every top class's curve of every top class's map (one call per class for Quantus); "
                             "evaluate = CAUC and CDROP of every pair and mode, as cwox evaluate scores them")
    parser.add_argument("--classes", type=int, default=5, help="--workload shared: top classes per photo")
    parser.add_argument("--child", choices=("batched", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.state)
        return
    if args.against == "quantus" and args.workload == "evaluate":
        quantus_evaluate_workload(args.images, args.step, args.batch_size, resolve_device(args.device))
        return
    if args.against == "quantus" and args.workload == "shared":
        quantus_shared_workload(args.images, args.step, args.classes, args.batch_size, resolve_device(args.device))
        return
    if args.against == "quantus":
        quantus_side_by_side(args.images, args.step, args.batch_size, resolve_device(args.device))
        return
    if not 1 <= args.pairs <= 5:
        parser.error("--pairs must be between 1 and 5")

    import skimage.data

    device = resolve_device(args.device)
    clf = load_model("efficientnet_lite0").to(device)
    model = clf.module
    image = clf.preprocess(Image.fromarray(skimage.data.chelsea())).to(device)
    with torch.inference_mode():
        top5 = model(image[None])[0].topk(5).indices.tolist()
    pairs = [([c], [o for o in top5 if o != c]) for c in top5[: args.pairs]]
    maps = gradient_maps(model, image, pairs)
    n = maps.shape[1] * maps.shape[2]
    tau = 0.05 * n
    batch_size = args.batch_size or default_batch_size(device)
    n_delta = n_salient_pixels(maps, 0.5).tolist()
    images_batched, images_loop = image_counts(n_delta, args.step)

    # Each path runs in its own fresh process, so that its peak memory is its own.
    with tempfile.TemporaryDirectory() as tmp:
        state_path = str(Path(tmp) / "state.pt")
        torch.save(
            {
                "device": str(device),
                "image": image.cpu(),
                "maps": maps.cpu(),
                "pairs": pairs,
                "step": args.step,
                "tau": tau,
                "batch_size": batch_size,
            },
            state_path,
        )
        b = child("batched", state_path)
        lp = child("loop", state_path)
    t_batched, t_loop = b["seconds"], lp["seconds"]
    diff = max(
        np.abs(np.subtract(b["cauc"], lp["cauc"])).max(),
        np.abs(np.subtract(b["cdrop"], lp["cdrop"])).max(),
    )
    names = clf.class_names
    gpu_name = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(
        f"device: {device} ({platform.processor() or platform.machine()}{gpu_name}, "
        f"torch threads {torch.get_num_threads()})"
    )
    print(f"image: chelsea, top-5: {[names[c] for c in top5]}")
    print(
        f"pairs: {len(pairs)}, step: {args.step}, batch size: {batch_size}, n = {n}, tau = {tau:g}"
    )
    for k, (t, _) in enumerate(pairs):
        print(
            f"  {names[t[0]]:>16}: n_delta = {n_delta[k]:6d}  CAUC = {b['cauc'][k]:.6f}  CDROP = {b['cdrop'][k]:.6f}"
        )
    print(f"deletion images scored: batched {images_batched} (distinct), loop {images_loop}")
    for name, r in (("batched", b), ("loop", lp)):
        print(
            f"{name + ':':8} {r['seconds']:8.2f} s   peak RSS {r['peak_rss_mib']:8.1f} MiB   "
            f"peak GPU {r['peak_gpu_mib']:8.1f} MiB"
        )
    print(f"speed-up: {t_loop / t_batched:.2f}x   max |batched - loop| = {diff:.2e}")
    print()
    print(
        "| benchmark | device | setting | batched (s) | one-at-a-time (s) | ratio | peak memory (batched / loop) |"
    )
    print("|---|---|---|---|---|---|---|")
    mem = (
        f"{b['peak_gpu_mib']:.0f} / {lp['peak_gpu_mib']:.0f} MiB GPU"
        if device.type == "cuda"
        else f"{b['peak_rss_mib']:.0f} / {lp['peak_rss_mib']:.0f} MiB RSS"
    )
    print(
        f"| CAUC+CDROP, chelsea, top-5 pairs | {device.type} | {len(pairs)} pairs, step {args.step}, "
        f"batch {batch_size}, {images_batched} / {images_loop} images | {t_batched:.2f} | {t_loop:.2f} "
        f"| {t_loop / t_batched:.2f}x | {mem} |"
    )


if __name__ == "__main__":
    main()
