"""The base-explainer interface, the registry, and safe hooks.

An explainer draws saliency maps for *targets* (a class id, or a compound class
given as a set of ids, CWOX Sec. 4.1) on one image. It plays two roles in the
whole-output modes (:mod:`cwox.online.compose`):

* base role, :meth:`Explainer.explain`: one signed map ``H_t`` per target, at the
  image's size. All targets of a call share the explainer's passes (one forward
  and batched backward passes for gradient methods, one set of perturbations for
  perturbation methods), so a whole-output explanation costs about one map.
* contrast role, :meth:`Explainer.contrast` (only when ``supports_contrast``): a
  native "P rather than Q" map per (fact, foil) pair, which CWOX-2s uses instead
  of the subtraction ``H_P - H_Q`` (for CCE, SUNY, FG-VCE).

Each explainer has two *stages*: ``"cluster"`` (the coarse setup of CWOX-2s
stage one, also the standard setup used by SWOX and CWOX-1s) and ``"class"``
(the finer setup of stage two: a lower Grad-CAM layer, finer RISE masks).

An explainer is one file plus one registry line. Subclass :class:`Explainer`,
implement :meth:`Explainer.base_role` (the base :meth:`Explainer.explain` checks its
arguments and delegates to it; use :meth:`Explainer.checked_requests` for the
requests) and, for a native contrast role, :meth:`Explainer.contrast_role`; both return
an :class:`Answer` (the maps, plus any extra maps and diagnostics of that call, nothing
left on the instance). Declare what it can do in class attributes, which the engine,
the command line, the question writer, the diagnostics and the report read (none of
them names an explainer): ``supports_contrast`` (and ``contrast_requires``),
``question_maps`` and ``other_image`` for :meth:`Explainer.why`, ``records`` (the
kinds of diagnostics it writes, :class:`cwox.online.diagnostics.RecordKind`: their
warnings, notes and report tables), ``cli_options`` (dedicated command-line options),
the defaults ``default_normalization``/``default_support``, and the classmethod
:meth:`Explainer.default_params` (parameters the command line fills in when the user
gives none, e.g. FG-VCE's embedded reference bank). Decorate it with
``@register("name")``, and add ``"name": "module:Class"`` to
:data:`cwox.online.explainers.BUILTIN` so :func:`get_explainer` finds it lazily (an
explainer registered at run time, e.g. in a test, needs no registry line).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from cwox.online.diagnostics import RecordKind, register_records
from cwox.online.targets import STAGES, Target, as_target
from PIL import Image
from torch import nn

from cwox.core.devices import default_batch_size
from cwox.core.models import Classifier

#: name -> explainer class, filled by :func:`register` when a module is imported.
_REGISTRY: dict[str, type[Explainer]] = {}


@dataclass
class Answer:
    """What one call of an explainer's role gives back.

    Attributes:
        maps: ``{stage: n x H x W}`` float32 maps on the classifier's device, one per
            target (base role) or per (fact, foil) pair (contrast role).
        extra_maps: named ``n x H x W`` maps the method draws beside them (SUNY's
            necessity and sufficiency), kept in ``Explanation.extra_maps``.
        diagnostics: JSON-ready records of what the call did beside its maps, kind ->
            list of records (:mod:`cwox.online.diagnostics`), e.g. FG-VCE's and CCE's
            counterfactuals; ``{}`` for explainers without any.
    """

    maps: dict[str, torch.Tensor]
    extra_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class Explainer:
    """A saliency method bound to one classifier.

    Args:
        classifier: the model to explain; every tensor follows ``classifier.device``.
        batch_size: images per forward (or backward) pass; bounds peak memory.
            Defaults to :func:`cwox.core.devices.default_batch_size` of the device.

    Class attributes (what the explainer can do; the engine, CLI, report ask them):
        name: the registry name.
        supports_contrast: whether :meth:`contrast` gives native contrast maps (an
            instance may set it, e.g. FG-VCE only with a reference bank).
        contrast_requires: what the contrast role needs when ``supports_contrast`` is
            False on an instance (``"a reference bank"``); ``""`` when it never has one.
        question_maps: the names of the maps :meth:`why` answers with, in the order a
            report shows them (``()``: no direct question).
        other_image: whether :meth:`why` takes ``other=`` (a second image, CCE's O-contrast).
        records: the kinds of diagnostics its calls write
            (:class:`cwox.online.diagnostics.RecordKind`: their warnings, report tables).
        cli_options: dedicated command-line options -> the parameter each one sets
            (``{"--n-masks": "n_masks"}``); every parameter is also ``-p NAME.KEY=VALUE``.
        default_normalization: how :mod:`cwox.online.compose` should rescale this
            explainer's maps before subtracting them (``"none"``/``"minmax"``/``"max"``).
        default_support: the support percentile of Eq. (2) suited to its maps.
    """

    name: ClassVar[str] = ""
    supports_contrast: ClassVar[bool] = False
    contrast_requires: ClassVar[str] = ""
    question_maps: ClassVar[tuple[str, ...]] = ()
    other_image: ClassVar[bool] = False
    records: ClassVar[tuple[RecordKind, ...]] = ()
    cli_options: ClassVar[dict[str, str]] = {}
    default_normalization: ClassVar[str] = "none"
    default_support: ClassVar[float] = 50.0

    @classmethod
    def default_params(cls, classifier: Classifier) -> dict[str, Any]:
        """Parameters the command line passes when the user gives none (under the user's own).

        For what an explainer ships with for some models, e.g. FG-VCE's embedded
        reference bank for the default model; ``{}`` by default.
        """
        return {}

    def __init__(self, classifier: Classifier, *, batch_size: int | None = None) -> None:
        if not isinstance(classifier, Classifier):
            raise TypeError(f"classifier must be a cwox.core.models.Classifier, got {type(classifier).__name__}")
        self.classifier = classifier
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size) if batch_size is not None else default_batch_size(classifier.device)

    @property
    def device(self) -> torch.device:
        return self.classifier.device

    # ---- the two roles -----------------------------------------------------------

    def explain(
        self, image: torch.Tensor | Image.Image, targets: Sequence[Target | Iterable[int]], *, stage: str = "cluster"
    ) -> torch.Tensor:
        """Signed saliency maps ``T x H x W`` (float32, on the classifier's device), one per target.

        Checks the stage and the targets, then asks :meth:`base_role` for that one
        stage; explainers implement :meth:`base_role` (or, for a method with nothing
        to share between stages, override this method instead).
        """
        stage = self.check_stage(stage)
        checked = self.check_targets(targets, self.classifier.n_classes)
        return self.base_role(image, {stage: checked}).maps[stage]

    def base_role(self, image: torch.Tensor | Image.Image, requests: Mapping[str, Sequence[Target]]) -> Answer:
        """Maps for several stages at once (``Answer.maps``: ``{stage: T_stage x H x W}``).

        Explainers that serve several stages from the same passes override this.
        The default, for an explainer that overrides only :meth:`explain`, makes
        one :meth:`explain` call per requested stage.
        """
        if type(self).explain is Explainer.explain:
            raise NotImplementedError(f"explainer {type(self).__qualname__} must override base_role() or explain()")
        x = self.prepare(image)
        return Answer({stage: self.explain(x, targets, stage=stage)
                       for stage, targets in self.checked_requests(requests).items()})

    def explain_stages(
        self, image: torch.Tensor | Image.Image, requests: Mapping[str, Sequence[Target]]
    ) -> dict[str, torch.Tensor]:
        """The maps of :meth:`base_role` alone: ``{stage: T_stage x H x W}``."""
        return self.base_role(image, requests).maps

    def session(self, image: torch.Tensor | Image.Image) -> ExplainSession:
        """Start explaining one image: run its clean forward pass once.

        The engine reads the top classes from ``session.probabilities`` and then
        asks the same session for the maps, so an explainer whose maps need the
        clean forward anyway (Grad-CAM) does not run it twice. Use as a context
        manager; leaving it releases what the explainer kept (graphs, hooks).
        """
        return ExplainSession(self, self.prepare(image))

    def contrast(
        self,
        image: torch.Tensor | Image.Image,
        pairs: Sequence[tuple[Target, Target]],
        *,
        stage: str = "cluster",
    ) -> torch.Tensor:
        """Native "fact rather than foil" maps ``P x H x W``, one per pair (the maps of :meth:`contrast_role`)."""
        stage = self.check_stage(stage)
        return self.contrast_role(image, pairs, stage).maps[stage]

    def contrast_role(
        self, image: torch.Tensor | Image.Image, pairs: Sequence[tuple[Target, Target]], stage: str
    ) -> Answer:
        """"fact rather than foil" for a checked ``stage``: ``Answer.maps[stage]`` is ``P x H x W``.

        Explainers with a native contrast role (``supports_contrast``) implement it.
        """
        raise NotImplementedError(f"{self.no_contrast_message()}; use explain() and subtract")

    def no_contrast_message(self) -> str:
        """Why this explainer has no native contrast role (``contrast_requires`` says what it lacks)."""
        needs = f" without {self.contrast_requires}" if self.contrast_requires else ""
        return f"explainer {self.name!r} has no native contrast role{needs}"

    def why(
        self,
        image: torch.Tensor | Image.Image,
        fact: Target | Iterable[int],
        foil: Target | Iterable[int] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """The direct question "why ``fact`` (rather than ``foil``)?": maps named by ``question_maps``.

        Explainers that declare ``question_maps`` implement it; ``other=`` (a second
        image) only where ``other_image`` is set.
        """
        raise NotImplementedError(f"explainer {self.name!r} answers no direct question (why P rather than Q)")

    def settings(self) -> dict[str, Any]:
        """The parameters that shape this explainer's maps (recorded in the Explanation)."""
        return {"name": self.name, "batch_size": self.batch_size}

    # ---- shared helpers ------------------------------------------------------------

    def prepare(self, image: torch.Tensor | Image.Image) -> torch.Tensor:
        """A normalised ``3 x S x S`` tensor on the device (a PIL photo is preprocessed)."""
        if isinstance(image, Image.Image):
            image = self.classifier.preprocess(image)
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image must be a PIL image or a normalised tensor, got {type(image).__name__}")
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be a 3 x H x W normalised tensor, got shape {tuple(image.shape)}")
        return image.to(self.device, torch.float32)

    @staticmethod
    def check_targets(targets: Sequence[Target | Iterable[int]], n_classes: int) -> list[Target]:
        """Targets normalised by :func:`cwox.online.targets.as_target`, checked against ``n_classes``."""
        if isinstance(targets, (int, frozenset)) or not isinstance(targets, Sequence):
            raise TypeError("targets must be a sequence of class ids / sets of class ids")
        out = [as_target(t) for t in targets]
        if not out:
            raise ValueError("no targets given")
        for t in out:
            ids = (t,) if isinstance(t, int) else tuple(t)
            bad = [i for i in ids if not 0 <= i < n_classes]
            if bad:
                raise ValueError(f"target {t!r}: class ids {bad} outside 0..{n_classes - 1}")
        return out

    def checked_requests(self, requests: Mapping[str, Sequence[Target | Iterable[int]]]) -> dict[str, list[Target]]:
        """``{stage: targets}`` with every stage and target checked; stages without targets are left out."""
        n = self.classifier.n_classes
        return {self.check_stage(s): self.check_targets(t, n) for s, t in requests.items() if t}

    @staticmethod
    def check_stage(stage: str) -> str:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        return stage

    # ---- for explainers whose stages read layers of the network ----------------------

    def _use_layers(self, cluster_layer: str, class_layer: str) -> None:
        """Set ``self.layers`` (``{stage: layer name}``), checking that both layers exist."""
        self.layers = {"cluster": cluster_layer, "class": class_layer}
        for name in self.layers.values():
            self.classifier.layer(name)  # a clear ValueError for a layer that does not exist

    def _layer_settings(self) -> dict[str, str]:
        """The stages' layers as :meth:`settings` records them."""
        return {"cluster_layer": self.layers["cluster"], "class_layer": self.layers["class"]}


class ExplainSession:
    """One prepared image whose clean forward pass has run.

    Attributes:
        explainer: the explainer that made it.
        image: the normalised ``3 x H x W`` tensor on the device.
        probabilities: the model's softmax output on the clean image (``n_classes``).
    """

    def __init__(self, explainer: Explainer, image: torch.Tensor, probabilities: torch.Tensor | None = None) -> None:
        self.explainer = explainer
        self.image = image
        if probabilities is None:
            probabilities = explainer.classifier.probabilities(image.unsqueeze(0))[0]
        self.probabilities = probabilities.detach().float()

    def base_role(self, requests: Mapping[str, Sequence[Target]]) -> Answer:
        """Maps of every stage's targets, as :meth:`Explainer.base_role`."""
        return self.explainer.base_role(self.image, requests)

    def explain_stages(self, requests: Mapping[str, Sequence[Target]]) -> dict[str, torch.Tensor]:
        """The maps of :meth:`base_role` alone."""
        return self.base_role(requests).maps

    def contrast_role(self, pairs: Sequence[tuple[Target, Target]], *, stage: str = "cluster") -> Answer:
        """Native contrast maps, as :meth:`Explainer.contrast_role`."""
        return self.explainer.contrast_role(self.image, pairs, self.explainer.check_stage(stage))

    def contrast(self, pairs: Sequence[tuple[Target, Target]], *, stage: str = "cluster") -> torch.Tensor:
        """Native contrast maps, as :meth:`Explainer.contrast`."""
        return self.contrast_role(pairs, stage=stage).maps[stage]

    def close(self) -> None:
        """Release what the session holds (idempotent)."""

    def __enter__(self) -> ExplainSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- shared map helpers


def stage_groups(
    wanted: Mapping[str, Sequence[Target]], key: Callable[[str], Hashable] | None = None
) -> list[tuple[Any, list[Target], dict[str, list[int]]]]:
    """Group the requested stages that one computation can serve.

    Stages with the same ``key(stage)`` (the same layer, the same masks; with no
    ``key``, all stages) share one computation over the union of their targets.
    Per group: the key, that union (in first-asked order) and, per stage, the
    rows of its targets in the union.
    """
    by_key: dict[Hashable, list[str]] = {}
    for stage in wanted:
        by_key.setdefault(None if key is None else key(stage), []).append(stage)
    groups = []
    for k, stages in by_key.items():
        union = list(dict.fromkeys(t for s in stages for t in wanted[s]))
        row = {t: i for i, t in enumerate(union)}
        groups.append((k, union, {s: [row[t] for t in wanted[s]] for s in stages}))
    return groups


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling of ``n x h x w`` maps to the image size ``(H, W)``: ``n x H x W``."""
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


# --------------------------------------------------------------------------- hooks


@contextlib.contextmanager
def capture_activations(module: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named sub-modules during forwards inside the block.

    The hooks are removed when the block exits, also when it raises, so a failed
    explanation never leaves hooks behind on the user's model.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in dict.fromkeys(layers):
            sub = module.get_submodule(name)

            def hook(_mod: nn.Module, _inp: Any, out: Any, _name: str = name) -> None:
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"layer {_name!r} returns {type(out).__name__}, not a tensor")
                store[_name] = out

            handles.append(sub.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()
        store.clear()


def check_activations(acts: Mapping[str, torch.Tensor], layers: Sequence[str], rows: str = "B") -> None:
    """Check that every layer was called and gave a ``rows x C x h x w`` map."""
    missing = [name for name in layers if name not in acts]
    if missing:
        raise ValueError(f"layers {missing} were not called in the forward pass")
    for name in layers:
        if acts[name].dim() != 4:
            raise ValueError(f"layer {name!r} gives {tuple(acts[name].shape)}, not a {rows} x C x h x w map")


def count_hooks(module: nn.Module) -> int:
    """Forward (pre-)hooks and backward hooks registered on ``module`` and its children."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules()
    )


# --------------------------------------------------------------------------- registry


def register(name: str):
    """Class decorator: make an :class:`Explainer` subclass available as ``name``."""

    def wrap(cls: type[Explainer]) -> type[Explainer]:
        if not (isinstance(cls, type) and issubclass(cls, Explainer)):
            raise TypeError(f"@register({name!r}) needs an Explainer subclass")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"an explainer named {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        for kind in cls.records:  # its diagnostics' warnings and tables, known by their key
            register_records(kind)
        return cls

    return wrap


def explainer_class(name: str) -> type[Explainer]:
    """The class registered as ``name``, importing its module on first use."""
    from cwox.online.explainers import BUILTIN

    key = str(name).lower()
    if key not in _REGISTRY and key in BUILTIN:
        module_name, _attr = BUILTIN[key].split(":")
        importlib.import_module(module_name)
    if key not in _REGISTRY:
        known = ", ".join(sorted(set(_REGISTRY) | set(BUILTIN)))
        raise ValueError(f"unknown explainer {name!r}; available: {known}")
    return _REGISTRY[key]


def known_explainer(name: str | None) -> type[Explainer] | None:
    """The class registered as ``name`` (imported, so its record kinds are registered), or None.

    For readers of saved explanations: the records of an explainer this process does
    not know are passed over rather than failing the report.
    """
    try:
        return explainer_class(str(name)) if name else None
    except (ValueError, ImportError):
        return None


def get_explainer(name: str, classifier: Classifier, **params: Any) -> Explainer:
    """An explainer by registry name, e.g. ``get_explainer("rise", clf, n_masks=2000)``."""
    cls = explainer_class(name)
    try:
        return cls(classifier, **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for explainer {name!r}: {exc}") from exc


def available_explainers() -> list[str]:
    """Names :func:`get_explainer` accepts."""
    from cwox.online.explainers import BUILTIN

    return sorted(set(_REGISTRY) | set(BUILTIN))
