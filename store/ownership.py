"""Which folders cwox may replace: only its own stores, recognised by their metadata.

"Never lose a user's data": ``--overwrite`` (and every other code path that
removes or replaces a directory) goes through :func:`check_replaceable` or
:func:`remove_store`, which accept a path only when it is

* absent, or an empty folder (nothing to lose), or
* a store cwox wrote *of the kind asked for* — its root ``zarr.json`` carries
  cwox's own marker (a documents store: ``format`` ``cwox.documents/1``; a tree
  store: ``cwox_store`` ``trees``; a reference bank: ``format``
  ``cwox.reference_bank/1``) — that holds nothing but the entries cwox writes.

A folder of photos, a store of another kind, a foreign Zarr store, a file, or a
cwox store into which a user has put files of their own are refused with a
message that says what is there and what to do instead; it never suggests
``--overwrite``, since that would not (and must not) help.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from cwox.store._atomic import fsync_dir, remove_tree

__all__ = [
    "DOCUMENTS",
    "DOCUMENTS_FORMAT",
    "REFERENCE_BANK",
    "REFERENCE_BANK_FORMAT",
    "TREES",
    "NotOurStoreError",
    "check_replaceable",
    "remove_store",
    "store_kind",
]

DOCUMENTS = "documents store"
TREES = "tree store"
REFERENCE_BANK = "reference bank"

DOCUMENTS_FORMAT = "cwox.documents/1"
REFERENCE_BANK_FORMAT = "cwox.reference_bank/1"

#: The top-level entries each kind of store may hold (its arrays, groups and files).
_ENTRIES: dict[str, frozenset[str]] = {
    DOCUMENTS: frozenset(
        {"zarr.json", "labels", "probs", "k", "path", "view", "error", "done", "reference_bank"}
    ),
    TREES: frozenset({"zarr.json", "latest", "versions", ".staging", "runs"}),
    REFERENCE_BANK: frozenset(
        {"zarr.json", "features", "labels", "shapley", "positions", "image", "image_paths",
         "image_labels", "image_probs"}
    ),
}


class NotOurStoreError(ValueError):
    """A path that cwox refuses to replace or write into: it is not a cwox store of that kind."""


def store_kind(path: str | os.PathLike) -> str | None:
    """:data:`DOCUMENTS`, :data:`TREES` or :data:`REFERENCE_BANK` when ``path`` is a
    directory whose root metadata carries cwox's marker; None otherwise."""
    meta = Path(path) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text(encoding="utf-8")).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(attrs, dict):
        return None
    if attrs.get("format") == DOCUMENTS_FORMAT:
        return DOCUMENTS
    if attrs.get("format") == REFERENCE_BANK_FORMAT:
        return REFERENCE_BANK
    if attrs.get("cwox_store") == "trees":
        return TREES
    return None


def _listing(names: list[str], limit: int = 4) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _ours(entry: str, known: frozenset[str]) -> bool:
    """An entry cwox writes: a known name, or a known name's hidden staging or trash
    copy (``.reference_bank.tmp-<hex>``) left by an interrupted write."""
    return entry in known or (entry.startswith(".") and entry[1:].split(".", 1)[0] in known)


def check_replaceable(path: str | os.PathLike, kind: str, *, option: str = "--out") -> str:
    """Say whether cwox may (re)create a ``kind`` store at ``path``, or refuse.

    Returns:
        ``"absent"`` (nothing there), ``"empty"`` (an empty folder) or ``"store"``
        (a cwox store of this kind holding only cwox's entries: it may be replaced).

    Raises:
        NotOurStoreError: ``path`` is a file, a link, a folder with anything else in
            it, a store of another kind, or a store of this kind with foreign entries.
    """
    if kind not in _ENTRIES:
        raise ValueError(f"unknown store kind {kind!r}")
    p = Path(path)
    where = f"{option} {os.fspath(p)}"
    if p.is_symlink():  # judged by what it points at; a dangling link is left alone
        if not p.exists():
            raise NotOurStoreError(f"{where} is a symbolic link to nothing; choose another {option}")
        p = p.resolve()
    if not p.exists():
        return "absent"
    if not p.is_dir():
        raise NotOurStoreError(f"{where} is a file, not a cwox {kind}; cwox never replaces it: "
                               f"choose another {option}")
    entries = os.listdir(p)
    if not entries:
        return "empty"
    found = store_kind(p)
    if found is None:
        raise NotOurStoreError(
            f"{where} is a folder that cwox did not make (it holds {_listing(entries)}); "
            f"cwox never deletes or writes into it: choose another {option}, e.g. a new folder"
        )
    if found != kind:
        raise NotOurStoreError(
            f"{where} is a cwox {found}, not a {kind}; cwox will not replace it: choose another {option}"
        )
    foreign = [e for e in entries if not _ours(e, _ENTRIES[kind])]
    if foreign:
        raise NotOurStoreError(
            f"{where} is a cwox {kind} but also holds {_listing(foreign)}, which cwox did not write; "
            f"move those out, or choose another {option}"
        )
    return "store"


def remove_store(path: str | os.PathLike, kind: str, *, option: str = "--out") -> bool:
    """Delete the cwox ``kind`` store at ``path`` after :func:`check_replaceable` allowed it.

    The store is first renamed to a hidden name beside it (one atomic step), so no
    reader ever meets half of it, then deleted. Returns True when something was removed
    (False for an absent path; an empty folder is left as it is).
    """
    state = check_replaceable(path, kind, option=option)
    if state != "store":
        return False
    link = Path(path).is_symlink()
    p = Path(path).resolve() if link else Path(path)  # a link to a store: the store goes, the link stays
    trash = p.with_name(f".{p.name}.removed-{uuid.uuid4().hex[:8]}")
    os.rename(p, trash)
    if link:
        p.mkdir()
    fsync_dir(p.parent)
    remove_tree(trash)
    return True


def check_page_replaceable(path: str | os.PathLike, marker: str, what: str) -> None:
    """Refuse (``FileExistsError``) to replace ``path`` unless it is a file cwox wrote.

    cwox's HTML pages carry ``marker`` (a ``<meta name="generator">`` tag) in their head;
    a folder, or a file without it (a user's own ``index.html``), is never replaced.
    ``what`` names the page in the message (``"report index"``, ``"tree page"``).
    """
    p = Path(path)
    if p.is_dir() or (p.exists() and not _carries(p, marker)):
        raise FileExistsError(f"{p} exists and is not a {what} cwox wrote; refusing to replace it "
                              "(choose another --out)")


def _carries(path: Path, marker: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return marker in fh.read(4096)
    except OSError:
        return False
