"""FG-VCE: fine-grained counterfactual explanations with saliency partition.

Zhang, Yin and Lee, "Towards Fine-Grained Interpretability: Counterfactual
Explanations for Misclassification with Saliency Partition". Three parts:

**Saliency partition (Sec. 3.1, Eq. 1-4).** For the feature map ``h`` (``C x r x
c``) at a layer and a grid of Gaussian kernels, one centred on every feature
position ``k`` (Eq. 2, ``sigma = 0.8``), the reversed kernels ``G~ = 1 - G``
(Eq. 3) attenuate ``h`` around each centre: ``H~[k] = h * G~[k]`` (Eq. 4). Each
partitioned map goes through the rest of the network (:func:`cwox.core.split.split_at`)
and the refined Shapley value of position ``k`` is (Eq. 1)::

    s[k] = p_t(h) - p_t(H~[k])

with ``p_t`` the probability of target ``t`` (a compound target sums its
members' probabilities, CWOX Sec. 4.1). The ``r * c`` partitioned maps of an
image go through the network once, in batches, and give *every* class's output:
one set of passes serves all targets. This is the base role (:meth:`FGVCE.explain`),
upsampled bilinearly to the image; the map is signed, as Eq. 1 is (the public
code's ReLU and min-max scaling are left out; the paper writes neither).

**Counterfactual by feature replacement (Sec. 3.2, Eq. 5-9).** To turn the
prediction ``P`` into ``Q``: at step ``t`` take the position ``s*`` of largest
Shapley value ``s^(t)`` for ``P`` among positions not replaced yet, and replace
``h[:, s*]`` by the candidate feature (from a :class:`cwox.store.reference_bank.ReferenceBank`
of correctly classified images of ``Q``, top-``m`` positions each) that
maximises ``L_tot = cos(h_{s*}, h_cand) + log p_Q(h with the candidate)``
(Eq. 5, 6, 8, 9); stop when the prediction becomes ``Q`` or after
``max_steps = 100`` steps (failure). All candidates of a step go through the
network together, in batches, and several (fact, foil) questions run their
loops side by side in the same batches. Each question's candidate passes are
its own (every question has its own current map ``h^(t)``), except where maps
are provably identical: pairs that ask the same question once oriented run one
loop, and maps with the same replacements so far (``h0`` with the same
(position, candidate) set) share their partition pass, and their candidate
maps with the same position and candidate run once (e.g. two questions of one
source at the first step); ``h^(0)``'s partition is computed once.

**Invariant and dominant maps (Sec. 3.3, Eq. 10, 11)**::

    M_inv = s^(0)_P * relu(h^(0) - h*) / sum_ij relu(h^(0) - h*)
    M_dom = s*_Q    * relu(h* - h^(0)) / sum_ij relu(h* - h^(0))

where ``s*_Q`` is the Shapley map of the final ``h*`` for ``Q``. The paper
writes ``h`` as one ``n x n`` map; for a ``C``-channel map the ReLU'd difference
is summed over channels at each position before the normalisation.

Choices where the paper is silent (and where the public code differs):

* The loop never replaces a position twice: after replacing ``s*`` the most
  similar candidate is the one already there, so re-selecting it would stall.
  A map with every position replaced and no flip counts as a failure. So on a
  7x7 layer the loop ends after at most 49 steps, below the paper's limit ("We set
  the maximum number of iterations t to 100, exceeding this limit indicated
  failure in counterfactual generation", Sec. 4), which ResNet-50's own 7x7 last
  layer could not reach either with one replacement per iteration. The public
  code reaches 100 differently: each of its iterations re-ranks and replaces 20
  positions, revisiting positions. We keep one replacement per step, as the
  paper's Eq. 9 reads, and keep 100 as the limit for larger layers (14x14 has 196
  positions); decided after comparing both (2026-12-01).
* Eq. 10 and 11 multiply the Shapley map by the normalised ``relu(h^(0) - h*)``
  (and its reverse), which is non-zero only where ``h*`` differs from ``h^(0)``,
  i.e. on the replaced cells: so are the invariant and dominant maps, as the
  paper's formulas say ("we subtract the weighted feature map after
  counterfactual generation from the original feature map"). The public code's
  maps differ (Grad-CAM maps weighted by Shapley maps, subtracted, min-max
  scaled) and are non-zero elsewhere too; we follow the paper.
* Candidates are the bank's features of the foil's classes; when the bank holds
  no image of the foil, every candidate is used (the class term of ``L_tot``
  still pulls towards the foil) and the report says so.
* Stage two of CWOX-2s partitions a finer layer (``classifier.class_layer``,
  14x14 on EfficientNet-Lite0), as CWOX does for Grad-CAM; the paper has one
  layer, the last convolutional one, which stage one uses. Measured on 60 real
  photos (README, evaluation): with the paper's layer for both stages the
  stage-two map "c rather than the rest of its cluster" came out all zero in 103
  of 197 pairs (24 with the finer layer) and CWOX-2s lost its lead over the
  other modes; the finer layer costs about 5x the partition passes.
* "The prediction becomes Q": the top-1 class is one of Q's members when P holds
  the top-1 class; when it does not (a contrast between lower classes, as in
  CWOX-2s stage two), the loop stops once ``p_Q > p_P``.
* The public code replaces features of the last ResNet block and evaluates only
  the ``fc`` head, re-ranks 20 positions per round and weights Grad-CAM maps;
  here, as in the paper, the whole rest of the network after the layer is run,
  and the maps are Eq. 10 and 11.

Contrast role (``supports_contrast``): "P rather than Q" is the signed map
``M_inv - M_dom`` (P's evidence the counterfactual had to remove, minus the
evidence for Q it had to bring in). When the model prefers Q to P on the image,
the counterfactual runs the other way (Q into P) and the map is
``M_dom - M_inv`` of that run, so positive is always "for P". Each pair's loop
report (steps, flipped or why it stopped, candidate pool) comes back as a JSON record
in ``Answer.diagnostics`` (kind :data:`FGVCE_RECORDS`), which the engine copies into
``Explanation.diagnostics``: a map from a loop that did not flip is the map of a
failed search, and ``Explanation.warnings()`` says so. A record's fields:

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

``"reference_bank"`` (:func:`bank_record`), one per contrast call, and in :meth:`FGVCE.why`'s answer
    the bank the loops drew from, when it was given as a path (``name``: ``default
    (data/default_bank.zarr)`` for the embedded bank, which :meth:`FGVCE.default_params`
    offers the command line for the default model, else the path): its size, the
    classes asked and those it has no image of. The report folds an image's records
    into one note per bank (:func:`bank_notes`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from cwox.online.diagnostics import (
    RecordKind,
    Table,
    class_ids,
    class_names_json,
    plural,
    question_text,
    record_names,
    target_json,
    target_text,
)
from cwox.online.explainers.base import Answer, Explainer, register, stage_groups, upsample
from cwox.online.targets import Target, as_target, members, membership_matrix
from cwox.store.default_tree import DEFAULT_BANK
from cwox.store.reference_bank import ReferenceBank, load_reference_bank
from PIL import Image

from cwox.core.batching import batch_slices
from cwox.core.models import Classifier
from cwox.core.progress import progress
from cwox.core.split import ModelSplit, split_at

__all__ = [
    "FGVCE",
    "FGVCE_KEY",
    "FGVCE_RECORDS",
    "BANK_KEY",
    "DEFAULT_BANK",
    "BankReport",
    "bank_notes",
    "bank_record",
    "bank_text",
    "fgvce_record",
    "CounterfactualReport",
    "partition_kernels",
    "partition_probabilities",
    "partition_saliency",
]

#: Scale of the partition kernels (Sec. 4.1: "sigma was fixed at 0.8").
DEFAULT_SIGMA = 0.8
#: Step limit of the replacement loop (Sec. 4.1).
DEFAULT_MAX_STEPS = 100
#: The embedded reference bank, beside the default tree (built by ``python -m cwox.pipelines.default_bank``).
#: The model whose features the embedded bank holds (it serves no other).
DEFAULT_BANK_MODEL = "efficientnet_lite0"


# --------------------------------------------------------------------------- diagnostics

FGVCE_KEY = "fgvce_counterfactuals"

#: Why an FG-VCE loop stopped without a flip, as a sentence part.
_STOP_REASONS = {
    "step limit": "step limit reached",
    "no position left": "no position left to replace",
    "no candidates": "no candidates",
}


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
    ids = class_ids(record["fact"], record["foil"], record["top1_before"], record["top1_after"])
    record["names"] = class_names_json(ids, class_names)
    return record


def _fgvce_warning(record: Mapping[str, Any], names: Mapping[str, str] | None) -> str | None:
    flipped, all_pool = bool(record.get("flipped")), record.get("pool") == "all"
    if flipped and not all_pool:
        return None
    names = record_names(record, names)
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
        return f"{head} flipped in {plural(int(record['steps']), 'step')}, but {bank}"
    stopped = str(record.get("stopped") or "step limit")
    parts = [
        f"{head} did not flip within {plural(int(record['steps']), 'step')} "
        f"({_STOP_REASONS.get(stopped, stopped)}); its map comes from a failed search"
    ]
    if all_pool:
        parts.append(bank)
    return "; ".join(parts)


def _fgvce_warnings(records: Sequence[Mapping[str, Any]], names: Mapping[str, str] | None) -> list[str]:
    """A summary when some loops did not flip, then a sentence per pair whose loop did not
    flip or drew its candidates from every class (the bank holds no image of the goal)."""
    out = []
    failed = sum(not r.get("flipped") for r in records)
    if failed:
        out.append(
            f"FG-VCE: {failed} of {plural(len(records), 'counterfactual')} did not flip the prediction; "
            "their contrast maps come from failed searches."
        )
    out.extend(w for r in records if (w := _fgvce_warning(r, names)))
    return out


def _fgvce_table(records: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> Table:
    """One row per pair: question, stage, steps, flipped, stopped, pool; a loop that did
    not flip is a bad row, a pool of every class a bad cell."""
    failed = sum(not r.get("flipped") for r in records)
    rows = [
        (
            not r.get("flipped"),
            [
                (question_text(r, names), False),
                (str(r.get("stage")), False),
                (f"{r.get('steps')} / {r.get('max_steps')}", False),
                ("yes" if r.get("flipped") else "no", not r.get("flipped")),
                (str(r.get("stopped")), False),
                (str(r.get("pool")), r.get("pool") == "all"),
            ],
        )
        for r in records
    ]
    return Table(f"FG-VCE counterfactuals ({failed} of {len(records)} did not flip)",
                 ("question", "stage", "steps", "flipped", "stopped", "pool"), rows)


#: FG-VCE's diagnostics: one record per contrast pair, its replacement loop (Sec. 3.2, Eq. 5-9).
FGVCE_RECORDS = RecordKind(FGVCE_KEY, _fgvce_warnings, _fgvce_table)

#: The reference bank FG-VCE's counterfactuals drew from, and its limits (:func:`bank_record`).
BANK_KEY = "reference_bank"


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
        f"FG-VCE reference bank {record['name']}: {plural(int(record['images']), 'image')} of "
        f"{record['classes']} of {record['n_classes']} classes ({int(record['candidates'])} candidate features)"
    )
    missing = [names.get(str(c), str(c)) for c in record.get("missing") or []]
    if not missing:
        return head + "; it has images of every class asked about"
    return (
        f"{head}; no image of {', '.join(missing)}: a counterfactual towards "
        f"{'it' if len(missing) == 1 else 'one of them'} draws candidates from every class"
    )


def bank_notes(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One :func:`bank_text` per bank: the records of one image's calls (one per stage that
    ran counterfactuals) are folded into one, asking the union of their classes."""
    merged: dict[str, dict[str, Any]] = {}
    for r in records:
        m = merged.get(str(r["name"]))
        if m is None:
            merged[str(r["name"])] = {**r, "asked": list(r.get("asked") or []), "missing": list(r.get("missing") or []),
                                      "names": dict(r.get("names") or {})}
            continue
        m["asked"] = sorted({*m["asked"], *(r.get("asked") or [])})
        m["missing"] = sorted({*m["missing"], *(r.get("missing") or [])})
        m["names"] = {**m["names"], **(r.get("names") or {})}
    return [bank_text(m) for m in merged.values()]


#: The bank behind the counterfactuals, a note in the report (:func:`bank_notes`).
BANK_RECORDS = RecordKind(BANK_KEY, notes=bank_notes)


@dataclass(frozen=True)
class BankReport:
    """The :func:`bank_record` of one :meth:`FGVCE.why` answer; ``as_dict()`` is the record."""

    record: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.record)


def _bank_name(reference_bank: Any) -> str | None:
    """How the user knows a bank given as a path: ``default (data/default_bank.zarr)`` for the
    embedded one, else the path as given; ``None`` for a bank given as an object (no record)."""
    if reference_bank is None or isinstance(reference_bank, ReferenceBank):
        return None
    path = Path(reference_bank)
    if path.exists() and DEFAULT_BANK.exists() and path.resolve() == DEFAULT_BANK.resolve():
        return f"default ({DEFAULT_BANK.parent.name}/{DEFAULT_BANK.name})"
    return str(reference_bank)


# --------------------------------------------------------------------------- partition (Eq. 1-4)


def partition_kernels(rows: int, cols: int, sigma: float = DEFAULT_SIGMA, device: torch.device | str | None = None) -> torch.Tensor:
    """The reversed Gaussian kernels ``G~ = 1 - G`` (Eq. 2, 3), ``(rows*cols) x rows x cols``.

    Kernel ``k`` is centred on grid position ``(k // cols, k % cols)`` and is close
    to 1 everywhere except a dip around its centre. The paper's grid is square
    (``n x n``); any ``rows x cols`` grid works the same way.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"the feature grid must be at least 1 x 1, got {rows} x {cols}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    ys = torch.arange(rows, device=device, dtype=torch.float32)
    xs = torch.arange(cols, device=device, dtype=torch.float32)
    y_grid, x_grid = torch.meshgrid(ys, xs, indexing="ij")  # the grids X, Y of Sec. 3.1
    centres_y, centres_x = y_grid.reshape(-1), x_grid.reshape(-1)  # c_k, one per position
    d2 = (y_grid[None] - centres_y[:, None, None]) ** 2 + (x_grid[None] - centres_x[:, None, None]) ** 2
    return 1.0 - torch.exp(-d2 / (2.0 * float(sigma) ** 2))


@torch.inference_mode()
def partition_probabilities(
    rest: Any, h: torch.Tensor, kernels: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities of ``h`` and of all its partitioned maps ``H~[k] = h * G~[k]`` (Eq. 4).

    Args:
        rest: the network after the layer (``activation -> logits``).
        h: ``B x C x r x c`` feature maps.
        kernels: ``K x r x c`` from :func:`partition_kernels`.
        batch_size: maps per forward pass of ``rest``.

    Returns:
        ``p_h`` (``B x n_classes``) and ``p_H~`` (``B x K x n_classes``). The
        ``B * K`` partitioned maps are built one batch at a time.
    """
    b, k = h.shape[0], kernels.shape[0]
    p_h = torch.cat([torch.softmax(rest(h[sl]).float(), -1) for sl in batch_slices(b, batch_size)])
    out = []
    for sl in progress(batch_slices(b * k, batch_size), total=b * k, desc="FG-VCE partitions", unit="map"):
        idx = torch.arange(sl.start, sl.stop, device=h.device)
        maps = h[idx // k] * kernels[idx % k].unsqueeze(1)
        out.append(torch.softmax(rest(maps).float(), -1))
    return p_h, torch.cat(out).view(b, k, -1)


def partition_saliency(p_h: torch.Tensor, p_tilde: torch.Tensor, member: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Refined Shapley values ``s = p_h * 1 - p_H~`` (Eq. 1) for every target at once.

    Args:
        p_h: ``B x n_classes``; p_tilde: ``B x K x n_classes`` (from
            :func:`partition_probabilities`).
        member: ``T x n_classes`` membership of the targets (a compound target's
            probability is the sum of its members').
        grid: the feature grid ``(r, c)`` with ``r * c = K``.

    Returns:
        ``B x T x r x c``.
    """
    whole = p_h @ member.T  # B x T
    parts = p_tilde @ member.T  # B x K x T
    s = whole.unsqueeze(1) - parts
    return s.permute(0, 2, 1).reshape(p_h.shape[0], member.shape[0], *grid)


# --------------------------------------------------------------------------- counterfactual report


@dataclass
class CounterfactualReport:
    """What the replacement loop did for one (source, goal) question.

    Attributes:
        source, goal: the class (or compound class) turned from, and into.
        steps: replacements made.
        flipped: whether the prediction reached ``goal`` within ``max_steps``.
        criterion: ``"top1"`` (the top class becomes one of goal's members, the
            paper's rule) or ``"pair"`` (``p_goal > p_source``).
        max_steps: the step limit.
        positions: replaced feature positions (row, column), in order.
        candidates: bank rows of the candidates put there.
        candidate_classes: classes of their reference images.
        source_probs, goal_probs: probabilities before the loop and after each step.
        top1_before, top1_after: the predicted class before and after.
        pool: ``"goal"`` (candidates of goal's classes) or ``"all"`` (the bank
            has none of goal's classes).
        stopped: ``"flipped"``, ``"step limit"``, ``"no position left"`` or ``"no candidates"``.
    """

    source: Target
    goal: Target
    steps: int = 0
    flipped: bool = False
    criterion: str = "top1"
    max_steps: int = DEFAULT_MAX_STEPS
    positions: list[tuple[int, int]] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)
    candidate_classes: list[int] = field(default_factory=list)
    source_probs: list[float] = field(default_factory=list)
    goal_probs: list[float] = field(default_factory=list)
    top1_before: int = -1
    top1_after: int = -1
    pool: str = "goal"
    stopped: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("source", "goal"):
            d[key] = target_json(getattr(self, key))
        d["positions"] = [list(p) for p in self.positions]
        return d


@dataclass(frozen=True)
class _Question:
    source: Target
    goal: Target
    criterion: str


# --------------------------------------------------------------------------- the explainer


@register("fgvce")
class FGVCE(Explainer):
    """FG-VCE saliency partition (base role) and counterfactual maps (contrast role, :meth:`why`).

    Args:
        classifier: the model.
        reference_bank: a :class:`~cwox.store.reference_bank.ReferenceBank`, or the path
            of a store holding one (a documents store with a ``reference_bank``
            group, or the bank itself), built by
            :func:`cwox.offline.reference_bank.build_reference_bank`. Needed for the
            counterfactuals (:meth:`contrast`, :meth:`why`), not for :meth:`explain`.
            The counterfactuals replace features at the bank's layer.
        cluster_layer: partition layer of stage one; default ``classifier.cluster_layer``,
            the last convolutional layer, where the paper partitions and replaces
            (Sec. 4, "Implementation Details").
        class_layer: partition layer of stage two; default the finer
            ``classifier.class_layer`` (see the module doc); pass the cluster
            layer to share one set of partitions between the stages.
        sigma: scale of the Gaussian partition kernels (paper: 0.8).
        max_steps: step limit of the replacement loop (paper: 100).
        batch_size: feature maps per forward pass of the network's rest.
    """

    supports_contrast = True
    contrast_requires = "a reference bank"
    question_maps = ("invariant", "dominant")
    records = (FGVCE_RECORDS, BANK_RECORDS)
    cli_options = {"--reference-bank": "reference_bank"}
    #: Shapley values are probability differences, centred at 0: subtract as they are.
    default_normalization = "none"
    default_support = 50.0

    @classmethod
    def default_params(cls, classifier: Classifier) -> dict[str, Any]:
        """The embedded reference bank, for the default model only (its features are that
        model's); for another model FG-VCE runs without a bank (base role) unless one is given."""
        if classifier.name == DEFAULT_BANK_MODEL and DEFAULT_BANK.exists():
            return {"reference_bank": str(DEFAULT_BANK)}
        return {}

    def __init__(
        self,
        classifier: Classifier,
        *,
        reference_bank: ReferenceBank | str | os.PathLike | None = None,
        cluster_layer: str | None = None,
        class_layer: str | None = None,
        sigma: float = DEFAULT_SIGMA,
        max_steps: int = DEFAULT_MAX_STEPS,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(classifier, batch_size=batch_size)
        self._use_layers(cluster_layer or classifier.cluster_layer, class_layer or classifier.class_layer)
        if not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.sigma = float(sigma)
        self.max_steps = int(max_steps)
        #: How reports name the bank (a bank given as a path); None: no bank record.
        self.bank_name = _bank_name(reference_bank)
        if reference_bank is not None and not isinstance(reference_bank, ReferenceBank):
            reference_bank = load_reference_bank(reference_bank)
        self.bank = reference_bank
        if self.bank is not None:
            self._check_bank(self.bank)
        # The contrast role needs the bank: without one the engine falls back to the
        # base role (subtraction of partition maps) instead of failing.
        self.supports_contrast = self.bank is not None
        self._splits: dict[str, ModelSplit] = {}
        self._kernels: dict[tuple[int, int], torch.Tensor] = {}
        self._bank_tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.forward_passes = 0  # feature maps fed to the network's rest so far

    # ---- setup ------------------------------------------------------------------

    def _check_bank(self, bank: ReferenceBank) -> None:
        self.classifier.layer(bank.layer)
        if bank.model and bank.model != self.classifier.name:
            raise ValueError(
                f"the reference bank was built with model {bank.model!r}, not {self.classifier.name!r}"
            )
        if len(bank) == 0:
            raise ValueError("the reference bank holds no candidate features")
        if int(bank.labels.max()) >= self.classifier.n_classes:
            raise ValueError("the reference bank has class ids beyond the model's outputs")

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            **self._layer_settings(),
            "sigma": self.sigma,
            "max_steps": self.max_steps,
            "reference_bank": self.bank.summary() if self.bank is not None else None,
        }

    def _bank_record(self, asked: Iterable[Any]) -> dict[str, Any]:
        """The :func:`bank_record` of this explainer's bank for the classes (or targets) ``asked``."""
        bank = self.bank
        return bank_record(str(self.bank_name), bank.summary(), bank.classes.tolist(), class_ids(*asked),
                           self.classifier.class_names)

    def split(self, layer: str) -> ModelSplit:
        """The model cut at ``layer`` (cached)."""
        if layer not in self._splits:
            self._splits[layer] = split_at(self.classifier, layer)
        return self._splits[layer]

    def kernels(self, grid: tuple[int, int]) -> torch.Tensor:
        """``G~`` for a feature grid (cached per grid)."""
        if grid not in self._kernels:
            self._kernels[grid] = partition_kernels(*grid, sigma=self.sigma, device=self.device)
        return self._kernels[grid]

    def _rest(self, split: ModelSplit):
        def run(maps: torch.Tensor) -> torch.Tensor:
            self.forward_passes += maps.shape[0]
            return split.rest(maps)

        return run

    @torch.inference_mode()
    def features(self, image: torch.Tensor | Image.Image, layer: str) -> torch.Tensor:
        """The feature map ``h`` of one image at ``layer``, ``C x r x c``."""
        x = self.prepare(image)
        h = self.split(layer).front(x.unsqueeze(0))
        if h.dim() != 4:
            raise ValueError(f"layer {layer!r} gives {tuple(h.shape)}, not a 1 x C x h x w feature map")
        return h[0]

    # ---- base role: saliency partition --------------------------------------------

    def base_role(self, image: torch.Tensor | Image.Image, requests: Mapping[str, Sequence[Target]]) -> Answer:
        """Maps for several stages; stages on the same layer share one set of partitions.

        The base role runs no counterfactual: no diagnostics.
        """
        x = self.prepare(image)
        out: dict[str, torch.Tensor] = {}
        for layer, union, rows in stage_groups(self.checked_requests(requests), self.layers.__getitem__):
            maps = self._upsample(self._layer_saliency(x, layer, union), x.shape[-2:])
            out.update({s: maps[r] for s, r in rows.items()})
        return Answer(out)

    def grid_saliency(
        self, image: torch.Tensor | Image.Image, targets: Sequence[Target | Iterable[int]], *, stage: str = "cluster"
    ) -> torch.Tensor:
        """The refined Shapley values ``s`` (Eq. 1) on the feature grid, ``T x r x c`` (before upsampling)."""
        x = self.prepare(image)
        checked = self.check_targets(targets, self.classifier.n_classes)
        return self._layer_saliency(x, self.layers[self.check_stage(stage)], checked)

    @torch.inference_mode()
    def _layer_saliency(self, x: torch.Tensor, layer: str, targets: list[Target]) -> torch.Tensor:
        """Shapley maps ``T x r x c`` of ``targets`` at ``layer`` (Eq. 1)."""
        split = self.split(layer)
        h = self.features(x, layer).unsqueeze(0)
        grid = (h.shape[-2], h.shape[-1])
        p_h, p_tilde = partition_probabilities(self._rest(split), h, self.kernels(grid), self.batch_size)
        member = membership_matrix(targets, self.classifier.n_classes, self.device)
        return partition_saliency(p_h, p_tilde, member, grid)[0]

    @staticmethod
    def _upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Grid maps to the image, bilinearly, as float32."""
        return upsample(maps.float(), size)

    # ---- contrast role and the direct question --------------------------------------

    def contrast_role(
        self, image: torch.Tensor | Image.Image, pairs: Sequence[tuple[Target, Target]], stage: str
    ) -> Answer:
        """Signed "fact rather than foil" maps ``P x H x W`` from counterfactuals (see the module doc).

        Every pair runs its replacement loop at the bank's layer (the paper
        replaces features of the last convolutional layer only, so both stages
        use it); the loops of all pairs share their batches.

        ``Answer.diagnostics["fgvce_counterfactuals"]`` holds one record per pair, in
        order (:func:`fgvce_record`): the loop's
        :class:`CounterfactualReport` (Eq. 5-9), whether it flipped, why it
        stopped, whether its candidates came from the goal's classes.
        """
        x = self.prepare(image)
        checked = [self._check_pair(fact, foil) for fact, foil in pairs]
        if not checked:
            raise ValueError("no (fact, foil) pairs given")
        probs = self.classifier.probabilities(x.unsqueeze(0))[0].float()
        questions, flipped_dir = [], []
        for fact, foil in checked:
            p_fact, p_foil = self._target_prob(probs, fact), self._target_prob(probs, foil)
            forward = p_fact >= p_foil
            src, goal = (fact, foil) if forward else (foil, fact)
            questions.append(_Question(src, goal, self._criterion(probs, src)))
            flipped_dir.append(not forward)
        # Pairs that ask the same question once oriented ("C_1 rather than C_2" and
        # "C_2 rather than C_1" both run C_1 -> C_2) share one loop: same maps, signs apart.
        unique = list(dict.fromkeys(questions))
        answers = dict(zip(unique, self._counterfactuals(x, unique), strict=True))
        results = [answers[q] for q in questions]
        maps, records = [], []
        for (fact, foil), res, backwards in zip(checked, results, flipped_dir, strict=True):
            m = res["invariant"] - res["dominant"]
            maps.append(-m if backwards else m)
            records.append(
                fgvce_record(
                    stage, fact, foil, backwards, self.bank.layer, res["report"].as_dict(), self.classifier.class_names
                )
            )
        diagnostics = {FGVCE_KEY: records}
        if self.bank_name is not None:  # which bank, and which classes of these pairs it has no image of
            diagnostics[BANK_KEY] = [self._bank_record([t for pair in checked for t in pair])]
        return Answer({stage: torch.stack(maps)}, diagnostics=diagnostics)

    def why(
        self, image: torch.Tensor | Image.Image, fact: Target | Iterable[int], foil: Target | Iterable[int] | None = None
    ) -> dict[str, Any]:
        """FG-VCE's answer to "why P rather than Q?" (Sec. 3.3, Fig. 4).

        Args:
            image: a photo or a normalised tensor.
            fact: P, the class the model predicts (or a set of classes); the model
                must prefer it to Q on this image.
            foil: Q, the class (or classes) it "should" have been; default: the
                most probable class outside P.

        Returns:
            ``{"invariant": M_inv, "dominant": M_dom, "contrast": M_inv - M_dom,
            "fact_saliency": s^(0) for P, "foil_saliency": s* for Q}`` (each ``H x W``)
            and ``"report"``: the :class:`CounterfactualReport` of the loop; with a bank
            given as a path, also ``"reference_bank"``: a :class:`BankReport` (the
            :func:`bank_record` of P and Q).
        """
        x = self.prepare(image)
        probs = self.classifier.probabilities(x.unsqueeze(0))[0].float()
        fact_t = self.check_targets([fact], self.classifier.n_classes)[0]
        if foil is None:
            ranked = torch.argsort(probs, descending=True).tolist()
            foil_t: Target = next(int(c) for c in ranked if c not in set(members(fact_t)))
        else:
            foil_t = self._check_pair(fact_t, foil)[1]
        p_fact, p_foil = self._target_prob(probs, fact_t), self._target_prob(probs, foil_t)
        if not p_fact > p_foil:
            names = self.classifier.class_names
            raise ValueError(
                f"the model does not prefer {_label(fact_t, names)} (p={p_fact:.3g}) to "
                f"{_label(foil_t, names)} (p={p_foil:.3g}) on this image; ask why the foil rather than the fact"
            )
        (res,) = self._counterfactuals(x, [_Question(fact_t, foil_t, self._criterion(probs, fact_t))])
        res["contrast"] = res["invariant"] - res["dominant"]
        if self.bank_name is not None:
            res[BANK_KEY] = BankReport(self._bank_record([fact_t, foil_t]))
        return res

    def _check_pair(self, fact: Target | Iterable[int], foil: Target | Iterable[int]) -> tuple[Target, Target]:
        fact_t, foil_t = self.check_targets([fact, foil], self.classifier.n_classes)
        if fact_t == foil_t:
            raise ValueError(f"the foil {foil_t!r} equals the fact: ask why P rather than another class")
        overlap = set(members(fact_t)) & set(members(foil_t))
        if overlap:
            raise ValueError(f"the foil {foil_t!r} contains classes of the fact {fact_t!r}: {sorted(overlap)}")
        return fact_t, foil_t

    @staticmethod
    def _target_prob(probs: torch.Tensor, target: Target) -> float:
        return float(probs[list(members(target))].sum())

    @staticmethod
    def _criterion(probs: torch.Tensor, source: Target) -> str:
        return "top1" if int(probs.argmax()) in set(members(source)) else "pair"

    # ---- the replacement loop (Eq. 5-9) and the maps (Eq. 10, 11) ----------------------

    def _bank_on_device(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bank is None:
            raise ValueError(
                "FG-VCE's counterfactuals need a reference bank of correctly classified images: "
                "build one with cwox.offline.reference_bank.build_reference_bank (or cwox documents "
                "--reference-bank) and pass reference_bank=..."
            )
        if self._bank_tensors is None:
            feats = torch.as_tensor(self.bank.features, device=self.device, dtype=torch.float32)
            labels = torch.as_tensor(self.bank.labels, device=self.device, dtype=torch.long)
            self._bank_tensors = (feats, labels)
        return self._bank_tensors

    @torch.inference_mode()
    def _counterfactuals(self, x: torch.Tensor, questions: list[_Question]) -> list[dict[str, Any]]:
        """Run the replacement loops of ``questions`` side by side; maps and reports per question."""
        cand, cand_labels = self._bank_on_device()
        layer = self.bank.layer
        split = self.split(layer)
        rest = self._rest(split)
        h0 = self.features(x, layer)  # C x r x c
        c, r, w = h0.shape
        if c != cand.shape[1]:
            raise ValueError(f"the reference bank has {cand.shape[1]}-channel features, layer {layer!r} gives {c}")
        if tuple(self.bank.grid) != (r, w):
            raise ValueError(f"the reference bank was built on a {self.bank.grid} grid, the image gives {(r, w)}")
        grid, n_pos = (r, w), r * w
        kernels = self.kernels(grid)
        n_cls = self.classifier.n_classes
        b = len(questions)
        src_m = membership_matrix([q.source for q in questions], n_cls, self.device)  # B x n_cls
        goal_m = membership_matrix([q.goal for q in questions], n_cls, self.device)
        pair_rule = torch.tensor([q.criterion == "pair" for q in questions], device=self.device)

        # Candidate pools: the bank rows of each goal's classes (all rows when there are none).
        in_goal = goal_m[:, cand_labels] > 0  # B x N
        pools = [row.nonzero().flatten() if bool(row.any()) else torch.arange(len(cand_labels), device=self.device) for row in in_goal]
        pool_kind = ["goal" if bool(row.any()) else "all" for row in in_goal]
        width = max(len(p) for p in pools)
        pool = torch.full((b, width), -1, dtype=torch.long, device=self.device)
        for i, p in enumerate(pools):
            pool[i, : len(p)] = p
        valid = pool >= 0
        flat_q, flat_k = valid.nonzero(as_tuple=True)  # every (question, candidate slot) pair
        flat_cand = pool[flat_q, flat_k]
        cand_unit = F.normalize(cand, dim=1)

        # s^(0): one partition pass of h0 serves every question.
        p0, pt0 = partition_probabilities(rest, h0.unsqueeze(0), kernels, self.batch_size)
        s0_src = partition_saliency(p0, pt0, src_m, grid)[0]  # B x r x c, for each source
        top1_before = int(p0[0].argmax())
        reports = [
            CounterfactualReport(
                source=q.source, goal=q.goal, criterion=q.criterion, max_steps=self.max_steps,
                top1_before=top1_before, pool=kind,
                source_probs=[float(p0[0] @ src_m[i])], goal_probs=[float(p0[0] @ goal_m[i])],
            )
            for i, (q, kind) in enumerate(zip(questions, pool_kind))
        ]

        h = h0.unsqueeze(0).repeat(b, 1, 1, 1)  # B x C x r x c, h^(t) of each question
        # h^(t) of question i is h0 with the replacements state[i] ((position, bank row),
        # sorted; a position is never replaced twice): equal states mean equal maps.
        state: list[tuple[tuple[int, int], ...]] = [() for _ in range(b)]
        replaced = torch.zeros(b, n_pos, dtype=torch.bool, device=self.device)
        done = self._reached(p0.expand(b, -1), src_m, goal_m, pair_rule)
        for i in done.nonzero().flatten().tolist():
            reports[i].flipped, reports[i].stopped = True, "flipped"
        s_t = s0_src
        for _step in progress(range(self.max_steps), desc="FG-VCE replacement steps", unit="step"):
            active = (~done).nonzero().flatten()
            if active.numel() == 0:
                break
            if _step > 0:  # s^(t) for P on the current maps of the open questions
                # Questions whose maps are identical (same replacements) share one partition pass.
                reps, group = self._same_maps(active, state)
                ph, pt = partition_probabilities(rest, h[reps], kernels, self.batch_size)
                s_t = torch.zeros_like(s0_src)
                s_t[active] = torch.einsum("akn,an->ak", (ph.unsqueeze(1) - pt)[group], src_m[active]).view(-1, *grid)
            scores = s_t.reshape(b, n_pos).masked_fill(replaced, float("-inf"))
            no_pos = torch.isinf(scores).all(dim=1) & ~done
            for i in no_pos.nonzero().flatten().tolist():
                reports[i].stopped = "no position left"
            done |= no_pos
            active = (~done).nonzero().flatten()
            if active.numel() == 0:
                break
            target_pos = scores.argmax(dim=1)  # B: s* = argmax s^(t)
            ty, tx = target_pos // w, target_pos % w
            target_feat = h[torch.arange(b, device=self.device), :, ty, tx]  # B x C

            # Eq. 5-9 over every candidate of every open question, in batches.
            open_pair = done.logical_not()[flat_q]
            pq, pc = flat_q[open_pair], flat_cand[open_pair]
            slot = flat_k[open_pair]
            total = torch.full((b, width), float("-inf"), device=self.device)
            reached = torch.zeros(b, width, dtype=torch.bool, device=self.device)
            p_src = torch.zeros(b, width, device=self.device)
            p_goal = torch.zeros(b, width, device=self.device)
            sim = (F.normalize(target_feat, dim=1)[pq] * cand_unit[pc]).sum(1)  # L_sim (cosine)
            # A candidate map is h^(t) of its question with one position replaced: questions
            # with identical maps, the same position and the same candidate row give the
            # same map, which runs once (e.g. questions of one source at the first step).
            state_id = torch.as_tensor(self._state_ids(state), device=self.device)
            map_key = (state_id[pq] * n_pos + target_pos[pq]) * len(cand) + pc
            uniq, inverse = torch.unique(map_key, return_inverse=True)
            order = torch.arange(map_key.numel(), device=self.device)
            first = torch.full((uniq.numel(),), map_key.numel(), dtype=torch.long, device=self.device)
            first = first.scatter_reduce(0, inverse, order, reduce="amin")
            uq, uc = pq[first], pc[first]
            probs_u = []
            for sl in batch_slices(uq.numel(), self.batch_size):
                qi, ci = uq[sl], uc[sl]
                maps = h[qi].clone()
                rows = torch.arange(qi.numel(), device=self.device)
                maps[rows, :, ty[qi], tx[qi]] = cand[ci]
                probs_u.append(torch.softmax(rest(maps).float(), -1))
            probs = torch.cat(probs_u)[inverse]  # every open (question, candidate) pair
            ps, pg = (probs * src_m[pq]).sum(1), (probs * goal_m[pq]).sum(1)
            l_cls = torch.log(pg.clamp_min(1e-30))  # Eq. 6, 7: sum_c y_c log f_c, y = goal
            total[pq, slot] = sim + l_cls  # Eq. 8
            reached[pq, slot] = self._reached(probs, src_m[pq], goal_m[pq], pair_rule[pq])
            p_src[pq, slot], p_goal[pq, slot] = ps, pg
            # Eq. 9, for every open question at once; one transfer to the host per step
            # (on CUDA, element-wise reads would wait for the device once per value).
            k = total[active].argmax(dim=1)
            rows, pos = pool[active, k], target_pos[active]
            h[active, :, ty[active], tx[active]] = cand[rows]
            replaced[active, pos] = True
            got = reached[active, k]
            done[active] = got
            moves = torch.stack([rows, pos, cand_labels[rows], got.long()], 1).tolist()
            probs_k = torch.stack([p_src[active, k], p_goal[active, k]], 1).tolist()
            for i, (row, at, label, flipped), (ps, pg) in zip(active.tolist(), moves, probs_k, strict=True):
                state[i] = tuple(sorted((*state[i], (at, row))))
                rep = reports[i]
                rep.steps += 1
                rep.positions.append(divmod(at, w))
                rep.candidates.append(row)
                rep.candidate_classes.append(label)
                rep.source_probs.append(ps)
                rep.goal_probs.append(pg)
                if flipped:
                    rep.flipped, rep.stopped = True, "flipped"
        for rep in reports:
            rep.stopped = rep.stopped or "step limit"

        # Eq. 10, 11 on the final maps h*: one partition per distinct map, h0's already known.
        changed = torch.as_tensor([i for i in range(b) if state[i]], dtype=torch.long, device=self.device)
        p_star, pt_star = p0.expand(b, -1).clone(), pt0.expand(b, -1, -1).clone()
        if changed.numel():
            reps, group = self._same_maps(changed, state)
            ph, pt = partition_probabilities(rest, h[reps], kernels, self.batch_size)
            p_star[changed], pt_star[changed] = ph[group], pt[group]
        s_star_goal = torch.einsum("bkn,bn->bk", p_star.unsqueeze(1) - pt_star, goal_m).view(b, *grid)
        top1_after = p_star.argmax(dim=1).tolist()
        dec = torch.relu(h0.unsqueeze(0) - h).sum(1)  # B x r x c
        inc = torch.relu(h - h0.unsqueeze(0)).sum(1)
        inv = s0_src * dec / dec.sum((1, 2), keepdim=True).clamp_min(1e-12)
        dom = s_star_goal * inc / inc.sum((1, 2), keepdim=True).clamp_min(1e-12)
        size = x.shape[-2:]
        inv_up, dom_up = self._upsample(inv, size), self._upsample(dom, size)
        s0_up, sstar_up = self._upsample(s0_src, size), self._upsample(s_star_goal, size)
        out = []
        for i, rep in enumerate(reports):
            rep.top1_after = int(top1_after[i])
            out.append(
                {
                    "invariant": inv_up[i],
                    "dominant": dom_up[i],
                    "fact_saliency": s0_up[i],
                    "foil_saliency": sstar_up[i],
                    "report": rep,
                }
            )
        return out

    @staticmethod
    def _state_ids(state: Sequence[tuple[tuple[int, int], ...]]) -> list[int]:
        """One id per distinct replacement state (questions with equal ids have equal maps)."""
        ids: dict[tuple[tuple[int, int], ...], int] = {}
        return [ids.setdefault(st, len(ids)) for st in state]

    def _same_maps(
        self, rows: torch.Tensor, state: Sequence[tuple[tuple[int, int], ...]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For question indices ``rows``: one representative per distinct map, and each row's group in them."""
        ids = self._state_ids([state[i] for i in rows.tolist()])
        first: dict[int, int] = {}
        for k, g in enumerate(ids):
            first.setdefault(g, k)
        reps = rows[torch.as_tensor(list(first.values()), dtype=torch.long, device=rows.device)]
        return reps, torch.as_tensor(ids, dtype=torch.long, device=rows.device)

    @staticmethod
    def _reached(probs: torch.Tensor, src_m: torch.Tensor, goal_m: torch.Tensor, pair_rule: torch.Tensor) -> torch.Tensor:
        """Whether each row's prediction has turned into its goal (see the module doc)."""
        top1_in_goal = goal_m.gather(1, probs.argmax(dim=1, keepdim=True)).squeeze(1) > 0
        pair = (probs * goal_m).sum(1) > (probs * src_m).sum(1)
        return torch.where(pair_rule, pair, top1_in_goal)


def _label(target: Target, names: Sequence[str]) -> str:
    return " + ".join(names[i] for i in members(as_target(target)))
