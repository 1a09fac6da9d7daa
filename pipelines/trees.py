"""Fit a latent tree on a documents store and save it as a tree-store version.

CWOX Algorithm 1, offline phase, step 2: "run HLTA on the documents to get a latent
tree T". The CLI's ``cwox fit-tree`` and the nightly job both call :func:`fit_tree`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cwox.hlta import HLTA
from cwox.store.documents import open_documents
from cwox.store.trees import save_tree


@dataclass
class FitResult:
    """What :func:`fit_tree` produced."""

    version: str
    estimator: HLTA
    n_documents: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def n_latents(self) -> int:
        return sum(1 for _, d in self.estimator.tree_.nodes(data=True) if d.get("level", 0) >= 1)


def fit_tree(
    docs: str | os.PathLike,
    out: str | os.PathLike,
    *,
    publish: bool = False,
    train_rows: np.ndarray | None = None,
    extra_meta: dict[str, Any] | None = None,
    **hlta_params: Any,
) -> FitResult:
    """Fit :class:`hlta.HLTA` on the documents store ``docs``; save a version to ``out``.

    Args:
        docs: a documents store written by :func:`cwox.offline.documents.build_documents`.
        out: the tree store (created on first use); each call adds a version.
        publish: atomically point the store's ``latest`` at the new version.
        train_rows: fit on these rows only (a boolean mask over the usable documents,
            :meth:`~cwox.store.documents.Documents.label_matrix`); the nightly job holds
            out the others to compare trees on.
        extra_meta: more provenance to record with the version.
        hlta_params: passed to :class:`hlta.HLTA` (``ud_threshold``, ``max_island``,
            ``max_top``, ``random_state``...).

    Raises:
        ValueError: the store holds no usable documents, or ``publish`` was asked for a
            store whose run has not finished (a half-finished run must not go online).
    """
    t0 = time.perf_counter()
    try:
        store = open_documents(docs)
        X = store.label_matrix()
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        raise ValueError(f"cannot read documents store {str(docs)!r}: {exc}") from exc
    warnings = []
    if not store.complete:
        done = store.group["done"][:]
        if publish:  # online readers would switch to a tree of part of the data
            raise ValueError(
                f"documents store {str(docs)!r} is not complete ({int(done.sum())} of {done.size} chunks "
                "done); rerun `cwox documents` with the same inputs to finish it before publishing, "
                "or fit without --publish"
            )
        warnings.append(f"{docs} is not complete; fitted on the documents computed so far")
    if train_rows is not None:
        X = X[np.asarray(train_rows, dtype=bool)]
    if X.shape[0] == 0:
        raise ValueError(f"documents store {str(docs)!r} holds no usable documents")
    est = HLTA(**hlta_params).fit(X, class_names=store.class_names)
    meta = {
        "model": store.model,
        "documents": str(docs),
        "documents_created": store.attrs.get("created"),
        "rule": store.attrs.get("rule"),
        "hlta_params": est.get_params(),
        "loglik": float(est.loglik_),
        "bic": float(est.bic_),
        "n_params": int(est.n_params_),
        "n_documents": int(est.n_documents_),
        **(extra_meta or {}),
    }
    version = save_tree(est.tree_, out, meta=meta, publish=publish)
    return FitResult(version, est, int(X.shape[0]), time.perf_counter() - t0, warnings)
