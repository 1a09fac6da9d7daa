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

Adding an explainer: subclass :class:`Explainer`, implement
:meth:`Explainer.explain_stages` (the base :meth:`Explainer.explain` checks its
arguments and delegates to it; use :meth:`Explainer.checked_requests` for the
requests), and for a native contrast role :meth:`Explainer.contrast_stage`; decorate it
with ``@register("name")``, and add ``"name": "module:Class"`` to
:data:`cwox.online.explainers.BUILTIN` so :func:`get_explainer` finds it lazily.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from cwox.online.targets import STAGES, Target, as_target
from PIL import Image
from torch import nn

from cwox.core.devices import default_batch_size
from cwox.core.models import Classifier

#: name -> explainer class, filled by :func:`register` when a module is imported.
_REGISTRY: dict[str, type[Explainer]] = {}


class Explainer:
    """A saliency method bound to one classifier.

    Args:
        classifier: the model to explain; every tensor follows ``classifier.device``.
        batch_size: images per forward (or backward) pass; bounds peak memory.
            Defaults to :func:`cwox.core.devices.default_batch_size` of the device.

    Class attributes:
        name: the registry name.
        supports_contrast: whether :meth:`contrast` gives native contrast maps.
        default_normalization: how :mod:`cwox.online.compose` should rescale this
            explainer's maps before subtracting them (``"none"``/``"minmax"``/``"max"``).
        default_support: the support percentile of Eq. (2) suited to its maps.

    Attributes:
        last_diagnostics: JSON-ready records of what the last call did beside its
            maps, kind -> list of records (:mod:`cwox.online.diagnostics`), e.g. FG-VCE's
            and CCE's counterfactuals; ``{}`` for explainers without any. Each call
            of :meth:`contrast` starts it afresh, and so does each
            :meth:`explain_stages` of an explainer that keeps records; the engine
            gathers it after every call into ``Explanation.diagnostics``.
    """

    name: ClassVar[str] = ""
    supports_contrast: ClassVar[bool] = False
    default_normalization: ClassVar[str] = "none"
    default_support: ClassVar[float] = 50.0

    def __init__(self, classifier: Classifier, *, batch_size: int | None = None) -> None:
        if not isinstance(classifier, Classifier):
            raise TypeError(f"classifier must be a cwox.core.models.Classifier, got {type(classifier).__name__}")
        self.classifier = classifier
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size) if batch_size is not None else default_batch_size(classifier.device)
        self.last_diagnostics: dict[str, list[dict[str, Any]]] = {}

    @property
    def device(self) -> torch.device:
        return self.classifier.device

    # ---- the two roles -----------------------------------------------------------

    def explain(
        self, image: torch.Tensor | Image.Image, targets: Sequence[Target | Iterable[int]], *, stage: str = "cluster"
    ) -> torch.Tensor:
        """Signed saliency maps ``T x H x W`` (float32, on the classifier's device), one per target.

        Checks the stage and the targets, then asks :meth:`explain_stages` for that
        one stage; explainers implement :meth:`explain_stages` (or, for a method
        with nothing to share between stages, override this method instead).
        """
        stage = self.check_stage(stage)
        checked = self.check_targets(targets, self.classifier.n_classes)
        return self.explain_stages(image, {stage: checked})[stage]

    def explain_stages(
        self, image: torch.Tensor | Image.Image, requests: Mapping[str, Sequence[Target]]
    ) -> dict[str, torch.Tensor]:
        """Maps for several stages at once: ``{stage: T_stage x H x W}``.

        Explainers that serve several stages from the same passes override this.
        The default, for an explainer that overrides only :meth:`explain`, makes
        one :meth:`explain` call per requested stage.
        """
        if type(self).explain is Explainer.explain:
            raise NotImplementedError(
                f"explainer {type(self).__qualname__} must override explain_stages() or explain()"
            )
        x = self.prepare(image)
        return {stage: self.explain(x, targets, stage=stage) for stage, targets in self.checked_requests(requests).items()}

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
        """Native "fact rather than foil" maps ``P x H x W``, one per pair.

        Checks the stage, then asks :meth:`contrast_stage`, which explainers with a
        native contrast role (``supports_contrast``) implement; ``last_diagnostics``
        then holds only what this call recorded.
        """
        if type(self).contrast_stage is Explainer.contrast_stage:
            raise NotImplementedError(f"explainer {self.name!r} has no native contrast role; use explain() and subtract")
        stage = self.check_stage(stage)
        self.last_diagnostics = {}
        return self.contrast_stage(image, pairs, stage)

    def contrast_stage(
        self, image: torch.Tensor | Image.Image, pairs: Sequence[tuple[Target, Target]], stage: str
    ) -> torch.Tensor:
        """:meth:`contrast` for a checked ``stage``: the maps of an explainer with a native contrast role."""
        raise NotImplementedError(f"explainer {type(self).__qualname__} must implement contrast_stage()")

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

    def explain_stages(self, requests: Mapping[str, Sequence[Target]]) -> dict[str, torch.Tensor]:
        """Maps of every stage's targets, as :meth:`Explainer.explain_stages`."""
        return self.explainer.explain_stages(self.image, requests)

    def contrast(self, pairs: Sequence[tuple[Target, Target]], *, stage: str = "cluster") -> torch.Tensor:
        """Native contrast maps, as :meth:`Explainer.contrast`."""
        return self.explainer.contrast(self.image, pairs, stage=stage)

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
