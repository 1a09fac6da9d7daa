"""Build FG-VCE's reference bank: images -> batched classifier -> top-m candidate features -> Zarr.

FG-VCE (Sec. 3.2) draws its replacement features from a set ``U`` of correctly
classified images, 20 per class (Sec. 4.1), keeping for each image only the
``m`` feature positions of largest saliency-partition Shapley value for its
class (``S~_U = {Top_m(s_k)}``), computed "only once". This module computes
that set offline:

1. each image goes through the network front once (batched) to the feature
   layer ``h``, then through the rest for its prediction;
2. an image is kept when it is correctly classified (labels given), or, without
   labels, when its top class has probability >= ``min_confidence``: a
   confident prediction stands in for the label (recorded as
   ``label_source = "prediction"`` in the store);
3. for kept images, all partitioned maps ``h * G~[k]`` (Eq. 4) go through the
   rest in batches, ``s = p(h) - p(H~)`` (Eq. 1) for the image's class, and the
   top-``m`` positions' feature vectors become candidates;
4. the first ``per_class`` kept images of each class (in input order) form the
   bank, which :func:`cwox.store.reference_bank.save_reference_bank` writes beside the
   documents (``DOCS.zarr/reference_bank``) or to a store of its own.

:func:`build_reference_bank` runs steps 1-3 as one Dask task per chunk of input
files (a LocalCluster by default, or a scheduler address / client), like
:func:`cwox.offline.documents.build_documents`; given a ``classifier`` object it runs
in this process instead. :func:`bank_from_tensors` does the same on a tensor
batch already in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cwox.online.explainers.fgvce import DEFAULT_SIGMA, partition_kernels, partition_probabilities
from cwox.store.reference_bank import DEFAULT_GROUP, ReferenceBank, save_reference_bank

from cwox.core.batching import batch_slices
from cwox.core.devices import default_batch_size
from cwox.core.images import DEFAULT_MAX_PIXELS, ImageError, collect_inputs, load_image
from cwox.core.models import DEFAULT_MODEL, Classifier, check_model_args
from cwox.core.split import split_at

__all__ = [
    "DEFAULT_PER_CLASS",
    "DEFAULT_TOP_M",
    "bank_from_tensors",
    "build_reference_bank",
    "image_candidates",
]

#: Reference images per class (Sec. 4.1: "the number of samples in U was set to 20").
DEFAULT_PER_CLASS = 20
#: Candidate positions kept per reference image. The paper leaves m open (Fig. 7b
#: varies it); 10 keeps about the top fifth of a 7 x 7 grid.
DEFAULT_TOP_M = 10
#: Without labels, a prediction at least this probable stands in for the label.
DEFAULT_MIN_CONFIDENCE = 0.5
#: Input files per Dask task.
DEFAULT_CHUNK = 64


@dataclass
class ImageCandidates:
    """Per-image results of the bank pass (numpy, one row per image of the batch).

    ``keep`` marks correctly classified (or confidently predicted) images; the
    candidate arrays hold zeros for the others.
    """

    label: np.ndarray  # int32 (B,): the label (given, or the prediction)
    prob: np.ndarray  # float32 (B,): the model's probability of that label
    keep: np.ndarray  # bool (B,)
    features: np.ndarray  # float32 (B, m, C)
    positions: np.ndarray  # int16 (B, m, 2)
    shapley: np.ndarray  # float32 (B, m)
    grid: tuple[int, int]


@torch.inference_mode()
def image_candidates(
    classifier: Classifier,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    layer: str | None = None,
    top_m: int = DEFAULT_TOP_M,
    sigma: float = DEFAULT_SIGMA,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    batch_size: int | None = None,
) -> ImageCandidates:
    """Top-``m`` candidate features of each image of a normalised batch ``x`` (``B x 3 x S x S``).

    ``labels`` (``B``, -1 for unknown) keep an image when the model predicts its
    label; without a label, when the top class has probability >= ``min_confidence``.
    """
    layer = layer or classifier.cluster_layer
    bs = batch_size or default_batch_size(classifier.device)
    split = split_at(classifier, layer)
    x = x.to(classifier.device, torch.float32)
    h = torch.cat([split.front(x[sl]) for sl in batch_slices(x.shape[0], bs)])
    if h.dim() != 4:
        raise ValueError(f"layer {layer!r} gives {tuple(h.shape[1:])} per image, not a C x h x w feature map")
    n, c, r, w = h.shape
    if not 1 <= top_m <= r * w:
        raise ValueError(f"top_m must be in 1..{r * w} for a {r} x {w} feature grid, got {top_m}")
    kernels = partition_kernels(r, w, sigma, device=h.device)
    probs = torch.cat([torch.softmax(split.rest(h[sl]).float(), -1) for sl in batch_slices(n, bs)])
    pred_p, pred = probs.max(dim=1)
    if labels is None:
        labels = torch.full((n,), -1, dtype=torch.long)
    labels = labels.to(h.device, torch.long)
    unknown = labels < 0
    label = torch.where(unknown, pred, labels)
    keep = torch.where(unknown, pred_p >= min_confidence, pred == labels)
    prob = probs.gather(1, label[:, None])[:, 0]

    feats = torch.zeros(n, top_m, c)
    pos = torch.zeros(n, top_m, 2, dtype=torch.int16)
    shap = torch.zeros(n, top_m)
    kept = keep.nonzero().flatten()
    if kept.numel():
        p_h, p_tilde = partition_probabilities(split.rest, h[kept], kernels, bs)
        lab = label[kept]
        s = p_h.gather(1, lab[:, None]) - p_tilde.gather(2, lab[:, None, None].expand(-1, r * w, 1))[..., 0]  # Eq. 1
        top_s, top_k = s.topk(top_m, dim=1)  # Top_m(s)
        ys, xs = top_k // w, top_k % w
        hk = h[kept]
        rows = torch.arange(kept.numel(), device=h.device)[:, None]
        feats[kept.cpu()] = hk[rows, :, ys, xs].float().cpu()  # kept x m x C
        pos[kept.cpu()] = torch.stack([ys, xs], -1).to(torch.int16).cpu()
        shap[kept.cpu()] = top_s.float().cpu()
    return ImageCandidates(
        label=label.cpu().numpy().astype(np.int32),
        prob=prob.cpu().numpy().astype(np.float32),
        keep=keep.cpu().numpy(),
        features=feats.numpy(),
        positions=pos.numpy(),
        shapley=shap.numpy(),
        grid=(r, w),
    )


def _assemble(
    cands: ImageCandidates,
    paths: Sequence[str],
    *,
    model: str,
    layer: str,
    per_class: int,
    top_m: int,
    sigma: float,
    label_source: str,
    min_confidence: float | None,
    n_classes: int,
    extra: Mapping[str, Any] | None = None,
) -> ReferenceBank:
    """The first ``per_class`` kept images of each class, in input order, as a bank."""
    chosen: list[int] = []
    counts: dict[int, int] = {}
    for i in np.flatnonzero(cands.keep):
        lab = int(cands.label[i])
        if counts.get(lab, 0) < per_class:
            counts[lab] = counts.get(lab, 0) + 1
            chosen.append(int(i))
    idx = np.asarray(chosen, dtype=np.int64)
    m = top_m
    c = cands.features.shape[-1]
    return ReferenceBank(
        features=cands.features[idx].reshape(-1, c),
        labels=np.repeat(cands.label[idx], m),
        shapley=cands.shapley[idx].reshape(-1),
        positions=cands.positions[idx].reshape(-1, 2),
        image=np.repeat(np.arange(len(idx)), m),
        image_paths=[paths[i] for i in idx],
        image_labels=cands.label[idx],
        image_probs=cands.prob[idx],
        model=model,
        layer=layer,
        grid=cands.grid,
        attrs={
            "per_class": int(per_class),
            "top_m": int(top_m),
            "sigma": float(sigma),
            "label_source": label_source,
            "min_confidence": min_confidence,
            "n_classes": int(n_classes),
            "images_seen": int(len(cands.keep)),
            "images_kept": int(cands.keep.sum()),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        },
    )


def _check_settings(per_class: int, top_m: int, sigma: float, min_confidence: float) -> None:
    if int(per_class) < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if int(top_m) < 1:
        raise ValueError(f"top_m must be >= 1, got {top_m}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")


def bank_from_tensors(
    classifier: Classifier,
    images: torch.Tensor,
    labels: Sequence[int] | torch.Tensor | None = None,
    *,
    names: Sequence[str] | None = None,
    layer: str | None = None,
    per_class: int = DEFAULT_PER_CLASS,
    top_m: int = DEFAULT_TOP_M,
    sigma: float = DEFAULT_SIGMA,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    batch_size: int | None = None,
) -> ReferenceBank:
    """A reference bank from a normalised image batch in memory (``B x 3 x S x S``).

    ``labels`` (class ids, -1 for unknown) select correctly classified images;
    without them a confident prediction stands in for the label. ``names`` label
    the images in the bank (default ``"image-<i>"``).
    """
    _check_settings(per_class, top_m, sigma, min_confidence)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a B x 3 x H x W normalised batch, got {tuple(images.shape)}")
    layer = layer or classifier.cluster_layer
    lab = None if labels is None else _label_tensor(labels, images.shape[0], classifier)
    cands = image_candidates(
        classifier, images, lab, layer=layer, top_m=top_m, sigma=sigma,
        min_confidence=min_confidence, batch_size=batch_size,
    )
    names = list(names) if names is not None else [f"image-{i}" for i in range(images.shape[0])]
    if len(names) != images.shape[0]:
        raise ValueError(f"{len(names)} names for {images.shape[0]} images")
    return _assemble(
        cands, names, model=classifier.name, layer=layer, per_class=per_class, top_m=top_m, sigma=sigma,
        label_source="given" if labels is not None else "prediction",
        min_confidence=None if labels is not None else float(min_confidence),
        n_classes=classifier.n_classes,
    )


def _label_tensor(labels: Sequence[int] | torch.Tensor, n: int, classifier: Classifier) -> torch.Tensor:
    lab = torch.as_tensor(labels, dtype=torch.long).flatten()
    if lab.numel() != n:
        raise ValueError(f"{lab.numel()} labels for {n} images")
    bad = lab[(lab >= classifier.n_classes) | (lab < -1)]
    if bad.numel():
        raise ValueError(f"labels {bad.tolist()[:5]} are not class ids of 0..{classifier.n_classes - 1} (or -1)")
    return lab


# --------------------------------------------------------------------------- files, on Dask


@dataclass(frozen=True)
class BankTask:
    """One Dask task: the candidates of a chunk of input files."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    model: Any  # offline.worker.ModelSpec
    layer: str | None
    top_m: int
    sigma: float
    min_confidence: float
    batch_size: int | None
    max_pixels: int = DEFAULT_MAX_PIXELS


def process_bank_chunk(task: BankTask, classifier: Classifier | None = None) -> tuple[ImageCandidates, list[tuple[str, str]]]:
    """Decode a chunk's images, run :func:`image_candidates`; (candidates of readable images, failures)."""
    from cwox.offline.worker import worker_model

    clf = classifier if classifier is not None else worker_model(task.model)
    tensors, ok, failures = [], [], []
    for i, path in enumerate(task.paths):
        try:
            tensors.append(clf.preprocess(load_image(path, max_pixels=task.max_pixels)))
            ok.append(i)
        except ImageError as exc:
            failures.append((path, exc.reason))
        except Exception as exc:  # noqa: BLE001 - one odd file must not sink the chunk
            failures.append((path, f"unexpected error: {type(exc).__name__}: {exc}"))
    if not tensors:
        return _empty_candidates(), failures
    labels = torch.tensor([task.labels[i] for i in ok], dtype=torch.long)
    cands = image_candidates(
        clf, torch.stack(tensors), labels, layer=task.layer, top_m=task.top_m, sigma=task.sigma,
        min_confidence=task.min_confidence, batch_size=task.batch_size,
    )
    return _reindex(cands, ok, len(task.paths)), failures


def _empty_candidates() -> ImageCandidates:
    return ImageCandidates(
        np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, bool),
        np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 2), np.int16), np.zeros((0, 0), np.float32), (0, 0),
    )


def _reindex(cands: ImageCandidates, ok: list[int], n: int) -> ImageCandidates:
    """Spread the rows of readable images back to the chunk's ``n`` rows (others not kept)."""
    m, c = cands.features.shape[1:]
    out = ImageCandidates(
        label=np.full(n, -1, np.int32), prob=np.zeros(n, np.float32), keep=np.zeros(n, bool),
        features=np.zeros((n, m, c), np.float32), positions=np.zeros((n, m, 2), np.int16),
        shapley=np.zeros((n, m), np.float32), grid=cands.grid,
    )
    for name in ("label", "prob", "keep", "features", "positions", "shapley"):
        getattr(out, name)[ok] = getattr(cands, name)
    return out


def _concat(parts: list[ImageCandidates], n_paths: list[int]) -> ImageCandidates:
    """Join chunk results in input order (chunks without readable images give empty rows)."""
    full = [p for p in parts if p.features.ndim == 3 and p.features.shape[1] > 0]
    if not full:
        raise ValueError("none of the input images could be read")
    m, c = full[0].features.shape[1:]
    grid = full[0].grid
    fixed = []
    for p, n in zip(parts, n_paths):
        if p.features.shape[0] == n and p.features.shape[1:] == (m, c):
            fixed.append(p)
        else:
            fixed.append(_reindex(ImageCandidates(
                np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, bool),
                np.zeros((0, m, c), np.float32), np.zeros((0, m, 2), np.int16), np.zeros((0, m), np.float32), grid,
            ), [], n))
    return ImageCandidates(
        label=np.concatenate([p.label for p in fixed]),
        prob=np.concatenate([p.prob for p in fixed]),
        keep=np.concatenate([p.keep for p in fixed]),
        features=np.concatenate([p.features for p in fixed]),
        positions=np.concatenate([p.positions for p in fixed]),
        shapley=np.concatenate([p.shapley for p in fixed]),
        grid=grid,
    )


def _resolve_labels(
    labels: Mapping[str, int | str] | Sequence[int | str] | None,
    inputs: Sequence[str | os.PathLike],
    paths: list[str],
    class_names: Sequence[str] | None,
) -> list[int]:
    """One class id (or -1) per collected path, from a mapping or a list aligned with the files."""
    if labels is None:
        return [-1] * len(paths)
    by_name = {n: i for i, n in enumerate(class_names or [])}

    def as_id(v: int | str) -> int:
        if isinstance(v, (int, np.integer)):
            return int(v)
        if str(v) in by_name:
            return by_name[str(v)]
        raise ValueError(f"label {v!r} is neither a class id nor a class name of the model")

    if isinstance(labels, Mapping):
        resolved = {str(Path(k).resolve()) if Path(k).exists() else str(k): as_id(v) for k, v in labels.items()}
        return [resolved.get(p, -1) for p in paths]
    labels = list(labels)
    if len(labels) != len(paths):
        raise ValueError(
            f"{len(labels)} labels for {len(paths)} images found in the inputs; give a mapping "
            "path -> label when the inputs are folders or list files"
        )
    return [as_id(v) for v in labels]


def build_reference_bank(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None,
    *,
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    classifier: Classifier | None = None,
    labels: Mapping[str, int | str] | Sequence[int | str] | None = None,
    per_class: int = DEFAULT_PER_CLASS,
    top_m: int = DEFAULT_TOP_M,
    layer: str | None = None,
    sigma: float = DEFAULT_SIGMA,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    batch_size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    device: str = "auto",
    group: str | None = DEFAULT_GROUP,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ReferenceBank:
    """Build FG-VCE's reference bank from image files and (when ``out`` is given) store it.

    Args:
        inputs: image files, folders (searched recursively) and list files.
        out: a Zarr store: a documents store (the bank goes to its ``group``,
            ``reference_bank`` by default) or a new path; None keeps it in memory.
        model, weights, device: the classifier (see :func:`cwox.core.models.load_model`),
            loaded once per Dask worker.
        classifier: a loaded classifier instead; the pass then runs in this process.
        labels: the images' classes, as a mapping path -> class id or name, or a
            list aligned with the files found; None: a confident prediction
            (probability >= ``min_confidence``) stands in for the label.
        per_class: reference images kept per class (paper: 20).
        top_m: candidate positions per image.
        layer: the feature layer (default: the classifier's ``cluster_layer``, the
            last convolutional layer, where the paper replaces features).
        sigma: partition kernel scale (paper: 0.8).
        batch_size: feature maps per forward pass.
        chunk_size: input files per Dask task.
        workers, scheduler, client: the Dask cluster, as in
            :func:`cwox.offline.documents.build_documents`.
        group, overwrite: where in ``out`` to write, and whether to replace a bank.

    Returns:
        the :class:`~cwox.store.reference_bank.ReferenceBank` (also written to ``out``).
    """
    _check_settings(per_class, top_m, sigma, min_confidence)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    t0 = time.perf_counter()
    paths = collect_inputs(inputs)
    if not paths:
        raise ValueError("no input images found")
    paths = [str(Path(p).resolve()) if Path(p).exists() else p for p in paths]
    if out is not None and Path(out, group or "").exists() and not overwrite:
        raise FileExistsError(f"a reference bank already exists at {Path(out, group or '')}; use overwrite")

    from cwox.offline.worker import ModelSpec

    if classifier is not None:
        names, model_name = classifier.class_names, classifier.name
        spec = ModelSpec(classifier.name, None, str(classifier.device))
    else:
        model_name = check_model_args(model, weights)
        spec = ModelSpec(model, str(weights) if weights else None, device, None if (scheduler or client) else 1)
        names = None
    label_ids = _resolve_labels(labels, inputs, paths, names if classifier is not None else _class_names(spec, labels))
    chunks = [slice(s, min(s + chunk_size, len(paths))) for s in range(0, len(paths), chunk_size)]
    tasks = [
        BankTask(tuple(paths[sl]), tuple(label_ids[sl]), spec, layer, int(top_m), float(sigma),
                 float(min_confidence), batch_size, max_pixels)
        for sl in chunks
    ]
    if classifier is not None:
        results = [process_bank_chunk(t, classifier) for t in tasks]
        layer_name = layer or classifier.cluster_layer
        n_classes = classifier.n_classes
    else:
        from cwox.offline.documents import _maybe_client
        from cwox.offline.worker import model_info

        with _maybe_client(client, scheduler, workers) as cl:
            info = cl.submit(model_info, spec, pure=False).result()
            results = cl.gather(cl.map(process_bank_chunk, tasks, pure=False))
            layer_name = layer or cl.submit(_cluster_layer, spec, pure=False).result()
        n_classes = len(info["class_names"])
    cands = _concat([r[0] for r in results], [len(t.paths) for t in tasks])
    failures = [f for r in results for f in r[1]]
    bank = _assemble(
        cands, paths, model=model_name, layer=layer_name, per_class=per_class, top_m=top_m, sigma=sigma,
        label_source="given" if labels is not None else "prediction",
        min_confidence=None if labels is not None else float(min_confidence),
        n_classes=n_classes,
        extra={"failed_images": [list(f) for f in failures], "seconds": round(time.perf_counter() - t0, 3)},
    )
    if out is not None:
        save_reference_bank(bank, out, group=group, overwrite=overwrite)
    return bank


def _cluster_layer(spec: Any) -> str:
    from cwox.offline.worker import worker_model

    return worker_model(spec).cluster_layer


def _class_names(spec: Any, labels: Any) -> list[str] | None:
    """Class names of the model, only when some label is given by name."""
    values = labels.values() if isinstance(labels, Mapping) else (labels or [])
    if not any(isinstance(v, str) for v in values):
        return None
    from cwox.core.models import load_model

    return load_model(spec.name, weights=spec.weights, device="cpu").class_names
