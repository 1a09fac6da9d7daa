"""cwox: whole-output, contrastive explanations for image classifiers.

The face of the library: every name a user needs, imported from ``cwox``::

    from cwox import load_model, default_tree, explain_image

    clf = load_model()                                       # EfficientNet-Lite0
    explanation = explain_image(clf, "photo.jpg", default_tree(clf))

The names are imported lazily (module ``__getattr__``, PEP 562): ``import cwox``
loads no torch, so ``cwox --help`` stays fast, and a name's module is imported the
first time it is used.

One namespace. The stage folders at the top of the repository install as subpackages
(``setup.cfg``'s ``package_dir``), in the order of the data's journey: ``cwox.core``
(the ground floor every stage shares: models, images, devices, batching, the top-K
rule), ``cwox.hlta`` (the latent tree), ``cwox.store`` (Zarr persistence),
``cwox.offline`` (documents) and ``cwox.online`` (explanations), ``cwox.pipelines``
(the library's jobs), and on top the command line (``cwox.cli``, ``cwox.commands``)
and this face. Layers import only downwards (setup.cfg's import contract).
"""

from __future__ import annotations

import importlib
from typing import Any

from cwox.core import __version__

#: name -> the module that defines it.
_FACE: dict[str, str] = {
    "load_model": "cwox.core.models",
    "Classifier": "cwox.core.models",
    "HLTA": "cwox.hlta",
    "tree_from_groups": "cwox.hlta.tree",
    "load_tree": "cwox.store.trees",
    "save_tree": "cwox.store.trees",
    "default_tree": "cwox.store.default_tree",
    "build_documents": "cwox.offline.documents",
    "Engine": "cwox.online.engine",
    "explain_image": "cwox.online.engine",
    "Explanation": "cwox.online.explanation",
    "Explainer": "cwox.online.explainers",
    "get_explainer": "cwox.online.explainers",
    "available_explainers": "cwox.online.explainers",
    "register": "cwox.online.explainers",
    "write_report": "cwox.online.report",
    "evaluate_images": "cwox.online.evaluation",
    "fit_tree": "cwox.pipelines.trees",
}

__all__ = ["__version__", *_FACE]

def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module 'cwox' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FACE))
