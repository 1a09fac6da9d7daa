"""The documents store: each image's top-K labels, in a chunked Zarr group.

Layout of ``DOCS.zarr`` (Zarr v3, one row per document; a document is one view of
one image — the image itself is view 0, ``--augment N`` adds views 1..N):

========  =============  =========================================================
array     dtype, shape   meaning
========  =============  =========================================================
labels    int32 (n, W)   top-K class ids, most probable first, padded with -1
probs     float32 (n, W) their softmax probabilities, padded with 0
k         int16 (n,)     K of each row (0 for a failed image)
path      str (n,)       the image file
view      int16 (n,)     0 for the image itself, 1..N for augmented views
error     str (n,)       "" or why the image could not be used
done      bool (c,)      one flag per row chunk, set after the chunk is written
========  =============  =========================================================

Attributes name the model, the class names, the K rule (``rule``, see
:meth:`cwox.core.topk.TopKRule.describe`; its ``min_k`` says which rows make the tree
learner's corpus), the augmentation, the chunking and the creation time. Row chunks are the unit of work and of resumption:
a chunk is either absent (``done`` false) or complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr
from cwox.store.ownership import DOCUMENTS, DOCUMENTS_FORMAT, remove_store

FORMAT = DOCUMENTS_FORMAT


class StoreMismatch(ValueError):
    """An existing store was made with other settings than the ones asked for now."""


def inputs_digest(paths: Sequence[str]) -> str:
    """A short fingerprint of the ordered input list (to detect a changed input set)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(p))
        h.update(b"\0")
    return h.hexdigest()[:16]


def create_documents(
    path: str | os.PathLike,
    image_paths: Sequence[str],
    *,
    views: int,
    width: int,
    chunk_size: int,
    attrs: dict[str, Any],
) -> zarr.Group:
    """Create an empty documents store for ``image_paths`` x ``views`` rows.

    An existing documents store at ``path`` is replaced; anything else there (a folder
    with files of its own, another kind of store) is refused with
    :class:`~cwox.store.ownership.NotOurStoreError` and left untouched.
    """
    n_img = len(image_paths)
    n = n_img * views
    if n == 0:
        raise ValueError("no input images")
    remove_store(path, DOCUMENTS)
    g = zarr.open_group(str(path), mode="w-")  # nothing is there now: never let zarr delete
    rows = (chunk_size,)
    g.create_array("labels", shape=(n, width), dtype="int32", chunks=(chunk_size, width), fill_value=-1)
    g.create_array("probs", shape=(n, width), dtype="float32", chunks=(chunk_size, width), fill_value=0.0)
    g.create_array("k", shape=(n,), dtype="int16", chunks=rows, fill_value=0)
    g.create_array("path", shape=(n,), dtype=str, chunks=rows)
    g.create_array("view", shape=(n,), dtype="int16", chunks=rows, fill_value=0)
    g.create_array("error", shape=(n,), dtype=str, chunks=rows)
    n_chunks = -(-n // chunk_size)
    g.create_array("done", shape=(n_chunks,), dtype=bool, chunks=(1,), fill_value=False)
    g["path"][:] = np.repeat(np.asarray(image_paths, dtype=str), views)
    g["view"][:] = np.tile(np.arange(views, dtype=np.int16), n_img)
    g.attrs.update(
        {
            **attrs,
            "format": FORMAT,
            "n_images": n_img,
            "n_documents": n,
            "views_per_image": views,
            "width": width,
            "chunk_size": chunk_size,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    return g


def check_same_run(g: zarr.Group, expected: dict[str, Any]) -> None:
    """Raise :class:`StoreMismatch` naming every setting that differs from ``expected``."""
    diffs = []
    for key, want in expected.items():
        have = g.attrs.get(key)
        if json.dumps(have, sort_keys=True) != json.dumps(want, sort_keys=True):
            diffs.append(f"{key}: store has {have!r}, asked for {want!r}")
    if diffs:
        raise StoreMismatch(
            "the existing store was made with other settings ("
            + "; ".join(diffs)
            + "); use another --out or --overwrite"
        )


def input_change(g: zarr.Group, paths: Sequence[str]) -> str | None:
    """What differs between the images the store ``g`` was made for and ``paths``, in
    words (``2 images added (a.jpg, b.jpg); 1 removed (c.jpg)``); None when they are the same."""
    views = int(g.attrs.get("views_per_image", 1)) or 1
    stored = [str(p) for p in g["path"][::views].tolist()]
    if stored == list(paths):
        return None
    have, want = set(stored), set(paths)
    parts = []

    def some(items: list[str]) -> str:
        names = [os.path.basename(p) or p for p in items]
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    added = [p for p in paths if p not in have]
    removed = [p for p in stored if p not in want]
    if added:
        parts.append(f"{len(added)} image(s) added ({some(added)})")
    if removed:
        parts.append(f"{len(removed)} image(s) removed ({some(removed)})")
    if not parts:
        parts.append("the same images in another order")
    return "; ".join(parts)


@dataclass
class Documents:
    """Read access to a documents store (lazy: arrays are read when asked for)."""

    group: zarr.Group

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def class_names(self) -> list[str]:
        return list(self.group.attrs["class_names"])

    @property
    def model(self) -> str:
        return str(self.group.attrs["model"])

    @property
    def n_documents(self) -> int:
        return int(self.group["k"].shape[0])

    @property
    def complete(self) -> bool:
        """True when every chunk has been computed."""
        return bool(np.all(self.group["done"][:]))

    def chunk_rows(self, chunk: int) -> slice:
        size = int(self.group.attrs["chunk_size"])
        return slice(chunk * size, min((chunk + 1) * size, self.n_documents))

    def labels(self) -> np.ndarray:
        return self.group["labels"][:]

    def probs(self) -> np.ndarray:
        return self.group["probs"][:]

    def k(self) -> np.ndarray:
        return self.group["k"][:]

    def paths(self) -> np.ndarray:
        return self.group["path"][:]

    def errors(self) -> np.ndarray:
        return self.group["error"][:]

    def failures(self) -> list[tuple[str, str]]:
        """(image path, reason) of every image that could not be used, once per image."""
        err = self.errors()
        bad = np.flatnonzero(err != "")
        paths = self.paths()
        seen: dict[str, str] = {}
        for i in bad:
            seen.setdefault(str(paths[i]), str(err[i]))
        return list(seen.items())

    @property
    def min_k(self) -> int:
        """Rows with fewer labels are not documents of the learner's corpus (the rule's
        ``min_k``; 1 for stores written without one)."""
        return int((self.group.attrs.get("rule") or {}).get("min_k", 1))

    def kept_rows(self, min_k: int | None = None) -> np.ndarray:
        """Indices of the rows that make the learner's corpus: computed, not failed,
        and with at least ``min_k`` labels (default: the store's rule)."""
        k = self.k().astype(np.int64)
        return np.flatnonzero(k >= max(1, self.min_k if min_k is None else int(min_k)))

    def label_matrix(self, valid_only: bool = True, min_k: int | None = None) -> sp.csr_matrix:
        """The binary documents x labels matrix (CSR, uint8) the tree learner takes.

        When ``valid_only`` (the default) the rows are :meth:`kept_rows`: rows of
        failed images (K = 0), of chunks not yet computed and with fewer than ``min_k``
        labels (default: the store's rule, e.g. the reference's K = 1 rows) are
        dropped; otherwise every row is kept, failed ones as empty rows.
        """
        labels = self.labels()
        k = self.k().astype(np.int64)
        if valid_only:
            keep = self.kept_rows(min_k)
            labels, k = labels[keep], k[keep]
        width = labels.shape[1]
        mask = np.arange(width)[None, :] < k[:, None]
        indices = labels[mask].astype(np.int32)
        indptr = np.concatenate([[0], np.cumsum(k)])
        data = np.ones(indices.shape[0], dtype=np.uint8)
        m = sp.csr_matrix((data, indices, indptr), shape=(labels.shape[0], len(self.class_names)))
        m.sort_indices()
        return m


def derive_documents(src: Documents, out: str | os.PathLike, rule) -> Documents:
    """A new store at ``out`` with ``src``'s rows under a capped cumulative ``rule``
    (a :class:`cwox.core.topk.TopKRule`), computed from ``src``'s stored labels.

    A cumulative rule stores each row's labels sorted by probability, so the same
    rule with a lower cap keeps the first ``min(K, cap)`` of them: exactly what the
    documents pipeline would have written with that rule (same classifier, same
    views). ``src`` must be complete and use a cumulative rule with the same
    threshold and no lower cap. The new store records ``derived_from``.
    """
    have = src.attrs.get("rule") or {}
    if not src.complete:
        raise ValueError("derive documents from a complete store only")
    if have.get("kind") != "cum" or rule.cum is None or float(have["cum"]) != float(rule.cum):
        raise ValueError(f"cannot derive rule {rule.describe()} from a store made with {have}")
    if rule.max_k is None or (have.get("max_k") is not None and rule.max_k > int(have["max_k"])):
        raise ValueError(f"cannot derive rule {rule.describe()} (a cap above the store's) from {have}")
    attrs = {key: value for key, value in src.attrs.items()
             if key not in ("format", "n_images", "n_documents", "views_per_image", "width", "chunk_size", "created")}
    attrs["rule"] = rule.describe()
    attrs["derived_from"] = {"store": str(Path(str(src.group.store.root)).resolve())
                             if hasattr(src.group.store, "root") else None, "rule": have}
    views = int(src.attrs["views_per_image"])
    width = min(int(rule.max_k), int(src.attrs["width"]))
    paths = src.paths()[::views]
    g = create_documents(out, [str(p) for p in paths], views=views, width=width,
                         chunk_size=int(src.attrs["chunk_size"]), attrs=attrs)
    g["labels"][:] = src.labels()[:, :width]
    g["probs"][:] = src.probs()[:, :width]
    g["k"][:] = np.minimum(src.k(), width).astype(np.int16)
    g["error"][:] = src.errors()
    g["done"][:] = True
    return Documents(g)


def open_documents(path: str | os.PathLike) -> Documents:
    """Open an existing documents store for reading; a clear error if it is not one."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no documents store at {p}")
    try:
        g = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for non-stores
        raise ValueError(f"{p} is not a Zarr group: {exc}") from exc
    if g.attrs.get("format") != FORMAT:
        raise ValueError(f"{p} is not a cwox documents store (format {g.attrs.get('format')!r})")
    return Documents(g)
