"""The FG-VCE reference bank: candidate features of correctly classified images, in Zarr.

FG-VCE (Zhang, Yin, Lee; Sec. 3.2) replaces the most contributive feature of a
misclassified image by the most similar *candidate feature* taken from a set
``U`` of correctly classified reference images (20 per class in the paper).
Only the top-``m`` positions of each reference image by its saliency-partition
Shapley value (Eq. 1-4, for its own class) are kept: the refined set
``S~_U = {Top_m(s_k)}``. That set is computed once, offline, and stored here.

Layout of a bank group (Zarr v3), one row per candidate feature:

============  ================  ===============================================
array         dtype, shape      meaning
============  ================  ===============================================
features      float32 (N, C)    the feature vector ``h_U[:, i, j]`` at ``layer``
labels        int32 (N,)        class of its reference image
shapley       float32 (N,)      its Shapley value ``s[i, j]`` for that class
positions     int16 (N, 2)      (row, column) on the feature grid
image         int32 (N,)        row of its reference image in the image arrays
image_paths   str (n,)          the reference images
image_labels  int32 (n,)        their classes
image_probs   float32 (n,)      the model's probability of that class
============  ================  ===============================================

Attributes: ``format``, ``model``, ``layer``, ``grid`` (feature rows, columns),
``channels``, ``per_class``, ``top_m``, ``sigma``, ``label_source`` (``"given"``:
the images came with labels and only correctly classified ones were kept;
``"prediction"``: no labels, a confident prediction, probability at least
``min_confidence``, stands in for the label), ``min_confidence``, ``n_classes``
and ``created``.

Where it lives: beside the documents, as the ``reference_bank`` group of a
documents store (``DOCS.zarr/reference_bank/``), or as a store of its own. It is
written to a staging directory and renamed into place, so a reader never sees a
half-written bank.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from cwox.store._atomic import fsync_dir, fsync_tree
from cwox.store.ownership import (
    DOCUMENTS,
    REFERENCE_BANK,
    REFERENCE_BANK_FORMAT,
    NotOurStoreError,
    check_replaceable,
    store_kind,
)

FORMAT = REFERENCE_BANK_FORMAT
#: The group name of a bank kept inside a documents store.
DEFAULT_GROUP = "reference_bank"

__all__ = ["DEFAULT_GROUP", "FORMAT", "ReferenceBank", "load_reference_bank", "save_reference_bank"]


@dataclass
class ReferenceBank:
    """Candidate features for FG-VCE's feature replacement (numpy arrays, see the module doc).

    Attributes:
        features: ``N x C`` candidate feature vectors.
        labels: ``N`` class of each candidate's reference image.
        shapley: ``N`` Shapley value of each candidate for its class.
        positions: ``N x 2`` (row, column) of each candidate on the feature grid.
        image: ``N`` index of each candidate's reference image.
        image_paths, image_labels, image_probs: one entry per reference image.
        model: the classifier's name; layer: the feature layer; grid: its (rows, cols).
        attrs: the other settings (per_class, top_m, sigma, label_source, ...).
    """

    features: np.ndarray
    labels: np.ndarray
    shapley: np.ndarray
    positions: np.ndarray
    image: np.ndarray
    image_paths: list[str]
    image_labels: np.ndarray
    image_probs: np.ndarray
    model: str
    layer: str
    grid: tuple[int, int]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int32)
        self.shapley = np.asarray(self.shapley, dtype=np.float32)
        self.positions = np.asarray(self.positions, dtype=np.int16).reshape(-1, 2)
        self.image = np.asarray(self.image, dtype=np.int32)
        self.image_labels = np.asarray(self.image_labels, dtype=np.int32)
        self.image_probs = np.asarray(self.image_probs, dtype=np.float32)
        self.image_paths = [str(p) for p in self.image_paths]
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        n = self.features.shape[0]
        if self.features.ndim != 2:
            raise ValueError(f"features must be N x C, got shape {self.features.shape}")
        for name in ("labels", "shapley", "positions", "image"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows, features have {n}")
        m = len(self.image_paths)
        if self.image_labels.shape[0] != m or self.image_probs.shape[0] != m:
            raise ValueError("image_paths, image_labels and image_probs must have one entry per image")
        if n and (self.image.min() < 0 or self.image.max() >= m):
            raise ValueError("candidate image indices point outside the reference images")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def channels(self) -> int:
        return int(self.features.shape[1])

    @property
    def classes(self) -> np.ndarray:
        """The classes that have at least one reference image, sorted."""
        return np.unique(self.image_labels)

    def per_class_counts(self) -> dict[int, int]:
        """Reference images per class."""
        ids, counts = np.unique(self.image_labels, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts)}

    def summary(self) -> dict[str, Any]:
        """A short JSON-able description (recorded in explainer settings)."""
        return {
            "model": self.model,
            "layer": self.layer,
            "grid": list(self.grid),
            "candidates": len(self),
            "images": len(self.image_paths),
            "classes": int(self.classes.size),
            **{k: self.attrs[k] for k in ("per_class", "top_m", "sigma", "label_source") if k in self.attrs},
        }


def _bank_path(store: str | os.PathLike, group: str | None) -> Path:
    root = Path(store)
    return root / group if group else root


def save_reference_bank(
    bank: ReferenceBank,
    store: str | os.PathLike,
    *,
    group: str | None = DEFAULT_GROUP,
    overwrite: bool = False,
) -> str:
    """Write ``bank`` to ``store/group`` (e.g. ``DOCS.zarr/reference_bank``) in one atomic step.

    Args:
        bank: the bank to write.
        store: a Zarr directory: a documents store to put the bank beside the
            documents, or a new path for a store of its own (created).
        group: the bank's group inside ``store``; None or "" writes the bank at
            the root of ``store`` itself (which must then not exist, or be a bank).
        overwrite: replace an existing bank (refused otherwise).

    Returns:
        the path of the bank group.
    """
    root = Path(store)
    target = _bank_path(store, group)
    if group:
        _check_holder(root, group)
        if not root.exists():
            zarr.open_group(str(root), mode="a")
    state = check_replaceable(target, REFERENCE_BANK, option="bank")  # refuses anything not a bank
    if state == "store" and not overwrite:
        raise FileExistsError(f"a reference bank already exists at {target}; pass overwrite=True")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    try:
        _write(bank, staging)
        fsync_tree(staging)
        if state != "absent":  # an empty folder or a bank: moved aside in one step, then deleted
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
        fsync_dir(target.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _check_holder(root: Path, group: str) -> None:
    """The folder a bank goes into as ``group``: absent, a documents store, or a Zarr
    group that holds nothing but that bank; anything else raises NotOurStoreError."""
    if not root.is_dir() or store_kind(root) == DOCUMENTS:
        check_replaceable(root, DOCUMENTS, option="store")  # absent is fine; a file is refused
        return
    entries = set(os.listdir(root)) - {"zarr.json", group}
    if not (root / "zarr.json").is_file() or any(not e.startswith(f".{group}.") for e in entries):
        raise NotOurStoreError(
            f"{root} is neither a cwox documents store nor a reference bank store"
            + (f" (it holds {', '.join(sorted(entries)[:4])})" if entries else "")
            + "; cwox does not write into it: choose another store"
        )


def _write(bank: ReferenceBank, path: Path) -> None:
    g = zarr.open_group(str(path), mode="w")
    n, c = bank.features.shape
    rows = max(1, min(n, 4096))
    g.create_array("features", shape=(n, c), dtype="float32", chunks=(rows, max(c, 1)))
    g.create_array("labels", shape=(n,), dtype="int32", chunks=(rows,))
    g.create_array("shapley", shape=(n,), dtype="float32", chunks=(rows,))
    g.create_array("positions", shape=(n, 2), dtype="int16", chunks=(rows, 2))
    g.create_array("image", shape=(n,), dtype="int32", chunks=(rows,))
    m = len(bank.image_paths)
    img_rows = max(1, m)
    g.create_array("image_paths", shape=(m,), dtype=str, chunks=(img_rows,))
    g.create_array("image_labels", shape=(m,), dtype="int32", chunks=(img_rows,))
    g.create_array("image_probs", shape=(m,), dtype="float32", chunks=(img_rows,))
    if n:
        g["features"][:] = bank.features
        g["labels"][:] = bank.labels
        g["shapley"][:] = bank.shapley
        g["positions"][:] = bank.positions
        g["image"][:] = bank.image
    if m:
        g["image_paths"][:] = np.asarray(bank.image_paths, dtype=str)
        g["image_labels"][:] = bank.image_labels
        g["image_probs"][:] = bank.image_probs
    g.attrs.update(
        {
            **bank.attrs,
            "format": FORMAT,
            "model": bank.model,
            "layer": bank.layer,
            "grid": list(bank.grid),
            "channels": int(c),
            "created": bank.attrs.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )


def _is_bank(path: Path) -> bool:
    try:
        return zarr.open_group(str(path), mode="r").attrs.get("format") == FORMAT
    except Exception:  # noqa: BLE001 - not a Zarr group at all
        return False


def load_reference_bank(store: str | os.PathLike, *, group: str | None = DEFAULT_GROUP) -> ReferenceBank:
    """Read a bank written by :func:`save_reference_bank`.

    ``store`` may be the bank group itself or a store holding it as ``group``
    (default ``reference_bank``, the place beside the documents).
    """
    root = Path(store)
    if not root.exists():
        raise FileNotFoundError(f"no reference bank at {root}")
    candidates = [root / group] if group else []
    candidates.append(root)
    for path in candidates:
        if path.exists() and _is_bank(path):
            return _read(zarr.open_group(str(path), mode="r"))
    where = f"{root / group} or {root}" if group else str(root)
    raise ValueError(f"no cwox reference bank (format {FORMAT}) at {where}")


def _read(g: zarr.Group) -> ReferenceBank:
    attrs = dict(g.attrs)
    known = {"format", "model", "layer", "grid", "channels"}
    n, c = g["features"].shape
    return ReferenceBank(
        features=g["features"][:] if n else np.zeros((0, c), np.float32),
        labels=g["labels"][:] if n else np.zeros(0, np.int32),
        shapley=g["shapley"][:] if n else np.zeros(0, np.float32),
        positions=g["positions"][:] if n else np.zeros((0, 2), np.int16),
        image=g["image"][:] if n else np.zeros(0, np.int32),
        image_paths=[str(p) for p in g["image_paths"][:]] if g["image_paths"].shape[0] else [],
        image_labels=g["image_labels"][:] if g["image_paths"].shape[0] else np.zeros(0, np.int32),
        image_probs=g["image_probs"][:] if g["image_paths"].shape[0] else np.zeros(0, np.float32),
        model=str(attrs["model"]),
        layer=str(attrs["layer"]),
        grid=tuple(attrs["grid"]),
        attrs={k: v for k, v in attrs.items() if k not in known},
    )
