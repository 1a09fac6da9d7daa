"""Insertion and deletion curves and their AUC (RISE's causal metrics, as used by CCE and FG-VCE).

Deletion: starting from the image, replace pixels in descending order of the heatmap by a
substrate (CCE Sec. 4.4: "a highly blurred version" of the image), ``step`` pixels at a time,
until none is left, scoring the softmax probability of the target after each step.
Insertion: start from the substrate and put the original pixels back in the same order.
The AUC is the trapezoid area under the probability as a function of the fraction of
pixels changed, in ``[0, 1]`` (the papers print it multiplied by 100).

Step sizes: CCE replaces 3.6 % of the pixels per step ("224 x 8" on a 224 x 224 image),
FG-VCE 1.8 %. ``step`` is either that fraction (a float in ``(0, 1)``; it becomes
``max(1, round(step * n))`` pixels) or a pixel count (an int >= 1, e.g. ``224 * 8``).
The curve is taken after ``0, s, 2 s, ...`` changed pixels and at ``n``; a last step shorter
than ``s`` gets its true width in the trapezoid.

Pixel order: stable descending sort of the heatmap, ties by raster index (as for CAUC).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._batch import (
    ClassSet,
    Model,
    check_class_set,
    check_heatmaps,
    check_image,
    pair_indices,
    perturbation_set_probs,
    pixel_ranks,
    resolve_batch_size,
    substrate_image,
)

__all__ = [
    "CCE_STEP",
    "FGVCE_STEP",
    "CausalCurves",
    "causal_curves",
    "deletion_auc",
    "insertion_auc",
    "step_pixels",
]

#: Fraction of the pixels changed per step by CCE (Sec. 4.4) and FG-VCE (Sec. 4).
CCE_STEP = 0.036
FGVCE_STEP = 0.018


@dataclass(frozen=True)
class CausalCurves:
    """Insertion or deletion curves of ``K`` heatmaps of one image.

    Attributes:
        mode: ``"insertion"`` or ``"deletion"``.
        changed: ``(T,)`` pixels changed at each point (``0 ... n``).
        fraction: ``(T,)`` ``changed / n``.
        probability: ``(K, T)`` P(target) at each point.
        auc: ``(K,)`` trapezoid area under ``probability`` over ``fraction``.
    """

    mode: str
    changed: np.ndarray
    fraction: np.ndarray
    probability: np.ndarray
    auc: np.ndarray


def step_pixels(step: float | int, n: int) -> int:
    """Pixels per step: a fraction in ``(0, 1)`` of ``n`` (at least 1), or an int count."""
    if isinstance(step, bool):
        raise ValueError(f"step must be a fraction in (0, 1) or a pixel count >= 1, got {step!r}")
    if isinstance(step, (int, np.integer)):
        if step < 1:
            raise ValueError(
                f"step must be a fraction in (0, 1) or a pixel count >= 1, got {step!r}"
            )
        return int(step)
    if isinstance(step, float) and 0.0 < step < 1.0:
        return max(1, round(step * n))
    raise ValueError(f"step must be a fraction in (0, 1) or a pixel count >= 1, got {step!r}")


def causal_curves(
    model: Model,
    image: torch.Tensor,
    heatmaps,
    targets: Sequence[ClassSet],
    mode: str = "deletion",
    step: float | int = CCE_STEP,
    substrate: str | torch.Tensor = "blur",
    batch_size: int | None = None,
) -> CausalCurves:
    """Insertion or deletion curves and AUCs of many heatmaps of one image, batched.

    Args:
        model: maps a normalised ``B x C x H x W`` batch to logits.
        image: one normalised ``C x H x W`` tensor; everything runs on its device.
        heatmaps: ``K x H x W`` (or one ``H x W`` map used for every target).
        targets: ``K`` targets (class ids or lists of class ids; P of a list = sum), target
            ``k`` going with heatmap ``k``; one target is used for every heatmap.
        mode: ``"deletion"`` (image -> substrate) or ``"insertion"`` (substrate -> image).
        step: fraction of pixels per step (CCE 0.036, FG-VCE 0.018) or a pixel count.
        substrate: ``"blur"`` (default, as CCE/FG-VCE), ``"zero"`` or a ``C x H x W`` tensor.
        batch_size: images per forward pass (default: :func:`cwox.core.devices.default_batch_size`).
    """
    image = check_image(image)
    maps = check_heatmaps(heatmaps, image, batched=True)
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if isinstance(targets, (int, np.integer)):
        raise ValueError(
            "targets must be a list with one target per heatmap, e.g. [281] or [[281, 282]]"
        )
    sets = [check_class_set(t, "target") for t in targets]
    n_maps, n_sets = maps.shape[0], len(sets)
    map_idx, set_idx = pair_indices(n_maps, n_sets, "targets")
    n = maps.shape[1] * maps.shape[2]
    s = step_pixels(step, n)
    changed = np.append(np.arange(0, n, s, dtype=np.int64), n)
    t_len = changed.size

    substrate_img = substrate_image(image, substrate)
    start, end = (image, substrate_img) if mode == "deletion" else (substrate_img, image)
    device = image.device
    map_of = torch.arange(n_maps, device=device).repeat_interleave(t_len)
    counts = torch.as_tensor(changed, device=device).repeat(n_maps)
    probs = perturbation_set_probs(
        model,
        start,
        end,
        pixel_ranks(maps),
        map_of,
        counts,
        sets,
        resolve_batch_size(batch_size, device),
    )
    p_sets = probs.cpu().numpy().reshape(n_maps, t_len, n_sets)
    probability = p_sets[map_idx, :, set_idx]  # K x T
    fraction = changed / n
    widths = np.diff(fraction)
    auc = ((probability[:, 1:] + probability[:, :-1]) * 0.5 * widths).sum(axis=1)
    return CausalCurves(
        mode=mode, changed=changed, fraction=fraction, probability=probability, auc=auc
    )


def _one_auc(
    model: Model,
    image: torch.Tensor,
    heatmap,
    target: ClassSet,
    mode: str,
    step: float | int,
    substrate: str | torch.Tensor,
    batch_size: int | None,
) -> float:
    """The ``mode`` AUC of one ``H x W`` heatmap: :func:`causal_curves` of a single map."""
    check_heatmaps(heatmap, check_image(image), batched=False)
    curves = causal_curves(model, image, heatmap, [target], mode, step, substrate, batch_size)
    return float(curves.auc[0])


def deletion_auc(
    model: Model,
    image: torch.Tensor,
    heatmap,
    target: ClassSet,
    step: float | int = CCE_STEP,
    substrate: str | torch.Tensor = "blur",
    batch_size: int | None = None,
) -> float:
    """Deletion AUC of one ``H x W`` heatmap (lower is better): see :func:`causal_curves`."""
    return _one_auc(model, image, heatmap, target, "deletion", step, substrate, batch_size)


def insertion_auc(
    model: Model,
    image: torch.Tensor,
    heatmap,
    target: ClassSet,
    step: float | int = CCE_STEP,
    substrate: str | torch.Tensor = "blur",
    batch_size: int | None = None,
) -> float:
    """Insertion AUC of one ``H x W`` heatmap (higher is better): see :func:`causal_curves`."""
    return _one_auc(model, image, heatmap, target, "insertion", step, substrate, batch_size)
