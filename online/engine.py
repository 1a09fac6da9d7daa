"""The online CWOX engine: one photo in, one whole-output explanation out.

Algorithm 1 of the CWOX paper, online phase:

1. feed the image to the model, keep the top-K classes (fixed K, or the
   smallest K whose cumulative probability exceeds a threshold, capped);
2. restrict the latent tree to them and cut it at level 1 into confusion
   clusters (labels absent from the tree are clusters of their own); for the
   ablation "does the tree matter?" the clusters can come from another source
   (:func:`cwox.online.targets.source_clusters`);
3. collect EVERY target all stages of the mode need (clusters, their
   complements, classes, their in-cluster rests: :func:`cwox.online.targets.plan_targets`)
   and ask the explainer for all of them at once (:meth:`ExplainSession.base_role`:
   Grad-CAM reuses the top-K forward for both layers and batches its backward
   passes, RISE runs one set of masked passes);
4. compose the maps with the mode's formula (Eq. 1 and 2 for CWOX-2s,
   :mod:`cwox.online.compose`). In the contrast role (CCE, SUNY, FG-VCE) a pair's
   native "P rather than Q" map replaces ``H_P - H_Q``, so the base maps of
   the pairs are not drawn at all, only those the formula still reads
   (:meth:`cwox.online.targets.TargetPlan.base_targets`: a class alone in its
   cluster, a lone cluster); the composed maps are the same;
5. gather what each explainer call gave back beside its maps (its
   :class:`cwox.online.explainers.Answer`: FG-VCE's and CCE's counterfactual
   records, :mod:`cwox.online.diagnostics`, into ``Explanation.diagnostics``;
   SUNY's necessity and sufficiency maps into ``Explanation.extra_maps``).

Everything runs on ``classifier.device``; the result is an
:class:`cwox.online.explanation.Explanation` with per-phase timings.
:meth:`Engine.explain_modes` gives several modes' explanations from one clean
forward and one set of base maps (evaluation uses it); :meth:`Engine.explain` is
its one-mode case.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from cwox.online.compose import NORMALIZATIONS, compose, normalize_maps
from cwox.online.diagnostics import merge_diagnostics
from cwox.online.explainers import Explainer, get_explainer
from cwox.online.explanation import Explanation
from cwox.online.modes import CLUSTER_SOURCES, MODES, ROLES
from cwox.online.targets import (
    TargetPlan,
    nearest_logit_classes,
    plan_targets,
    source_clusters,
    top_k,
)
from PIL import Image

from cwox.core.images import load_image
from cwox.core.models import Classifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Engine:
    """A reusable explainer of many photos with one model, tree and setup.

    Args:
        classifier: the model (:func:`cwox.core.models.load_model`).
        tree: the latent tree (contract of :mod:`cwox.hlta.tree`), or None: every
            class is then its own cluster.
        explainer: a registry name (``"gradcam"``, ``"rise"``, ...) or an
            :class:`Explainer` instance.
        mode: ``"cwox2s"`` (default), ``"cwox1sa"``, ``"cwox1sb"`` or ``"swox"``.
        top_k: a fixed K (default 5 when ``cum`` is not given).
        cum, max_k: instead of ``top_k``, the smallest K with cumulative
            probability above ``cum``, at most ``max_k`` (the paper: 0.95 and 5).
        seed: seeds a randomised explainer (RISE masks).
        batch_size: the explainer's batch size (memory bound).
        support: the support percentile of Eq. (2)
            (:func:`cwox.online.compose.support_mask`); default the explainer's
            ``default_support`` (Grad-CAM 50, RISE 70, after the CWOX public code).
        normalization: per-map rescaling before composing; default the
            explainer's ``default_normalization`` (Grad-CAM none, RISE min-max).
        level: the tree level at which clusters are cut (the paper: 1).
        role: ``"base"`` composes the explainer's saliency maps by the mode's
            subtraction (Eq. 1, 2); ``"contrast"`` uses the explainer's native
            "P rather than Q" maps in place of the subtraction (CCE, SUNY, FG-VCE);
            ``"auto"`` (default) takes the contrast role when the explainer has one.
        explainer_params: extra parameters for the explainer (``n_masks``...).
        cluster_source: where the clusters come from (:func:`cwox.online.targets.source_clusters`):
            ``"hlta"`` (default: ``tree``), ``"none"``, ``"random"`` or ``"logits"``.
        finer_classes, finer_gamma: Finer-CAM's number of nearest-logit comparison
            classes and their weight (mode ``"finercam"``; defaults 3 and 1, as the
            Finer-CAM library's defaults).
    """

    def __init__(
        self,
        classifier: Classifier,
        tree: nx.DiGraph | None = None,
        explainer: str | Explainer = "gradcam",
        mode: str = "cwox2s",
        *,
        top_k: int | None = None,
        cum: float | None = None,
        max_k: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        support: float | None = None,
        normalization: str | None = None,
        level: int = 1,
        role: str = "auto",
        explainer_params: dict[str, Any] | None = None,
        cluster_source: str = "hlta",
        finer_classes: int = 3,
        finer_gamma: float = 1.0,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if top_k is not None and cum is not None:
            raise ValueError("give either top_k or cum (with max_k), not both")
        if cum is None and max_k is not None:
            raise ValueError("max_k caps a cumulative top-K; give cum too")
        if cluster_source not in CLUSTER_SOURCES:
            raise ValueError(f"unknown cluster source {cluster_source!r}; choose one of {', '.join(CLUSTER_SOURCES)}")
        if int(finer_classes) < 1:
            raise ValueError(f"Finer-CAM needs at least one comparison class, got {finer_classes}")
        self.classifier = classifier
        self.tree = tree
        self.cluster_source = cluster_source
        self.finer_classes = int(finer_classes)
        self.finer_gamma = float(finer_gamma)
        self.mode = mode
        self.k = 5 if top_k is None and cum is None else top_k
        self.cum = cum
        self.max_k = max_k
        self.seed = int(seed)
        self.level = int(level)
        if isinstance(explainer, Explainer):
            if explainer_params or batch_size is not None:
                raise ValueError("explainer_params and batch_size apply only when the explainer is given by name")
            self.explainer = explainer
        else:
            params = dict(explainer_params or {})
            if batch_size is not None:
                params.setdefault("batch_size", batch_size)
            from cwox.online.explainers import explainer_class

            accepts = inspect.signature(explainer_class(explainer).__init__).parameters
            if "seed" in accepts:
                params.setdefault("seed", self.seed)
            self.explainer = get_explainer(explainer, classifier, **params)
        if self.explainer.classifier is not classifier:
            raise ValueError("the explainer is bound to another classifier")
        if role == "contrast" and not self.explainer.supports_contrast:
            raise ValueError(f"{self.explainer.no_contrast_message()}; use --role base")
        self.role = "contrast" if role == "auto" and self.explainer.supports_contrast else (
            "base" if role == "auto" else role)
        self.support = float(self.explainer.default_support if support is None else support)
        if not 0.0 <= self.support <= 100.0:
            raise ValueError(f"support percentile must be in [0, 100], got {support}")
        self.normalization = normalization or self.explainer.default_normalization
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {self.normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if tree is not None:
            n = tree.graph.get("n_labels")
            if n is not None and int(n) != classifier.n_classes:
                raise ValueError(
                    f"the tree has {n} labels but model {classifier.name!r} has {classifier.n_classes} classes"
                )

    def settings(self) -> dict[str, Any]:
        """Every parameter that shapes the maps (stored in the Explanation)."""
        tree_version = None if self.tree is None else self.tree.graph.get("version")
        return {
            "model": self.classifier.name,
            "device": str(self.classifier.device),
            "mode": self.mode,
            "top_k": self.k,
            "cum": self.cum,
            "max_k": self.max_k,
            "seed": self.seed,
            "support_percentile": self.support,
            "normalization": self.normalization,
            "tree_level": self.level,
            "role": self.role,
            "tree_version": tree_version,
            "cluster_source": self.cluster_source,
            "finer_classes": self.finer_classes,
            "finer_gamma": self.finer_gamma,
            "explainer": self.explainer.settings(),
        }

    def prepare(self, image: Image.Image | str | os.PathLike) -> tuple[str, Image.Image, torch.Tensor]:
        """A photo (a PIL image or a path) -> its path (``""`` for an image), centre crop, input.

        The input is the crop as the network's normalised ``3 x S x S`` tensor on the device.
        """
        path = ""
        if isinstance(image, (str, os.PathLike)):
            path = str(image)
            image = load_image(Path(path))
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL image or a path, got {type(image).__name__}")
        cropped = self.classifier.crop(image.convert("RGB"))
        x = self.classifier.normalize(self.classifier.to_tensor(cropped)).to(self.classifier.device)
        return path, cropped, x

    def explain(self, image: Image.Image | str | os.PathLike) -> Explanation:
        """The whole-output explanation of one photo (a PIL image or a path)."""
        return self.explain_modes(image, (self.mode,))[self.mode]

    def clusters_of(self, classes: list[int]) -> list[list[int]]:
        """The confusion clusters of the top classes, from :attr:`cluster_source`."""
        return source_clusters(self.cluster_source, self.tree, classes, level=self.level, seed=self.seed)

    def plan(self, classes: list[int], groups: list[list[int]], mode: str, probabilities: torch.Tensor) -> TargetPlan:
        """The targets of ``mode`` (Finer-CAM's comparison classes read ``probabilities``)."""
        comparisons = None
        if mode == "finercam":
            comparisons = {c: nearest_logit_classes(probabilities, c, self.finer_classes) for c in classes}
        return plan_targets(classes, groups, mode, comparisons=comparisons, gamma=self.finer_gamma)

    def explain_modes(
        self, image: Image.Image | str | os.PathLike, modes: Sequence[str] | None = None
    ) -> dict[str, Explanation]:
        """Every mode's explanation of one photo from ONE clean forward and one set of base maps.

        The explainer draws the union of the base maps all ``modes`` read (per stage),
        once; each mode composes its own from them, so ``explain_modes(img, ms)[m]`` is
        ``Engine(..., mode=m).explain(img)`` up to the explainer's batch composition
        (with one mode it is exactly that). Native contrast maps (the contrast role)
        are asked per mode. Evaluation (:mod:`cwox.online.evaluation`) calls this.
        """
        modes = tuple(dict.fromkeys(modes or (self.mode,)))
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode {bad[0]!r}; choose one of {', '.join(MODES)}")
        dev = self.classifier.device
        timings: dict[str, float] = {}
        start = tick = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal tick
            _sync(dev)
            now = time.perf_counter()
            timings[name] = now - tick
            tick = now

        path, cropped, x = self.prepare(image)
        lap("preprocess")

        with self.explainer.session(x) as session:  # the clean forward, shared with the maps
            classes, class_probs = top_k(session.probabilities, self.k, cum=self.cum, max_k=self.max_k)
            lap("forward")

            groups = self.clusters_of(classes)
            plans = {m: self.plan(classes, groups, m, session.probabilities) for m in modes}
            lap("clusters")

            # In the contrast role a pair's native map replaces H_fact - H_foil, so only
            # the base maps the formula still reads are drawn (plan.base_targets).
            wanted = {m: p.base_targets(with_contrasts=self.role == "contrast") for m, p in plans.items()}
            needed: dict[str, list] = {}
            for per_stage in wanted.values():
                for stage, targets in per_stage.items():
                    have = needed.setdefault(stage, [])
                    have.extend(t for t in targets if t not in have)
            needed = {s: t for s, t in needed.items() if t}
            # Each call answers with its maps, extra maps and records (counterfactual
            # reports): gather the last two in call order.
            base = session.base_role(needed)
            drawn = base.maps
            shared: dict[str, list[dict[str, Any]]] = {}
            merge_diagnostics(shared, base.diagnostics)
            extra_maps = dict(base.extra_maps)
            diagnostics = {m: {k: list(v) for k, v in shared.items()} for m in modes}
            contrasts: dict[str, dict[str, torch.Tensor] | None] = dict.fromkeys(modes)
            if self.role == "contrast":
                for m, plan in plans.items():
                    contrasts[m] = {}
                    for stage, pairs in plan.contrast_pairs().items():
                        answer = session.contrast_role(pairs, stage=stage)
                        contrasts[m][stage] = answer.maps[stage]
                        merge_diagnostics(diagnostics[m], answer.diagnostics)
                        extra_maps.update(answer.extra_maps)
            lap("maps")

        size = tuple(x.shape[-2:])
        drawn = {stage: normalize_maps(m.float(), self.normalization) for stage, m in drawn.items()}
        composed = {}
        for m, plan in plans.items():
            picked = {s: _rows(drawn[s], needed[s], t) for s, t in wanted[m].items() if t}
            maps = _full_stacks(plan.stage_targets, wanted[m], picked, size, dev)
            cluster_maps, class_maps = compose(plan, maps, support=self.support, contrasts=contrasts[m])
            composed[m] = (
                None if cluster_maps is None else cluster_maps.detach().cpu().numpy().astype(np.float32),
                class_maps.detach().cpu().numpy().astype(np.float32),
            )
        lap("compose")
        timings["total"] = time.perf_counter() - start

        extra = {name: m.detach().float().cpu().numpy() for name, m in extra_maps.items()}
        out: dict[str, Explanation] = {}
        for m, plan in plans.items():
            settings = {**self.settings(), "mode": m}
            settings["n_targets"] = {stage: len(t) for stage, t in plan.stage_targets.items()}
            settings["n_base_maps"] = {stage: len(t) for stage, t in wanted[m].items()}
            out[m] = Explanation(
                image_path=path,
                image=np.asarray(cropped, dtype=np.uint8),
                classes=list(classes),
                class_names=[self.classifier.class_names[c] for c in classes],
                probs=list(class_probs),
                clusters=[list(g) for g in groups],
                mode=m,
                explainer=self.explainer.name,
                cluster_maps=composed[m][0],
                class_maps=composed[m][1],
                settings=settings,
                timings=dict(timings),
                extra_maps=extra,
                diagnostics=diagnostics[m],
            )
        return out


def _rows(maps: torch.Tensor, drawn: list, wanted: list) -> torch.Tensor:
    """The rows of ``maps`` (one per target of ``drawn``) for the targets ``wanted``, in order."""
    if list(drawn) == list(wanted):
        return maps
    row = {t: i for i, t in enumerate(drawn)}
    return maps[torch.as_tensor([row[t] for t in wanted], dtype=torch.long, device=maps.device)]


def _full_stacks(
    stage_targets: dict[str, list], needed: dict[str, list], drawn: dict[str, torch.Tensor],
    size: tuple[int, int], device: torch.device,
) -> dict[str, torch.Tensor]:
    """One map per target of every stage: the drawn ones, zeros for those the formula does not read."""
    out: dict[str, torch.Tensor] = {}
    for stage, targets in stage_targets.items():
        got = drawn.get(stage)
        want = needed.get(stage, [])
        if got is not None and list(want) == list(targets):
            out[stage] = got
            continue
        full = torch.zeros(len(targets), *size, device=device)
        if got is not None and want:
            row = {t: i for i, t in enumerate(targets)}
            full[torch.as_tensor([row[t] for t in want], dtype=torch.long, device=device)] = got.to(device).float()
        out[stage] = full
    return out


def explain_image(
    classifier: Classifier,
    image: Image.Image | str | os.PathLike,
    tree: nx.DiGraph | None = None,
    explainer: str | Explainer = "gradcam",
    mode: str = "cwox2s",
    **options: Any,
) -> Explanation:
    """Explain one photo's top classes: ``Engine(classifier, tree, explainer, mode, ...).explain(image)``.

    Keyword arguments that :class:`Engine` takes (``top_k``, ``cum``, ``role``...) go to
    it; any other goes to the explainer, e.g. ``n_masks=2000`` for RISE.
    """
    engine_keys = set(inspect.signature(Engine.__init__).parameters) - {"self", "explainer_params"}
    engine_opts = {k: v for k, v in options.items() if k in engine_keys}
    explainer_params = {k: v for k, v in options.items() if k not in engine_keys}
    engine = Engine(classifier, tree, explainer, mode, explainer_params=explainer_params or None, **engine_opts)
    return engine.explain(image)
