"""Single-number scores of the CCE, FG-VCE and SUNY papers, and the energy pointing game.

* :func:`class_deviation_score`: CCE Eq. (8).
* :func:`compact_activation_score`: FG-VCE Eq. (12).
* :func:`saliency_attack_score`: SUNY Sec. 3.4 and its appendix (Gaussian noise of variance
  0.03 on the salient region of the image in [0, 1]; flip rate over average attack size).
* :func:`energy_pointing_game`: the energy-based pointing game of Score-CAM, used by SUNY
  (Sec. 3.5): the share of a map's energy inside the ground-truth boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cwox.core.batching import batch_slices

from ._batch import ClassSet, Model, check_class_set, eval_mode, resolve_batch_size

__all__ = [
    "SaliencyAttack",
    "class_deviation_score",
    "compact_activation_score",
    "energy_pointing_game",
    "saliency_attack_score",
]


def _check_batch(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a floating N x C x H x W tensor, got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    if not torch.isfinite(images).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return images


@torch.inference_mode()
def _batched_logits(model: Model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat(
            [model(images[s]).double() for s in batch_slices(images.shape[0], batch_size)]
        )


def class_deviation_score(
    model: Model,
    image: torch.Tensor,
    perturbed: torch.Tensor,
    target: ClassSet,
    batch_size: int | None = None,
    z: str = "logits",
) -> float:
    """Class Deviation Score, CCE Eq. (8): ``(Z_p(x0) - Z_p(xc)) / (1 + E[KL(Z_~p(x0), Z_~p(xc))])``.

    ``Z_p`` is the target's logit (``z="logits"``, default; a set of classes: the
    logsumexp of its logits, CWOX Sec. 4.1) or its softmax probability (``z="probabilities"``;
    a set: the sum). ``Z_~p`` is the distribution over the non-target classes (their
    probabilities renormalised to sum to 1, i.e. the softmax of the non-target logits:
    a KL divergence needs distributions), and ``KL(P, Q) = sum P log(P / Q)`` in nats.
    ``perturbed`` holds ``M`` perturbed versions ``x_c`` of ``image`` (``M x C x H x W``, e.g.
    CCE's counterfactuals or Gaussian-noise copies); the expectation ``E`` and the target
    drop are averaged over them. Higher is better: the target drops while the other classes
    keep their relative shares.

    A doubt, in the paper's words. CCE Sec. 4.2 motivates the score with "logits of
    non-target classes are changed unexpectedly" and writes ``Z`` in Eq. (8); it then reads
    the numerator as "the degree of change for the probability of the target class". A
    probability drop is at most 1, so with a denominator >= 1 the score could never exceed
    1, yet its Table 1 reports values of 5 to 6 (CCE: 5.178 to 5.959): only logits give
    those. Logits are therefore the default; ``z="probabilities"`` keeps the other reading.
    """
    if z not in ("logits", "probabilities"):
        raise ValueError(f"z must be 'logits' or 'probabilities', got {z!r}")
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError("image must be one C x H x W tensor")
    perturbed = _check_batch(perturbed, "perturbed")
    if perturbed.shape[1:] != image.shape:
        raise ValueError(
            f"perturbed images {tuple(perturbed.shape[1:])} do not match the image {tuple(image.shape)}"
        )
    ids = check_class_set(target, "target")
    batch = torch.cat([image[None].to(perturbed), perturbed])
    logits = _batched_logits(model, batch, resolve_batch_size(batch_size, perturbed.device))
    n_classes = logits.shape[1]
    if max(ids) >= n_classes:
        raise ValueError(f"class id {max(ids)} out of range: the model has {n_classes} classes")
    if len(ids) == n_classes:
        raise ValueError("target holds every class: no non-target distribution is left")
    is_target = torch.zeros(n_classes, dtype=torch.bool, device=logits.device)
    is_target[list(ids)] = True
    if z == "logits":
        z_target = torch.logsumexp(logits[:, is_target], dim=1)
    else:
        z_target = torch.softmax(logits, dim=1)[:, is_target].sum(dim=1)
    log_rest = torch.log_softmax(logits[:, ~is_target], dim=1)
    kl = (log_rest[:1].exp() * (log_rest[:1] - log_rest[1:])).sum(dim=1)
    drop = z_target[0] - z_target[1:].mean()
    return float(drop / (1.0 + kl.mean()))


def compact_activation_score(fine_map, global_map) -> float:
    """Compact Activation Score, FG-VCE Eq. (12): ``xi = C * P_T / P_A``.

    ``C`` is the sum of the fine-grained map (``Delta M_Dom``, FG-VCE Eq. 11) over the
    normalised sum of the global class-activation map (``Delta h*``); ``P_T`` is the number of
    elements of the global map and ``P_A`` the number of non-zero elements of the fine map.
    The paper does not spell out the normalisation; here the global map is rectified and
    divided by its maximum (values in ``[0, 1]``), so ``C`` compares the fine map's mass
    with the size of the globally active region. An all-zero fine map scores 0.
    """
    fine = np.asarray(fine_map, dtype=np.float64)
    glob = np.asarray(global_map, dtype=np.float64)
    if fine.size == 0 or glob.size == 0:
        raise ValueError("fine_map and global_map must not be empty")
    if not (np.isfinite(fine).all() and np.isfinite(glob).all()):
        raise ValueError("fine_map or global_map holds NaN or infinite values")
    glob = np.maximum(glob, 0.0)
    if glob.max() <= 0:
        raise ValueError("global_map has no positive activation: its normalised sum is 0")
    active = int(np.count_nonzero(fine))
    if active == 0:
        return 0.0
    c = fine.sum() / (glob / glob.max()).sum()
    return float(c * glob.size / active)


@dataclass(frozen=True)
class SaliencyAttack:
    """Result of :func:`saliency_attack_score`.

    Attributes:
        score: ``flip_rate / avg_attack_size`` (NaN when no pixel was attacked).
        flip_rate: share of attacked images whose arg-max class changed.
        avg_attack_size: mean share of pixels with a non-zero map value.
        flips: ``(N,)`` bool per image; sizes: ``(N,)`` attack size per image.
    """

    score: float
    flip_rate: float
    avg_attack_size: float
    flips: np.ndarray
    sizes: np.ndarray


def saliency_attack_score(
    model: Model,
    images: torch.Tensor,
    heatmaps,
    variance: float = 0.03,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SaliencyAttack:
    """SUNY's saliency attack score: ``FlipRate / AvgAttackSize`` (SUNY Sec. 3.4, appendix).

    Each map is rectified and divided by its maximum (``map in [0, 1]``), then
    ``I' = I + noise * map`` with ``noise ~ N(0, variance)`` per input element (the map is
    shared by the channels). ``Flip = 1`` when ``argmax p(I') != argmax p(I)``;
    ``AttackSize`` is the share of non-zero map pixels. Higher is better: small salient
    regions whose noising flips the decision.

    The noise is added to the image in pixel space, ``[0, 1]``: SUNY's appendix generates
    "a noise matrix noise of the same size as the original input image I", with
    ``noise[i, j] ~ N(0, 0.03)`` and ``I' = I + noise (.) map``. A model that takes
    normalised input (``(I - mean) / std``) gets ``mean``/``std``: the images are mapped
    back to pixels, attacked, and normalised again, so the noise's variance is 0.03 in
    pixel units (in normalised units it would be ``0.03 / std^2``, about 19x larger for
    ImageNet's std). The appendix does not clip ``I'`` to ``[0, 1]``, so neither do we.

    Args:
        images: ``N x C x H x W`` model inputs; heatmaps: ``N x H x W``.
        variance: noise variance in pixel units (SUNY: 0.03).
        generator: a ``torch.Generator`` on the images' device, for reproducible noise.
        mean, std: the per-channel normalisation of the model's input (of ``[0, 1]``
            pixels); None when ``images`` are pixels already.
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (the input normalisation), or neither")
    images = _check_batch(images)
    maps = torch.as_tensor(
        np.asarray(heatmaps) if not isinstance(heatmaps, torch.Tensor) else heatmaps
    )
    if maps.dim() != 3 or maps.shape[0] != images.shape[0] or maps.shape[1:] != images.shape[2:]:
        raise ValueError(
            f"heatmaps must be N x H x W = {images.shape[0]} x {tuple(images.shape[2:])}, got {tuple(maps.shape)}"
        )
    maps = maps.to(device=images.device, dtype=images.dtype)
    if not torch.isfinite(maps).all():
        raise ValueError("heatmaps hold NaN or infinite values")
    if not (np.isfinite(variance) and variance >= 0):
        raise ValueError(f"variance must be >= 0, got {variance!r}")
    maps = maps.clamp(min=0)
    top = maps.flatten(1).max(dim=1).values.clamp(min=torch.finfo(maps.dtype).tiny)
    maps = maps / top[:, None, None]
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    if mean is None:
        attacked = images + (variance**0.5) * noise * maps[:, None]
    else:
        m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        sd = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        pixels = images * sd + m
        attacked = (pixels + (variance**0.5) * noise * maps[:, None] - m) / sd
    bs = resolve_batch_size(batch_size, images.device)
    logits = _batched_logits(model, torch.cat([images, attacked]), bs)
    before, after = logits[: images.shape[0]].argmax(1), logits[images.shape[0] :].argmax(1)
    flips = (before != after).cpu().numpy()
    sizes = (maps != 0).flatten(1).double().mean(dim=1).cpu().numpy()
    flip_rate, avg_size = float(flips.mean()), float(sizes.mean())
    score = flip_rate / avg_size if avg_size > 0 else float("nan")
    return SaliencyAttack(
        score=score, flip_rate=flip_rate, avg_attack_size=avg_size, flips=flips, sizes=sizes
    )


Box = Sequence[float]


def energy_pointing_game(heatmaps, boxes: Sequence[Box] | Sequence[Sequence[Box]]) -> np.ndarray:
    """Energy-based pointing game (Score-CAM; SUNY Sec. 3.5): ``sum_{bbox} map / sum map``.

    Args:
        heatmaps: ``H x W`` or ``N x H x W``; negative values are clipped to 0 first.
        boxes: per map, one box ``(x0, y0, x1, y1)`` or a list of boxes (their union is the
            ground-truth region). Pixel ``(row y, column x)`` is inside when
            ``x0 <= x < x1`` and ``y0 <= y < y1`` (pixel indices, end exclusive).

    Returns:
        ``(N,)`` proportions in ``[0, 1]``; NaN for a map with no positive energy.
    """
    maps = np.asarray(
        heatmaps.detach().cpu() if isinstance(heatmaps, torch.Tensor) else heatmaps,
        dtype=np.float64,
    )
    single = maps.ndim == 2
    if single:
        maps = maps[None]
        boxes = [boxes]
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"heatmaps must be H x W or N x H x W, got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError("heatmaps hold NaN or infinite values")
    if len(boxes) != maps.shape[0]:
        raise ValueError(f"got {maps.shape[0]} heatmaps and {len(boxes)} box lists")
    n, h, w = maps.shape
    inside = np.zeros((n, h, w), dtype=bool)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    for i, item in enumerate(boxes):
        item_boxes = [item] if np.ndim(item) == 1 else list(item)
        if not item_boxes:
            raise ValueError(f"map {i} has no box")
        for box in item_boxes:
            if len(box) != 4:
                raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
            x0, y0, x1, y1 = box
            if not (x0 < x1 and y0 < y1):
                raise ValueError(f"empty or inverted box {box!r}: need x0 < x1 and y0 < y1")
            inside[i] |= (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
    energy = np.maximum(maps, 0.0)
    total = energy.sum(axis=(1, 2))
    within = (energy * inside).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, within / np.where(total > 0, total, 1.0), np.nan)
