"""What one Dask task does: classify one row chunk of the documents store.

The model is loaded once per worker process and cached
(:func:`cwox.core.models.worker_model`, on the ground floor since every stage runs
Dask workers; still importable from here), not once per task. A task reads its rows' paths, decodes each image once (views of one
image share the decode), runs the classifier in batches, applies the top-K rule,
writes its rows and finally sets the chunk's ``done`` flag — so a killed run leaves
either a whole chunk or none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import zarr
from cwox.offline.augment import random_view

from cwox.core.batching import batched_forward
from cwox.core.devices import default_batch_size
from cwox.core.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from cwox.core.models import Classifier, ModelSpec, worker_model  # noqa: F401 - re-exported
from cwox.core.topk import TopKRule


def model_info(spec: ModelSpec) -> dict:
    """Name, class names and input size of the model (runs on a worker, warms its cache)."""
    clf = worker_model(spec)
    return {"model": clf.name, "class_names": clf.class_names, "input_size": clf.input_size}


@dataclass(frozen=True)
class ChunkTask:
    store: str
    chunk: int
    model: ModelSpec
    rule: TopKRule
    batch_size: int | None
    seed: int
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Retry only these rows (absolute indices, inside the chunk) of a chunk already done:
    #: the rows an earlier run could not use. None: the whole chunk.
    rows: tuple[int, ...] | None = None


@dataclass
class ChunkResult:
    chunk: int
    rows: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    decode_seconds: float = 0.0
    forward_seconds: float = 0.0


def _view_tensor(clf: Classifier, image, view: int, seed: int, row: int) -> torch.Tensor:
    if view == 0:
        return clf.preprocess(image)
    return clf.normalize(clf.to_tensor(random_view(image, clf.input_size, seed, row)))


def process_chunk(task: ChunkTask) -> ChunkResult:
    """Classify the rows of one chunk and write them to the store."""
    g = zarr.open_group(task.store, mode="r+")
    size = int(g.attrs["chunk_size"])
    n = int(g["k"].shape[0])
    start, stop = task.chunk * size, min((task.chunk + 1) * size, n)
    if task.rows is not None:
        return _retry_rows(g, task)
    paths = g["path"][start:stop]
    views = g["view"][start:stop]
    clf = worker_model(task.model)

    t0 = time.perf_counter()
    labels, probs, ks, errors = _classify(clf, task, paths.tolist(), views.tolist(), start, int(g.attrs["width"]))
    t2 = time.perf_counter()

    g["labels"][start:stop] = labels
    g["probs"][start:stop] = probs
    g["k"][start:stop] = ks
    g["error"][start:stop] = np.asarray(errors, dtype=str)
    g["done"][task.chunk] = True  # last: the chunk counts only once all rows are written
    return ChunkResult(task.chunk, stop - start, _failures(paths.tolist(), errors), 0.0, t2 - t0)


def _retry_rows(g: zarr.Group, task: ChunkTask) -> ChunkResult:
    """Classify again the rows ``task.rows`` of a done chunk (they had failed) and write
    them, and only them; the chunk's other rows are not read or changed."""
    t0 = time.perf_counter()
    idx = np.asarray(task.rows, dtype=np.int64)
    paths = g["path"].get_coordinate_selection(idx).tolist()
    views = g["view"].get_coordinate_selection(idx).tolist()
    labels, probs, ks, errors = _classify(worker_model(task.model), task, paths, views, idx.tolist(),
                                          int(g.attrs["width"]))
    g["labels"].set_orthogonal_selection((idx, slice(None)), labels)
    g["probs"].set_orthogonal_selection((idx, slice(None)), probs)
    g["k"].set_coordinate_selection(idx, ks)
    g["error"].set_coordinate_selection(idx, np.asarray(errors, dtype=str))
    return ChunkResult(task.chunk, len(idx), _failures(paths, errors), 0.0, time.perf_counter() - t0)


def _failures(paths: list[str], errors: list[str]) -> list[tuple[str, str]]:
    failures, seen = [], set()
    for path, err in zip(paths, errors):
        if err and path not in seen:
            seen.add(path)
            failures.append((path, err))
    return failures


def _classify(clf: Classifier, task: ChunkTask, paths: list[str], views: list[int], rows, width: int) -> tuple:
    """Top-K labels, probabilities, K and error of each (path, view); ``rows`` are the
    store rows (an int: the first of consecutive rows), which seed the augmented views."""
    n = len(paths)
    row_of = (lambda j: rows + j) if isinstance(rows, int) else (lambda j: rows[j])
    errors = [""] * n
    tensors: list[torch.Tensor] = []
    ok_rows: list[int] = []
    last_path, last_image = None, None
    for j, (path, view) in enumerate(zip(paths, views)):
        try:
            if path != last_path:
                last_path, last_image = path, None
                last_image = load_image(path, max_pixels=task.max_pixels)
            if last_image is None:
                raise ImageError(path, errors[j - 1] if j else "unreadable")
            tensors.append(_view_tensor(clf, last_image, int(view), task.seed, row_of(j)))
            ok_rows.append(j)
        except ImageError as exc:
            errors[j] = exc.reason
        except Exception as exc:  # noqa: BLE001 - one odd file must not sink the chunk
            errors[j] = f"unexpected error: {type(exc).__name__}: {exc}"

    labels = np.full((n, width), -1, dtype=np.int32)
    probs = np.zeros((n, width), dtype=np.float32)
    ks = np.zeros(n, dtype=np.int16)
    if tensors:
        batch = torch.stack(tensors)
        bs = task.batch_size or default_batch_size(clf.device)
        p = batched_forward(clf.probabilities, batch, bs)
        lab, top_p, k = task.rule.apply(p)
        idx = np.asarray(ok_rows)
        labels[idx] = lab.cpu().numpy()
        probs[idx] = top_p.cpu().numpy()
        ks[idx] = k.cpu().numpy()
    return labels, probs, ks, errors
