"""What a counterfactual explainer did, beside its maps: records, merging, warnings.

CWOX-2s asks a native contrast explainer "P rather than Q" questions; FG-VCE and
CCE answer each with counterfactuals that may fall short (FG-VCE's replacement
loop may not flip the prediction, or may draw candidates from the whole bank; a
CCE perturbation bounded by epsilon may not reach the foil). An explainer keeps
JSON-ready records of its last call in ``last_diagnostics``
(:class:`cwox.online.explainers.base.Explainer`); the engine gathers them per image
into :attr:`cwox.online.explanation.Explanation.diagnostics`, the report writes them
into ``explanation.json`` and ``index.html``, and :func:`diagnostic_warnings`
turns them into sentences a user must read.

``diagnostics`` maps a kind to a list of records, one per requested (stage,
target) or (stage, pair), in the order asked:

``"fgvce_counterfactuals"`` (:func:`fgvce_record`), FG-VCE Sec. 3.2, Eq. 5-9
    ``stage``, ``fact``, ``foil`` (class ids: an int, or a sorted list for a
    compound class), ``reversed`` (the model prefers the foil, so the loop turned
    the foil into the fact), ``layer`` (where features were replaced), the loop's
    ``source`` and ``goal``, ``steps``, ``max_steps``, ``flipped``, ``criterion``
    (``"top1"``/``"pair"``), ``stopped`` (``"flipped"``, ``"step limit"``, ``"no
    position left"``, ``"no candidates"``), ``pool`` (``"goal"``, or ``"all"``
    when the bank has no image of the goal), ``top1_before``, ``top1_after``,
    ``source_prob_start``/``_end``, ``goal_prob_start``/``_end``, ``positions``
    (``[row, col]`` replaced, in order), ``candidates`` (bank rows),
    ``candidate_classes``, and ``names`` (class id as a string -> class name, for
    every id above but the candidates). Pairs that share one loop ("C_1 rather
    than C_2" and "C_2 rather than C_1") share everything but ``fact``, ``foil``
    and ``reversed``.
``"cce_counterfactuals"`` (:func:`cce_record`), CCE Eq. 1 (no foil) and Eq. 2
    ``stage``, ``fact``, ``foil`` (``None`` for "why P"), ``epsilon``, ``l2`` (the
    ``N`` perturbation norms on the [0, 1] image, each ``<= epsilon``),
    ``top1_before``, ``top1_after`` (per counterfactual), ``changed_top1`` (how
    many changed the top class), ``reached_foil`` (how many made the model
    prefer Q to P; ``None`` without a foil), ``fact_logit_before``/``_after`` and
    ``foil_logit_before``/``_after`` (``Z_P``, ``Z_Q`` of the objective: a
    compound class's logit is the logsumexp of its members', CWOX Sec. 4.1),
    ``fact_prob_before``/``_after``, ``foil_prob_before``/``_after``, ``names``.

Everything is plain JSON (ints, floats, bools, strings, lists, string-keyed
dicts), so a record compares equal after a round trip through the JSON report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the records are plain JSON: no torch needed to read or write them
    from cwox.online.targets import Target

__all__ = [
    "BANK_KEY",
    "CCE_KEY",
    "bank_record",
    "bank_text",
    "FGVCE_KEY",
    "cce_record",
    "diagnostic_warnings",
    "fgvce_record",
    "merge_diagnostics",
    "question_text",
    "target_json",
    "target_text",
]

FGVCE_KEY = "fgvce_counterfactuals"
CCE_KEY = "cce_counterfactuals"
#: The reference bank FG-VCE's counterfactuals drew from, and its limits (:func:`bank_record`).
BANK_KEY = "reference_bank"

#: Why an FG-VCE loop stopped without a flip, as a sentence part.
_STOP_REASONS = {
    "step limit": "step limit reached",
    "no position left": "no position left to replace",
    "no candidates": "no candidates",
}


# --------------------------------------------------------------------------- building records


def target_json(target: Target) -> int | list[int]:
    """A target as JSON: the class id, or the sorted ids of a compound class."""
    return int(target) if isinstance(target, int) else sorted(_ids(target))


def class_names_json(ids: Iterable[int], class_names: Sequence[str]) -> dict[str, str]:
    """``{str(id): name}`` for ``ids`` (sorted), the ``names`` of a record."""
    return {str(i): str(class_names[i]) for i in sorted({int(i) for i in ids})}


def _ids(*values: Any) -> list[int]:
    """Every class id in ``values`` (ints, targets, JSON targets, lists of ints, None)."""
    out: list[int] = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, int):
            out.append(int(v))
        else:
            out.extend(_ids(*v))
    return out


def fgvce_record(
    stage: str,
    fact: Target,
    foil: Target,
    backwards: bool,
    layer: str,
    report: Mapping[str, Any],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """The record of one FG-VCE contrast pair: its replacement loop (Sec. 3.2, Eq. 5-9).

    ``report`` is the loop's ``CounterfactualReport.as_dict()``; ``backwards``: the
    loop turned the foil into the fact (the model prefers the foil).
    """
    source_probs, goal_probs = report["source_probs"], report["goal_probs"]
    record = {
        "stage": stage,
        "fact": target_json(fact),
        "foil": target_json(foil),
        "reversed": bool(backwards),
        "layer": layer,
        "source": report["source"],
        "goal": report["goal"],
        "steps": int(report["steps"]),
        "max_steps": int(report["max_steps"]),
        "flipped": bool(report["flipped"]),
        "criterion": report["criterion"],
        "stopped": report["stopped"],
        "pool": report["pool"],
        "top1_before": int(report["top1_before"]),
        "top1_after": int(report["top1_after"]),
        "source_prob_start": float(source_probs[0]),
        "source_prob_end": float(source_probs[-1]),
        "goal_prob_start": float(goal_probs[0]),
        "goal_prob_end": float(goal_probs[-1]),
        "positions": [[int(r), int(c)] for r, c in report["positions"]],
        "candidates": [int(c) for c in report["candidates"]],
        "candidate_classes": [int(c) for c in report["candidate_classes"]],
    }
    ids = _ids(record["fact"], record["foil"], record["top1_before"], record["top1_after"])
    record["names"] = class_names_json(ids, class_names)
    return record


def cce_record(stage: str, summary: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """The record of one CCE question at ``stage``; ``summary`` holds every other field but ``names``."""
    record = {"stage": stage, **summary}
    ids = _ids(record["fact"], record.get("foil"), record["top1_before"], record["top1_after"])
    record["names"] = class_names_json(ids, class_names)
    return record


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
    ids = _ids(target) if isinstance(target, int) else sorted(_ids(target))
    labels = [names.get(str(i), f"class {i}") for i in ids]
    return labels[0] if isinstance(target, int) else "{" + ", ".join(labels) + "}"


def _names(record: Mapping[str, Any], names: Mapping[str, str] | None) -> dict[str, str]:
    """The record's own names, over (fallback) ``names``."""
    return {**{str(k): str(v) for k, v in (names or {}).items()}, **dict(record.get("names") or {})}


def question_text(record: Mapping[str, Any], names: Mapping[str, str] | None = None) -> str:
    """``"P rather than Q"`` (or ``"why P"`` without a foil) with class names."""
    names = _names(record, names)
    fact = target_text(record["fact"], names)
    if record.get("foil") is None:
        return f"why {fact}"
    return f"{fact} rather than {target_text(record['foil'], names)}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fgvce_warning(record: Mapping[str, Any], names: Mapping[str, str] | None) -> str | None:
    flipped, all_pool = bool(record.get("flipped")), record.get("pool") == "all"
    if flipped and not all_pool:
        return None
    names = _names(record, names)
    run = ""
    if record.get("reversed"):
        run = (
            f", run from {target_text(record['source'], names)} to {target_text(record['goal'], names)}"
            " since the model prefers the foil"
        )
    head = f"FG-VCE: the counterfactual '{question_text(record, names)}' ({record.get('stage')} stage{run})"
    goal = target_text(record["goal"], names)
    any_of = "" if isinstance(record["goal"], int) else "any of "
    bank = f"the reference bank has no image of {any_of}{goal}, so candidates came from every class"
    if flipped:
        return f"{head} flipped in {_plural(int(record['steps']), 'step')}, but {bank}"
    stopped = str(record.get("stopped") or "step limit")
    parts = [
        f"{head} did not flip within {_plural(int(record['steps']), 'step')} "
        f"({_STOP_REASONS.get(stopped, stopped)}); its map comes from a failed search"
    ]
    if all_pool:
        parts.append(bank)
    return "; ".join(parts)


def _cce_warning(record: Mapping[str, Any], names: Mapping[str, str] | None) -> str | None:
    if record.get("foil") is None or record.get("reached_foil") is None or int(record["reached_foil"]) > 0:
        return None
    names = _names(record, names)
    n = len(record.get("l2") or [])
    return (
        f"CCE: none of the {_plural(n, 'counterfactual')} of '{question_text(record, names)}' "
        f"({record.get('stage')} stage) made the model prefer {target_text(record['foil'], names)} "
        f"within the L2 bound epsilon={float(record['epsilon']):g}; the map compares perturbations "
        "that moved towards the foil without reaching it"
    )


def diagnostic_warnings(
    diagnostics: Mapping[str, Sequence[Mapping[str, Any]]] | None, names: Mapping[str, str] | None = None
) -> list[str]:
    """Sentences for what a user must know about the counterfactuals behind the maps.

    FG-VCE: a summary when some loops did not flip the prediction, then one
    sentence per pair whose loop did not flip or drew its candidates from every
    class (the bank holds no image of the goal). CCE: one sentence per contrast
    none of whose counterfactuals made the model prefer the foil. ``names`` maps
    class ids (as strings) to names where the records lack them.
    """
    out: list[str] = []
    fgvce = list((diagnostics or {}).get(FGVCE_KEY) or [])
    failed = sum(not r.get("flipped") for r in fgvce)
    if failed:
        out.append(
            f"FG-VCE: {failed} of {_plural(len(fgvce), 'counterfactual')} did not flip the prediction; "
            "their contrast maps come from failed searches."
        )
    out.extend(w for r in fgvce if (w := _fgvce_warning(r, names)))
    out.extend(w for r in (diagnostics or {}).get(CCE_KEY) or [] if (w := _cce_warning(r, names)))
    return out


# --------------------------------------------------------------------------- the reference bank


def bank_record(
    name: str, summary: Mapping[str, Any], present: Iterable[int], asked: Iterable[int], class_names: Sequence[str]
) -> dict[str, Any]:
    """The bank behind FG-VCE's counterfactuals (FG-VCE Sec. 3.2) and what it lacks for this question.

    Args:
        name: how the user knows the bank (``"default"`` or the path given).
        summary: :meth:`cwox.store.reference_bank.ReferenceBank.summary`.
        present: the classes the bank holds an image of.
        asked: the classes of this image's questions (facts and foils).
        class_names: the model's class names.

    Returns:
        ``name``, ``images``, ``candidates``, ``classes`` (how many have an image),
        ``n_classes`` (the model's), ``asked``, ``missing`` (asked classes with no
        image: a loop towards one of them draws candidates from every class) and ``names``.
    """
    have = {int(c) for c in present}
    wanted = sorted({int(c) for c in asked})
    return {
        "name": str(name),
        "images": int(summary.get("images", 0)),
        "candidates": int(summary.get("candidates", 0)),
        "classes": len(have),
        "n_classes": len(class_names),
        "label_source": summary.get("label_source"),
        "asked": wanted,
        "missing": [c for c in wanted if c not in have],
        "names": class_names_json(wanted, class_names),
    }


def bank_text(record: Mapping[str, Any]) -> str:
    """One sentence on a :func:`bank_record`: its size and the asked classes it has no image of."""
    names = record.get("names") or {}
    head = (
        f"FG-VCE reference bank {record['name']}: {_plural(int(record['images']), 'image')} of "
        f"{record['classes']} of {record['n_classes']} classes ({int(record['candidates'])} candidate features)"
    )
    missing = [names.get(str(c), str(c)) for c in record.get("missing") or []]
    if not missing:
        return head + "; it has images of every class asked about"
    return (
        f"{head}; no image of {', '.join(missing)}: a counterfactual towards "
        f"{'it' if len(missing) == 1 else 'one of them'} draws candidates from every class"
    )
