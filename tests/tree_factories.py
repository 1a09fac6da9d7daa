"""Small latent trees, documents sampled from them and photo folders, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
from cwox.hlta.tree import tree_from_groups
from PIL import Image

CLASS_NAMES = ["tiger cat", "tabby", "Egyptian_cat", "hen-of-the-woods", "ping-pong ball", "drum",
               "drumstick", "oboe", "bassoon", "flute", "never-seen", "rifle"]


def random_tree(seed: int = 0, n_labels: int = 12, root_p: float | None = None) -> nx.DiGraph:
    """A small tree following the contract, with random (Dirichlet) CPTs.

    Level-1 islands of 2-3 labels, level-2 latents over them, the level-2 latents
    joined at the top (root Z1 with Z2 hanging under it, same level), one label
    directly under a level-2 latent and the last label a root singleton.
    """
    rng = np.random.default_rng(seed)
    names = (CLASS_NAMES * 3)[:n_labels]
    names = [n if i < len(CLASS_NAMES) else f"{n}_{i}" for i, n in enumerate(names)]
    tree = nx.DiGraph(class_names=names, n_labels=n_labels)
    perm = rng.permutation(n_labels - 1)  # the last label stays a root singleton
    loose, perm = int(perm[0]), perm[1:]
    islands, i = [], 0
    while i < len(perm):
        size = 3 if len(perm) - i >= 5 or len(perm) - i == 3 else 2
        islands.append(sorted(int(x) for x in perm[i : i + size]))
        i += size
    tree.add_node("Z1", level=2, card=2)
    tree.add_node("Z2", level=2, card=2)
    tree.add_edge("Z1", "Z2")
    for k, island in enumerate(islands):
        z = f"Z{10 + k}"
        tree.add_node(z, level=1, card=2 if k % 2 else 3)
        tree.add_edge("Z1" if k % 2 else "Z2", z)
        for lab in island:
            tree.add_node(f"c{lab}", level=0, label=lab, name=names[lab], card=2)
            tree.add_edge(z, f"c{lab}")
    for lab in (loose, n_labels - 1):
        tree.add_node(f"c{lab}", level=0, label=lab, name=names[lab], card=2)
    tree.add_edge("Z2", f"c{loose}")
    tree.add_edge("Z1", f"c{n_labels - 1}")
    for node in nx.topological_sort(tree):
        card = tree.nodes[node]["card"]
        preds = list(tree.predecessors(node))
        if not preds:
            cpt = rng.dirichlet(np.ones(card)) if root_p is None else np.array([1 - root_p, root_p])
        else:
            cpt = rng.dirichlet(np.ones(card), size=tree.nodes[preds[0]]["card"]).T
        tree.nodes[node]["cpt"] = cpt
    return tree


def sample_documents(tree: nx.DiGraph, n: int, seed: int = 0) -> np.ndarray:
    """Forward-sample ``n`` binary documents from the tree (vectorised over documents)."""
    rng = np.random.default_rng(seed)
    states: dict[str, np.ndarray] = {}
    X = np.zeros((n, tree.graph["n_labels"]), dtype=np.int8)
    for node in nx.topological_sort(tree):
        cpt = tree.nodes[node]["cpt"]
        preds = list(tree.predecessors(node))
        probs = np.broadcast_to(cpt, (n, cpt.size)) if not preds else cpt[:, states[preds[0]]].T
        u = rng.random((n, 1))
        states[node] = (u > np.cumsum(probs, axis=1)).sum(axis=1)
        if node.startswith("c"):
            X[:, tree.nodes[node]["label"]] = states[node]
    return X


#: ImageNet ids: tabby, tiger cat, Egyptian cat, lynx; and espresso, cup, coffee mug.
CATS = (281, 282, 285, 287)
CUPS = (967, 968, 504)


def cat_tree(class_names: list[str]) -> nx.DiGraph:
    """A structure-only tree over ImageNet: the cats under ``Z1``, the cups under ``Z2``, the rest alone."""
    return tree_from_groups([CATS, CUPS], class_names)


def photo_folder(folder: Path) -> Path:
    """``folder`` with chelsea.jpg, coffee.png and broken.jpg (a truncated JPEG header)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg")
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder
