"""Evaluation metrics for saliency and contrastive heatmaps.

* Contrastive faithfulness (CWOX paper, Sec. 5.1): the contrastive score (Eq. 3),
  :func:`cauc` (Eq. 4), :func:`cdrop` (Eq. 5) and the batched :func:`contrastive_scores`.
* Insertion / deletion AUC with a blurred substrate (CCE Sec. 4.4, FG-VCE Sec. 4):
  :func:`insertion_auc`, :func:`deletion_auc` and the batched :func:`causal_curves`.
* :func:`class_deviation_score` (CCE Eq. 8), :func:`compact_activation_score` (FG-VCE Eq. 12),
  :func:`saliency_attack_score` (SUNY Sec. 3.4), :func:`energy_pointing_game` (SUNY Sec. 3.5).
* :func:`class_sensitivity`: Spearman and SSIM between two classes' maps of one photo.
* :func:`cascading_randomization`: the sanity check by cascading parameter randomisation,
  scored by SSIM (CCE Sec. 4.3).

Every curve goes through the model in full batches on the image's device, under
``torch.inference_mode()``.
"""

from .contrastive import (
    ContrastiveCurve,
    ContrastiveScores,
    cauc,
    cauc_sample_weights,
    cdrop,
    contrastive_curve,
    contrastive_scores,
    n_salient,
)
from .curves import (
    CCE_STEP,
    FGVCE_STEP,
    CausalCurves,
    causal_curves,
    deletion_auc,
    insertion_auc,
    step_pixels,
)
from .sanity import CascadingRandomization, cascading_randomization, map_ssim, parameter_layers
from .scores import (
    SaliencyAttack,
    class_deviation_score,
    compact_activation_score,
    energy_pointing_game,
    saliency_attack_score,
)
from .similarity import class_sensitivity, rank_correlation

__all__ = [
    "CCE_STEP",
    "FGVCE_STEP",
    "CascadingRandomization",
    "CausalCurves",
    "ContrastiveCurve",
    "ContrastiveScores",
    "SaliencyAttack",
    "cascading_randomization",
    "cauc",
    "cauc_sample_weights",
    "causal_curves",
    "cdrop",
    "class_deviation_score",
    "class_sensitivity",
    "compact_activation_score",
    "contrastive_curve",
    "contrastive_scores",
    "deletion_auc",
    "energy_pointing_game",
    "insertion_auc",
    "map_ssim",
    "n_salient",
    "parameter_layers",
    "rank_correlation",
    "saliency_attack_score",
    "step_pixels",
]
