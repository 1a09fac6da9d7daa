"""Class sensitivity: how much a mode's map changes when the class changes.

A contrastive explanation must answer "why c?" differently from "why c'?" on the same
photo (the sanity check of class sensitivity; Finer-CAM, CVPR 2025, motivates itself by
CAMs of similar classes that look alike). :func:`class_sensitivity` compares the maps
of two top classes of one photo with two similarities, lower meaning more class-sensitive:

* Spearman's rank correlation over all pixels (scale-free, so maps on different scales
  compare); NaN when either map is constant (an empty map has no ranking);
* SSIM of the two maps, each min-max scaled to [0, 1] (:func:`cwox.online.metrics.map_ssim`).
"""

from __future__ import annotations

import math

import numpy as np

from .sanity import map_ssim

__all__ = ["class_sensitivity", "rank_correlation"]


def rank_correlation(a, b) -> float:
    """Spearman's rho of two maps' pixels (average ranks for ties); NaN if either is constant."""
    from scipy.stats import rankdata

    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"maps of different sizes {np.shape(a)} and {np.shape(b)}")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    return float((rx @ ry) / math.sqrt((rx @ rx) * (ry @ ry)))


def class_sensitivity(a, b) -> dict[str, float]:
    """``{"spearman": rho, "ssim": s}`` of the maps of two classes (lower: more class-sensitive)."""
    return {"spearman": rank_correlation(a, b), "ssim": map_ssim(a, b)}
