"""SUNY (Xuan et al. 2023): necessity and sufficiency maps from feature-map interventions.

Every feature map ``A_l^i`` of a layer ``l`` is a hypothesised *cause* ``f_i``.
For a target class ``c`` with probability ``p_c`` (a compound class scores the
sum of its members' probabilities, CWOX Sec. 4.1) SUNY measures, for a set of
causes ``F_*`` (paper Sec. 2.1):

* Eq. (1), necessity: ``E_N(F_*) = [p_c(I) - p_c(do(F \\ F_*))] / p_c(I)``, the
  relative drop of the outcome when ``F_*`` is removed;
* Eq. (2), sufficiency: ``E_S(F_*) = p_c(do(F_*)) / p_c(I)``, the outcome when
  only ``F_*`` is kept.

Interventions (Alg. 1, cause type ``"feature"``, the paper's default): a cause's
mask is its feature map, upsampled bilinearly to the image and min-max
normalised, ``m_i = norm(upsample(A_l^i))`` (Alg. 1 lines 7, 10); removing it is
``I * (1 - m_i)``, keeping it ``I * m_i``, on the 0..1 image (Appendix A.5 (1):
"normalized to the range [0, 1]"), so removed pixels turn black (unlike RISE
here, which masks to grey). The paper does not write the mask of a *set* of
causes; we remove a set by removing its causes one after the other,
``I * prod_i (1 - m_i)``, and keep a set as the complement,
``I * (1 - prod_i (1 - m_i))`` (the soft union of the masks), which reduces to
the paper's formulas for one cause and keeps "remove" and "keep" complementary.
Cause type ``"filter"`` (Appendix A.1, Alg. 1 lines 12-20, "SUNY-filter")
prunes the layer's filters instead: a removed cause's channel of the layer's
output is set to zero (setting a conv filter's weights to zero does exactly
that for a bias-free conv such as EfficientNet's ``_conv_head``), a kept set
zeroes every other channel. The network is cut at the layer with
:func:`cwox.core.split.split_at`: the front runs once per image and every batch of
pruned variants runs only the rest.

Algorithm 1:

1. ``E_N(f_i)`` and ``E_S(f_i)`` for every single cause (``2 C`` interventions);
2. ``F_N`` / ``F_S``: the ``n_causes`` causes with the largest ``E_N`` / ``E_S``
   ("the relatively more necessary (sufficient) ``f_i``", Sec. 2.1);
3. the responsibilities ``R_N`` (Eq. 3) and ``R_S`` (Eq. 4): Shapley values of
   ``E_N`` over ``F_N`` and of ``E_S`` over ``F_S``, estimated by Shapley
   sampling (Strumbelj and Kononenko 2014, the paper's [27]): for each of
   ``n_samples`` random orderings of the set, every cause's marginal
   contribution when added to the causes before it; ``R = 0`` outside the sets;
4. ``N_map = norm(upsample(ReLU(sum_i R_N^i A_l^i)))`` and likewise ``S_map``
   (Alg. 1 lines 21-22), ``norm`` the per-map min-max normalisation.

Defaults. The paper gives no number for ``|F_N|``, ``|F_S|``, the Shapley
samples or the layer. We use the last convolutional layer (as the CAM methods
the paper compares with, Score-CAM and Group-CAM: ``classifier.cluster_layer``,
``_conv_head`` of EfficientNet-Lite0), ``n_causes = 10`` causes in each set
and ``n_samples = 10`` sampled orderings (each ordering gives every cause of the
set one marginal, so 10 marginals per cause; ``n_samples * (n_causes - 2) + 1``
new interventions per set, since the empty set, the single causes and the full
set are shared across orderings).

Whole output for about one map. Every intervention's forward pass yields ALL
classes' logits, and this module keeps that full output matrix: step 1 is done
once per image and layer and serves every target (and both stages when they
share the layer, the default), and the empty / single / full-set interventions
of step 3 come from the same cache; only the orderings of each target's own
``F_N`` and ``F_S`` need new passes. The cache lives until another image, layer
or a change of the model's weights comes along, so :meth:`SUNY.contrast` after
:meth:`SUNY.explain_stages` on the same image (what the CWOX engine does) pays
no second step 1. Shapley orderings come from ``n_samples`` random priority
vectors over ALL the layer's causes, drawn from ``seed`` alone: sample ``s``
orders a target's set by priority ``s``, a uniformly random ordering of that
set, so every target gets plain Shapley sampling, its maps do not depend on
which other targets share the call, and targets whose sets overlap (a class and
its cluster, say) share the prefixes that hold only common causes, which run once.

Roles. Base role (:meth:`SUNY.explain`): one importance map per target,
``(N_map + S_map) / 2``. The paper's Fig. 1 colour map puts necessity and
sufficiency on two axes with one-dimensional "importance" on the diagonal
``y = x``; the mean of the two min-max normalised maps is the projection on that
diagonal, gives both perspectives the same weight (its Table 1 "SUNY" row scores
the two together) and stays in [0, 1]. Both maps come back as the call's
``Answer.extra_maps``. Contrast role (:meth:`SUNY.contrast`, "P rather
than Q"): the outcome becomes the log-odds ``g = log p_P - log p_Q`` (compound
``P`` / ``Q`` as sums of probabilities), and the effects are its changes,
``E_N(F_*) = g(I) - g(do(F \\ F_*))`` and ``E_S(F_*) = g(do(F_*)) - g(I)``: the
log of Eq. (1)-(2)'s ratio, written as a difference because ``g`` may be
negative or zero. Shifting or positively scaling a value function changes
neither the ranking that picks ``F_N`` / ``F_S`` nor the min-max normalised
maps, so the two definitions differ only by the outcome they measure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from cwox.online.compose import normalize_maps
from cwox.online.explainers.base import (
    Answer,
    Explainer,
    capture_activations,
    register,
    stage_groups,
    upsample,
)
from cwox.online.targets import Target, members, membership_matrix
from PIL import Image

from cwox.core.batching import batch_slices
from cwox.core.models import Classifier
from cwox.core.progress import progress
from cwox.core.split import ModelSplit, split_at

#: Hypothesised cause types of Alg. 1: feature maps as input masks, or filters pruned.
CAUSE_TYPES = ("feature", "filter")

#: A coalition of causes: whether it is kept (True) or removed (False), and its channel ids.
_Key = tuple[bool, tuple[int, ...]]


@dataclass
class SunyResult:
    """Everything SUNY computes for ``T`` targets at one layer (``C`` causes).

    Attributes:
        necessity: ``T x H x W`` N maps (Alg. 1 line 21), in [0, 1].
        sufficiency: ``T x H x W`` S maps (Alg. 1 line 22), in [0, 1].
        importance: ``T x H x W``, ``(necessity + sufficiency) / 2`` (the base role).
        effects_n: ``T x C`` single-cause necessity effects ``E_N(f_i)`` (Eq. 1).
        effects_s: ``T x C`` single-cause sufficiency effects ``E_S(f_i)`` (Eq. 2).
        causes_n: ``T x k`` channel ids of ``F_N``, most necessary first.
        causes_s: ``T x k`` channel ids of ``F_S``, most sufficient first.
        responsibility_n: ``T x C`` Shapley estimates ``R_N`` (Eq. 3), 0 outside ``F_N``.
        responsibility_s: ``T x C`` Shapley estimates ``R_S`` (Eq. 4), 0 outside ``F_S``.
        layer: the layer whose feature maps are the causes.
        cause: ``"feature"`` or ``"filter"``.
        outcome: ``"probability"`` (Eq. 1-2) or ``"log_odds"`` (contrast role).
    """

    necessity: torch.Tensor
    sufficiency: torch.Tensor
    importance: torch.Tensor
    effects_n: torch.Tensor
    effects_s: torch.Tensor
    causes_n: torch.Tensor
    causes_s: torch.Tensor
    responsibility_n: torch.Tensor
    responsibility_s: torch.Tensor
    layer: str
    cause: str
    outcome: str


# --------------------------------------------------------------------------- outcomes


class _Outcome:
    """The value function of the effects: a probability (Eq. 1-2) or a log-odds (contrast).

    ``value(logits)`` is ``log p_t`` (probability outcome) or
    ``log p_P - log p_Q`` (log-odds outcome), one column per target, computed in
    float64 from softmax probabilities so that sums over compound members are exact.
    """

    def __init__(
        self, facts: Sequence[Target], foils: Sequence[Target] | None, n_classes: int, device: torch.device
    ) -> None:
        self.kind = "probability" if foils is None else "log_odds"
        self.facts = membership_matrix(facts, n_classes, device).double()
        self.foils = None if foils is None else membership_matrix(foils, n_classes, device).double()

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """``U x n_classes`` logits -> ``U x T`` values (log scale)."""
        probs = torch.softmax(logits.double(), dim=-1)
        tiny = torch.finfo(torch.float64).tiny
        v = torch.log((probs @ self.facts.T).clamp_min(tiny))
        if self.foils is not None:
            v = v - torch.log((probs @ self.foils.T).clamp_min(tiny))
        return v

    def necessity(self, v: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
        """``E_N`` from the value after a removal: Eq. (1), ``1 - p/p(I)``, or ``g(I) - g``."""
        return 1.0 - torch.exp(v - v0) if self.kind == "probability" else v0 - v

    def sufficiency(self, v: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
        """``E_S`` from the value after a keep: Eq. (2), ``p/p(I)``, or ``g - g(I)``."""
        return torch.exp(v - v0) if self.kind == "probability" else v - v0


# --------------------------------------------------------------------------- interventions


class _Interventions:
    """One image at one layer: its feature maps and the logits of every intervention so far.

    ``evaluate`` takes coalitions (kept or removed sets of channel ids), runs the
    ones not seen yet in batches of ``batch_size`` and returns every coalition's
    full logit vector, so any target's effects can be read off later.
    """

    def __init__(self, explainer: SUNY, x: torch.Tensor, layer: str, cause: str) -> None:
        self.explainer = explainer
        self.classifier = explainer.classifier
        self.x = x
        self.layer = layer
        self.cause = cause
        self.fingerprint = explainer._model_fingerprint()
        clf = self.classifier
        with capture_activations(clf.module, [layer]) as acts:
            logits = clf.logits(x.unsqueeze(0))
            act = acts.get(layer)
        if act is None:
            raise ValueError(f"layer {layer!r} was not called in the model's forward pass")
        if act.dim() != 4 or act.shape[0] != 1:
            raise ValueError(f"layer {layer!r} gives {tuple(act.shape)}, not a 1 x C x h x w feature map")
        if logits.dim() != 2 or logits.shape[0] != 1:
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}, expected 1 x n_classes")
        self.acts = act[0].detach().float().clone()  # C x h x w
        self.logits0 = logits[0].detach().float().clone()
        self.n_causes = self.acts.shape[0]
        mean = torch.tensor(clf.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(clf.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
        self.mean, self.std = mean, std
        self.x01 = x * std + mean  # the 0..1 image the paper masks (not clamped: x is reproduced exactly)
        self.cache: dict[_Key, torch.Tensor] = {(False, ()): self.logits0}
        self.split: ModelSplit | None = None
        if cause == "filter":
            # The front runs once; each batch runs only the rest of the network (cwox.core.split).
            self.split = split_at(clf, layer)
            with torch.inference_mode():
                self.front_act = self.split.front(x.unsqueeze(0).to(clf.device))

    def matches(self, x: torch.Tensor, layer: str, cause: str) -> bool:
        return (
            self.layer == layer
            and self.cause == cause
            and self.x.shape == x.shape
            and self.x.device == x.device
            and self.fingerprint == self.explainer._model_fingerprint()
            and torch.equal(self.x, x)
        )

    # ---- masks ---------------------------------------------------------------------

    def masks(self, channels: torch.Tensor) -> torch.Tensor:
        """``norm(upsample(A_l^i))`` (Alg. 1 lines 7, 10) for ``channels`` (any shape) -> ``... x H x W``.

        A constant feature map has no min-max normalisation; its mask is all zeros.
        """
        h, w = self.x.shape[-2:]
        m = normalize_maps(upsample(self.acts[channels.reshape(-1)], (h, w)), "minmax")  # n x H x W
        return m.view(*channels.shape, h, w)

    # ---- evaluation ----------------------------------------------------------------

    def evaluate(self, keys: Sequence[_Key]) -> torch.Tensor:
        """Full logits ``len(keys) x n_classes`` of the coalitions, new ones run in batches."""
        missing = sorted({k for k in keys if k not in self.cache}, key=lambda k: (len(k[1]), k))
        bs = self.explainer.batch_size
        for sl in progress(batch_slices(len(missing), bs), total=len(missing), desc="SUNY interventions", unit="pass"):
            chunk = missing[sl]
            width = max(1, max(len(ids) for _, ids in chunk))
            idx = torch.full((len(chunk), width), -1, dtype=torch.long)
            for row, (_, ids) in enumerate(chunk):
                idx[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            idx = idx.to(self.x.device)
            keep = torch.tensor([k for k, _ in chunk], dtype=torch.bool, device=self.x.device)
            logits = self._feature_batch(idx, keep) if self.cause == "feature" else self._filter_batch(idx, keep)
            self.explainer.forward_passes += len(chunk)
            for row, key in enumerate(chunk):
                self.cache[key] = logits[row]
        if not keys:
            return self.logits0.new_zeros((0, self.logits0.shape[0]))
        return torch.stack([self.cache[k] for k in keys])

    def _feature_batch(self, idx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Input interventions: ``I * prod(1 - m_i)`` (remove) or ``I * (1 - prod(1 - m_i))`` (keep)."""
        valid = idx >= 0
        m = self.masks(idx.clamp(min=0)) * valid[..., None, None]  # B x w x H x W (padding -> 0)
        rest = torch.prod(1.0 - m, dim=1)  # B x H x W: what survives removing every member
        mult = torch.where(keep[:, None, None], 1.0 - rest, rest)
        images = (self.x01.unsqueeze(0) * mult.unsqueeze(1) - self.mean) / self.std
        return self.classifier.logits(images).float()

    @torch.inference_mode()
    def _filter_batch(self, idx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Filter pruning: zero the layer's removed channels (remove) or all the others (keep).

        The gated activations go through ``rest`` of :func:`cwox.core.split.split_at`
        (the layer's front is not recomputed when the model traces; with the
        split's hook fallback, ``front`` is re-run first so ``rest`` sees this image).
        """
        assert self.split is not None
        member = torch.zeros(idx.shape[0], self.n_causes, dtype=torch.bool, device=idx.device)
        member.scatter_(1, idx.clamp(min=0), idx >= 0)
        gates = torch.where(keep[:, None], member, ~member)
        act = self.front_act
        if self.split.method != "fx":
            act = self.split.front(self.x.unsqueeze(0))
        gated = act * gates.to(act.dtype)[:, :, None, None]
        return self.split.rest(gated).float()


# --------------------------------------------------------------------------- explainer


@register("suny")
class SUNY(Explainer):
    """SUNY necessity and sufficiency maps for many (compound) targets, sharing passes.

    Args:
        classifier: the model.
        layer: the layer whose feature maps are the causes, stage one (and stage
            two unless ``class_layer`` is given); default ``classifier.cluster_layer``
            (the last conv layer, the layer CAM methods use).
        class_layer: a separate layer for stage two (e.g. ``classifier.class_layer``);
            None (default) shares stage one's layer and interventions.
        cause: ``"feature"`` (default; feature maps as input masks, SUNY-feature)
            or ``"filter"`` (pruning the layer's filters, SUNY-filter, Appendix A.1).
        n_causes: size of ``F_N`` and of ``F_S``, the causes whose
            responsibilities are estimated (Eq. 3-4).
        n_samples: sampled orderings per set in the Shapley sampling estimate.
        seed: seeds the Shapley orderings (the same for every target).
        batch_size: intervened images per forward pass (bounds memory).

    Attributes:
        forward_passes: intervened images fed to the model so far.

    Each call's ``Answer.extra_maps`` holds named ``n x H x W`` maps in the order of
    its targets / pairs: ``necessity_<stage>`` and ``sufficiency_<stage>`` from
    :meth:`base_role`, ``contrast_necessity_<stage>`` / ``contrast_sufficiency_<stage>``
    from :meth:`contrast_role` (for ``Explanation.extra_maps``).
    """

    supports_contrast = True
    question_maps = ("sufficiency", "necessity")
    #: The importance map is a mean of two [0, 1] maps; rescale it to [0, 1] before subtracting.
    default_normalization = "minmax"
    #: CAM-like maps (ReLU of a weighted sum of feature maps), like Grad-CAM's median support.
    default_support = 50.0

    def __init__(
        self,
        classifier: Classifier,
        *,
        layer: str | None = None,
        class_layer: str | None = None,
        cause: str = "feature",
        n_causes: int = 10,
        n_samples: int = 10,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(classifier, batch_size=batch_size)
        if cause not in CAUSE_TYPES:
            raise ValueError(f"unknown cause type {cause!r}; choose one of {', '.join(CAUSE_TYPES)}")
        if int(n_causes) < 1:
            raise ValueError(f"n_causes (the size of F_N and F_S) must be >= 1, got {n_causes}")
        if int(n_samples) < 1:
            raise ValueError(f"n_samples (Shapley orderings) must be >= 1, got {n_samples}")
        first = layer or classifier.cluster_layer
        self._use_layers(first, class_layer or first)
        self.cause = cause
        self.n_causes = int(n_causes)
        self.n_samples = int(n_samples)
        self.seed = int(seed)
        self.forward_passes = 0
        self._runs: dict[str, _Interventions] = {}

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            **self._layer_settings(),
            "cause": self.cause,
            "n_causes": self.n_causes,
            "n_samples": self.n_samples,
            "seed": self.seed,
        }

    def clear_cache(self) -> None:
        """Forget the cached interventions (they are also dropped on a new image or new weights)."""
        self._runs.clear()

    # ---- the two roles ---------------------------------------------------------------

    def base_role(self, image: torch.Tensor | Image.Image, requests: Mapping[str, Sequence[Target]]) -> Answer:
        """Importance maps per stage; stages on the same layer share one analysis of all their targets."""
        x = self.prepare(image)
        wanted = self.checked_requests(requests)
        out: dict[str, torch.Tensor] = {}
        extra: dict[str, torch.Tensor] = {}
        for layer, union, stage_rows in stage_groups(wanted, self.layers.__getitem__):
            res = self._analyse(x, layer, union, None)
            for s, r in stage_rows.items():
                rows = torch.as_tensor(r, dtype=torch.long, device=x.device)
                out[s] = res.importance[rows]
                extra[f"necessity_{s}"] = res.necessity[rows]
                extra[f"sufficiency_{s}"] = res.sufficiency[rows]
        return Answer(out, extra_maps=extra)

    def contrast_role(
        self, image: torch.Tensor | Image.Image, pairs: Sequence[tuple[Target, Target]], stage: str
    ) -> Answer:
        """"P rather than Q" importance maps ``P x H x W``: SUNY on the log-odds ``log p_P - log p_Q``."""
        facts, foils = self._check_pairs(pairs)
        res = self._analyse(self.prepare(image), self.layers[stage], facts, foils)
        extra = {f"contrast_necessity_{stage}": res.necessity, f"contrast_sufficiency_{stage}": res.sufficiency}
        return Answer({stage: res.importance}, extra_maps=extra)

    # ---- the direct question -------------------------------------------------------

    def why(
        self,
        image: torch.Tensor | Image.Image,
        fact: Target | Iterable[int],
        foil: Target | Iterable[int] | None = None,
        *,
        stage: str = "cluster",
    ) -> dict[str, torch.Tensor]:
        """Why ``fact`` (rather than ``foil``)? ``{"sufficiency", "necessity", "importance"}``, each ``H x W``.

        Without a foil the outcome is ``fact``'s probability (Eq. 1-2); with one,
        the log-odds of ``fact`` over ``foil`` (either may be a set of classes).
        For the effects, ``F_N``, ``F_S`` and the responsibilities use :meth:`analyse`.
        """
        res = self.analyse(image, [fact], foils=None if foil is None else [foil], stage=stage)
        return {"sufficiency": res.sufficiency[0], "necessity": res.necessity[0], "importance": res.importance[0]}

    def analyse(
        self,
        image: torch.Tensor | Image.Image,
        targets: Sequence[Target | Iterable[int]],
        *,
        foils: Sequence[Target | Iterable[int]] | None = None,
        stage: str = "cluster",
    ) -> SunyResult:
        """Everything SUNY computes (effects, ``F_N``/``F_S``, responsibilities, maps) for the targets.

        With ``foils`` (one per target) the outcome is the log-odds of each target
        over its foil (the contrast role); without, the target's probability.
        """
        stage = self.check_stage(stage)
        if foils is None:
            facts, foil_list = self.check_targets(targets, self.classifier.n_classes), None
        else:
            if isinstance(foils, (int, frozenset)) or not isinstance(foils, Sequence):
                raise TypeError("foils must be a sequence with one class id / set of ids per target")
            if isinstance(targets, (int, frozenset)) or not isinstance(targets, Sequence):
                raise TypeError("targets must be a sequence of class ids / sets of class ids")
            if len(foils) != len(targets):
                raise ValueError(f"{len(foils)} foils for {len(targets)} targets; give one foil per target")
            facts, foil_list = self._check_pairs(list(zip(targets, foils)))
        return self._analyse(self.prepare(image), self.layers[stage], facts, foil_list)

    # ---- internals -----------------------------------------------------------------

    def _check_pairs(self, pairs: Sequence[tuple[Any, Any]]) -> tuple[list[Target], list[Target]]:
        if isinstance(pairs, (tuple, frozenset)) and len(pairs) == 2 and not isinstance(pairs[0], tuple):
            raise TypeError("pairs must be a sequence of (fact, foil) pairs, e.g. [(281, 282)]")
        if not isinstance(pairs, Sequence) or not pairs:
            raise ValueError("no (fact, foil) pairs given")
        n = self.classifier.n_classes
        facts, foils = [], []
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"each pair must be (fact, foil), got {pair!r}")
            fact, foil = self.check_targets([pair[0], pair[1]], n)
            shared = set(members(fact)) & set(members(foil))
            if shared:
                what = "equals" if fact == foil else "shares classes with"
                raise ValueError(
                    f"the foil {sorted(members(foil))} {what} the fact {sorted(members(fact))} "
                    f"(common: {sorted(shared)}); 'P rather than Q' needs Q without P's classes"
                )
            facts.append(fact)
            foils.append(foil)
        return facts, foils

    def _model_fingerprint(self) -> tuple[int, int]:
        """Changes when the module is replaced or its parameters are modified in place."""
        module = self.classifier.module
        return id(module), sum(p._version for p in module.parameters())

    def _interventions(self, x: torch.Tensor, layer: str) -> _Interventions:
        run = self._runs.get(layer)
        if run is None or not run.matches(x, layer, self.cause):
            self._runs = {k: v for k, v in self._runs.items() if torch.equal(v.x, x) and k != layer}
            run = _Interventions(self, x.clone(), layer, self.cause)
            self._runs[layer] = run
        return run

    @torch.no_grad()
    def _analyse(
        self, x: torch.Tensor, layer: str, facts: list[Target], foils: list[Target] | None
    ) -> SunyResult:
        """Alg. 1 for every target at once (the full logits of each intervention serve all)."""
        run = self._interventions(x, layer)
        outcome = _Outcome(facts, foils, self.classifier.n_classes, x.device)
        n_c = run.n_causes
        k = min(self.n_causes, n_c)
        v0 = outcome.value(run.logits0[None])  # 1 x T

        # Step 1: every single cause, removed and kept (2 C interventions shared by all targets).
        singles = [(keep, (c,)) for keep in (False, True) for c in range(n_c)]
        logits = run.evaluate(singles + [(True, ())])
        values = outcome.value(logits)  # (2C + 1) x T
        effects_n = outcome.necessity(values[:n_c], v0).T  # T x C, Eq. (1)
        effects_s = outcome.sufficiency(values[n_c : 2 * n_c], v0).T  # T x C, Eq. (2)
        v_empty_keep = values[2 * n_c]  # T: nothing kept (a black image / every channel zeroed)

        # Step 2: F_N and F_S, the k most necessary / sufficient causes of each target.
        causes_n = effects_n.topk(k, dim=1).indices  # T x k
        causes_s = effects_s.topk(k, dim=1).indices

        # Step 3: Shapley sampling of R_N (Eq. 3) and R_S (Eq. 4).
        order_n, keys_n = self._coalitions(run, causes_n, keep=False)
        order_s, keys_s = self._coalitions(run, causes_s, keep=True)
        run.evaluate(keys_n + keys_s)  # both sets' new coalitions in one batched run
        resp_n = self._shapley(run, outcome, order_n, keys_n, keep=False, v0=v0[0], v_empty=v0[0])
        resp_s = self._shapley(run, outcome, order_s, keys_s, keep=True, v0=v0[0], v_empty=v_empty_keep)

        # Step 4: the maps, Alg. 1 lines 21-22.
        necessity = self._cam(run, resp_n)
        sufficiency = self._cam(run, resp_s)
        return SunyResult(
            necessity=necessity,
            sufficiency=sufficiency,
            importance=(necessity + sufficiency) / 2.0,
            effects_n=effects_n.float(),
            effects_s=effects_s.float(),
            causes_n=causes_n,
            causes_s=causes_s,
            responsibility_n=resp_n.float(),
            responsibility_s=resp_s.float(),
            layer=layer,
            cause=self.cause,
            outcome=outcome.kind,
        )

    def _priorities(self, n_channels: int, keep: bool) -> torch.Tensor:
        """``n_samples x C`` random priorities of all causes, the same for every target.

        Ordering a target's set by the priorities of sample ``s`` gives a uniformly
        random ordering of that set (any subset of a random permutation is in
        random order), so each target's estimate is plain Shapley sampling; and
        targets whose sets overlap share their first prefixes, which are run once.
        """
        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.seed * 2 + int(keep))
        return torch.rand(self.n_samples, n_channels, generator=gen)

    def _coalitions(
        self, run: _Interventions, causes: torch.Tensor, *, keep: bool
    ) -> tuple[torch.Tensor, list[_Key]]:
        """The sampled orderings ``T x m x k`` of each target's set and their prefix coalitions.

        Keys are in ``(target, ordering, prefix length 1..k)`` order.
        """
        n_t, k = causes.shape
        m = self.n_samples
        prio = self._priorities(run.n_causes, keep).to(causes.device)  # m x C
        own_prio = prio[:, causes].permute(1, 0, 2)  # T x m x k: priorities of each target's causes
        order = causes[:, None, :].expand(n_t, m, k).gather(2, own_prio.argsort(dim=2))  # T x m x k
        rows = order.cpu().tolist()
        keys = [(keep, tuple(sorted(rows[t][s][: j + 1]))) for t in range(n_t) for s in range(m) for j in range(k)]
        return order, keys

    def _shapley(
        self,
        run: _Interventions,
        outcome: _Outcome,
        order: torch.Tensor,
        keys: list[_Key],
        *,
        keep: bool,
        v0: torch.Tensor,
        v_empty: torch.Tensor,
    ) -> torch.Tensor:
        """Shapley sampling estimates ``T x C`` of ``E_N`` (remove) or ``E_S`` (keep) over each target's set.

        For each ordering ``O`` of a target's set, the cause at position ``j``
        gets ``E(O[:j+1]) - E(O[:j])``; the estimate is the mean over orderings
        (every cause gets one marginal per ordering). The prefix coalitions of all
        targets are evaluated together; repeated ones (single causes, the full
        set, prefixes shared between targets) run once.
        """
        n_t, m, k = order.shape
        values = outcome.value(run.evaluate(keys)).view(n_t, m, k, n_t)
        own = torch.arange(n_t, device=values.device)
        v = values[own, :, :, own]  # T x m x k: each target's value on its own coalitions
        v = torch.cat([v_empty.view(n_t, 1, 1).expand(n_t, m, 1), v], dim=2)  # prefix lengths 0..k
        v0 = v0.view(n_t, 1, 1)
        effect = outcome.sufficiency(v, v0) if keep else outcome.necessity(v, v0)
        marginal = effect[:, :, 1:] - effect[:, :, :-1]  # T x m x k
        resp = torch.zeros(n_t, run.n_causes, dtype=marginal.dtype, device=marginal.device)
        resp.scatter_add_(1, order.reshape(n_t, m * k), marginal.reshape(n_t, m * k))
        return resp / m

    def _cam(self, run: _Interventions, resp: torch.Tensor) -> torch.Tensor:
        """``norm(upsample(ReLU(sum_i R^i A_l^i)))`` for every target: ``T x H x W``."""
        small = torch.einsum("tc,chw->thw", resp.float(), run.acts).clamp_min(0.0)
        return normalize_maps(upsample(small, run.x.shape[-2:]), "minmax")
