"""A direct contrastive question, "why P (rather than Q)?", answered by one explainer.

Each explainer declares whether it answers and with which maps
(``Explainer.question_maps``; ``other_image`` for a second image): CCE answers with
positive/negative maps (and, given a second image, the O-contrast of its Sec. 3),
SUNY with sufficiency/necessity maps, FG-VCE with invariant/dominant maps plus its
replacement report. :func:`answer_question` resolves class names or ids, asks the
explainer's ``why`` and :func:`write_question_report` writes ``why.png`` (one
overlay per map), ``why.npz`` and ``why.json``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cwox.core.models import Classifier


def question_explainers(feature: str = "question_maps") -> list[str]:
    """Names of the registered explainers that answer direct questions (``feature``:
    ``"question_maps"``), or that take a second image (``"other_image"``)."""
    from cwox.online.explainers import available_explainers, explainer_class

    return [n for n in available_explainers() if getattr(explainer_class(n), feature)]


def resolve_classes(spec: str | Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Class ids from names or ids (a comma-separated string or a list); clear errors."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    if not items:
        raise ValueError("no class given")
    lookup = {n.lower(): i for i, n in enumerate(class_names)}
    out = []
    for item in items:
        if str(item).isdigit():
            i = int(item)
            if not 0 <= i < len(class_names):
                raise ValueError(f"class id {i} outside 0..{len(class_names) - 1}")
        elif str(item).lower() in lookup:
            i = lookup[str(item).lower()]
        else:
            close = difflib.get_close_matches(str(item), class_names, n=4)
            raise ValueError(f"unknown class {item!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
        out.append(i)
    return out


def answer_question(
    explainer, classifier: Classifier, image: Image.Image, fact: list[int], foil: list[int] | None,
    other: Image.Image | None = None,
) -> dict[str, Any]:
    """Ask ``explainer.why`` and return its maps as numpy arrays plus any report."""
    if foil is not None and set(fact) & set(foil):
        raise ValueError("the contrast class Q must differ from P (and not contain it)")
    p = fact[0] if len(fact) == 1 else frozenset(fact)
    q = None if foil is None else (foil[0] if len(foil) == 1 else frozenset(foil))
    x = classifier.preprocess(image)
    if other is not None:
        if not explainer.other_image:
            names = ", ".join(question_explainers("other_image"))
            raise ValueError(f"--other (the O-contrast of two images) is not a question {explainer.name} answers; "
                             f"use --explainer {names}")
        answer = explainer.why(x, p, q, other=classifier.preprocess(other))
    else:
        answer = explainer.why(x, p, q)
    maps, extra = {}, {}
    for name, value in answer.items():
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            maps[name] = value.detach().float().cpu().numpy()
        elif hasattr(value, "as_dict"):
            extra[name] = value.as_dict()
    return {"maps": maps, "extra": extra}


def write_question_report(
    out_dir: str | Path, image: np.ndarray, answer: dict[str, Any], meta: dict[str, Any],
    order: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``why.png``, ``why.npz`` and ``why.json`` for one answered question."""
    from cwox.online.render import dimmed_photo, overlay, scale_map
    from cwox.online.report import to_jsonable
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    maps = answer["maps"]
    names = [n for n in order if n in maps] + [n for n in maps if n not in order]
    fig = Figure(figsize=(2.6 * (len(names) + 1), 3.0), dpi=100)
    ax = fig.add_subplot(1, len(names) + 1, 1)
    ax.imshow(image)
    ax.set_title("input", fontsize=9)
    ax.axis("off")
    background = dimmed_photo(image)
    for i, name in enumerate(names, start=2):
        scaled = scale_map(maps[name])
        ax = fig.add_subplot(1, len(names) + 1, i)
        ax.imshow(np.clip(overlay(background, scaled.values), 0, 1))
        ax.set_title(f"{name}" + (f"\n{scaled.note}" if scaled.note else ""), fontsize=9)
        ax.axis("off")
    fig.suptitle(meta.get("question", ""), fontsize=10)
    if meta.get("note"):  # e.g. the reference bank's limits
        fig.text(0.5, 0.01, meta["note"], ha="center", va="bottom", fontsize=7, wrap=True)
    paths = {"png": out / "why.png", "npz": out / "why.npz", "json": out / "why.json"}
    fig.savefig(paths["png"])
    np.savez_compressed(paths["npz"], image=image, **{k: v.astype(np.float32) for k, v in maps.items()})
    paths["json"].write_text(json.dumps(to_jsonable({**meta, "maps": names, **answer["extra"]}), indent=2))
    return paths
