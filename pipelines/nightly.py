"""The nightly offline job: documents -> tree -> quality gate -> publish -> retention.

CWOX Algorithm 1's offline phase, run as an operator schedules it:

1. **documents** — the classifier over the inputs on Dask (:func:`build_documents`):
   resumable (a job killed half-way resumes where it stopped), failed images of an
   earlier run retried. A store made for other inputs or settings is a finished
   night's cache: it is rebuilt (it is a cwox documents store; nothing else is ever
   replaced), and the summary says why.
2. **fit** — PEM-HLTA on the documents of all photos but a held-out share, chosen
   per photo by a hash of its path so that it stays held out night after night
   (:func:`cwox.pipelines.gate.split_by_photo`); saved as a new, unpublished version.
3. **gate** — the new tree against the published one on the held-out documents
   (:func:`cwox.pipelines.gate.quality_gate`). A clearly worse tree stays saved but
   unpublished, unless ``force``.
4. **publish** — the pointer moves atomically, after the version is verified whole.
5. **retention** — all but the ``keep`` newest versions are pruned (never the published
   one, nor the one a rollback would go back to).

Every run ends in a :class:`NightlyResult` with an operator's exit code and a JSON
summary (:meth:`NightlyResult.summary`), also kept in the tree store as
``TREES/runs/<time>.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cwox.offline.documents import DocumentsSummary, build_documents
from cwox.pipelines.gate import (
    DEFAULT_TOLERANCE,
    SPLIT_RULE,
    GateResult,
    quality_gate,
    split_by_photo,
)
from cwox.pipelines.trees import FitResult, fit_tree, read_documents
from cwox.store._atomic import atomic_write_text
from cwox.store.documents import StoreMismatch
from cwox.store.ownership import TREES, store_kind
from cwox.store.trees import (
    TreeStoreError,
    VersionNotFoundError,
    load_tree,
    prune,
    publish,
    published_version,
    runs_dir,
)

from cwox.core.models import DEFAULT_MODEL
from cwox.core.topk import TopKRule

#: Exit codes an operator can act on.
EXIT_PUBLISHED = 0  # a new tree is online (or the gate let it through with --force)
EXIT_FAILED_ITEMS = 1  # finished, but some images or chunks failed: see the summary, rerun
EXIT_NOTHING_RAN = 2  # set-up error: nothing was computed
EXIT_REFUSED = 3  # the gate kept the published tree; the new one is saved, unpublished


@dataclass
class NightlyResult:
    """What one nightly run did; :attr:`exit_code` sums it up for a scheduler."""

    status: str
    exit_code: int
    message: str
    documents: DocumentsSummary | None = None
    fit: FitResult | None = None
    gate: GateResult | None = None
    published: str | None = None
    previous: str | None = None
    pruned: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started_at: str = ""
    summary_path: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_PUBLISHED

    def summary(self) -> dict[str, Any]:
        """The run as plain JSON: status, exit code, stage timings, documents, version, gate."""
        docs = self.documents
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "message": self.message,
            "started_at": self.started_at,
            "seconds": round(sum(self.timings.values()), 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "documents": None if docs is None else {
                "store": docs.store, "images": docs.n_images, "documents": docs.n_documents,
                "computed": docs.documents_run, "chunks_run": docs.chunks_run,
                "chunks_skipped": docs.chunks_skipped, "retried_images": docs.retried_images,
                "fixed_images": docs.fixed_images,
                "failed_images": [{"path": p, "reason": r} for p, r in docs.failed_images],
                "failed_chunks": [{"chunk": c, "reason": r} for c, r in docs.failed_chunks],
            },
            "version": None if self.fit is None else self.fit.version,
            "fit": None if self.fit is None else {
                "documents": self.fit.n_documents, "latents": self.fit.n_latents,
                "loglik": float(self.fit.estimator.loglik_), "bic": float(self.fit.estimator.bic_),
                "seconds": round(self.fit.seconds, 3),
            },
            "gate": None if self.gate is None else self.gate.as_dict(),
            "published": self.published,
            "previous": self.previous,
            "pruned": self.pruned,
            "notes": self.notes,
        }


def nightly(
    inputs: Sequence[str | os.PathLike],
    docs: str | os.PathLike,
    trees: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    rule: TopKRule | None = None,
    augment: int = 0,
    seed: int = 0,
    scheduler: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    chunk_size: int | None = None,
    keep: int = 5,
    heldout: float = 0.2,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    progress: bool = True,
    hlta_params: dict[str, Any] | None = None,
    client=None,
) -> NightlyResult:
    """Run the nightly job (see the module doc); never raises for a set-up error, which
    ends in ``status="nothing ran"`` and exit code 2 instead. ``KeyboardInterrupt`` passes."""
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    timings: dict[str, float] = {}
    notes: list[str] = []

    def done(status: str, code: int, message: str, **kw: Any) -> NightlyResult:
        res = NightlyResult(status, code, message, timings=timings, notes=notes, started_at=started, **kw)
        res.summary_path = _write_summary(trees, res)
        return res

    tp = Path(trees)  # a --trees path that is no tree store (a folder of the user's): refuse before any work
    if tp.exists() and (not tp.is_dir() or (any(tp.iterdir()) and store_kind(tp) != TREES)):
        return done("nothing ran", EXIT_NOTHING_RAN,
                    f"--trees {tp} exists and is not a cwox tree store; cwox does not write into it")

    # 1. documents -------------------------------------------------------------------
    t = time.perf_counter()
    kwargs = dict(model=model, weights=weights, rule=rule, augment=augment, seed=seed, scheduler=scheduler,
                  workers=workers, device=device, batch_size=batch_size, chunk_size=chunk_size,
                  progress=progress, client=client)
    try:
        try:
            summary = build_documents(inputs, docs, **kwargs)
        except StoreMismatch as exc:  # an earlier night's store for other inputs or settings
            if (Path(docs) / "reference_bank").exists():  # costly to rebuild, not the nightly's own
                raise ValueError(f"{exc}; it also holds a reference bank, which a rebuild would "
                                 "delete: give the nightly job a --docs of its own") from exc
            notes.append(f"documents store rebuilt: {exc}")
            summary = build_documents(inputs, docs, overwrite=True, **kwargs)
    except (ValueError, ConnectionError, FileNotFoundError, OSError) as exc:
        timings["documents"] = time.perf_counter() - t
        return done("nothing ran", EXIT_NOTHING_RAN, f"documents: {exc}")
    timings["documents"] = time.perf_counter() - t
    if summary.failed_chunks:
        return done("documents incomplete", EXIT_FAILED_ITEMS,
                    f"{len(summary.failed_chunks)} chunk(s) failed; nothing fitted: rerun to finish them",
                    documents=summary)

    # 2. fit on the training photos ----------------------------------------------------
    t = time.perf_counter()
    try:
        _store, X_all, photos = read_documents(docs)  # the learner's rows and their photos
        photos = np.asarray([str(p) for p in photos.tolist()], dtype=str)
        held = np.zeros(len(photos), dtype=bool)
        if heldout > 0:
            try:
                held = split_by_photo(photos, test_fraction=heldout, random_state=seed)
            except ValueError as exc:  # e.g. a single photo: nothing to hold out
                notes.append(f"no held-out documents ({exc}); the gate has nothing to compare on")
        split = {"rule": SPLIT_RULE, "fraction": heldout, "seed": seed}
        meta = {"heldout": {**split, "photos": int(len(set(photos[held]))), "documents": int(held.sum())}}
        fit = fit_tree(docs, trees, publish=False, train_rows=~held, extra_meta=meta,
                       **{"random_state": seed, **(hlta_params or {})})
    except (ValueError, TreeStoreError, OSError) as exc:
        timings["fit"] = time.perf_counter() - t
        return done("nothing ran" if "no usable" in str(exc) or isinstance(exc, TreeStoreError)
                    else "fit failed", EXIT_NOTHING_RAN, f"fit: {exc}", documents=summary)
    timings["fit"] = time.perf_counter() - t

    # 3. gate --------------------------------------------------------------------------
    t = time.perf_counter()
    previous = published_version(trees)
    try:
        old = load_tree(trees) if previous else None
    except (TreeStoreError, VersionNotFoundError) as exc:
        notes.append(f"the published version {previous} does not load ({exc}); not compared")
        old = None
    if old is not None:
        theirs = (old.graph.get("meta") or {}).get("heldout") or {}
        if {k: theirs.get(k) for k in split} != split:
            notes.append(f"the published version {previous} was fitted with another held-out split "
                         f"({theirs or 'none recorded'}); it may have seen held-out photos, which favours it")
    gate = quality_gate(fit.estimator.tree_, old, X_all[held], tolerance=tolerance)
    timings["gate"] = time.perf_counter() - t

    # 4. publish -----------------------------------------------------------------------
    t = time.perf_counter()
    if not gate.passed and not force:
        timings["publish"] = time.perf_counter() - t
        timings["retention"], pruned = _retention(trees, keep)
        return done("refused by the gate", EXIT_REFUSED,
                    f"{fit.version} saved but not published ({previous} stays online): {gate.reason}",
                    documents=summary, fit=fit, gate=gate, previous=previous, pruned=pruned)
    if not gate.passed:
        notes.append(f"published despite the gate (--force): {gate.reason}")
    try:
        published = publish(trees, fit.version)
    except TreeStoreError as exc:
        timings["publish"] = time.perf_counter() - t
        return done("publish failed", EXIT_FAILED_ITEMS, f"publish: {exc}", documents=summary, fit=fit,
                    gate=gate, previous=previous)
    timings["publish"] = time.perf_counter() - t

    # 5. retention ---------------------------------------------------------------------
    timings["retention"], pruned = _retention(trees, keep)
    code = EXIT_FAILED_ITEMS if summary.failed_images else EXIT_PUBLISHED
    failed = f"; {len(summary.failed_images)} image(s) failed (listed)" if summary.failed_images else ""
    return done("published", code, f"published {published} (was {previous or 'none'}){failed}",
                documents=summary, fit=fit, gate=gate, published=published, previous=previous,
                pruned=pruned)


def _retention(trees: str | os.PathLike, keep: int) -> tuple[float, list[str]]:
    t = time.perf_counter()
    removed = prune(trees, keep=keep)
    return time.perf_counter() - t, removed


def _write_summary(trees: str | os.PathLike, result: NightlyResult) -> str | None:
    """Keep the run's summary as ``TREES/runs/<started>.json`` (when the tree store exists)."""
    try:
        folder = runs_dir(trees)
    except (TreeStoreError, OSError):
        return None
    stamp = result.started_at.replace(":", "").replace("+0000", "Z")
    path = Path(folder) / f"{stamp}-{os.getpid()}.json"
    atomic_write_text(path, json.dumps(result.summary(), indent=2) + "\n")
    return str(path)
