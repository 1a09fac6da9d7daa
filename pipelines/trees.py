"""Fit a latent tree on a documents store and save it as a tree-store version; measure a tree.

CWOX Algorithm 1, offline phase, step 2: "run HLTA on the documents to get a latent
tree T". The CLI's ``cwox fit-tree`` and the nightly job both call :func:`fit_tree`.
:func:`quality_report` fits on the documents of most photos and scores the tree on
the rest (:mod:`cwox.hlta.quality`); :func:`heldout_documents` is that split, for a
quality gate that scores a published tree.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from cwox.hlta import HLTA
from cwox.hlta.quality import TreeQuality, split_by_photo, tree_quality
from cwox.store.documents import Documents, open_documents
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


def read_documents(docs: str | os.PathLike | Documents) -> tuple[Documents, sp.csr_matrix, np.ndarray]:
    """The store, its learner corpus (:meth:`Documents.label_matrix`) and each corpus
    row's source photo; ``ValueError`` with the store named when it cannot be read or
    holds no usable document."""
    try:
        store = docs if isinstance(docs, Documents) else open_documents(docs)
        rows = store.kept_rows()
        X = store.label_matrix()
        photos = store.paths()[rows]
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        raise ValueError(f"cannot read documents store {str(docs)!r}: {exc}") from exc
    if X.shape[0] == 0:
        raise ValueError(f"documents store {str(docs)!r} holds no usable documents")
    return store, X, photos


def heldout_documents(
    docs: str | os.PathLike | Documents, test_fraction: float = 0.2, random_state=0,
) -> tuple[sp.csr_matrix, sp.csr_matrix, list[str]]:
    """(training documents, held-out documents, class names) of a store, split by
    source photo (:func:`cwox.hlta.quality.split_by_photo`): the split a quality gate
    uses to score a tree fitted on the training side."""
    store, X, photos = read_documents(docs)
    held = split_by_photo(photos, test_fraction, random_state)
    return X[~held], X[held], store.class_names


def quality_report(
    docs: str | os.PathLike | Documents, test_fraction: float = 0.2, random_state=0, **hlta_params: Any,
) -> TreeQuality:
    """Fit :class:`HLTA` (``hlta_params``) on the training photos' documents and score it
    on the held-out photos' (:func:`cwox.hlta.quality.tree_quality`)."""
    train, test, names = heldout_documents(docs, test_fraction, random_state)
    params = {"random_state": random_state, **hlta_params}
    est = HLTA(**params).fit(train, class_names=names)
    return tree_quality(est.tree_, test, random_state=random_state)


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
            Its learner corpus follows the store's rule (rows with fewer than its
            ``min_k`` labels are left out).
        out: the tree store (created on first use); each call adds a version.
        publish: atomically point the store's ``latest`` at the new version.
        train_rows: fit on these rows only (a boolean mask over the usable documents,
            :meth:`~cwox.store.documents.Documents.label_matrix`); the nightly job holds
            out the others to compare trees on.
        extra_meta: more provenance to record with the version.
        hlta_params: passed to :class:`hlta.HLTA` (``ud_threshold``, ``ct_threshold``,
            ``bic_batch``, ``max_island``, ``max_top``, ``random_state``...).

    Raises:
        ValueError: the store cannot be read or holds no usable documents, or ``publish`` was asked for a
            store whose run has not finished (a half-finished run must not go online).
    """
    t0 = time.perf_counter()
    store, X, _ = read_documents(docs)
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
