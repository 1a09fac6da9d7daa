"""Grad-CAM (Selvaraju et al. 2017) for many targets from one forward pass.

For a target ``t`` with logit ``z_t`` (a compound class uses the logsumexp logit of
CWOX Sec. 4.1) and a layer with activations ``A`` (``C x h x w``)::

    alpha_t[k] = mean_{i,j} dz_t / dA[k, i, j]        H_t = sum_k alpha_t[k] A[k]

upsampled bilinearly to the image. The map is kept *signed*: Grad-CAM's final
ReLU is left out (as in the CWOX public code) so that ``H_P - H_Q`` in Eq. (1)
and (2) subtracts evidence and counter-evidence alike; the only ReLUs are the
ones those equations write.

Stage one (``"cluster"``) uses ``classifier.cluster_layer`` (the last conv
layer, 7x7 for EfficientNet-Lite0); stage two (``"class"``) the finer
``classifier.class_layer`` (14x14), the paper's "pivot layer further from the
output" for class discrimination (Sec. 4.2; the public code uses ResNet50's
``layer4`` and ``layer3``).

Cost: ONE forward pass records both layers, then backward passes batched with
``torch.autograd.grad(..., is_grads_batched=True)`` (a vmapped backward, in
chunks of ``batch_size``), each giving the gradient at *both* layers at once.
Fewer backward vectors still: Grad-CAM is linear in the gradient, and the
gradient of a compound logit is a softmax-weighted mix of its members',

    dz_C/dA = sum_{c in C} w_c dz_c/dA,   w_c = exp z_c / sum_{c' in C} exp z_c',

so when the targets involve fewer distinct classes than there are targets (the
whole-output case: top-5 classes, but ~11 clusters, complements, classes and
rests), only one backward per class is run and every target's channel weights
are mixed from them exactly. If a model's backward cannot be vmapped, it falls
back to one backward per vector through the same retained graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from cwox.online.explainers.base import (
    Answer,
    Explainer,
    ExplainSession,
    capture_activations,
    check_activations,
    register,
    stage_groups,
    upsample,
)
from cwox.online.targets import Target, members, target_logits
from PIL import Image

from cwox.core.batching import batch_slices
from cwox.core.models import Classifier


@register("gradcam")
class GradCAM(Explainer):
    """Signed Grad-CAM maps for any number of (compound) targets.

    Args:
        classifier: the model.
        cluster_layer: layer for stage one; default ``classifier.cluster_layer``.
        class_layer: layer for stage two; default ``classifier.class_layer``.
        batch_size: targets per batched backward pass (bounds memory).
    """

    default_normalization = "none"
    #: The CWOX public code's Grad-CAM example thresholds the cluster map at its median.
    default_support = 50.0

    def __init__(
        self,
        classifier: Classifier,
        *,
        cluster_layer: str | None = None,
        class_layer: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(classifier, batch_size=batch_size)
        self._use_layers(cluster_layer or classifier.cluster_layer, class_layer or classifier.class_layer)
        self._vmap_ok = True

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), **self._layer_settings()}

    def base_role(self, image: torch.Tensor | Image.Image, requests: Mapping[str, Sequence[Target]]) -> Answer:
        """Maps for several stages from ONE forward pass (both layers hooked at once)."""
        with self.session(image) as session:
            return session.base_role(requests)

    def session(self, image: torch.Tensor | Image.Image) -> GradCAMSession:
        """Run the one forward (with its graph) that both the top-K and all maps use."""
        return GradCAMSession(self, self.prepare(image))

    def _channel_gradients(self, z: torch.Tensor, acts: list[torch.Tensor]) -> list[torch.Tensor]:
        """``alpha[v, k] = mean_ij dz_v / dA[k, i, j]`` for every output ``z_v``, per layer.

        One vmapped backward per chunk of ``batch_size`` outputs reaches all layers
        at once; only the channel means are kept, so memory stays bounded.
        """
        n = z.shape[0]
        eye = torch.eye(n, device=z.device, dtype=z.dtype)
        chunks = list(batch_slices(n, self.batch_size))
        per_layer: list[list[torch.Tensor]] = [[] for _ in acts]
        for sl in chunks:
            grads = None
            if self._vmap_ok:
                try:
                    grads = torch.autograd.grad(  # graph kept for the session's later calls
                        z, acts, grad_outputs=eye[sl], is_grads_batched=True, retain_graph=True
                    )
                    grads = [g[:, 0] for g in grads]  # b x C x h x w
                except RuntimeError:  # a backward vmap cannot batch: fall back, same graph
                    self._vmap_ok = False
            if grads is None:
                rows = [torch.autograd.grad(z[r], acts, retain_graph=True) for r in range(sl.start, sl.stop)]
                grads = [torch.cat([g[li] for g in rows]) for li in range(len(acts))]
            for li, g in enumerate(grads):
                per_layer[li].append(g.float().mean(dim=(2, 3)))
        return [torch.cat(a) for a in per_layer]


class GradCAMSession(ExplainSession):
    """One image after Grad-CAM's forward: logits, both layers' activations and their graph.

    The hooks live only during the forward pass; the graph lives until
    :meth:`close` (leaving the ``with`` block).
    """

    def __init__(self, explainer: GradCAM, image: torch.Tensor) -> None:
        layers = list(dict.fromkeys(explainer.layers.values()))
        module = explainer.classifier.module
        with capture_activations(module, layers) as acts, torch.enable_grad():
            inp = image.unsqueeze(0).requires_grad_(True)  # makes every activation part of the graph
            logits = module(inp)
            caught = dict(acts)
        if logits.dim() != 2 or logits.shape[0] != 1:
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}, expected 1 x n_classes")
        check_activations(caught, layers, rows="1")
        super().__init__(explainer, image, torch.softmax(logits.detach()[0].float(), dim=0))
        self.gradcam = explainer
        self.logits: torch.Tensor | None = logits[0].float()
        self.acts: dict[str, torch.Tensor] = caught

    def close(self) -> None:
        self.logits = None
        self.acts = {}

    def base_role(self, requests: Mapping[str, Sequence[Target]]) -> Answer:
        """Grad-CAM maps of every stage's targets from this session's forward."""
        ex = self.gradcam
        if self.logits is None:
            raise RuntimeError("this Grad-CAM session is closed")
        wanted = ex.checked_requests(requests)
        if not wanted:
            return Answer({})
        layers = list(dict.fromkeys(ex.layers[s] for s in wanted))
        activations = [self.acts[name] for name in layers]
        ((_, union, rows),) = stage_groups(wanted)  # every stage shares the one forward
        classes = sorted({c for t in union for c in members(t)})
        z = self.logits
        by_class = len(classes) < len(union)
        with torch.enable_grad():
            if by_class:  # one backward per class; targets' weights mixed from them (exact, module doc)
                alphas = ex._channel_gradients(z[classes], activations)
            else:
                alphas = ex._channel_gradients(target_logits(z, union), activations)
        col = {c: i for i, c in enumerate(classes)}
        zc = z.detach()[classes]
        out: dict[str, torch.Tensor] = {}
        for stage, targets in wanted.items():
            li = layers.index(ex.layers[stage])
            if by_class:
                mix = torch.zeros(len(targets), len(classes), device=z.device)
                for k, t in enumerate(targets):
                    ids = [col[c] for c in members(t)]
                    mix[k, ids] = torch.softmax(zc[ids], dim=0)  # d logsumexp / dz_c
                weights = mix @ alphas[li]  # T x C
            else:
                weights = alphas[li][rows[stage]]
            act = activations[li][0].detach().float()
            cams = torch.einsum("tc,chw->thw", weights, act)  # H_t = sum_k alpha_t[k] A[k]
            out[stage] = upsample(cams, self.image.shape[-2:])
        return Answer(out)
