"""RISE (Petsiuk et al. 2018) with one set of forward passes for every target.

Masks: ``N`` binary ``s x s`` grids, each cell kept with probability ``p``,
upsampled bilinearly to ``(s + 1) * ceil(H / s)`` and cropped at a random shift
in ``[0, ceil(H / s))`` (the paper's smooth, shifted masks). They are drawn on the
classifier's device from a generator seeded with ``seed``: the grids and shifts
for all ``N`` masks are drawn first (tiny), and the full-size masks are built one
batch at a time, so the masks do not depend on the batch size and memory is
bounded by ``batch_size``.

Saliency of target ``t`` (a compound class scores the sum of its members'
probabilities, CWOX Sec. 4.1)::

    H_t = 1 / (N p) * sum_i P_t(x * M_i) M_i

Every forward pass yields all classes' probabilities, so ONE set of ``N``
passes serves every target: per batch, the ``B x T`` score matrix
(``probs @ membership.T``) is multiplied into the ``T x HW`` accumulator; all
targets of all stages cost the same ``N`` forwards as a single class.

Stages. The CWOX public code uses coarse masks for stage one (``s = 15``,
``p = 0.3``, ``N = 5000``) and finer, sparser ones for stage two (``s = 10``,
``p = 0.14``, ``N = 3000``). By default both stages here share the stage-one
masks (``class_cells = class_p = class_n_masks = None``), which gives the whole
output for the price of one map; set any of those three to draw a separate
stage-two mask set (the public code's setup: ``class_cells=10, class_p=0.14,
class_n_masks=3000``), at the price of its extra passes.

``x * M`` masks the *normalised* image, so hidden pixels take the
normalisation mean (grey), as in the reference RISE code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from cwox.online.explainers.base import Answer, Explainer, register, stage_groups
from cwox.online.targets import Target, membership_matrix
from PIL import Image

from cwox.core.batching import batch_slices
from cwox.core.models import Classifier
from cwox.core.progress import progress


@dataclass(frozen=True)
class MaskSetup:
    """One RISE mask distribution: ``n`` masks of ``cells x cells`` grids kept with ``p``."""

    n: int
    cells: int
    p: float
    seed: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"RISE needs at least one mask, got n_masks={self.n}")
        if self.cells < 1:
            raise ValueError(f"RISE grid size must be >= 1, got {self.cells}")
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"RISE keep probability must be in (0, 1], got {self.p}")


class MaskSet:
    """The ``n`` masks of a :class:`MaskSetup` for an ``H x W`` image, built batch by batch."""

    def __init__(self, setup: MaskSetup, size: tuple[int, int], device: torch.device) -> None:
        self.setup = setup
        self.size = size
        self.device = device
        h, w = size
        s = setup.cells
        self.cell = (math.ceil(h / s), math.ceil(w / s))
        self.up = ((s + 1) * self.cell[0], (s + 1) * self.cell[1])
        gen = torch.Generator(device=device)
        gen.manual_seed(int(setup.seed))
        self.grids = (torch.rand(setup.n, 1, s, s, generator=gen, device=device) < setup.p).float()
        self.shift_y = torch.randint(0, self.cell[0], (setup.n,), generator=gen, device=device)
        self.shift_x = torch.randint(0, self.cell[1], (setup.n,), generator=gen, device=device)
        self._rows = torch.arange(h, device=device)
        self._cols = torch.arange(w, device=device)

    def __len__(self) -> int:
        return self.setup.n

    def batch(self, sl: slice) -> torch.Tensor:
        """Masks ``sl`` as a ``B x H x W`` float tensor in [0, 1]."""
        up = F.interpolate(self.grids[sl], size=self.up, mode="bilinear", align_corners=False)[:, 0]
        ys = (self.shift_y[sl, None] + self._rows)[:, :, None]  # B x H x 1
        xs = (self.shift_x[sl, None] + self._cols)[:, None, :]  # B x 1 x W
        b = torch.arange(up.shape[0], device=self.device)[:, None, None]
        return up[b, ys, xs].clamp_(0.0, 1.0)  # bilinear of 0/1 cells, rounding aside


@register("rise")
class RISE(Explainer):
    """RISE saliency for many (compound) targets from one set of masked forwards.

    Args:
        classifier: the model.
        n_masks: ``N`` (stage one; also stage two unless it has its own setup).
        cells: grid size ``s`` of stage one.
        p: keep probability of a grid cell, stage one.
        class_cells, class_p, class_n_masks: stage-two setup; all None (default)
            shares stage one's masks and passes; any given draws a separate set
            (the others default to stage one's values).
        seed: seeds the mask generator (stage two's separate set uses ``seed + 1``).
        batch_size: masked images per forward pass (bounds memory).
    """

    cli_options = {"--n-masks": "n_masks"}
    #: RISE maps sit at the level of the target's probability; the CWOX public
    #: code min-max normalises them before subtracting, and so do we.
    default_normalization = "minmax"
    #: The CWOX public code's RISE example thresholds the cluster map at its 70th percentile.
    default_support = 70.0

    def __init__(
        self,
        classifier: Classifier,
        *,
        n_masks: int = 5000,
        cells: int = 15,
        p: float = 0.3,
        class_cells: int | None = None,
        class_p: float | None = None,
        class_n_masks: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(classifier, batch_size=batch_size)
        one = MaskSetup(int(n_masks), int(cells), float(p), int(seed))
        if class_cells is None and class_p is None and class_n_masks is None:
            two = one
        else:
            two = MaskSetup(
                int(class_n_masks if class_n_masks is not None else n_masks),
                int(class_cells if class_cells is not None else cells),
                float(class_p if class_p is not None else p),
                int(seed) + 1,
            )
        self.setups = {"cluster": one, "class": two}
        self.forward_passes = 0  # masked images fed to the model so far (for benchmarks and tests)

    @property
    def shared_stages(self) -> bool:
        """Whether both stages use the same masks (and hence the same passes)."""
        return self.setups["cluster"] == self.setups["class"]

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "cluster_masks": asdict(self.setups["cluster"]),
            "class_masks": asdict(self.setups["class"]),
            "shared_stages": self.shared_stages,
        }

    def base_role(self, image: torch.Tensor | Image.Image, requests: Mapping[str, Sequence[Target]]) -> Answer:
        """Maps for several stages; stages with the same mask setup share one set of passes."""
        x = self.prepare(image)
        out: dict[str, torch.Tensor] = {}
        for setup, union, rows in stage_groups(self.checked_requests(requests), self.setups.__getitem__):
            maps = self._saliency(x, union, setup)
            out.update({s: maps[r] for s, r in rows.items()})
        return Answer(out)

    @torch.no_grad()
    def _saliency(self, x: torch.Tensor, targets: list[Target], setup: MaskSetup) -> torch.Tensor:
        """``1/(N p) sum_i P_t(x * M_i) M_i`` for all targets, accumulated batch by batch."""
        h, w = x.shape[-2:]
        masks = MaskSet(setup, (h, w), self.device)
        member = membership_matrix(targets, self.classifier.n_classes, self.device)  # T x C
        sal = torch.zeros(len(targets), h * w, device=self.device)
        for sl in progress(batch_slices(len(masks), self.batch_size), total=len(masks), desc="RISE masks", unit="mask"):
            m = masks.batch(sl)  # B x H x W
            probs = self.classifier.probabilities(x.unsqueeze(0) * m.unsqueeze(1))  # B x C
            scores = probs.float() @ member.T  # B x T: P_t(x * M_i), compound = sum
            sal += scores.T @ m.reshape(m.shape[0], -1)
            self.forward_passes += m.shape[0]
        return (sal / (setup.n * setup.p)).view(len(targets), h, w)
