"""The nightly offline job: documents -> tree -> a new published version.

Runs the classifier over a training set on Dask (resumable: a job killed half-way
resumes where it stopped when rerun with the same settings), fits the latent tree,
saves it as a new version of the tree store and publishes it atomically, so that
online readers switch to it in one step; old versions beyond ``keep`` are pruned.
A run with failed images still fits and publishes (on the images that worked) and
reports them; a run with failed chunks does not publish, since a rerun will finish it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cwox.offline.documents import DocumentsSummary, build_documents
from cwox.pipelines.trees import FitResult, fit_tree
from cwox.store.trees import prune

from cwox.core.models import DEFAULT_MODEL
from cwox.core.topk import TopKRule


@dataclass
class NightlyResult:
    documents: DocumentsSummary
    fit: FitResult | None
    published: bool
    pruned: list[str]

    @property
    def ok(self) -> bool:
        return self.documents.ok and self.published


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
    keep: int = 5,
    progress: bool = True,
    hlta_params: dict[str, Any] | None = None,
) -> NightlyResult:
    """Build documents for ``inputs`` into ``docs``, fit, save to ``trees`` and publish."""
    summary = build_documents(
        inputs, docs, model=model, weights=weights, rule=rule, augment=augment, seed=seed,
        scheduler=scheduler, workers=workers, progress=progress,
    )
    if summary.failed_chunks:
        return NightlyResult(summary, None, False, [])
    fit = fit_tree(docs, trees, publish=True, **{"random_state": seed, **(hlta_params or {})})
    return NightlyResult(summary, fit, True, prune(trees, keep=keep))
