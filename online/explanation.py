"""The result of explaining one image: what the engine returns and the report draws."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from cwox.online.diagnostics import diagnostic_warnings


@dataclass
class Explanation:
    """A whole-output explanation of one image.

    Attributes:
        image_path: where the photo came from.
        image: the photo as the model saw it (after resize and centre crop),
            ``H x W x 3`` uint8, so maps and photo align pixel for pixel.
        classes: the top-K class ids, most probable first.
        class_names: their names.
        probs: their softmax probabilities.
        clusters: the confusion clusters, each a list of class ids drawn from
            ``classes`` (tree cut at level 1, CWOX Sec. 4); one cluster per class
            absent from the tree.
        mode: ``cwox2s``, ``cwox1sa``, ``cwox1sb`` or ``swox``.
        explainer: base explainer name (``gradcam``, ``rise``, ...).
        cluster_maps: ``I x H x W`` float32, one contrastive map per cluster
            (CWOX Eq. 1); ``None`` for modes without a cluster stage.
        class_maps: ``K x H x W`` float32, one map per entry of ``classes``
            (Eq. 2 for ``cwox2s``; the mode's own formula otherwise).
        settings: every parameter that shaped the maps (K rule, explainer
            parameters, support threshold, seed, device, model, tree version).
        timings: seconds spent per phase (``forward``, ``maps``, ``total``...).
        extra_maps: optional named maps an explainer keeps beside the main ones
            (e.g. SUNY's necessity and sufficiency maps), name -> ``n x H x W``.
        diagnostics: JSON-ready records of what the explainer did beside its
            maps, kind -> list of records (:mod:`cwox.online.diagnostics`): FG-VCE's
            replacement loops (did each flip, why it stopped, which candidate
            pool) and CCE's counterfactuals (L2 norms, logit changes); empty for
            explainers without counterfactuals. :meth:`warnings` reads them.
    """

    image_path: str
    image: np.ndarray
    classes: list[int]
    class_names: list[str]
    probs: list[float]
    clusters: list[list[int]]
    mode: str
    explainer: str
    cluster_maps: np.ndarray | None
    class_maps: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extra_maps: dict[str, np.ndarray] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.classes)
        if not (len(self.class_names) == len(self.probs) == k):
            raise ValueError("classes, class_names and probs must have the same length")
        if self.class_maps.shape[0] != k:
            raise ValueError(f"class_maps has {self.class_maps.shape[0]} maps for {k} classes")
        members = sorted(c for cl in self.clusters for c in cl)
        if members != sorted(self.classes):
            raise ValueError("clusters must partition the top classes")
        if self.cluster_maps is not None and self.cluster_maps.shape[0] != len(self.clusters):
            raise ValueError("cluster_maps needs one map per cluster")
        if not isinstance(self.diagnostics, dict):
            raise TypeError(f"diagnostics must be a dict, got {type(self.diagnostics).__name__}")

    def name_of(self, class_id: int) -> str:
        return self.class_names[self.classes.index(class_id)]

    def prob_of(self, class_id: int) -> float:
        return self.probs[self.classes.index(class_id)]

    def cluster_prob(self, i: int) -> float:
        """Probability of cluster ``i`` as a compound class: the sum (CWOX Sec. 4.1)."""
        return float(sum(self.prob_of(c) for c in self.clusters[i]))

    def warnings(self) -> list[str]:
        """Sentences a user must read before trusting the maps, e.g. counterfactuals that failed.

        Built from :attr:`diagnostics` (:func:`cwox.online.diagnostics.diagnostic_warnings`:
        the kinds of records the explainer declared, registered when it was imported);
        class names come from the records, else from the top classes, else the id.
        Empty when nothing needs saying (always, for explainers without diagnostics).
        """
        names = {str(c): n for c, n in zip(self.classes, self.class_names, strict=True)}
        return diagnostic_warnings(self.diagnostics, names)

    @staticmethod
    def map_stats(m: np.ndarray) -> dict[str, float]:
        """Summary statistics of one map, for the JSON report."""
        m = np.asarray(m, dtype=np.float64)
        return {
            "min": float(m.min()),
            "max": float(m.max()),
            "mean": float(m.mean()),
            "nonzero_fraction": float(np.count_nonzero(m) / m.size),
        }

    def to_json(self) -> dict[str, Any]:
        """Everything but the pixel arrays, JSON-ready (maps summarised by statistics).

        ``diagnostics`` is included as it is; ``warnings`` holds :meth:`warnings`.
        """
        d = {k: v for k, v in asdict(self).items() if k not in ("image", "cluster_maps", "class_maps", "extra_maps")}
        d["top"] = [
            {"class_id": c, "name": n, "prob": float(p)}
            for c, n, p in zip(self.classes, self.class_names, self.probs)
        ]
        d["clusters"] = [
            {
                "classes": list(cl),
                "names": [self.name_of(c) for c in cl],
                "prob": self.cluster_prob(i),
                "map_stats": None if self.cluster_maps is None else self.map_stats(self.cluster_maps[i]),
            }
            for i, cl in enumerate(self.clusters)
        ]
        d["class_map_stats"] = [self.map_stats(m) for m in self.class_maps]
        d["extra_maps"] = sorted(self.extra_maps)
        d["image_size"] = list(self.image.shape[:2])
        d["warnings"] = self.warnings()
        return d
