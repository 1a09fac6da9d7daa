"""A versioned Zarr store of fitted latent trees, with atomic publish.

The nightly job fits a hierarchical latent tree (PEM-HLTA, Chen et al. 2017)
over the classifier's top-K documents and saves it here; the online engine
loads the *published* tree and cuts it into the confusion clusters of the CWOX
paper (Sec. 3). Each save writes a new, immutable version; publishing switches
one small pointer file, so online readers move from one whole tree to the next.

Layout of ``TREES.zarr`` (a Zarr v3 hierarchy on a local directory)::

    zarr.json            root group; attrs {"cwox_store": "trees", "format_version": 1}
    latest               pointer to the published version: {"version": "v0003", ...}
    versions/            group of versions, one immutable sub-group each
      .high_water        highest version number ever pruned (numbers are never reused)
      v0003/             attrs: provenance (documents, model, HLTA parameters,
                         created_at, cwox_version), scores (loglik, bic,
                         n_params, n_documents), other scalar node attributes
                         (node_attrs) and a SHA-256 of the arrays (checksum);
                         arrays, one entry per node (preorder from the root):
        node_id, name    str
        parent           int32, index of the parent node, -1 for the root
        level, card      int16
        label            int32, class id of a leaf, -1 for a latent
        cpt_offsets      int64 (n_nodes + 1); node i's CPT is
        cpt_values       float64 cpt_values[cpt_offsets[i]:cpt_offsets[i+1]]
                         (empty: no CPT), reshaped to (card, parent_card)
        percentage       float64, optional (NaN: absent), P(latent = 1) as
                         the HLTA tools report it
        class_names      str, one per label
    .staging/            versions being written (never read)
    runs/                the nightly job's run summaries, one JSON file per run

The CPTs are ragged (the root's is a vector, a latent's is card x parent card),
so they are stored flattened with offsets in one array rather than as one
array per node: an ImageNet tree has ~1,300 nodes, and one array per node would
mean ~2,600 small files to write, fsync and read for every version, while the
flat layout is two reads for all of them.

Atomicity: a version is written under ``.staging/`` and ``os.rename``'d into
``versions/vNNNN`` when complete (the rename fails if another writer took the
number, and the next number is tried); :func:`publish` replaces ``latest`` with
``os.replace`` after an fsync. :func:`load_tree` resolves the pointer once and
then reads only that immutable version, so concurrent readers never see half a
tree or a mix of two. A failed write leaves only a staging directory (removed
when the failure is an exception), which readers never look at.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import errno
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from cwox.store._atomic import atomic_write_text, fsync_dir, fsync_tree, remove_tree, staging_dir

__all__ = [
    "TreeStoreError",
    "StoreNotFoundError",
    "VersionNotFoundError",
    "CorruptStoreError",
    "IncompatibleTreeError",
    "save_tree",
    "load_tree",
    "tree_info",
    "list_versions",
    "published_version",
    "publish",
    "prune",
    "rollback",
    "runs_dir",
    "verify_version",
    "check_compatible",
    "resolve_version",
]

FORMAT_VERSION = 1
_STORE_KIND = "trees"
_POINTER = "latest"
_VERSIONS = "versions"
_STAGING = ".staging"
_HIGH_WATER = ".high_water"
_RUNS = "runs"
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_SCORE_KEYS = ("loglik", "bic", "n_params", "n_documents")
_NODE_KEYS = frozenset({"level", "card", "cpt", "label", "name", "percentage"})
_NODE_ARRAYS = ("node_id", "name", "parent", "level", "card", "label", "cpt_offsets", "cpt_values")


class TreeStoreError(Exception):
    """Base class of the tree store's errors (the CLI turns them into messages)."""


class StoreNotFoundError(TreeStoreError, FileNotFoundError):
    """The path holds no tree store."""


class VersionNotFoundError(TreeStoreError, LookupError):
    """The requested version does not exist (or none is published)."""


class CorruptStoreError(TreeStoreError):
    """The store or one of its versions cannot be read back."""


class IncompatibleTreeError(ValueError):
    """A tree was built for another model or another list of classes."""


# --------------------------------------------------------------------------- paths


def _root(path: str | os.PathLike) -> Path:
    return Path(os.fspath(path))


def _require_store(path: str | os.PathLike) -> Path:
    root = _root(path)
    meta = root / "zarr.json"
    if not root.is_dir() or not meta.is_file():
        raise StoreNotFoundError(f"no tree store at {os.fspath(root)!r} (expected a directory made by save_tree)")
    try:
        attrs = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {})
    except (OSError, ValueError) as exc:
        raise CorruptStoreError(f"{os.fspath(meta)!r} is not valid Zarr metadata: {exc}") from exc
    if attrs.get("cwox_store") != _STORE_KIND:
        kind = attrs.get("cwox_store")
        what = f"a cwox {kind!r} store" if kind else "a Zarr store that is not a cwox tree store"
        raise StoreNotFoundError(f"{os.fspath(root)!r} is {what}, not a tree store")
    if attrs.get("format_version", 0) > FORMAT_VERSION:
        raise CorruptStoreError(
            f"{os.fspath(root)!r} has tree-store format {attrs['format_version']}, "
            f"newer than this cwox reads ({FORMAT_VERSION}); upgrade cwox"
        )
    return root


def _init_store(path: str | os.PathLike) -> Path:
    """Create an empty tree store at ``path`` unless one is there already."""
    import zarr

    root = _root(path)
    if (root / "zarr.json").is_file():
        return _require_store(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise TreeStoreError(f"{os.fspath(root)!r} exists and is not a tree store; refusing to write into it")
    group = zarr.open_group(os.fspath(root), mode="a")
    group.attrs.update({"cwox_store": _STORE_KIND, "format_version": FORMAT_VERSION})
    zarr.open_group(os.fspath(root / _VERSIONS), mode="a")
    (root / _STAGING).mkdir(exist_ok=True)
    fsync_tree(root)
    fsync_dir(root.parent)
    return root


def _version_number(version: str) -> int | None:
    match = _VERSION_RE.match(version)
    return int(match.group(1)) if match else None


def _format_version(number: int) -> str:
    return f"v{number:04d}"


# --------------------------------------------------------------------------- versions


def list_versions(path: str | os.PathLike) -> list[str]:
    """The saved (complete) versions of the store at ``path``, oldest first."""
    root = _require_store(path)
    vdir = root / _VERSIONS
    if not vdir.is_dir():
        return []
    found = [(n, name) for name in os.listdir(vdir) if (n := _version_number(name)) is not None]
    return [name for _, name in sorted(found)]


def published_version(path: str | os.PathLike) -> str | None:
    """The version the ``latest`` pointer names, or None when none was published."""
    return _read_pointer(_require_store(path)).get("version")


def _read_pointer(root: Path) -> dict[str, Any]:
    pointer = root / _POINTER
    try:
        text = pointer.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or _version_number(str(data.get("version", ""))) is None:
            raise ValueError("no valid 'version' entry")
    except ValueError as exc:
        raise CorruptStoreError(f"the pointer file {os.fspath(pointer)!r} is corrupt: {exc}") from exc
    return data


def resolve_version(path: str | os.PathLike, version: str = "latest") -> str:
    """Turn ``"latest"`` (the published version), ``"newest"`` (the last saved),
    ``"v0003"`` or ``"3"`` into an existing version id of the store at ``path``."""
    root = _require_store(path)
    version = str(version).strip()
    if version == "latest":
        vid = _read_pointer(root).get("version")
        if vid is None:
            saved = list_versions(root)
            hint = (f"saved versions: {', '.join(saved[-5:])}; publish one, or ask for 'newest' or a version id"
                    if saved else "it holds no version yet")
            raise VersionNotFoundError(f"no version of {os.fspath(root)!r} has been published ({hint})")
        if not (root / _VERSIONS / vid).is_dir():
            raise CorruptStoreError(f"the published version {vid} of {os.fspath(root)!r} is missing")
        return vid
    saved = list_versions(root)
    if version == "newest":
        if not saved:
            raise VersionNotFoundError(f"{os.fspath(root)!r} holds no version yet")
        return saved[-1]
    number = int(version) if version.isdigit() else _version_number(version)
    vid = _format_version(number) if number is not None else version
    if vid not in saved:
        close = difflib.get_close_matches(version, saved, n=3)
        listing = ", ".join(saved) if len(saved) <= 10 else ", ".join(saved[:3] + ["...", *saved[-3:]])
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise VersionNotFoundError(
            f"{os.fspath(root)!r} has no version {version!r} (versions: {listing or 'none'}){hint}"
        )
    return vid


def publish(path: str | os.PathLike, version: str) -> str:
    """Point ``latest`` at ``version`` in one atomic step; returns the version id.

    The version is loaded first, checksums and all (:func:`verify_version`): a damaged
    version is refused with :class:`CorruptStoreError` and the pointer stays where it
    was. Readers that already resolved the pointer keep reading the version they
    started with; every later :func:`load_tree` gets the new one.
    """
    root = _require_store(path)
    vid = resolve_version(root, version)
    _load_version(root, vid)  # raises on a damaged version: never publish one
    _write_pointer(root, vid)
    return vid


def verify_version(path: str | os.PathLike, version: str) -> str | None:
    """None when ``version`` loads whole (metadata, arrays, checksum), else why not."""
    root = _require_store(path)
    try:
        _load_version(root, resolve_version(root, version))
    except TreeStoreError as exc:
        return str(exc)
    return None


def rollback(path: str | os.PathLike) -> tuple[str, str]:
    """Publish again the version that was published before the current one; atomic.

    Returns ``(from_version, to_version)``. The pointer keeps the ids published
    before (``history``); the newest of them that still exists and loads whole
    becomes ``latest`` in one :func:`os.replace`, and leaves the history, so a
    second rollback goes one step further back. Raises :class:`VersionNotFoundError`
    when nothing is published or no earlier published version is left.
    """
    root = _require_store(path)
    pointer = _read_pointer(root)
    current = pointer.get("version")
    if current is None:
        raise VersionNotFoundError(f"no version of {os.fspath(root)!r} is published; nothing to roll back")
    history = [v for v in pointer.get("history", []) if isinstance(v, str)]
    skipped = []
    while history:
        candidate = history.pop()
        if candidate == current:
            continue
        problem = verify_version(root, candidate) if (root / _VERSIONS / candidate).is_dir() else "pruned"
        if problem is None:
            _write_pointer(root, candidate, history=history)
            return current, candidate
        skipped.append(f"{candidate} ({problem})")
    raise VersionNotFoundError(
        f"{os.fspath(root)!r} has no earlier published version to roll back to from {current}"
        + (f"; skipped {', '.join(skipped)}" if skipped else "")
    )


#: How many earlier published versions the pointer remembers for :func:`rollback`.
_HISTORY = 20


def _write_pointer(root: Path, vid: str, history: list[str] | None = None) -> None:
    """Replace ``latest`` atomically; without ``history`` the version published until
    now is pushed onto the history (a publish), with it the history is set (a rollback)."""
    if history is None:
        old = _published_or_none(root)
        try:
            history = [v for v in _read_pointer(root).get("history", []) if isinstance(v, str)]
        except CorruptStoreError:
            history = []
        if old is not None and old != vid:
            history.append(old)
    record = {"version": vid, "published_at": _now(), "history": history[-_HISTORY:]}
    atomic_write_text(root / _POINTER, json.dumps(record) + "\n")


def prune(path: str | os.PathLike, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest versions, never the published one nor the one
    published before it (the target of :func:`rollback`).

    Returns the removed version ids. A version is first renamed into the
    staging area (atomic) and deleted there, so it disappears from listings in
    one step. A reader caught reading a pruned version notices it (never a
    half-read tree): ``load_tree(path)`` then follows the pointer again, while
    a load of that explicit version raises :class:`VersionNotFoundError`.
    Version numbers are never reused.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep must be a non-negative int, got {keep!r}")
    root = _require_store(path)
    saved = list_versions(root)
    protected = set(saved[len(saved) - keep :] if keep else [])
    pointer = _read_pointer(root)
    pub = pointer.get("version")
    if pub is not None:
        protected.add(pub)
    history = [v for v in pointer.get("history", []) if isinstance(v, str) and v != pub]
    if history:  # what a rollback would go back to
        protected.add(history[-1])
    removed = []
    if saved:  # record the highest number before deleting, so that ids are never reused
        vdir = root / _VERSIONS
        top = max(_version_number(v) or 0 for v in saved)
        if top > _high_water(vdir):
            atomic_write_text(vdir / _HIGH_WATER, f"{top}\n")
    staging = root / _STAGING
    staging.mkdir(exist_ok=True)
    for vid in saved:
        if vid in protected:
            continue
        trash = staging / f"pruned-{vid}-{os.getpid()}-{len(removed)}"
        try:
            os.rename(root / _VERSIONS / vid, trash)
        except FileNotFoundError:  # pruned by someone else meanwhile
            continue
        remove_tree(trash)
        removed.append(vid)
    fsync_dir(root / _VERSIONS)
    return removed


def runs_dir(path: str | os.PathLike) -> Path:
    """``TREES/runs/``, where the nightly job keeps its run summaries (created on first use)."""
    root = _require_store(path)
    folder = root / _RUNS
    folder.mkdir(exist_ok=True)
    return folder


# --------------------------------------------------------------------------- save


def save_tree(
    tree: nx.DiGraph,
    path: str | os.PathLike,
    *,
    meta: Mapping[str, Any] | None = None,
    publish: bool = False,
) -> str:
    """Write ``tree`` as a new version of the store at ``path``; return its id.

    Parameters
    ----------
    tree
        A latent tree following the cwox tree contract (``cwox.hlta.tree``): edges
        parent -> child, leaves ``c{label}``, latents ``Z{k}``, CPTs of shape
        ``(card, parent_card)`` (root: ``(card,)``) or None (structure only).
    path
        The store directory (created on first use).
    meta
        Provenance and scores, JSON-serialisable: by convention ``model``,
        ``documents`` (documents store path), ``hlta_params`` (dict),
        ``loglik``, ``bic``, ``n_params``, ``n_documents``; other keys are kept
        as they are. Scores missing from ``meta`` are taken from
        ``tree.graph`` when present there; ``n_params`` (the ``d`` of
        ``BIC = log P(D) - d/2 log N``: sum over nodes of (card - 1) x parent
        card) is computed when the tree has all its CPTs. ``created_at`` and
        ``cwox_version`` are added. Other scalar node attributes (e.g. HLTA's
        ``never_occurs``) are kept too.
    publish
        Also point ``latest`` at the new version (atomically) once it is written.
    """
    arrays, class_names, extras = _tree_to_arrays(tree)
    attrs = _version_attrs(tree, meta, arrays)
    attrs["node_attrs"] = _node_extras(extras)
    attrs["checksum"] = _digest({**arrays, "class_names": np.asarray(class_names, dtype=object)})
    root = _init_store(path)
    vdir = root / _VERSIONS
    with staging_dir(root / _STAGING, "new") as tmp:
        _write_version(tmp, arrays, class_names, attrs)
        fsync_tree(tmp)
        vid = _rename_into_place(tmp, vdir)
    fsync_dir(vdir)
    if publish:
        _write_pointer(root, vid)
    return vid


def _high_water(vdir: Path) -> int:
    """The highest version number ever pruned (0 when none)."""
    try:
        return int((vdir / _HIGH_WATER).read_text(encoding="utf-8").strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError as exc:
        raise CorruptStoreError(f"{os.fspath(vdir / _HIGH_WATER)!r} is corrupt: {exc}") from exc


def _rename_into_place(tmp: Path, vdir: Path) -> str:
    """Move a finished staging directory to the next free ``vNNNN`` name."""
    saved = [n for name in os.listdir(vdir) if (n := _version_number(name)) is not None]
    number = max(saved + [_high_water(vdir)], default=0) + 1  # never reuse a pruned number
    for _ in range(1000):
        target = vdir / _format_version(number)
        try:
            os.rename(tmp, target)  # fails when another writer already holds this number
            return target.name
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                raise
            number += 1
    raise TreeStoreError(f"could not allocate a version number under {os.fspath(vdir)!r}")


def _write_version(tmp: Path, arrays: dict[str, np.ndarray], class_names: list[str], attrs: dict) -> None:
    import zarr

    group = zarr.open_group(os.fspath(tmp), mode="w")
    for name, values in arrays.items():
        _put_array(group, name, values)
    _put_array(group, "class_names", np.asarray(class_names, dtype=object))
    group.attrs.update(attrs)


def _put_array(group: Any, name: str, values: np.ndarray) -> None:
    if values.dtype == object:
        arr = group.create_array(name, shape=values.shape, dtype=str)
        if values.size:
            arr[:] = values
    else:
        group.create_array(name, data=values)


def _tree_to_arrays(tree: nx.DiGraph) -> tuple[dict[str, np.ndarray], list[str], dict[str, dict]]:
    """Check the tree against the contract and lay it out as flat arrays (preorder)."""
    class_names, root = _check_tree(tree)
    order = list(nx.dfs_preorder_nodes(tree, root))  # keeps each parent's child order
    index = {node: i for i, node in enumerate(order)}
    n = len(order)
    parent = np.full(n, -1, dtype=np.int32)
    level = np.zeros(n, dtype=np.int16)
    card = np.zeros(n, dtype=np.int16)
    label = np.full(n, -1, dtype=np.int32)
    names = np.empty(n, dtype=object)
    percentage = np.full(n, np.nan)
    sizes = np.zeros(n, dtype=np.int64)
    tables: list[np.ndarray] = []
    extras: dict[str, dict[str, Any]] = {}
    for i, node in enumerate(order):
        data = tree.nodes[node]
        preds = list(tree.predecessors(node))
        parent[i] = index[preds[0]] if preds else -1
        level[i] = int(data["level"])
        card[i] = int(data["card"])
        if node.startswith("c"):
            label[i] = int(data["label"])
        names[i] = str(data.get("name") or "")
        if data.get("percentage") is not None:
            percentage[i] = float(data["percentage"])
        extra = {k: v for k, v in data.items() if k not in _NODE_KEYS}
        if extra:
            extras[node] = extra
        cpt = data.get("cpt")
        if cpt is not None:
            flat = np.asarray(cpt, dtype=np.float64).ravel()
            sizes[i] = flat.size
            tables.append(flat)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    arrays = {
        "node_id": np.asarray(order, dtype=object),
        "name": names,
        "parent": parent,
        "level": level,
        "card": card,
        "label": label,
        "cpt_offsets": offsets,
        "cpt_values": np.concatenate(tables) if tables else np.zeros(0),
    }
    if not np.isnan(percentage).all():
        arrays["percentage"] = percentage
    return arrays, class_names, extras


def _check_tree(tree: nx.DiGraph) -> tuple[list[str], Any]:
    """The checks the store relies on (a subset of ``cwox.hlta.tree.validate_tree``)."""
    if not isinstance(tree, nx.DiGraph):
        raise TypeError(f"tree must be a networkx.DiGraph, got {type(tree).__name__}")
    if tree.number_of_nodes() == 0:
        raise ValueError("tree is empty")
    if not nx.is_arborescence(tree):
        raise ValueError("tree must be a directed tree (one root, every other node with one parent)")
    class_names = tree.graph.get("class_names")
    if class_names is None:
        raise ValueError('tree.graph["class_names"] is missing')
    class_names = [str(c) for c in class_names]
    n_labels = int(tree.graph.get("n_labels", len(class_names)))
    if n_labels != len(class_names):
        raise ValueError(f'tree.graph["n_labels"] = {n_labels} but there are {len(class_names)} class names')
    root = next(node for node, deg in tree.in_degree() if deg == 0)
    seen_labels = []
    for node, data in tree.nodes(data=True):
        if not isinstance(node, str) or not re.fullmatch(r"[cZ]\d+", node):
            raise ValueError(f"node id {node!r} is neither a leaf 'c<label>' nor a latent 'Z<k>'")
        for key in ("level", "card"):
            if key not in data:
                raise ValueError(f"node {node} has no {key!r} attribute")
        if int(data["card"]) < 1:
            raise ValueError(f"node {node} has card {data['card']} < 1")
        if node.startswith("c"):
            lab = data.get("label")
            if lab is None or f"c{int(lab)}" != node:
                raise ValueError(f"leaf {node} must have label={node[1:]}, got {lab!r}")
            if tree.out_degree(node):
                raise ValueError(f"leaf {node} has children")
            seen_labels.append(int(lab))
        elif int(data["level"]) < 1:
            raise ValueError(f"latent {node} has level {data['level']}; latents need level >= 1")
        cpt = data.get("cpt")
        if cpt is not None:
            cpt = np.asarray(cpt, dtype=np.float64)
            preds = list(tree.predecessors(node))
            want = (int(data["card"]),) if not preds else (int(data["card"]), int(tree.nodes[preds[0]]["card"]))
            if cpt.shape != want:
                raise ValueError(f"node {node} has a CPT of shape {cpt.shape}, expected {want}")
            if not np.all(np.isfinite(cpt)):
                raise ValueError(f"node {node} has a CPT with non-finite entries")
    missing = sorted(set(range(n_labels)) - set(seen_labels))
    if missing:
        raise ValueError(f"labels without a leaf: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if len(seen_labels) != n_labels:
        raise ValueError(f"the tree has {len(seen_labels)} leaves for {n_labels} labels")
    return class_names, root


def _version_attrs(tree: nx.DiGraph, meta: Mapping[str, Any] | None, arrays: dict[str, np.ndarray]) -> dict:
    from cwox.core import __version__

    meta = dict(meta or {})
    for key in _SCORE_KEYS:
        if meta.get(key) is None and tree.graph.get(key) is not None:
            meta[key] = tree.graph[key]
    sizes = np.diff(arrays["cpt_offsets"])
    if meta.get("n_params") is None and (sizes > 0).all():
        card = arrays["card"].astype(np.int64)
        parent_card = np.where(arrays["parent"] >= 0, card[arrays["parent"]], 1)
        meta["n_params"] = int(((card - 1) * parent_card).sum())
    attrs = {key: meta.get(key) for key in ("model", "documents", "hlta_params", *_SCORE_KEYS)}
    attrs.update({k: v for k, v in meta.items() if k not in attrs and k not in ("version", "published", "store", "node_attrs", "checksum")})
    attrs.update(
        {
            "format_version": FORMAT_VERSION,
            "created_at": _now(),
            "cwox_version": __version__,
            "n_labels": int((arrays["label"] >= 0).sum()),
            "n_latents": int((arrays["label"] < 0).sum()),
            "has_cpts": bool((sizes > 0).all()),
        }
    )
    return _jsonable(attrs, "meta")


def _node_extras(extras: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Other node attributes (e.g. HLTA's ``never_occurs``), kept when they are plain
    JSON scalars; anything else is dropped with a warning."""
    out: dict[str, dict[str, Any]] = {}
    for node, attrs in extras.items():
        for key, value in attrs.items():
            if isinstance(value, np.generic):
                value = value.item()
            if value is None or isinstance(value, (str, int, float, bool)):
                out.setdefault(node, {})[key] = _jsonable(value, key)
            else:
                warnings.warn(
                    f"node attribute {key!r} of {node} is a {type(value).__name__}; not stored",
                    stacklevel=3,
                )
    return out


def _jsonable(value: Any, where: str) -> Any:
    """Convert numpy scalars/arrays, paths and tuples so the value is plain JSON."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{where} is a {type(value).__name__}, which cannot be stored as JSON")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- load


def tree_info(path: str | os.PathLike, version: str = "latest") -> dict[str, Any]:
    """Provenance and scores of one version, without reading its tables.

    Keys: ``version``, ``published`` (bool), ``model``, ``documents``,
    ``hlta_params``, ``loglik``, ``bic``, ``n_params``, ``n_documents``,
    ``created_at``, ``cwox_version``, ``n_labels``, ``n_latents``,
    ``has_cpts``, ``store``, plus any other key given to :func:`save_tree`.
    """
    root = _require_store(path)
    vid = resolve_version(root, version)
    return _public(_info(root, vid, _published_or_none(root)))


def _published_or_none(root: Path) -> str | None:
    """The published version, or None when none is or the pointer is unreadable
    (an explicitly named version stays readable next to a broken pointer)."""
    try:
        return _read_pointer(root).get("version")
    except CorruptStoreError:
        return None


def _info(root: Path, vid: str, published: str | None) -> dict[str, Any]:
    meta_path = root / _VERSIONS / vid / "zarr.json"
    try:
        attrs = json.loads(meta_path.read_text(encoding="utf-8")).get("attributes", {})
    except FileNotFoundError as exc:
        raise VersionNotFoundError(f"version {vid} of {os.fspath(root)!r} vanished (pruned?)") from exc
    except (OSError, ValueError) as exc:
        raise CorruptStoreError(f"version {vid} of {os.fspath(root)!r} has corrupt metadata: {exc}") from exc
    return {**attrs, "version": vid, "published": vid == published, "store": os.fspath(root)}


def _public(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k not in ("node_attrs", "checksum")}


def load_tree(path: str | os.PathLike, version: str = "latest") -> nx.DiGraph:
    """Load one version of the store at ``path`` as a contract ``networkx.DiGraph``.

    ``version`` is ``"latest"`` (the published one; the pointer is read once
    per attempt), ``"newest"`` (the last saved), or a version id such as
    ``"v0003"``. The graph carries ``class_names``, ``n_labels``, ``version``
    and ``meta`` (the :func:`tree_info` dict) as graph attributes, and the
    scores (``loglik``, ``n_documents``, ...) that :meth:`hlta.HLTA.from_tree` reads.

    The arrays are checked against the checksum written with them (Zarr reads a
    missing chunk as fill values, so a damaged version would otherwise load as
    a wrong tree). A version pruned while it was being read raises
    :class:`VersionNotFoundError`, except for ``"latest"``, which then follows
    the pointer again.
    """
    root = _require_store(path)
    for _attempt in range(3):
        vid = resolve_version(root, version)
        try:
            return _load_version(root, vid)
        except VersionNotFoundError:
            if version != "latest":
                raise
    raise VersionNotFoundError(f"the published version of {os.fspath(root)!r} kept vanishing while loading")


def _load_version(root: Path, vid: str) -> nx.DiGraph:
    import zarr

    meta = _info(root, vid, _published_or_none(root))
    vpath = root / _VERSIONS / vid
    vanished = VersionNotFoundError(f"version {vid} of {os.fspath(root)!r} vanished while loading (pruned?)")
    try:
        group = zarr.open_group(os.fspath(vpath), mode="r")
        names = [*_NODE_ARRAYS, "class_names"] + (["percentage"] if "percentage" in group.array_keys() else [])
        data = {name: group[name][...] for name in names}
    except Exception as exc:
        if not vpath.is_dir():
            raise vanished from exc
        raise CorruptStoreError(f"version {vid} of {os.fspath(root)!r} cannot be read: {exc}") from exc
    # versions are immutable and leave only by an atomic rename: if the directory is
    # still there now, every read above saw it whole
    if not vpath.is_dir():
        raise vanished
    if meta.get("checksum") is not None and _digest(data) != meta["checksum"]:
        raise CorruptStoreError(f"version {vid} of {os.fspath(root)!r} is damaged (checksum mismatch)")
    try:
        return _arrays_to_tree(data, meta)
    except (IndexError, ValueError, KeyError) as exc:
        raise CorruptStoreError(f"version {vid} of {os.fspath(root)!r} is inconsistent: {exc}") from exc


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the arrays of a version (names, dtypes and values, strings as UTF-8)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.asarray(arrays[name])
        h.update(name.encode())
        if arr.dtype.kind in "OUT":
            h.update(b"str")
            h.update("\0".join(str(x) for x in arr.ravel().tolist()).encode("utf-8"))
        else:
            h.update(arr.dtype.str.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _arrays_to_tree(data: dict[str, np.ndarray], meta: dict[str, Any]) -> nx.DiGraph:
    class_names = [str(c) for c in data["class_names"].tolist()]
    node_ids = [str(x) for x in data["node_id"].tolist()]
    n = len(node_ids)
    for key in ("name", "parent", "level", "card", "label"):
        if data[key].shape != (n,):
            raise ValueError(f"array {key!r} has shape {data[key].shape}, expected ({n},)")
    if data["cpt_offsets"].shape != (n + 1,) or data["cpt_offsets"][-1] != data["cpt_values"].size:
        raise ValueError("cpt_offsets does not match cpt_values")
    parent = data["parent"].astype(np.int64)
    card = data["card"].astype(np.int64)
    level = data["level"].astype(np.int64)
    label = data["label"].astype(np.int64)
    names = data["name"].tolist()
    offsets = data["cpt_offsets"]
    values = data["cpt_values"]
    percentage = data.get("percentage")
    extras = meta.pop("node_attrs", None) or {}
    meta.pop("checksum", None)
    tree = nx.DiGraph(class_names=class_names, n_labels=len(class_names), version=meta["version"], meta=meta)
    tree.graph.update({k: meta[k] for k in _SCORE_KEYS if meta.get(k) is not None})
    for i, node in enumerate(node_ids):
        attrs: dict[str, Any] = {"level": int(level[i]), "card": int(card[i])}
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if hi > lo:
            shape = (int(card[i]),) if parent[i] < 0 else (int(card[i]), int(card[parent[i]]))
            attrs["cpt"] = values[lo:hi].reshape(shape).copy()
        else:
            attrs["cpt"] = None
        if label[i] >= 0:
            attrs["label"] = int(label[i])
            attrs["name"] = names[i] or class_names[label[i]]
        elif names[i]:
            attrs["name"] = names[i]
        if percentage is not None and not np.isnan(percentage[i]):
            attrs["percentage"] = float(percentage[i])
        tree.add_node(node, **extras.get(node, {}), **attrs)
    tree.add_edges_from((node_ids[parent[i]], node_ids[i]) for i in range(n) if parent[i] >= 0)
    return tree


# --------------------------------------------------------------------------- model guard


def check_compatible(tree: nx.DiGraph, model_name: str | None, class_names: Sequence[str]) -> None:
    """Raise :class:`IncompatibleTreeError` when ``tree`` was built for another
    model or another class list than the classifier about to be explained.

    The model is compared when both the tree (``tree.graph["meta"]["model"]``,
    recorded by :func:`save_tree`) and the caller name one; the class names are
    always compared, in order (a tree's leaves are class ids).
    """
    meta = tree.graph.get("meta") or {}
    where = f"tree {meta['version']} of {meta['store']!r}" if meta.get("version") and meta.get("store") else "the tree"
    built_for = meta.get("model")
    if built_for and model_name and str(built_for) != str(model_name):
        raise IncompatibleTreeError(
            f"{where} was built for model {built_for!r}, but the classifier is {model_name!r}; "
            "fit a tree for this model (cwox fit-tree) or pick the matching model"
        )
    ours = [str(c) for c in tree.graph.get("class_names", [])]
    theirs = [str(c) for c in class_names]
    if ours == theirs:
        return
    model_part = f" of model {model_name!r}" if model_name else ""
    if len(ours) != len(theirs):
        raise IncompatibleTreeError(
            f"{where} has {len(ours)} classes (built for {built_for or 'an unrecorded model'!s}), "
            f"but the classifier{model_part} has {len(theirs)}"
        )
    diffs = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    first = diffs[0]
    raise IncompatibleTreeError(
        f"{where} and the classifier{model_part} disagree on {len(diffs)} of {len(ours)} class names; "
        f"first at class {first}: tree has {ours[first]!r}, classifier has {theirs[first]!r}"
    )
