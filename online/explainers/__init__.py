"""Base explainers for the whole-output modes, found by name.

>>> from online.explainers import get_explainer
>>> explainer = get_explainer("gradcam", classifier)          # doctest: +SKIP
>>> maps = explainer.explain(image, [281, {281, 282}], stage="cluster")  # doctest: +SKIP

To add one: write ``online/explainers/<name>.py`` with a ``@register("<name>")``
subclass of :class:`Explainer` that declares what it can do (see
:mod:`cwox.online.explainers.base`), and add one line to :data:`BUILTIN` below.
"""

from cwox.online.explainers.base import (
    Answer,
    Explainer,
    ExplainSession,
    available_explainers,
    capture_activations,
    count_hooks,
    explainer_class,
    get_explainer,
    known_explainer,
    register,
)

#: name -> "module:Class", imported lazily by :func:`get_explainer`.
BUILTIN: dict[str, str] = {
    "gradcam": "cwox.online.explainers.gradcam:GradCAM",
    "rise": "cwox.online.explainers.rise:RISE",
    "suny": "cwox.online.explainers.suny:SUNY",
    "cce": "cwox.online.explainers.cce:CCE",
    "fgvce": "cwox.online.explainers.fgvce:FGVCE",
}

__all__ = [
    "Answer",
    "BUILTIN",
    "Explainer",
    "ExplainSession",
    "available_explainers",
    "capture_activations",
    "count_hooks",
    "explainer_class",
    "get_explainer",
    "known_explainer",
    "register",
]
