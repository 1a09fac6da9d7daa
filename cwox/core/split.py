"""Split a classifier at a layer: ``front(x) -> activation``, ``rest(activation) -> logits``.

Explainers that perturb an intermediate feature map (FG-VCE's saliency partition
and feature replacement, SUNY's interventions) run "the rest of the network"
from that layer on many variants of one activation. :func:`split_at` gives the
two halves so that the front runs once and only the rest runs per variant::

    split = split_at(classifier, "_conv_head")
    h = split.front(x)                   # B x C x h x w, once
    logits = split.rest(variants_of(h))  # N x n_classes, batched

with ``split.rest(split.front(x)) == classifier.module(x)`` (up to float
round-off).

How. The model is traced with :mod:`torch.fx` (the named layer kept as one
opaque call) and its graph cut at that call: the nodes before it form ``front``,
the nodes after it ``rest``. Both are :class:`torch.fx.GraphModule` objects
sharing the model's parameters (nothing is copied; they follow the model's
device and weights). The cut is clean when nothing but the layer's output
crosses it; the one common exception, the batch size read from the input
(``bs = x.size(0)`` in EfficientNet-Lite's head), is re-read from the
activation in ``rest``. This traces the default EfficientNet-Lite0 and the
torchvision CNNs (ResNet, MobileNet, VGG, DenseNet...).

Fallback. When a model does not trace (data-dependent Python control flow) or
other values cross the cut (e.g. a skip connection that spans the layer), the
split falls back to forward hooks: ``front`` runs the model until the layer and
stops there; ``rest`` runs the whole model again on the input last given to
``front`` with a hook that *replaces* the layer's output by the activation. That
is correct but re-runs the front per call, and ``rest`` is then tied to the last
``front`` input (a 1-image input is expanded to the activation's batch).
``ModelSplit.method`` says which one a split uses.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from cwox.core.models import Classifier

__all__ = ["ModelSplit", "split_at"]


@dataclass
class ModelSplit:
    """A model cut at ``layer``.

    Attributes:
        layer: the dotted module name the model is cut after.
        front: ``x -> activation`` (the layer's output).
        rest: ``activation -> logits`` (everything after the layer).
        method: ``"fx"`` (graph cut, pure functions) or ``"hook"`` (fallback:
            ``rest`` re-runs the model on the last ``front`` input).
        reason: why the fallback was used (empty for ``"fx"``).
    """

    layer: str
    front: Callable[[torch.Tensor], torch.Tensor]
    rest: Callable[[torch.Tensor], torch.Tensor]
    method: str
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


class _LeafTracer(fx.Tracer):
    """An fx tracer that keeps ``layer`` as one opaque ``call_module`` node."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.layer or super().is_leaf_module(m, module_qualified_name)


def _module_and_name(model: Classifier | nn.Module, layer: str) -> nn.Module:
    if isinstance(model, Classifier):
        model.layer(layer)  # a clear ValueError naming the model's last layers
        return model.module
    if not isinstance(model, nn.Module):
        raise TypeError(f"split_at needs a Classifier or an nn.Module, got {type(model).__name__}")
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer must be a non-empty dotted module name, got {layer!r}")
    try:
        model.get_submodule(layer)
    except AttributeError as exc:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"the model has no layer {layer!r}; its last layers are: {', '.join(names[-8:])}") from exc
    return model


def split_at(model: Classifier | nn.Module, layer: str) -> ModelSplit:
    """Cut ``model`` (a :class:`~cwox.core.models.Classifier` or its module) after ``layer``.

    Args:
        model: the classifier (or an ``nn.Module`` mapping a normalised batch to logits).
        layer: dotted name of a sub-module called exactly once per forward pass.

    Returns:
        a :class:`ModelSplit` with ``rest(front(x)) == model(x)``.

    Raises:
        ValueError: the layer does not exist, or the fallback finds it is not
            called exactly once in a forward pass.
    """
    module = _module_and_name(model, layer)
    try:
        return _fx_split(module, layer)
    except _NoCleanCut as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the hooks
        reason = f"torch.fx cannot trace the model ({type(exc).__name__}: {exc})"
    return _hook_split(module, layer, reason)


# --------------------------------------------------------------------------- torch.fx


class _NoCleanCut(RuntimeError):
    """The traced graph cannot be cut at the layer into two pure halves."""


def _is_batch_size(node: fx.Node, placeholder: fx.Node) -> bool:
    """Whether ``node`` is ``x.size(0)`` / ``x.shape[0]`` of the model input."""
    if node.op == "call_method" and node.target == "size" and node.args and node.args[0] is placeholder:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dim == 0
    if (
        node.op == "call_function"
        and node.target is operator.getitem
        and isinstance(node.args[0], fx.Node)
        and node.args[0].op == "call_function"
        and node.args[0].target is getattr
        and node.args[0].args == (placeholder, "shape")
        and node.args[1] == 0
    ):
        return True
    return False


def _fx_split(module: nn.Module, layer: str) -> ModelSplit:
    graph = _LeafTracer(layer).trace(module)
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise _NoCleanCut(f"the traced model takes {len(placeholders)} inputs, not one")
    (inp,) = placeholders
    calls = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        raise _NoCleanCut(f"layer {layer!r} is called {len(calls)} times in the traced graph")
    cut = calls[0]
    head, tail = nodes[: cut + 1], nodes[cut + 1 :]
    cut_node = nodes[cut]
    in_tail = set(tail)

    # Values other than the layer's output that the tail reads from the head.
    crossing = [n for n in head if n is not cut_node and any(u in in_tail for u in n.users)]
    for n in crossing:
        if n.op == "get_attr":
            continue
        if _is_batch_size(n, inp):
            continue
        if n.op == "call_function" and n.target is getattr and n.args == (inp, "shape"):
            if all(_is_batch_size(u, inp) or u not in in_tail for u in n.users):
                continue
        raise _NoCleanCut(f"value {n.name!r} ({n.op} {n.target}) crosses the cut at {layer!r}")

    front_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in head:
        env[n] = front_graph.node_copy(n, lambda a: env[a])
    front_graph.output(env[cut_node])

    rest_graph = fx.Graph()
    act = rest_graph.placeholder("activation")
    renv: dict[fx.Node, fx.Node] = {cut_node: act}
    for n in crossing:
        if n.op == "get_attr":
            renv[n] = rest_graph.node_copy(n, lambda a: renv[a])
        elif _is_batch_size(n, inp):
            renv[n] = rest_graph.call_method("size", (act, 0))
    for n in tail:
        if n in renv:
            continue
        renv[n] = rest_graph.node_copy(n, lambda a: renv[a])

    front = fx.GraphModule(module, front_graph, class_name="Front")
    rest = fx.GraphModule(module, rest_graph, class_name="Rest")
    front.train(module.training)
    rest.train(module.training)
    return ModelSplit(layer=layer, front=front, rest=rest, method="fx")


# --------------------------------------------------------------------------- hooks


class _Stop(Exception):
    """Raised by the front hook to end a forward pass at the layer."""


class _HookSplit:
    """``front`` / ``rest`` of the hook fallback (``rest`` replays the last ``front`` input)."""

    def __init__(self, module: nn.Module, layer: str) -> None:
        self.module = module
        self.layer = layer
        self.sub = module.get_submodule(layer)
        self._last_input: torch.Tensor | None = None

    def front(self, x: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor] = []

        def hook(_m: nn.Module, _i: Any, o: Any) -> None:
            out.append(o)
            raise _Stop

        handle = self.sub.register_forward_hook(hook)
        try:
            self.module(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not out:
            raise ValueError(f"layer {self.layer!r} was not called in the forward pass")
        self._last_input = x
        return out[0]

    def rest(self, activation: torch.Tensor) -> torch.Tensor:
        x = self._last_input
        if x is None:
            raise RuntimeError(f"this split of {self.layer!r} uses hooks: call front(x) before rest()")
        b = activation.shape[0]
        if x.shape[0] != b:
            if x.shape[0] != 1:
                raise ValueError(
                    f"rest() got {b} activations but the last front() input had {x.shape[0]} images"
                )
            x = x.expand(b, *x.shape[1:])
        calls = [0]

        def hook(_m: nn.Module, _i: Any, _o: Any) -> torch.Tensor:
            calls[0] += 1
            return activation

        handle = self.sub.register_forward_hook(hook)
        try:
            logits = self.module(x)
        finally:
            handle.remove()
        if calls[0] != 1:
            raise ValueError(f"layer {self.layer!r} is called {calls[0]} times per forward; name a layer called once")
        return logits


def _hook_split(module: nn.Module, layer: str, reason: str) -> ModelSplit:
    h = _HookSplit(module, layer)
    return ModelSplit(layer=layer, front=h.front, rest=h.rest, method="hook", reason=reason)
