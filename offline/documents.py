"""The documents pipeline: images -> batched classifier on Dask -> top-K documents in Zarr.

CWOX Algorithm 1, offline phase, step 1: "feed each example in S to m to get a list
(document) of top class labels". :func:`build_documents` runs it on a Dask cluster —
a :class:`distributed.LocalCluster` sized to this machine by default, or an existing
cluster given by its scheduler address — one task per row chunk of the store.

It is resumable: the store is created once with every row's image path; each task
writes its rows and then its chunk's ``done`` flag; a rerun with the same settings
computes only the chunks not done. Results do not depend on the number of workers:
chunks and batches are fixed by the store, and augmented views are seeded per row.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from cwox.offline.worker import ChunkTask, ModelSpec, model_info, process_chunk
from cwox.store.documents import (
    FORMAT,
    StoreMismatch,
    check_same_run,
    create_documents,
    input_change,
    inputs_digest,
    open_documents,
)
from cwox.store.ownership import DOCUMENTS, check_replaceable
from tqdm.auto import tqdm

from cwox.core import __version__
from cwox.core.devices import cpu_count, worker_allocator_env
from cwox.core.images import DEFAULT_MAX_PIXELS, collect_inputs
from cwox.core.models import DEFAULT_MODEL, check_model_args
from cwox.core.topk import TopKRule

log = logging.getLogger(__name__)

#: Rows per chunk (= per Dask task = per Zarr chunk) for large inputs.
DEFAULT_CHUNK_SIZE = 256


@dataclass
class DocumentsSummary:
    """What a run did; ``ok`` is False when any image or chunk failed."""

    store: str
    n_images: int
    n_documents: int
    chunks_total: int
    chunks_run: int
    chunks_skipped: int
    seconds: float
    failed_images: list[tuple[str, str]] = field(default_factory=list)
    failed_chunks: list[tuple[int, str]] = field(default_factory=list)
    documents_run: int = 0
    #: images an earlier run could not use, tried again by this one, and how many now worked
    retried_images: int = 0
    fixed_images: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed_images and not self.failed_chunks

    @property
    def rate(self) -> float:
        """Documents per second computed in this run."""
        return self.documents_run / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        """A human-readable summary, one line per item."""
        out = [
            f"store      {self.store}",
            f"images     {self.n_images}  documents {self.n_documents}",
            f"chunks     {self.chunks_run} computed, {self.chunks_skipped} already done, "
            f"{self.chunks_total} in all",
            f"time       {self.seconds:.1f} s  ({self.rate:.1f} documents/s)",
        ]
        if self.retried_images:
            out.append(f"retried    {self.retried_images} image(s) that had failed before: "
                       f"{self.fixed_images} fixed, {self.retried_images - self.fixed_images} still failing")
        if self.failed_images:
            out.append(f"failed     {len(self.failed_images)} image(s):")
            out += [f"  {p}: {r}" for p, r in self.failed_images]
        if self.failed_chunks:
            out.append(f"failed     {len(self.failed_chunks)} chunk(s) (rerun to retry them):")
            out += [f"  chunk {c}: {r}" for c, r in self.failed_chunks]
        return out


def default_chunk_size(n_documents: int) -> int:
    """Rows per chunk: 256, or smaller for small inputs so progress stays visible.

    Depends only on the number of documents, never on the workers, so that the
    batches — and hence the floating-point results — are the same on any cluster.
    """
    if n_documents >= 16 * DEFAULT_CHUNK_SIZE:
        return DEFAULT_CHUNK_SIZE
    return max(8, 8 * math.ceil(n_documents / 16 / 8))


def default_workers() -> int:
    """Worker processes for a LocalCluster: one per core.

    Each LocalCluster worker runs torch single-threaded (see :data:`LOCAL_TORCH_THREADS`):
    CPU kernels sum in an order that depends on the thread count, so a fixed count is
    what makes the stored probabilities bitwise identical whatever the number of workers.
    """
    return cpu_count()


#: torch threads per LocalCluster worker (external clusters keep their own setting).
LOCAL_TORCH_THREADS = 1


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator:
    """A :class:`distributed.Client`: on ``scheduler`` if given, else on a new LocalCluster.

    The LocalCluster has ``workers`` single-threaded worker processes (default: one per
    core) and no dashboard.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            # timeout: Dask's distributed.comm.timeouts.connect setting (default 30 s)
            client = Client(scheduler)
        except OSError as exc:
            raise ConnectionError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    n = workers or default_workers()
    # Dask's own default MALLOC_TRIM_THRESHOLD_=65536 for workers turns off glibc's
    # adaptive mmap threshold, and every batch's activations then come from fresh,
    # zero-filled mmaps: torch ran 35% slower in such a worker. cwox.core.devices explains.
    environ = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in worker_allocator_env().items()}
    with dask.config.set(environ):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def build_documents(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    rule: TopKRule | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    augment: int = 0,
    seed: int = 0,
    chunk_size: int | None = None,
    device: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    progress: bool = True,
    client=None,
) -> DocumentsSummary:
    """Classify ``inputs`` and write each image's top-K labels to the store ``out``.

    Args:
        inputs: image files, folders (searched recursively) and list files.
        out: the documents store (a Zarr directory). If it exists with the same
            settings the run resumes; with other settings it is refused unless
            ``overwrite``.
        model, weights, device: the classifier (see :func:`cwox.core.models.load_model`).
        rule: the K rule (default: top 5). It is recorded in the store (``rule``),
            with its ``min_k`` (rows with fewer labels are kept in the store but left
            out of :meth:`~cwox.store.documents.Documents.label_matrix`); a resume with
            another rule is refused, naming what changed.
        batch_size: images per forward pass (default: per device).
        workers: LocalCluster worker processes (ignored with ``scheduler``/``client``).
        scheduler: address of an existing Dask scheduler, e.g. ``tcp://10.0.0.5:8786``.
        augment: extra seeded random views per image (0: the image only).
        seed: seed of the augmentations.
        chunk_size: rows per chunk/task (default: :func:`default_chunk_size`).
        max_pixels: refuse images above this many pixels.
        client: an existing :class:`distributed.Client` to use instead.

    Returns:
        a :class:`DocumentsSummary`; failures are listed there and in the store.
    """
    t0 = time.perf_counter()
    rule = rule or TopKRule()
    if augment < 0:
        raise ValueError(f"--augment must be >= 0, got {augment}")
    paths = collect_inputs(inputs)
    if not paths:
        raise ValueError("no input images found")
    paths = [str(Path(p).resolve()) if Path(p).exists() else p for p in paths]
    model_key = check_model_args(model, weights)  # refuse bad arguments before starting workers
    views = 1 + augment
    n_docs = len(paths) * views
    chunk = chunk_size or default_chunk_size(n_docs)
    spec_threads = None if (scheduler or client) else LOCAL_TORCH_THREADS
    spec = ModelSpec(model, str(weights) if weights else None, device, spec_threads)
    out = str(Path(out).resolve())
    expected = {
        "model": model_key,
        "weights": spec.weights,
        "rule": rule.describe(),
        "augment": augment,
        "seed": seed,
        "inputs_digest": inputs_digest(paths),
        "views_per_image": views,
    }
    existing = _existing_store(out)  # refuses anything that is not a documents store
    if overwrite:
        existing = None  # replaced below by create_documents, which checks again
    if existing is not None:
        change = input_change(existing, paths)
        if change:
            raise StoreMismatch(
                f"the inputs differ from those {out} was made for: {change}; give the same inputs "
                "to resume it, or another --out (or --overwrite to start it again) for the new set"
            )
        check_same_run(existing, expected)

    with _maybe_client(client, scheduler, workers) as cl:
        info = cl.submit(model_info, spec, pure=False).result()
        if existing is not None:
            check_same_run(existing, {"class_names": info["class_names"]})
            g = existing
        else:
            attrs = {**expected, "class_names": info["class_names"], "cwox_version": __version__}
            width = rule.width_for(len(info["class_names"]))
            g = create_documents(out, paths, views=views, width=width, chunk_size=chunk, attrs=attrs)
        done = g["done"][:]
        todo = [int(c) for c in np.flatnonzero(~done)]
        tasks = [ChunkTask(out, c, spec, rule, batch_size, seed, max_pixels) for c in todo]
        retry = _failed_rows(g, done)  # rows of done chunks that failed: tried again, alone
        retried = {str(p) for p in g["path"].get_coordinate_selection(np.concatenate(
            [np.asarray(r) for r in retry.values()])).tolist()} if retry else set()
        tasks += [ChunkTask(out, c, spec, rule, batch_size, seed, max_pixels, rows=rows)
                  for c, rows in retry.items()]
        failed_chunks: list[tuple[int, str]] = []
        rows_done = 0
        size = int(g.attrs["chunk_size"])
        with tqdm(
            total=sum(min(size, n_docs - c * size) for c in todo) + sum(len(r) for r in retry.values()),
            unit="doc",
            desc="documents",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            from distributed import as_completed

            futures = cl.map(process_chunk, tasks, pure=False)
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                    rows_done += res.rows
                    bar.update(res.rows)
                except Exception as exc:  # noqa: BLE001 - report, keep the other chunks
                    task = tasks[futures.index(fut)]
                    failed_chunks.append((task.chunk, f"{type(exc).__name__}: {exc}"))
                    bar.update(len(task.rows) if task.rows is not None else min(size, n_docs - task.chunk * size))
    docs = open_documents(out)
    failures = docs.failures()
    still = {p for p, _ in failures}
    return DocumentsSummary(
        store=out,
        n_images=len(paths),
        n_documents=n_docs,
        chunks_total=len(done),
        chunks_run=len(todo) - sum(1 for c, _ in failed_chunks if c in todo),
        chunks_skipped=int(done.sum()),
        seconds=time.perf_counter() - t0,
        failed_images=failures,
        failed_chunks=sorted(failed_chunks),
        documents_run=rows_done,
        retried_images=len(retried),
        fixed_images=len(retried - still),
    )


def _failed_rows(g: zarr.Group, done: np.ndarray) -> dict[int, tuple[int, ...]]:
    """``{chunk: rows}`` of the rows an earlier run could not use, in chunks it finished.

    A rerun tries them again (the user may have fixed the file) and only them; rows
    of chunks not yet done are computed with their chunk anyway."""
    size = int(g.attrs["chunk_size"])
    bad = np.flatnonzero(g["error"][:] != "")
    out: dict[int, list[int]] = {}
    for row in bad.tolist():
        chunk = row // size
        if done[chunk]:
            out.setdefault(chunk, []).append(row)
    return {c: tuple(rows) for c, rows in out.items()}


@contextmanager
def _maybe_client(client, scheduler: str | None, workers: int | None) -> Iterator:
    if client is not None:
        yield client
    else:
        with dask_client(scheduler, workers) as c:
            yield c


def _existing_store(out: str) -> zarr.Group | None:
    """The documents store at ``out`` opened for resuming, None if there is none.

    Anything at ``out`` that is not a documents store cwox wrote (a folder of photos,
    a tree store) raises :class:`~cwox.store.ownership.NotOurStoreError`, with or
    without ``overwrite``: cwox never deletes or writes into it.
    """
    if check_replaceable(out, DOCUMENTS) != "store":
        return None
    try:
        g = zarr.open_group(out, mode="r+")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for damaged stores
        raise ValueError(f"{out} is a damaged documents store ({exc}); choose another --out") from exc
    if g.attrs.get("format") != FORMAT:  # pragma: no cover - check_replaceable read the same marker
        raise ValueError(f"{out} is not a cwox documents store; choose another --out")
    return g
