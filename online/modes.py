"""The names every layer shares about the whole-output modes, defined once.

Plain constants (no torch import), so the command line can offer them as choices
and stay fast to start:

* :data:`MODES`: the whole-output modes, in the order of the CWOX paper's tables
  (SWOX, CWOX-1sA, CWOX-1sB, CWOX-2s), then Finer-CAM (Zhang et al., CVPR 2025),
  the contrastive method users of pytorch-grad-cam and torch-cam already have;
* :data:`MODE_LABELS`: their printed names;
* :data:`ROLES`: how an explainer's maps enter the modes' formulas
  (:class:`cwox.online.engine.Engine`);
* :data:`PAPER_CUM`, :data:`PAPER_MAX_K`: the paper's top-K rule
  ``K = min(5, Cum(0.95))`` (Sec. 5), which evaluation uses by default;
* :data:`CLUSTER_SOURCES`: where the confusion clusters come from
  (:func:`cwox.online.targets.cluster_source`).
"""

from __future__ import annotations

MODES = ("swox", "cwox1sa", "cwox1sb", "cwox2s", "finercam")
MODE_LABELS = {
    "swox": "SWOX",
    "cwox1sa": "CWOX-1sA",
    "cwox1sb": "CWOX-1sB",
    "cwox2s": "CWOX-2s",
    "finercam": "Finer-CAM",
}
#: The modes of the CWOX paper's Tables 1-3 (``cwox evaluate``'s default adds Finer-CAM).
PAPER_MODES = ("swox", "cwox1sa", "cwox1sb", "cwox2s")
#: The explainer stages each mode reads: CWOX-2s's stage one ("cluster", the standard
#: setup) and stage two ("class", the finer setup); the others only the standard one.
MODE_STAGES = {m: (("cluster", "class") if m == "cwox2s" else ("cluster",)) for m in MODES}
ROLES = ("auto", "base", "contrast")
PAPER_CUM = 0.95
PAPER_MAX_K = 5
#: ``hlta``: the tree given; ``none``: every class alone; ``random``: the tree's cluster
#: sizes with the classes shuffled (seeded); ``logits``: the tree's cluster sizes filled
#: with classes adjacent in logit order (Finer-CAM's notion of similar classes). A path
#: to a tree store is accepted too (an imported tree).
CLUSTER_SOURCES = ("hlta", "none", "random", "logits")
