"""Contrastive faithfulness: the contrastive score, CAUC and CDROP (CWOX paper, Sec. 5.1).

Notation of the paper. ``H`` is a heatmap over the ``n`` pixels of the image ``x``;
``x_1, ..., x_n`` are the pixels in descending order of ``H`` (ties: raster order, see
:func:`cwox.online.metrics._batch.pixel_ranks`); ``x_[r,n]`` is ``x`` with its first ``r - 1``
pixels deleted (all channels replaced by the substrate). For a target class set ``c`` and a
contrast set ``C'`` (P of a set = sum of softmax probabilities):

* Eq. (3), contrastive score: ``s(r) = P(c | x_[r,n]) * (1 - P(C' | x_[r,n]))``.
* ``n_delta``: the number of delta-salient pixels, ``H(x) >= delta * max H`` (delta = 0.5).
* Eq. (4): ``CAUC = (1/n) * sum_{r=1}^{n_delta} s(r)`` (smaller is better).
* Eq. (5): ``CDROP = (s(1) - s(n_delta + 1)) / log2(1 + max(n_delta, tau) / tau)`` with
  ``tau = 0.05 n`` (larger is better).

Sampling with ``step`` > 1 (CAUC only; CDROP needs just ``s(1)`` and ``s(n_delta + 1)``
and is always exact). Write ``S(d) = s(d + 1)`` for the score after ``d`` deletions, so
Eq. (4) sums ``S(0), ..., S(N - 1)`` with ``N = n_delta``. The model is run at
``d = 0, step, 2 step, ...`` (below ``N``) and at ``d = N - 1``; ``S`` at the other ``d`` is
read off the straight line between the two neighbouring sampled points, and the ``N`` values
are summed. A segment ``a -> b`` of length ``L = b - a`` contributes
``(L + 1)/2 * S(a) + (L - 1)/2 * S(b)`` (the points ``a, ..., b - 1``) and the last point
``N - 1`` counts once more, so the weights add up to ``N``. With ``step = 1`` every point is
sampled and the sum is exactly Eq. (4).

Where this differs from the public CWOX evaluation code (vaynexie/CWOX,
``Evaluation/evaluation/causal.py``), we follow the paper: salient pixels are
``H >= delta * max H`` (the code uses ``H > min H + delta (max H - min H)``); CDROP uses
``s(n_delta + 1)`` itself (the code averages the last three sampled points); the CAUC sum
runs over exactly ``n_delta`` pixels with the interpolation above (the code takes a
trapezoid over whole chunks of ``step`` pixels, rounding ``n_delta`` up to a multiple of
``step``, and divides by the number of chunks rather than by ``n``).
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
    check_delta,
    check_heatmaps,
    check_image,
    check_positive_int,
    n_salient_pixels,
    pair_indices,
    perturbation_set_probs,
    pixel_ranks,
    resolve_batch_size,
    substrate_image,
)

__all__ = [
    "ContrastiveCurve",
    "ContrastiveScores",
    "cauc",
    "cauc_sample_weights",
    "cdrop",
    "contrastive_curve",
    "contrastive_scores",
    "n_salient",
]


@dataclass(frozen=True)
class ContrastiveScores:
    """CAUC and CDROP of ``K`` (heatmap, target, contrast) triples of one image.

    Attributes:
        cauc: ``(K,)`` Eq. (4) over ``n_summed`` pixels.
        cdrop: ``(K,)`` Eq. (5) over each heatmap's own ``n_delta``.
        n_delta: ``(K,)`` number of delta-salient pixels of each heatmap.
        n_summed: ``(K,)`` number of pixels CAUC summed over (``n_delta`` unless overridden).
        n_pixels: ``n = H * W``.
    """

    cauc: np.ndarray
    cdrop: np.ndarray
    n_delta: np.ndarray
    n_summed: np.ndarray
    n_pixels: int


@dataclass(frozen=True)
class ContrastiveCurve:
    """Probabilities and contrastive score (Eq. 3) after ``deleted`` pixel deletions (Fig. 6)."""

    deleted: np.ndarray
    p_target: np.ndarray
    p_contrast: np.ndarray
    score: np.ndarray


def n_salient(heatmap, delta: float = 0.5) -> int:
    """Number of delta-salient pixels of one ``H x W`` heatmap: ``H(x) >= delta * max H``."""
    check_delta(delta)
    maps = torch.as_tensor(
        np.asarray(heatmap) if not isinstance(heatmap, torch.Tensor) else heatmap
    )
    if maps.dim() != 2:
        raise ValueError(f"heatmap must be H x W, got shape {tuple(maps.shape)}")
    if not torch.isfinite(maps.double()).all():
        raise ValueError("heatmap holds NaN or infinite values")
    return int(n_salient_pixels(maps[None], delta)[0])


def cauc_sample_weights(n_summed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Deletion counts ``d`` at which CAUC runs the model, and the weight of each ``S(d)``.

    ``sum(weights * S(points))`` equals ``sum_{d=0}^{n_summed-1} S(d)`` with ``S`` linearly
    interpolated between the sampled points (exact for ``step = 1``); see the module doc.
    """
    step = check_positive_int(step, "step")
    if n_summed <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    points = np.arange(0, n_summed, step, dtype=np.int64)
    if points[-1] != n_summed - 1:
        points = np.append(points, n_summed - 1)
    lengths = np.diff(points).astype(np.float64)
    weights = np.zeros(points.size)
    weights[:-1] += (lengths + 1) / 2
    weights[1:] += (lengths - 1) / 2
    weights[-1] += 1.0
    return points, weights


def _check_pair(target: ClassSet, contrast: ClassSet) -> tuple[tuple[int, ...], tuple[int, ...]]:
    t = check_class_set(target, "target")
    c = check_class_set(contrast, "contrast")
    shared = sorted(set(t) & set(c))
    if shared:
        raise ValueError(
            f"target and contrast share class ids {shared}: a class cannot be its own contrast"
        )
    return t, c


def _as_pair(pair) -> tuple[ClassSet, ClassSet]:
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise ValueError(
            f"pairs must be a list of (target, contrast) pairs, e.g. [([3], [5, 7])]; got item {pair!r}"
        )
    return pair[0], pair[1]


def _resolve_n_summed(n_delta, own: np.ndarray, n: int) -> np.ndarray:
    """Pixels CAUC sums per heatmap: see ``n_delta`` of :func:`contrastive_scores`."""
    if n_delta is None:
        return own.copy()
    if isinstance(n_delta, str):
        if n_delta != "min":
            raise ValueError(
                f"n_delta must be None, 'min', an integer in [0, n] or one per heatmap, got {n_delta!r}"
            )
        return np.full_like(own, own.min())
    if isinstance(n_delta, (Sequence, np.ndarray, torch.Tensor)):
        counts = np.asarray(n_delta.cpu() if isinstance(n_delta, torch.Tensor) else n_delta)
        if counts.shape != own.shape:
            raise ValueError(
                f"n_delta gives {counts.size} counts for {own.size} heatmaps: give one per heatmap"
            )
        if counts.size and (
            counts.dtype.kind not in "iu" or counts.min() < 0 or counts.max() > n
        ):
            raise ValueError(f"n_delta counts must be integers in [0, {n}], got {counts.tolist()}")
        return counts.astype(own.dtype)
    if (
        isinstance(n_delta, bool)
        or not isinstance(n_delta, (int, np.integer))
        or not 0 <= n_delta <= n
    ):
        raise ValueError(
            f"n_delta must be None, 'min', an integer in [0, {n}] or one per heatmap, got {n_delta!r}"
        )
    return np.full_like(own, int(n_delta))


def contrastive_scores(
    model: Model,
    image: torch.Tensor,
    heatmaps,
    pairs: Sequence[tuple[ClassSet, ClassSet]],
    *,
    delta: float = 0.5,
    step: int = 16,
    n_delta: int | str | Sequence[int] | None = None,
    tau: float | None = None,
    substrate: str | torch.Tensor = "zero",
    batch_size: int | None = None,
    compute: Sequence[str] = ("cauc", "cdrop"),
) -> ContrastiveScores:
    """CAUC (Eq. 4) and CDROP (Eq. 5) of many heatmaps and (target, contrast) pairs at once.

    Args:
        model: maps a normalised ``B x C x H x W`` batch to logits (an ``nn.Module`` is run
            in eval mode).
        image: one normalised ``C x H x W`` tensor; everything runs on its device.
        heatmaps: ``K x H x W`` (or one ``H x W`` map used for every pair).
        pairs: ``K`` pairs ``(target, contrast)`` of class ids or lists of class ids, heatmap
            ``k`` going with pair ``k`` (one pair is used for every heatmap).
        delta: salience threshold in ``(0, 1]``: pixels with ``H >= delta * max H`` count.
        step: CAUC evaluates the curve every ``step`` pixels (see the module doc).
        n_delta: pixels summed by CAUC: ``None`` = each heatmap's own ``n_delta``; an int =
            that many for all; ``"min"`` = the smallest ``n_delta`` among the heatmaps (the
            paper's rule when comparing heatmaps of the same pair); a sequence = one count
            per heatmap (several pairs' ``"min"`` rules in one call: the images the pairs
            share then go through the model once). CDROP always uses each heatmap's own
            ``n_delta``.
        tau: CDROP's penalty scale; default ``0.05 n``.
        substrate: ``"zero"``, ``"blur"`` or a ``C x H x W`` tensor of replacement values.
        batch_size: images per forward pass (default: :func:`cwox.core.devices.default_batch_size`).
        compute: which of ``"cauc"``, ``"cdrop"`` to compute (the other is NaN).

    Every deletion image of every heatmap goes through the model in full batches; images
    shared between heatmaps (the undeleted image, repeated maps) are run once.
    """
    image = check_image(image)
    maps = check_heatmaps(heatmaps, image, batched=True)
    delta = check_delta(delta)
    step = check_positive_int(step, "step")
    wanted = set(compute)
    if not wanted or not wanted <= {"cauc", "cdrop"}:
        raise ValueError(f"compute must name 'cauc' and/or 'cdrop', got {compute!r}")
    checked = [_check_pair(*_as_pair(pair)) for pair in pairs]
    map_of, pair_of = pair_indices(maps.shape[0], len(checked), "pairs")
    k_total = map_of.size
    n = maps.shape[1] * maps.shape[2]
    if tau is None:
        tau = 0.05 * n
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be positive, got {tau!r}")

    own = n_salient_pixels(maps, delta).cpu().numpy()
    summed = _resolve_n_summed(n_delta, own, n)

    # One job list: (map, deletions). CAUC's sampled points, then CDROP's d = 0 and n_delta.
    job_maps, job_counts, cauc_spans, cauc_weights, drop_rows = [], [], [], [], []
    offset = 0
    for k in range(k_total):
        m = map_of[k]
        if "cauc" in wanted:
            points, weights = cauc_sample_weights(int(summed[m]), step)
            job_maps.append(np.full(points.size, m))
            job_counts.append(points)
            cauc_spans.append(slice(offset, offset + points.size))
            cauc_weights.append(weights)
            offset += points.size
        if "cdrop" in wanted:
            job_maps.append(np.full(2, m))
            job_counts.append(np.array([0, own[m]]))
            drop_rows.append(offset)
            offset += 2
    sets = [s for t, c in checked for s in (t, c)]
    device = image.device
    p_sets = (
        perturbation_set_probs(
            model,
            image,
            substrate_image(image, substrate),
            pixel_ranks(maps),
            torch.as_tensor(np.concatenate(job_maps), device=device),
            torch.as_tensor(np.concatenate(job_counts), device=device),
            sets,
            resolve_batch_size(batch_size, device),
        )
        .cpu()
        .numpy()
    )  # J x 2P: P(target), P(contrast) of every pair on every job's image
    cauc_out = np.full(k_total, np.nan)
    cdrop_out = np.full(k_total, np.nan)
    for k in range(k_total):
        p = pair_of[k]

        def score(rows, p=p):
            return p_sets[rows, 2 * p] * (1.0 - p_sets[rows, 2 * p + 1])

        if "cauc" in wanted:
            span = cauc_spans[k]
            cauc_out[k] = (
                float(np.dot(cauc_weights[k], score(span))) / n if span.stop > span.start else 0.0
            )
        if "cdrop" in wanted:
            s1, s_end = score(slice(drop_rows[k], drop_rows[k] + 2))
            nd = float(own[map_of[k]])
            cdrop_out[k] = (s1 - s_end) / np.log2(1.0 + max(nd, tau) / tau)
    return ContrastiveScores(
        cauc=cauc_out,
        cdrop=cdrop_out,
        n_delta=own[map_of].astype(np.int64),
        n_summed=summed[map_of].astype(np.int64),
        n_pixels=n,
    )


def _one_score(
    metric: str,
    model: Model,
    image: torch.Tensor,
    heatmap,
    pair: tuple[ClassSet, ClassSet],
    **options,
) -> float:
    """``metric`` (``"cauc"`` or ``"cdrop"``) of one heatmap and one (target, contrast) pair.

    :func:`contrastive_scores` computing that metric alone; ``options`` are its keywords.
    """
    result = contrastive_scores(model, image, heatmap, [pair], compute=(metric,), **options)
    return float(getattr(result, metric)[0])


def cauc(
    model: Model,
    image: torch.Tensor,
    heatmap,
    target: ClassSet,
    contrast: ClassSet,
    delta: float = 0.5,
    step: int = 16,
    n_delta: int | None = None,
    substrate: str | torch.Tensor = "zero",
    batch_size: int | None = None,
) -> float:
    """Contrastive AUC, CWOX Eq. (4): ``(1/n) sum_{r=1}^{n_delta} s(r)``; smaller is better.

    ``heatmap`` is one ``H x W`` map; ``n_delta`` (an int) overrides the map's own count of
    delta-salient pixels, e.g. the smallest count among heatmaps being compared. See
    :func:`contrastive_scores` for the other arguments and the module doc for ``step``.
    """
    image = check_image(image)
    check_heatmaps(heatmap, image, batched=False)
    if isinstance(n_delta, str):
        raise ValueError(f"n_delta must be None or an integer, got {n_delta!r}")
    return _one_score(
        "cauc", model, image, heatmap, (target, contrast),
        delta=delta, step=step, n_delta=n_delta, substrate=substrate, batch_size=batch_size,
    )


def cdrop(
    model: Model,
    image: torch.Tensor,
    heatmap,
    target: ClassSet,
    contrast: ClassSet,
    delta: float = 0.5,
    step: int = 16,
    tau: float | None = None,
    substrate: str | torch.Tensor = "zero",
    batch_size: int | None = None,
) -> float:
    """Weighted drop in contrastive score, CWOX Eq. (5); larger is better.

    ``(s(1) - s(n_delta + 1)) / log2(1 + max(n_delta, tau) / tau)``, ``tau = 0.05 n`` by
    default. Exact for every ``step`` (only two images are scored); ``step`` is accepted for
    symmetry with :func:`cauc`.
    """
    image = check_image(image)
    check_heatmaps(heatmap, image, batched=False)
    check_positive_int(step, "step")
    return _one_score(
        "cdrop", model, image, heatmap, (target, contrast),
        delta=delta, step=step, tau=tau, substrate=substrate, batch_size=batch_size,
    )


def contrastive_curve(
    model: Model,
    image: torch.Tensor,
    heatmap,
    target: ClassSet,
    contrast: ClassSet,
    deleted: Sequence[int] | np.ndarray | None = None,
    delta: float = 0.5,
    step: int = 16,
    substrate: str | torch.Tensor = "zero",
    batch_size: int | None = None,
) -> ContrastiveCurve:
    """``P(c)``, ``P(C')`` and ``s`` (Eq. 3) after deleting ``deleted`` pixels (Fig. 6 of the paper).

    By default ``deleted = 0, step, 2 step, ...`` up to and including ``n_delta``.
    """
    image = check_image(image)
    maps = check_heatmaps(heatmap, image, batched=False)
    t, c = _check_pair(target, contrast)
    n = maps.shape[1] * maps.shape[2]
    if deleted is None:
        nd = int(n_salient_pixels(maps, check_delta(delta))[0])
        points = np.arange(0, nd, check_positive_int(step, "step"), dtype=np.int64)
        deleted = np.append(points, nd)
    deleted = np.asarray(deleted, dtype=np.int64).reshape(-1)
    if deleted.size == 0 or deleted.min() < 0 or deleted.max() > n:
        raise ValueError(f"deleted must hold pixel counts in [0, {n}], got {deleted!r}")
    p = perturbation_set_probs(
        model,
        image,
        substrate_image(image, substrate),
        pixel_ranks(maps),
        torch.zeros(deleted.size, dtype=torch.long, device=image.device),
        torch.as_tensor(deleted, device=image.device),
        [t, c],
        resolve_batch_size(batch_size, image.device),
    )
    p = p.cpu().numpy()
    return ContrastiveCurve(
        deleted=deleted, p_target=p[:, 0], p_contrast=p[:, 1], score=p[:, 0] * (1 - p[:, 1])
    )
