"""Contrastive-faithfulness evaluation of the whole-output modes (CWOX paper, Sec. 5.1).

For each image and base explainer, every mode (SWOX, CWOX-1sA, CWOX-1sB, CWOX-2s)
explains the top ``K = min(max_k, Cum(cum))`` classes (the paper: ``min(5, Cum(0.95))``).
Then, for each confusion cluster ``C_i`` with at least two classes and each of its
classes ``c``, the pair ``(c, C_i \\ c)`` is scored on every mode's class map for ``c``:

* CAUC, Eq. (4), summed over the *smallest* ``n_delta`` among the heatmaps compared
  for that pair ("when comparing two or more heatmaps, we use the minimum of numbers
  of salient pixels", Sec. 5.1);
* CDROP, Eq. (5), over each heatmap's own ``n_delta``, ``tau = 0.05 n``;
* optionally the single-class insertion / deletion AUC of the map for ``c``
  (CCE Sec. 4.4), which are not contrastive.

Singleton clusters have no in-cluster contrast (``C_i \\ c`` is empty, so Eq. 3 would
reduce to ``P(c)``); the paper's pairs are all taken inside a cluster, so a singleton
cluster yields no row. An image whose clusters are all singletons yields no rows
either (it is not an error), and its explainers are not even run: one forward pass
decides (:func:`evaluate_image`).

All modes of one image share ONE clean forward pass and ONE call of the explainer's
:meth:`~cwox.online.explainers.base.ExplainSession.explain_stages` on the union of the
targets every mode needs (:func:`explain_modes`); the modes only differ in how those
base maps are composed (Eq. 1 and 2 for CWOX-2s, :mod:`cwox.online.compose`). An explainer
with a native contrast role (CCE, SUNY, FG-VCE with a reference bank) answers CWOX-2s's
"P rather than Q" pairs itself unless ``role="base"`` (:class:`EvaluationSetup`).

The result is a flat list of row dicts (:data:`ROW_FIELDS`), one per image, explainer,
mode, pair and metric; :func:`summarize` turns it into tables shaped like the paper's
Tables 1 to 3 with mean and 95% Student-t confidence intervals.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from cwox.online.engine import Engine
from cwox.online.explanation import Explanation
from cwox.online.metrics import causal_curves, class_sensitivity, contrastive_scores, n_salient
from cwox.online.modes import (
    CLUSTER_SOURCES,
    MODE_LABELS,
    MODE_STAGES,
    MODES,
    PAPER_CUM,
    PAPER_MAX_K,
    ROLES,
)
from cwox.online.targets import cut_clusters, top_k
from PIL import Image

from cwox.core.images import ImageError, load_image
from cwox.core.models import Classifier

__all__ = [
    "CONTRASTIVE_METRICS",
    "METRICS",
    "ROW_FIELDS",
    "EvaluationSetup",
    "contrast_pairs",
    "evaluate_image",
    "evaluate_images",
    "example_pair",
    "explain_modes",
    "plot_curves",
    "score_explanations",
    "summarize",
    "t_interval",
    "write_results_csv",
]

#: The paper's contrastive metrics (Eq. 4 and 5), the single-class causal ones, and the
#: class sensitivity of a mode (similarity of two classes' maps, lower = more class-sensitive).
CONTRASTIVE_METRICS = ("cauc", "cdrop")
SENSITIVITY_METRICS = ("spearman", "ssim")
METRICS = ("cauc", "cdrop", "insertion", "deletion", "spearman", "ssim")
DEFAULT_METRICS = ("cauc", "cdrop", "spearman", "ssim")

#: The evaluation protocols. ``"paper"`` (the default of ``cwox evaluate``) scores the maps
#: the CWOX paper scores: Eq. 2 with the plain support of the cluster map (support
#: percentile 0, ``supp(Ĥ_{C_i})``: the pixels where the cluster map is positive, as the
#: paper writes it and as the public code does with its ``delta=0`` default) and RISE's
#: stage two on its own finer masks (``N = 3000``, cell grid 10, ``p = 0.14``, the public
#: code's RISE example). ``"explain"`` scores the maps ``cwox explain`` shows: each
#: explainer's display support percentile (Grad-CAM 50, RISE 70, a display choice that keeps
#: the strongest part of the cluster's evidence) and RISE's stages sharing one mask set
#: (one map's cost); it is the protocol of the evaluation runs before 2026-12-01.
PROTOCOLS = ("paper", "explain")
PAPER_SUPPORT = 0.0
PAPER_EXPLAINER_PARAMS: dict[str, dict[str, Any]] = {
    "rise": {"class_n_masks": 3000, "class_cells": 10, "class_p": 0.14},
}

#: Columns of every row (and of results.csv). ``n_delta`` is the heatmap's own number of
#: delta-salient pixels; ``n_summed`` the pixels CAUC summed over (the pair's minimum);
#: ``error`` is empty except on the one row a failed image gets.
ROW_FIELDS = (
    "image",
    "explainer",
    "mode",
    "class",
    "class_name",
    "contrast",
    "metric",
    "value",
    "n_delta",
    "n_summed",
    "error",
)


def _check_choice(values: Iterable[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    out = tuple(dict.fromkeys(str(v).strip().lower() for v in values))
    bad = [v for v in out if v not in allowed]
    if bad or not out:
        raise ValueError(f"unknown {what} {', '.join(bad) or '(none given)'}; choose from {', '.join(allowed)}")
    return out


@dataclass(frozen=True)
class EvaluationSetup:
    """Everything that shapes the numbers of one evaluation run (checked once).

    Attributes:
        explainers: base explainer names (``cwox.online.explainers.available_explainers()``).
        modes: whole-output modes (:data:`cwox.online.modes.MODES`).
        metrics: subset of :data:`METRICS`.
        cum, max_k: the top-K rule ``K = min(max_k, Cum(cum))`` (paper: 0.95, 5).
        delta: salience threshold of ``n_delta`` (paper: 0.5).
        step: CAUC samples the deletion curve every ``step`` pixels (exact with 1).
        substrate: what deleted pixels become for CAUC/CDROP (``"zero"`` or ``"blur"``).
        explainer_params: explainer name -> keyword arguments (e.g. RISE ``n_masks``),
            the protocol's defaults (:data:`PAPER_EXPLAINER_PARAMS`) included.
        seed: seeds randomised explainers (RISE masks) and the random cluster source.
        batch_size: forward-pass batch size of explainers and metrics (None: device default).
        role: how CWOX-2s uses an explainer with a native contrast role (CCE, SUNY,
            FG-VCE with a bank): ``"auto"`` (its native "P rather than Q" maps when it
            has them, as :class:`~cwox.online.engine.Engine` does), ``"base"`` (always the
            subtraction of base maps, Eq. 1-2) or ``"contrast"`` (native maps; every
            evaluated explainer must have them).
        protocol: ``"paper"`` or ``"explain"`` (:data:`PROTOCOLS`).
        support: Eq. 2's support percentile (``None``: each explainer's display default).
        cluster_source: where the maps' clusters come from (:data:`cwox.online.modes.CLUSTER_SOURCES`;
            ``"hlta"`` with a ``cluster_tree`` for an imported tree). The pairs scored are
            always the reference tree's (the ``tree`` of :func:`evaluate_images`), so every
            source answers the same questions.
        finer_classes, finer_gamma: Finer-CAM's comparison classes and weight.
    """

    explainers: tuple[str, ...] = ("gradcam", "rise")
    modes: tuple[str, ...] = MODES
    metrics: tuple[str, ...] = DEFAULT_METRICS
    cum: float = PAPER_CUM
    max_k: int = PAPER_MAX_K
    delta: float = 0.5
    step: int = 16
    substrate: str = "zero"
    explainer_params: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    seed: int = 0
    batch_size: int | None = None
    role: str = "auto"
    protocol: str = "paper"
    support: float | None = PAPER_SUPPORT
    cluster_source: str = "hlta"
    finer_classes: int = 3
    finer_gamma: float = 1.0

    @classmethod
    def build(
        cls,
        *,
        explainers: Sequence[str] = ("gradcam", "rise"),
        modes: Sequence[str] = MODES,
        metrics: Sequence[str] = DEFAULT_METRICS,
        cum: float = PAPER_CUM,
        max_k: int = PAPER_MAX_K,
        delta: float = 0.5,
        step: int = 16,
        substrate: str = "zero",
        explainer_params: dict[str, dict[str, Any]] | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        role: str = "auto",
        protocol: str = "paper",
        cluster_source: str = "hlta",
        finer_classes: int = 3,
        finer_gamma: float = 1.0,
    ) -> EvaluationSetup:
        """Validate the arguments; raises ValueError with the allowed values."""
        from cwox.online.explainers import available_explainers

        names = _check_choice(explainers, tuple(available_explainers()), "explainer")
        modes = _check_choice(modes, MODES, "mode")
        metrics = _check_choice(metrics, METRICS, "metric")
        if not 0.0 < float(cum) <= 1.0:
            raise ValueError(f"cum must be in (0, 1], got {cum}")
        if int(max_k) < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}")
        if not 0.0 < float(delta) <= 1.0:
            raise ValueError(f"delta must be in (0, 1], got {delta}")
        if int(step) < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        if substrate not in ("zero", "blur"):
            raise ValueError(f"substrate must be 'zero' or 'blur', got {substrate!r}")
        role = _check_choice([role], ROLES, "role")[0]
        protocol = _check_choice([protocol], PROTOCOLS, "protocol")[0]
        cluster_source = _check_choice([cluster_source], CLUSTER_SOURCES, "cluster source")[0]
        if int(finer_classes) < 1:
            raise ValueError(f"finer_classes must be >= 1, got {finer_classes}")
        params = dict(explainer_params or {})
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ValueError(f"explainer_params for explainers not evaluated: {', '.join(unknown)}")
        if protocol == "paper":
            params = {n: {**PAPER_EXPLAINER_PARAMS.get(n, {}), **dict(params.get(n) or {})} for n in names}
        frozen = tuple((n, tuple(sorted(dict(params.get(n) or {}).items()))) for n in names)
        return cls(
            explainers=names,
            modes=modes,
            metrics=metrics,
            cum=float(cum),
            max_k=int(max_k),
            delta=float(delta),
            step=int(step),
            substrate=substrate,
            explainer_params=frozen,
            seed=int(seed),
            batch_size=batch_size,
            role=role,
            protocol=protocol,
            support=PAPER_SUPPORT if protocol == "paper" else None,
            cluster_source=cluster_source,
            finer_classes=int(finer_classes),
            finer_gamma=float(finer_gamma),
        )

    def params_of(self, explainer: str) -> dict[str, Any]:
        return dict(dict(self.explainer_params).get(explainer, ()))

    def engines(
        self, classifier: Classifier, tree: nx.DiGraph | None, cluster_tree: nx.DiGraph | None = None
    ) -> dict[str, Engine]:
        """One engine per explainer; its clusters come from ``cluster_tree`` (default ``tree``)."""
        return {name: self.engine(classifier, tree, name, cluster_tree) for name in self.explainers}

    def engine(
        self, classifier: Classifier, tree: nx.DiGraph | None, explainer: str, cluster_tree: nx.DiGraph | None = None
    ) -> Engine:
        """The engine of one explainer (its mode is irrelevant: evaluation asks for all)."""
        return Engine(
            classifier,
            tree if cluster_tree is None else cluster_tree,
            explainer,
            "cwox2s",
            cum=self.cum,
            max_k=self.max_k,
            seed=self.seed,
            batch_size=self.batch_size,
            role=self.role,
            support=self.support,
            explainer_params=self.params_of(explainer) or None,
            cluster_source=self.cluster_source,
            finer_classes=self.finer_classes,
            finer_gamma=self.finer_gamma,
        )


# --------------------------------------------------------------------------- explaining


def explain_modes(
    engine: Engine, image: Image.Image | str | os.PathLike, modes: Sequence[str] = MODES
) -> tuple[torch.Tensor, dict[str, Explanation]]:
    """Every mode's explanation of one photo: :meth:`Engine.explain_modes`, and the input.

    Returns the normalised input tensor (what the metrics perturb) and ``{mode: Explanation}``.
    """
    modes = _check_choice(modes, MODES, "mode")
    pil = image if isinstance(image, Image.Image) else load_image(Path(image))
    _, _, x = engine.prepare(pil)
    return x, engine.explain_modes(image, modes)


def stage_setup(engine: Engine, modes: Sequence[str]) -> dict[str, Any]:
    """What shapes each mode's maps, for ``settings.json``: per mode, the stages it reads and
    each stage's setup (the explainer's ``cluster_*`` / ``class_*`` settings: Grad-CAM's
    layers, RISE's masks), with Eq. 2's support percentile and the normalisation."""
    ex = engine.explainer.settings()
    per_stage = {
        st: {k[len(st) + 1:]: v for k, v in ex.items() if k.startswith(f"{st}_")} for st in ("cluster", "class")
    }
    return {
        "support_percentile": engine.support,
        "normalization": engine.normalization,
        "modes": {m: {st: per_stage[st] for st in MODE_STAGES[m]} for m in modes},
    }


def contrast_pairs(explanation: Explanation, clusters: Sequence[Sequence[int]] | None = None) -> list[tuple[int, tuple[int, ...]]]:
    """The paper's pairs ``(c, C_i \\ c)`` for every class of every multi-class cluster.

    The clusters are the explanation's unless ``clusters`` (the reference tree's) are
    given. In cluster order, then class order within the cluster; singleton clusters give none.
    """
    return [
        (c, tuple(o for o in cluster if o != c))
        for cluster in (explanation.clusters if clusters is None else clusters)
        if len(cluster) >= 2
        for c in cluster
    ]


# --------------------------------------------------------------------------- scoring


def _row(image: str, explainer: str, mode: str, exp: Explanation, c: int, rest: Sequence[int],
         metric: str, value: float, n_delta: int, n_summed: int | str = "") -> dict[str, Any]:
    return {
        "image": image,
        "explainer": explainer,
        "mode": mode,
        "class": int(c),
        "class_name": exp.name_of(c),
        "contrast": "+".join(str(int(o)) for o in rest),
        "metric": metric,
        "value": float(value),
        "n_delta": int(n_delta),
        "n_summed": n_summed,
        "error": "",
    }


def score_explanations(
    classifier: Classifier,
    x: torch.Tensor,
    explanations: dict[str, Explanation],
    setup: EvaluationSetup,
    image_name: str,
    clusters: Sequence[Sequence[int]] | None = None,
) -> list[dict[str, Any]]:
    """Rows of every metric for every pair and mode of one image and explainer.

    The pairs are :func:`contrast_pairs` of ``clusters`` (the reference tree's; default
    the explanations' own).

    CAUC and CDROP: one :func:`~cwox.online.metrics.contrastive_scores` call for every
    (pair, mode) of the image, CAUC of each pair summed over the pair's smallest ``n_delta``
    across modes (Sec. 5.1: "when comparing two or more heatmaps, we use the minimum of
    numbers of salient pixels to calculate the CAUC scores for all of the heatmaps"). In one
    call the pairs share their deletion images (the undeleted image; CWOX-1sA's cluster
    map, which is the map of every class of its cluster): 0.8% fewer passes than one call
    per pair on six photos, the same scores within 6e-8 (benchmarks/RESULTS.md).

    Class sensitivity (``spearman``, ``ssim``): per pair ``(c, C_i \\ c)``, the similarity
    of the mode's map of ``c`` and its map of the most probable class of ``C_i \\ c``
    (:func:`~cwox.online.metrics.class_sensitivity`; a two-class cluster gives the same
    value on both of its rows).
    """
    modes = list(explanations)
    first = explanations[modes[0]]
    pairs = contrast_pairs(first, clusters)
    rows: list[dict[str, Any]] = []
    if not pairs:
        return rows
    model = classifier.module
    want = [m for m in setup.metrics if m in CONTRASTIVE_METRICS]
    # maps[p, i]: mode i's map of pair p's class
    maps = np.stack([
        np.stack([explanations[m].class_maps[first.classes.index(c)] for m in modes]) for c, _ in pairs
    ])
    n_deltas = np.array([[n_salient(mp, setup.delta) for mp in per_pair] for per_pair in maps])
    if want:
        scores = contrastive_scores(
            model,
            x,
            maps.reshape(-1, *maps.shape[2:]),
            [([c], list(rest)) for c, rest in pairs for _ in modes],
            delta=setup.delta,
            step=setup.step,
            n_delta=np.repeat(n_deltas.min(axis=1), len(modes)),
            substrate=setup.substrate,
            batch_size=setup.batch_size,
            compute=tuple(want),
        )
    for p, (c, rest) in enumerate(pairs):
        if want:
            for i, m in enumerate(modes):
                j = p * len(modes) + i
                nd = int(scores.n_delta[j])
                if "cauc" in want:
                    rows.append(_row(image_name, first.explainer, m, explanations[m], c, rest, "cauc",
                                     scores.cauc[j], nd, int(scores.n_summed[j])))
                if "cdrop" in want:
                    rows.append(_row(image_name, first.explainer, m, explanations[m], c, rest, "cdrop",
                                     scores.cdrop[j], nd, nd))
        for metric in ("insertion", "deletion"):
            if metric in setup.metrics:
                curves = causal_curves(model, x, maps[p], [c], metric, batch_size=setup.batch_size)
                for i, m in enumerate(modes):
                    rows.append(_row(image_name, first.explainer, m, explanations[m], c, rest, metric,
                                     curves.auc[i], n_deltas[p, i]))
        if any(m in setup.metrics for m in SENSITIVITY_METRICS):
            other = first.classes.index(rest[0])
            for i, m in enumerate(modes):
                sims = class_sensitivity(maps[p, i], explanations[m].class_maps[other])
                for metric in SENSITIVITY_METRICS:
                    if metric in setup.metrics:
                        rows.append(_row(image_name, first.explainer, m, explanations[m], c, rest, metric,
                                         sims[metric], n_deltas[p, i]))
    return rows


def error_row(image: str, reason: str) -> dict[str, Any]:
    """The one row a failed image gets: everything empty but ``image`` and ``error``."""
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS, "")
    row.update(image=image, value=math.nan, error=reason)
    return row


def _has_pairs(classifier: Classifier, image: Image.Image, engine: Engine, tree: nx.DiGraph | None) -> bool:
    """Whether the image's top-K (the engine's rule) has a cluster of two or more classes in ``tree``."""
    with torch.inference_mode():
        x = classifier.preprocess(image.convert("RGB"))[None].to(classifier.device)
        probs = classifier.probabilities(x)[0]
    classes, _ = top_k(probs, engine.k, cum=engine.cum, max_k=engine.max_k)
    return any(len(g) >= 2 for g in cut_clusters(tree, classes, level=engine.level))


#: ``reference_tree`` default of :func:`evaluate_image`: the engines' own tree.
ENGINE_TREE: Any = object()


def evaluate_image(
    classifier: Classifier,
    image: str | os.PathLike | Image.Image,
    engines: dict[str, Engine],
    setup: EvaluationSetup,
    name: str | None = None,
    reference_tree: nx.DiGraph | None = ENGINE_TREE,
) -> list[dict[str, Any]]:
    """Rows of one image for every explainer; a bad image gives one :func:`error_row`.

    The pairs scored are the in-cluster pairs of ``reference_tree`` (default: the
    engines' tree), whatever cluster source made the maps.
    """
    name = name or (str(image) if not isinstance(image, Image.Image) else "image")
    try:
        if not isinstance(image, Image.Image):
            image = load_image(Path(image))
        rows: list[dict[str, Any]] = []
        some = next(iter(engines.values()))
        tree = some.tree if reference_tree is ENGINE_TREE else reference_tree
        if not _has_pairs(classifier, image, some, tree):
            return rows  # all clusters singletons: nothing to contrast, skip the explainers
        for explainer in setup.explainers:
            x, exps = explain_modes(engines[explainer], image, setup.modes)
            first = next(iter(exps.values()))
            clusters = cut_clusters(tree, first.classes, level=engines[explainer].level)
            rows.extend(score_explanations(classifier, x, exps, setup, name, clusters))
        return rows
    except (ImageError, OSError, ValueError) as exc:
        return [error_row(name, f"{type(exc).__name__}: {exc}")]


# --------------------------------------------------------------------------- Dask workers

_WORKER_ENGINES: dict[tuple, tuple[Classifier, dict[str, Engine]]] = {}


def _worker_evaluate(
    path: str, spec, tree: nx.DiGraph | None, setup: EvaluationSetup, cluster_tree: nx.DiGraph | None = None
) -> list[dict[str, Any]]:
    """Dask task: explain and score one image; model and engines cached per worker process."""
    from cwox.core.models import worker_model

    key = (spec, id(tree), id(cluster_tree), setup)
    if key not in _WORKER_ENGINES:
        clf = worker_model(spec)
        _WORKER_ENGINES.clear()
        _WORKER_ENGINES[key] = (clf, setup.engines(clf, tree, cluster_tree))
    clf, engines = _WORKER_ENGINES[key]
    return evaluate_image(clf, path, engines, setup, name=path, reference_tree=tree)


def evaluate_images(
    classifier: Classifier,
    images: Sequence[str | os.PathLike],
    tree: nx.DiGraph | None,
    *,
    setup: EvaluationSetup | None = None,
    cluster_tree: nx.DiGraph | None = None,
    client=None,
    model_spec=None,
    progress: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """CAUC / CDROP (and optional insertion / deletion, class sensitivity) rows for many images (Sec. 5.1).

    Args:
        classifier: the model (used in-process; with ``client`` only for checks).
        images: image file paths.
        tree: the reference tree whose in-cluster pairs are scored (None: every class
            alone, so no pairs).
        setup: an :class:`EvaluationSetup`; or give its :meth:`EvaluationSetup.build`
            keyword arguments as ``options`` (``explainers``, ``modes``, ``metrics``,
            ``cum``, ``max_k``, ``delta``, ``step``, ``substrate``, ``explainer_params``,
            ``seed``, ``batch_size``, ``role``, ``protocol``, ``cluster_source``,
            ``finer_classes``, ``finer_gamma``).
        cluster_tree: an imported tree whose clusters make the maps (``cluster_source``
            ``"hlta"``); default ``tree``.
        client: a :class:`distributed.Client`: one task per image, the model loaded once
            per worker from ``model_spec`` (an :class:`cwox.offline.worker.ModelSpec`).
        progress: show a tqdm progress bar (on a terminal only).

    Returns:
        rows (dicts with :data:`ROW_FIELDS`) in image order; a bad image gives one row
        whose ``error`` says why, and the others finish.
    """
    if setup is None:
        setup = EvaluationSetup.build(**options)
    elif options:
        raise ValueError("give either setup or its options, not both")
    paths = [str(p) for p in images]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths), desc="evaluate", unit="image", disable=None if progress else True)
    per_image: list[list[dict[str, Any]]] = [[] for _ in paths]
    try:
        if client is None:
            engines = setup.engines(classifier, tree, cluster_tree)
            for i, p in enumerate(paths):
                per_image[i] = evaluate_image(classifier, p, engines, setup, name=p, reference_tree=tree)
                bar.update(1)
        else:
            if model_spec is None:
                raise ValueError("evaluating on a Dask client needs model_spec (cwox.offline.worker.ModelSpec)")
            from distributed import as_completed

            tree_future = client.scatter(tree, broadcast=True) if tree is not None else None
            other_future = client.scatter(cluster_tree, broadcast=True) if cluster_tree is not None else None
            futures = {
                client.submit(_worker_evaluate, p, model_spec, tree_future, setup, other_future, pure=False): i
                for i, p in enumerate(paths)
            }
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    per_image[i] = fut.result()
                except Exception as exc:  # a worker died or the task raised: report, go on
                    per_image[i] = [error_row(paths[i], f"{type(exc).__name__}: {exc}")]
                bar.update(1)
    finally:
        bar.close()
    return [row for rows in per_image for row in rows]


# --------------------------------------------------------------------------- summary


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean and half-width of the Student-t confidence interval, and the count.

    The half-width is NaN with fewer than two finite values.
    """
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    if v.size < 2:
        return float(v.mean()), math.nan, 1
    sem = v.std(ddof=1) / math.sqrt(v.size)
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * sem)
    return float(v.mean()), half, int(v.size)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (zeros dropped, as Wilcoxon's test).

    NaN when no finite non-zero difference is left. The paired test the summary prints beside
    each mean difference: it asks whether one mode beats another pair by pair, which
    overlapping marginal intervals cannot say.
    """
    from scipy import stats

    d = np.asarray([x for x in differences if np.isfinite(x) and x != 0], dtype=np.float64)
    if d.size == 0:
        return math.nan
    return float(stats.wilcoxon(d).pvalue)


def _fmt(mean: float, half: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if not np.isfinite(half):
        return f"{mean:.3e}"
    return f"{mean:.3e} ± {half:.2e}"


def summarize(
    rows: Sequence[dict[str, Any]],
    confidence: float = 0.95,
    explainer_params: Mapping[str, Mapping[str, Any]] | None = None,
    role: str = "auto",
    setup: EvaluationSetup | None = None,
    stage_layers: Mapping[str, Any] | None = None,
) -> str:
    """Markdown tables shaped like the CWOX paper's Tables 1-3 (mean ± t-interval half-width).

    ``explainer_params`` (explainer -> parameters other than its defaults, as given to
    :func:`evaluate_images`) is stated under the title when there are any; so are the
    protocol, cluster source and Finer-CAM parameters of ``setup`` and each explainer's
    stage setup (``stage_layers``, :func:`stage_setup`) when given.

    Table 1: CAUC per mode (rows) x explainer (columns); Table 2: CDROP; Table 3: CWOX-2s
    per base explainer with mean ``n_delta``, CAUC and CDROP. Extra tables for insertion /
    deletion when present; then pairwise CWOX-2s-minus-baseline differences (paired by
    image and pair) with their Wilcoxon signed-rank p (:func:`wilcoxon_p`), which say more
    than overlapping marginal intervals.
    """
    good = [r for r in rows if not r.get("error")]
    failed = [r for r in rows if r.get("error")]
    explainers = list(dict.fromkeys(r["explainer"] for r in good))
    modes = [m for m in MODE_LABELS if any(r["mode"] == m for r in good)]
    metrics = [m for m in METRICS if any(r["metric"] == m for r in good)]
    images = {r["image"] for r in good}
    n_pairs = len({(r["image"], r["class"]) for r in good})
    pct = int(round(confidence * 100))
    lines = [
        "# Contrastive faithfulness (CWOX paper, Sec. 5.1)",
        "",
        f"{len(images)} images with at least one in-cluster pair, {n_pairs} (image, class) pairs; "
        f"{len({r['image'] for r in failed})} images failed. Cells: mean ± half-width of the "
        f"{pct}% Student-t confidence interval over pairs.",
        "",
    ]
    given = {n: p for n, p in (explainer_params or {}).items() if p}
    if given:
        lines += ["Explainer parameters: " + "; ".join(
            f"{n} " + ", ".join(f"{k}={v!r}" for k, v in sorted(p.items())) for n, p in given.items()
        ) + ".", ""]
    if role != "auto":
        how = ("subtracts base maps (Eq. 1, 2) for every explainer" if role == "base"
               else "takes every explainer's native 'P rather than Q' maps")
        lines += [f"Role: {role} (CWOX-2s {how}).", ""]
    if setup is not None:
        support = ("the plain support of the cluster map (Eq. 2, percentile 0)" if setup.support == 0
                   else "each explainer's display support percentile" if setup.support is None
                   else f"support percentile {setup.support:g}")
        lines += [f"Protocol: {setup.protocol} ({support}); clusters of the maps: {setup.cluster_source} "
                  f"(pairs: the reference tree's); Finer-CAM: {setup.finer_classes} nearest-logit classes, "
                  f"gamma {setup.finer_gamma:g}; K = min({setup.max_k}, Cum({setup.cum:g})).", ""]
    for name, info in (stage_layers or {}).items():
        cwox2s = info.get("modes", {}).get("cwox2s") or next(iter(info.get("modes", {}).values()), {})
        parts = [f"{st}: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if k in ("layer", "masks"))
                 for st, cfg in cwox2s.items()]
        if any(p.split(": ", 1)[1] for p in parts):
            lines += [f"Stages of {name}: " + "; ".join(parts) + ".", ""]

    def values(explainer: str, mode: str, metric: str, field: str = "value") -> list[float]:
        return [float(r[field]) for r in good
                if r["explainer"] == explainer and r["mode"] == mode and r["metric"] == metric]

    titles = {
        "cauc": "Table 1: CAUC (Eq. 4, smaller is better)",
        "cdrop": "Table 2: CDROP (Eq. 5, larger is better)",
        "insertion": "Insertion AUC of the class map for c (larger is better)",
        "deletion": "Deletion AUC of the class map for c (smaller is better)",
        "spearman": "Class sensitivity: Spearman rank correlation of the maps of c and of the most "
                    "probable other class of its cluster (lower is more class-sensitive)",
        "ssim": "Class sensitivity: SSIM of the maps of c and of the most probable other class of "
                "its cluster (lower is more class-sensitive)",
    }
    for metric in metrics:
        lines += [f"## {titles[metric]}", "", "| mode | " + " | ".join(explainers) + " |",
                  "|---|" + "---|" * len(explainers)]
        for mode in modes:
            cells = [_fmt(*t_interval(values(e, mode, metric), confidence)[:2]) for e in explainers]
            lines.append(f"| {MODE_LABELS[mode]} | " + " | ".join(cells) + " |")
        lines.append("")
    if "cwox2s" in modes:
        lines += ["## Table 3: CWOX-2s per base explainer", "",
                  "| base explainer | mean n_delta | CAUC | CDROP |", "|---|---|---|---|"]
        for e in explainers:
            nd = values(e, "cwox2s", "cdrop", "n_delta") or values(e, "cwox2s", "cauc", "n_delta")
            lines.append(
                f"| {e} | {np.mean(nd):,.0f} | " if nd else f"| {e} | n/a | "
            )
            lines[-1] += " | ".join(_fmt(*t_interval(values(e, "cwox2s", m), confidence)[:2])
                                    for m in CONTRASTIVE_METRICS) + " |"
        lines.append("")
        lines += ["## Paired differences: CWOX-2s minus each baseline (same image and pair)", "",
                  "| explainer | metric | baseline | mean difference | CWOX-2s better in | Wilcoxon p |",
                  "|---|---|---|---|---|---|"]
        for e in explainers:
            for metric in metrics:
                ours = {(r["image"], r["class"]): float(r["value"]) for r in good
                        if r["explainer"] == e and r["mode"] == "cwox2s" and r["metric"] == metric}
                for base in [m for m in modes if m != "cwox2s"]:
                    theirs = {(r["image"], r["class"]): float(r["value"]) for r in good
                              if r["explainer"] == e and r["mode"] == base and r["metric"] == metric}
                    keys = sorted(set(ours) & set(theirs))
                    diff = [ours[k] - theirs[k] for k in keys]
                    better = sum((d > 0) if metric in ("cdrop", "insertion") else (d < 0) for d in diff)
                    mean, half, n = t_interval(diff, confidence)
                    p_value = wilcoxon_p(diff)
                    lines.append(f"| {e} | {metric} | {MODE_LABELS[base]} | {_fmt(mean, half)} | "
                                 f"{better}/{n} pairs | {'n/a' if math.isnan(p_value) else f'{p_value:.2g}'} |")
        lines.append("")
    if failed:
        lines += ["## Failed images", ""] + [f"- {r['image']}: {r['error']}" for r in failed] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- outputs


def write_results_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write the rows as CSV with the columns of :data:`ROW_FIELDS`."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ROW_FIELDS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in ROW_FIELDS})
    return path


def example_pair(rows: Sequence[dict[str, Any]]) -> tuple[str, str, int, tuple[int, ...]] | None:
    """The (image, explainer, class, contrast) of the first scored pair, or None."""
    for r in rows:
        if not r.get("error") and r.get("metric") in CONTRASTIVE_METRICS:
            rest = tuple(int(v) for v in str(r["contrast"]).split("+") if v)
            return str(r["image"]), str(r["explainer"]), int(r["class"]), rest
    return None


def plot_curves(
    classifier: Classifier,
    image: str | os.PathLike | Image.Image,
    tree: nx.DiGraph | None,
    explainer: str,
    target: int,
    contrast: Sequence[int],
    path: str | os.PathLike,
    *,
    setup: EvaluationSetup | None = None,
    cluster_tree: nx.DiGraph | None = None,
    n_points: int = 41,
) -> Path:
    """Fig. 6 of the CWOX paper: ``P(c)``, ``P(C')`` and ``s(r)`` (Eq. 3) vs deleted pixels.

    One panel per mode of ``setup`` (default :class:`EvaluationSetup`), each over its own
    first ``n_delta`` pixels (``n_points`` evenly spaced deletion counts), the dashed line
    marking the pair's smallest ``n_delta`` (where CAUC stops). Drawn on a bare
    :class:`matplotlib.figure.Figure` with the Agg canvas, so no pyplot state is touched.
    """
    from cwox.online.metrics import contrastive_curve
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    setup = setup or EvaluationSetup.build(explainers=[explainer])
    modes, delta, substrate, batch_size = setup.modes, setup.delta, setup.substrate, setup.batch_size
    engine = setup.engine(classifier, tree, explainer, cluster_tree)
    x, exps = explain_modes(engine, image, modes)
    first = next(iter(exps.values()))
    if target not in first.classes:
        raise ValueError(f"class {target} is not among the top classes {first.classes} of this image")
    k = first.classes.index(target)
    nds = {m: n_salient(e.class_maps[k], delta) for m, e in exps.items()}
    n_min = min(nds.values())
    fig = Figure(figsize=(3.6 * len(exps), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(exps), squeeze=False)[0]
    contrast_name = " + ".join(first.name_of(c) if c in first.classes else str(c) for c in contrast)
    for ax, (m, e) in zip(axes, exps.items(), strict=True):
        deleted = np.unique(np.linspace(0, nds[m], n_points).round().astype(np.int64))
        curve = contrastive_curve(classifier.module, x, e.class_maps[k], [target], list(contrast),
                                  deleted=deleted, substrate=substrate, batch_size=batch_size)
        ax.plot(curve.deleted, curve.p_target, label=f"P({first.name_of(target)})")
        ax.plot(curve.deleted, curve.p_contrast, label=f"P({contrast_name})")
        ax.plot(curve.deleted, curve.score, "k", lw=2, label="s(r)")
        ax.axvline(n_min, color="grey", ls="--", lw=1)
        ax.set_title(f"{MODE_LABELS.get(m, m)}  (n_delta={nds[m]:,})", fontsize=9)
        ax.set_xlabel("deleted pixels")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("probability / score")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{Path(str(first.image_path or 'image')).name}, {explainer}: "
                 f"{first.name_of(target)} vs {contrast_name}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
