"""Base explainers for the whole-output modes, found by name.

>>> from online.explainers import get_explainer
>>> explainer = get_explainer("gradcam", classifier)          # doctest: +SKIP
>>> maps = explainer.explain(image, [281, {281, 282}], stage="cluster")  # doctest: +SKIP

To add one (CCE, SUNY, FG-VCE...): write ``online/explainers/<name>.py`` with a
``@register("<name>")`` subclass of :class:`Explainer`, and add one line below.
"""

from cwox.online.explainers.base import (
    Explainer,
    ExplainSession,
    available_explainers,
    capture_activations,
    count_hooks,
    explainer_class,
    get_explainer,
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
    "BUILTIN",
    "Explainer",
    "ExplainSession",
    "available_explainers",
    "capture_activations",
    "count_hooks",
    "explainer_class",
    "get_explainer",
    "register",
]
