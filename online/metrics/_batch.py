"""Shared machinery of the perturbation metrics: argument checks, pixel orders, batched runs.

Every curve metric in this package (CAUC/CDROP of the CWOX paper, insertion/deletion of
CCE and FG-VCE) reduces to the same job: for a heatmap ``H`` and a number ``d`` of pixels,
build the image whose ``d`` highest-ranked pixels are taken from an *end* image and the
others from a *start* image, and read the model's softmax on it. :func:`perturbation_set_probs`
does that for many ``(heatmap, d)`` jobs at once, in full batches, on the image's device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cwox.core.batching import batch_slices
from cwox.core.devices import default_batch_size
from cwox.core.progress import progress

#: ``model`` is anything mapping a normalised ``B x C x H x W`` batch to ``B x K`` logits.
Model = Callable[[torch.Tensor], torch.Tensor]
#: A class id or a non-empty collection of class ids (P of a set = sum of its softmax probs).
ClassSet = int | Sequence[int]

SUBSTRATES = ("zero", "blur")
#: Gaussian blur of the "blur" substrate: RISE's causal metrics (kernel 11, sigma 5), which
#: CCE and FG-VCE follow ("a highly blurred version" of the image).
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


# --------------------------------------------------------------------------- checks
def check_image(image: torch.Tensor) -> torch.Tensor:
    """``image`` must be one normalised ``C x H x W`` floating tensor with finite values."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor (C x H x W), got {type(image).__name__}")
    if image.dim() != 3:
        raise ValueError(f"image must be one C x H x W tensor, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating tensor, got dtype {image.dtype}")
    if not torch.isfinite(image).all():
        raise ValueError("image holds NaN or infinite values")
    return image


def check_heatmaps(heatmaps, image: torch.Tensor, *, batched: bool) -> torch.Tensor:
    """Turn ``heatmaps`` into a finite floating ``K x H x W`` tensor on ``image``'s device.

    With ``batched=False`` a single ``H x W`` map is expected; with ``batched=True`` either a
    ``K x H x W`` stack or a single ``H x W`` map (then ``K = 1``).
    """
    maps = torch.as_tensor(
        np.asarray(heatmaps) if not isinstance(heatmaps, torch.Tensor) else heatmaps
    )
    size = tuple(image.shape[-2:])
    if maps.dim() == 2 or (batched and maps.dim() == 3):
        if tuple(maps.shape[-2:]) != size:
            raise ValueError(
                f"heatmap of size {tuple(maps.shape[-2:])} does not match the image size {size}"
            )
    else:
        want = "H x W" if not batched else "H x W or K x H x W"
        raise ValueError(
            f"heatmap must be {want} with H x W = {size}, got shape {tuple(maps.shape)}"
        )
    if maps.dim() == 2:
        maps = maps[None]
    if maps.shape[0] == 0:
        raise ValueError("no heatmaps given")
    if not maps.is_floating_point():
        maps = maps.to(torch.float64 if maps.dtype == torch.int64 else torch.float32)
    if not torch.isfinite(maps).all():
        raise ValueError("heatmap holds NaN or infinite values")
    return maps.to(image.device)


def check_class_set(classes: ClassSet, what: str) -> tuple[int, ...]:
    """A non-empty tuple of distinct, non-negative class ids."""
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        ids = (int(classes),)
    else:
        try:
            ids = tuple(int(c) for c in classes)
        except TypeError as exc:
            raise ValueError(
                f"{what} must be a class id or a list of class ids, got {classes!r}"
            ) from exc
    if not ids:
        raise ValueError(f"{what} is empty: give at least one class id")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what} repeats a class id: {list(ids)}")
    if min(ids) < 0:
        raise ValueError(f"{what} holds a negative class id: {list(ids)}")
    return ids


def check_delta(delta: float) -> float:
    """``delta`` of the delta-salient pixels must lie in ``(0, 1]``."""
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and 0.0 < delta <= 1.0):
        raise ValueError(f"delta must lie in (0, 1], got {delta!r}")
    return float(delta)


def check_positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def pair_indices(n_maps: int, n_items: int, items: str) -> tuple[np.ndarray, np.ndarray]:
    """Pair ``n_maps`` heatmaps with ``n_items`` class sets: index arrays ``(map_of, item_of)``.

    Give as many of each (``K`` of both) or one of either, used for every one of the other;
    both arrays are ``K = max(n_maps, n_items)`` long. ``items`` names the class sets in the
    error message (``"pairs"``, ``"targets"``).
    """
    k_total = max(n_maps, n_items)
    if n_items == 0 or n_maps not in (1, k_total) or n_items not in (1, k_total):
        raise ValueError(
            f"got {n_maps} heatmaps and {n_items} {items}: give as many of each, or one of either"
        )

    def index(count: int) -> np.ndarray:
        return np.arange(k_total) if count > 1 else np.zeros(k_total, dtype=np.int64)

    return index(n_maps), index(n_items)


def resolve_batch_size(batch_size: int | None, device: torch.device) -> int:
    """``None`` means the shared default for the device (:func:`cwox.core.devices.default_batch_size`)."""
    return (
        default_batch_size(device)
        if batch_size is None
        else check_positive_int(batch_size, "batch_size")
    )


# --------------------------------------------------------------------------- pixel orders
def pixel_ranks(heatmaps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel in descending-saliency order, ``K x (H*W)`` (0 = first deleted).

    Ties are broken by raster index (row-major: row by row, left to right): a stable sort
    of ``H`` in descending order. The public CWOX evaluation uses an unstable ``argsort``,
    whose tie order is unspecified; with a stable order an all-zero or constant heatmap
    deletes pixels in raster order, the same on every device.
    """
    flat = heatmaps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks


def n_salient_pixels(heatmaps: torch.Tensor, delta: float) -> torch.Tensor:
    """``n_delta`` per map: pixels with ``H(x) >= delta * max H`` (CWOX paper, text of Eq. 4).

    The paper's definition, not the public code's ``H > min + delta (max - min)``. An
    all-zero or constant map has ``n_delta = n``; a map whose maximum is negative has none.
    """
    flat = heatmaps.flatten(1)
    top = flat.max(dim=1, keepdim=True).values
    return (flat >= delta * top).sum(dim=1)


# --------------------------------------------------------------------------- substrates
def gaussian_blur(
    image: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA
) -> torch.Tensor:
    """Separable Gaussian blur of a ``C x H x W`` image, edges replicated (any image size)."""
    half = kernel // 2
    x = torch.arange(kernel, dtype=image.dtype, device=image.device) - half
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    c = image.shape[0]
    out = F.pad(image[None], (half, half, half, half), mode="replicate")
    out = F.conv2d(out, g.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)
    out = F.conv2d(out, g.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)
    return out[0]


def substrate_image(image: torch.Tensor, substrate: str | torch.Tensor) -> torch.Tensor:
    """The values that replace deleted pixels.

    ``"zero"``: 0 of the normalised input (the dataset mean; what the public CWOX evaluation
    does). ``"blur"``: a Gaussian-blurred copy (kernel 11, sigma 5, as in RISE, CCE and
    FG-VCE). A ``C x H x W`` tensor is used as given.
    """
    if isinstance(substrate, torch.Tensor):
        if substrate.shape != image.shape:
            raise ValueError(
                f"substrate tensor of shape {tuple(substrate.shape)} does not match the image {tuple(image.shape)}"
            )
        return substrate.to(device=image.device, dtype=image.dtype)
    if substrate == "zero":
        return torch.zeros_like(image)
    if substrate == "blur":
        return gaussian_blur(image)
    raise ValueError(
        f"unknown substrate {substrate!r}: use one of {SUBSTRATES} or a C x H x W tensor"
    )


# --------------------------------------------------------------------------- batched runs
@contextlib.contextmanager
def eval_mode(model: Model) -> Iterator[None]:
    """Run an ``nn.Module`` in eval mode (batch statistics would couple the images of a batch).

    Every submodule's own ``training`` flag is restored afterwards, so a wrapper left in
    train mode around a classifier in eval mode does not hand it back in train mode.
    """
    if not isinstance(model, torch.nn.Module) or not any(m.training for m in model.modules()):
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def set_indicator(
    sets: Sequence[tuple[int, ...]], n_classes: int, device: torch.device
) -> torch.Tensor:
    """``n_classes x S`` 0/1 matrix: ``probs @ indicator`` = P of each class set (sum of probs)."""
    for ids in sets:
        if max(ids) >= n_classes:
            raise ValueError(f"class id {max(ids)} out of range: the model has {n_classes} classes")
    indicator = torch.zeros(n_classes, len(sets), dtype=torch.float64, device=device)
    for j, ids in enumerate(sets):
        indicator[list(ids), j] = 1.0
    return indicator


def _logits_of(model: Model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch)
    if (
        not isinstance(logits, torch.Tensor)
        or logits.dim() != 2
        or logits.shape[0] != batch.shape[0]
    ):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"model must map a B x C x H x W batch to B x K logits; got {got} for B = {batch.shape[0]}"
        )
    return logits


@torch.inference_mode()
def perturbation_set_probs(
    model: Model,
    start: torch.Tensor,
    end: torch.Tensor,
    ranks: torch.Tensor,
    map_index: torch.Tensor,
    counts: torch.Tensor,
    sets: Sequence[tuple[int, ...]],
    batch_size: int,
) -> torch.Tensor:
    """P of each class set on the images ``where(ranks[map_index[j]] < counts[j], end, start)``.

    ``start``/``end`` are ``C x H x W``; ``ranks`` is ``M x (H*W)`` from :func:`pixel_ranks`;
    ``map_index``/``counts`` are ``J`` long tensors; ``sets`` are ``S`` class-id tuples.
    Returns ``J x S`` float64 probabilities (softmax, summed over each set).

    Jobs that give the same image are run once: every ``count = 0`` job is ``start`` and every
    ``count >= H*W`` job is ``end`` whatever its map, maps with the same pixel order (e.g. the
    same heatmap given for several pairs, or two modes that produce the same map) are merged,
    and repeated ``(map, count)`` pairs are merged. The distinct images then go through
    ``model`` in full batches of ``batch_size``; only the ``S`` set probabilities of each image
    are kept, so every class set is read off the same forward pass.
    """
    n = ranks.shape[1]
    device = start.device
    counts = counts.to(device=device, dtype=torch.long).clamp(0, n)
    map_index = map_index.to(device=device, dtype=torch.long)
    if counts.numel() == 0:
        return torch.zeros(0, len(sets), dtype=torch.float64, device=device)
    if ranks.shape[0] > 1:  # identical pixel orders delete the same pixels: one map for them
        ranks, same_order = torch.unique(ranks, dim=0, return_inverse=True)
        map_index = same_order[map_index]
    canonical = torch.where((counts == 0) | (counts == n), torch.zeros_like(map_index), map_index)
    keys = canonical * (n + 1) + counts
    unique_keys, inverse = torch.unique(keys, return_inverse=True)
    u_map, u_count = unique_keys // (n + 1), unique_keys % (n + 1)
    shape = start.shape
    outputs = []
    indicator = None
    with eval_mode(model):
        for s in progress(batch_slices(unique_keys.numel(), batch_size), total=unique_keys.numel(), desc="metric passes", unit="pass"):
            mask = ranks[u_map[s]] < u_count[s, None]  # B x n
            batch = torch.where(mask.view(-1, 1, *shape[1:]), end, start)
            probs = torch.softmax(_logits_of(model, batch).double(), dim=-1)
            if indicator is None:
                indicator = set_indicator(sets, probs.shape[1], device)
            outputs.append(probs @ indicator)
    return torch.cat(outputs)[inverse]
