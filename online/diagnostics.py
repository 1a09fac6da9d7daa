"""What an explainer did, beside its maps: records, their kinds, merging, warnings, tables.

CWOX-2s asks a native contrast explainer "P rather than Q" questions; FG-VCE and
CCE answer each with counterfactuals that may fall short (FG-VCE's replacement
loop may not flip the prediction, or may draw candidates from the whole bank; a
CCE perturbation bounded by epsilon may not reach the foil). An explainer's call
returns JSON-ready records in ``Answer.diagnostics``
(:class:`cwox.online.explainers.base.Answer`); the engine gathers them per image
into :attr:`cwox.online.explanation.Explanation.diagnostics`, the report writes them
into ``explanation.json`` and ``index.html``, and :func:`diagnostic_warnings`
turns them into sentences a user must read.

``diagnostics`` maps a kind to a list of records, one per requested (stage,
target) or (stage, pair), in the order asked. Each kind is declared by the
explainer that writes it (``Explainer.records``, a :class:`RecordKind`: its key,
the sentences its records call for and the report table it renders as, e.g.
``"fgvce_counterfactuals"`` in :mod:`cwox.online.explainers.fgvce` and
``"cce_counterfactuals"`` in :mod:`cwox.online.explainers.cce`, where their fields
are listed); registering the explainer registers its kinds here. This module knows
no explainer: it holds the helpers the kinds share.

Everything is plain JSON (ints, floats, bools, strings, lists, string-keyed
dicts), so a record compares equal after a round trip through the JSON report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the records are plain JSON: no torch needed to read or write them
    from cwox.online.targets import Target

__all__ = [
    "RecordKind",
    "Row",
    "Table",
    "class_ids",
    "class_names_json",
    "diagnostic_notes",
    "diagnostic_tables",
    "diagnostic_warnings",
    "merge_diagnostics",
    "plural",
    "question_text",
    "record_names",
    "register_records",
    "target_json",
    "target_text",
]

# --------------------------------------------------------------------------- building records


def target_json(target: Target) -> int | list[int]:
    """A target as JSON: the class id, or the sorted ids of a compound class."""
    return int(target) if isinstance(target, int) else sorted(class_ids(target))


def class_names_json(ids: Iterable[int], class_names: Sequence[str]) -> dict[str, str]:
    """``{str(id): name}`` for ``ids`` (sorted), the ``names`` of a record."""
    return {str(i): str(class_names[i]) for i in sorted({int(i) for i in ids})}


def class_ids(*values: Any) -> list[int]:
    """Every class id in ``values`` (ints, targets, JSON targets, lists of ints, None)."""
    out: list[int] = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, int):
            out.append(int(v))
        else:
            out.extend(class_ids(*v))
    return out


def merge_diagnostics(into: dict[str, list[dict[str, Any]]], new: Mapping[str, Sequence[Mapping[str, Any]]] | None) -> None:
    """Append the records of one explainer call (``new``) to those of the image (``into``), per kind."""
    for kind, records in (new or {}).items():
        into.setdefault(str(kind), []).extend(dict(r) for r in records)


# --------------------------------------------------------------------------- reading records


def target_text(target: Any, names: Mapping[str, str] | None = None) -> str:
    """``"tabby"`` for one class, ``"{tiger cat, Egyptian cat}"`` for a compound class.

    ``target`` is an id, a set or a JSON list; a class without a name in ``names``
    (string keys) reads ``"class 123"``.
    """
    names = names or {}
    ids = class_ids(target) if isinstance(target, int) else sorted(class_ids(target))
    labels = [names.get(str(i), f"class {i}") for i in ids]
    return labels[0] if isinstance(target, int) else "{" + ", ".join(labels) + "}"


def record_names(record: Mapping[str, Any], names: Mapping[str, str] | None) -> dict[str, str]:
    """The record's own names, over (fallback) ``names``."""
    return {**{str(k): str(v) for k, v in (names or {}).items()}, **dict(record.get("names") or {})}


def question_text(record: Mapping[str, Any], names: Mapping[str, str] | None = None) -> str:
    """``"P rather than Q"`` (or ``"why P"`` without a foil) with class names."""
    names = record_names(record, names)
    fact = target_text(record["fact"], names)
    if record.get("foil") is None:
        return f"why {fact}"
    return f"{fact} rather than {target_text(record['foil'], names)}"


def plural(n: int, word: str) -> str:
    """``"1 step"``, ``"3 steps"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------- kinds of records

#: One table row of a report: whether the row is marked bad, and its cells as (text, marked bad).
Row = tuple[bool, list[tuple[str, bool]]]


@dataclass(frozen=True)
class Table:
    """A report table of one kind of records (the report escapes and renders it)."""

    caption: str
    head: tuple[str, ...]
    rows: list[Row]


@dataclass(frozen=True)
class RecordKind:
    """A kind of diagnostics record, declared by the explainer that writes it.

    Attributes:
        key: the kind's key in ``diagnostics`` (e.g. ``"cce_counterfactuals"``).
        warnings: ``(records, names) -> sentences`` a user must read (``[]`` if none).
        table: ``(records, names) -> Table``, the report's table of these records.
        notes: ``records -> sentences`` the report shows as plain facts (not warnings),
            e.g. which reference bank FG-VCE drew from.
    """

    key: str
    warnings: Callable[[Sequence[Mapping[str, Any]], Mapping[str, str] | None], list[str]] | None = None
    table: Callable[[Sequence[Mapping[str, Any]], Mapping[str, str]], Table] | None = None
    notes: Callable[[Sequence[Mapping[str, Any]]], list[str]] | None = None


_KINDS: dict[str, RecordKind] = {}


def register_records(kind: RecordKind) -> RecordKind:
    """Make a kind of records known (done by ``@register`` for ``Explainer.records``)."""
    if _KINDS.get(kind.key, kind) is not kind:
        raise ValueError(f"a different kind of records is already registered as {kind.key!r}")
    _KINDS[kind.key] = kind
    return kind


def _known(diagnostics: Mapping[str, Sequence[Mapping[str, Any]]] | None):
    """``(kind, records)`` of every registered kind in ``diagnostics`` that has records, in order."""
    for key, records in (diagnostics or {}).items():
        kind = _KINDS.get(str(key))
        if kind is not None and records:
            yield kind, list(records)


def diagnostic_warnings(
    diagnostics: Mapping[str, Sequence[Mapping[str, Any]]] | None, names: Mapping[str, str] | None = None
) -> list[str]:
    """Sentences for what a user must know about the counterfactuals behind the maps.

    Each kind's own :attr:`RecordKind.warnings` (kinds not registered in this process
    are passed over). ``names`` maps class ids (as strings) to names where the
    records lack them.
    """
    return [w for kind, records in _known(diagnostics) if kind.warnings for w in kind.warnings(records, names)]


def diagnostic_tables(
    diagnostics: Mapping[str, Sequence[Mapping[str, Any]]] | None, names: Mapping[str, str]
) -> list[Table]:
    """One report table per registered kind of records in ``diagnostics``."""
    return [kind.table(records, names) for kind, records in _known(diagnostics) if kind.table]


def diagnostic_notes(diagnostics: Mapping[str, Sequence[Mapping[str, Any]]] | None) -> list[str]:
    """The plain facts the registered kinds of records in ``diagnostics`` state (:attr:`RecordKind.notes`)."""
    return [n for kind, records in _known(diagnostics) if kind.notes for n in kind.notes(records)]
