"""The embedded default tree: EfficientNet-Lite0's ImageNet confusion clusters, shipped in the package.

``DEFAULT_TREE`` is its path (and ``DEFAULT_BANK`` FG-VCE's default reference bank beside it) (package data ``cwox/data/default_tree.zarr``, rebuilt by
``make default-tree``); :func:`default_tree` loads it and, given a classifier, checks that
the tree was built for that model and class list.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import networkx as nx

#: Where the embedded tree store lives (package data of ``cwox``; light to import, for the CLI).
DEFAULT_TREE = Path(str(files("cwox"))) / "data" / "default_tree.zarr"
#: FG-VCE's embedded reference bank for the default model, beside the tree (built from the
#: same photos by ``python -m cwox.pipelines.default_bank``; ``make default-tree`` rebuilds both).
DEFAULT_BANK = DEFAULT_TREE.with_name("default_bank.zarr")


def default_tree(classifier: Any | None = None, version: str = "latest") -> nx.DiGraph:
    """Load the embedded default tree; with a ``classifier``, check it fits (IncompatibleTreeError).

    Raises FileNotFoundError when the package was installed without it.
    """
    from cwox.store.trees import check_compatible, load_tree  # zarr: only when a tree is loaded

    if not DEFAULT_TREE.exists():
        raise FileNotFoundError(f"no default tree is installed ({DEFAULT_TREE} is missing)")
    tree = load_tree(DEFAULT_TREE, version)
    if classifier is not None:
        check_compatible(tree, classifier.name, classifier.class_names)
    return tree
