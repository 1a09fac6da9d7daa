"""The latent-tree contract shared by ``hlta``, ``store`` and ``online``.

A fitted hierarchical latent tree model (HLTM; CWOX Section 3, Fig. 5) is a
:class:`networkx.DiGraph` with edges parent -> child and one root.

* Graph attributes: ``class_names`` (list of str, one per label) and ``n_labels``.
* Leaves (observed labels): id ``f"c{label}"``, attributes ``level=0``,
  ``label=<int>``, ``name=<class name>``, ``card=2`` (0 absent, 1 present).
* Latents: id ``f"Z{k}"``, ``level >= 1`` (1 = directly above leaves), ``card``
  (2 by default), optional ``name``. Top-level latents are joined among
  themselves, so a latent's parent may have the same level.
* Every node has ``cpt``: ``P(node | parent)`` of shape (card, parent_card) with
  columns summing to 1, or ``P(root)`` of shape (card,); ``cpt=None`` marks a
  structure-only tree, for which likelihoods raise.
* Every label has a leaf; labels that never occur hang under the root.

The model's likelihood of a document ``d`` is ``P(d) = sum_Z prod_v P(v | pa(v))``
with the latents ``Z`` summed out; its BIC score is
``BIC = log P(D) - n_params / 2 * log N`` (Schwarz 1978, the score HLTA
maximises; CWOX Section 3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import networkx as nx
import numpy as np

from .data import as_binary_csr, unique_rows
from .inference import compile_tree, tree_log_likelihood

__all__ = [
    "clusters",
    "cluster_of",
    "log_likelihood",
    "n_params",
    "bic",
    "to_pgmpy",
    "validate_tree",
    "leaf_id",
    "latent_nodes",
    "leaf_nodes",
    "root_of",
    "tree_from_groups",
]

#: Node names of the tree contract: leaves ``c{label}``, latents ``Z{k}``.
LEAF_RE = re.compile(r"^c(\d+)$")
LATENT_RE = re.compile(r"^Z(\d+)$")


def leaf_id(label: int) -> str:
    """Node id of the leaf of ``label`` (``"c281"`` for label 281)."""
    return f"c{int(label)}"


def root_of(tree: nx.DiGraph):
    """The unique node without a parent."""
    roots = [n for n, d in tree.in_degree() if d == 0]
    if len(roots) != 1:
        raise ValueError(f"tree must have exactly one root, found {len(roots)}: {roots[:5]}")
    return roots[0]


def leaf_nodes(tree: nx.DiGraph) -> list[str]:
    """Leaf ids ordered by label."""
    return [leaf_id(i) for i in range(int(tree.graph["n_labels"]))]


def latent_nodes(tree: nx.DiGraph) -> list[str]:
    """Latent ids (level >= 1) in sorted order of their integer suffix."""
    lat = [n for n, d in tree.nodes(data=True) if d.get("level", 0) >= 1]
    return sorted(lat, key=lambda n: int(LATENT_RE.match(n).group(1)) if LATENT_RE.match(n) else -1)


def tree_from_groups(groups: Sequence[Iterable[int]], class_names: Sequence[str]) -> nx.DiGraph:
    """A structure-only tree of the contract (``cpt=None``) from confusion clusters known by hand.

    One level-1 latent ``Z{k}`` over the labels of ``groups[k-1]``, under a level-2
    root ``Z0`` that also holds every label in no group; :func:`clusters` then gives
    back ``groups`` (and every other label alone). For trying the online stage on
    clusters one already knows (tests, benchmarks, a hand-curated taxonomy);
    likelihoods need a fitted tree.
    """
    n = len(class_names)
    tree = nx.DiGraph(class_names=list(class_names), n_labels=n)
    tree.add_node("Z0", level=2, card=2, cpt=None)
    parent: dict[int, str] = {}
    for k, labels in enumerate(groups, start=1):
        z = f"Z{k}"
        tree.add_node(z, level=1, card=2, cpt=None)
        tree.add_edge("Z0", z)
        for lab in map(int, labels):
            if not 0 <= lab < n:
                raise ValueError(f"group {k}: label {lab} outside 0..{n - 1}")
            if lab in parent:
                raise ValueError(f"label {lab} is in group {parent[lab][1:]} and in group {k}")
            parent[lab] = z
    for lab, name in enumerate(class_names):
        tree.add_node(leaf_id(lab), level=0, label=lab, name=name, card=2, cpt=None)
        tree.add_edge(parent.get(lab, "Z0"), leaf_id(lab))
    return tree


# --------------------------------------------------------------------------- validation


def validate_tree(tree: nx.DiGraph) -> None:
    """Check that ``tree`` follows the contract; raise ``ValueError`` saying what is wrong.

    Checks: a DiGraph that is a rooted tree (arborescence) with a latent root;
    graph attributes ``class_names``/``n_labels`` consistent; one leaf ``c{i}`` per
    label ``i`` with ``level=0``, ``label=i``, ``card=2`` and no children; latent ids
    ``Z{k}`` with integer ``level >= 1`` and ``card >= 2``; each ``cpt`` either
    ``None`` or a non-negative float array of the right shape whose columns sum to 1.
    """
    if not isinstance(tree, nx.DiGraph):
        raise ValueError(f"tree must be a networkx.DiGraph, got {type(tree).__name__}")
    if tree.number_of_nodes() == 0:
        raise ValueError("tree has no nodes")
    if "n_labels" not in tree.graph or "class_names" not in tree.graph:
        raise ValueError("tree.graph must hold 'n_labels' and 'class_names'")
    n_labels = tree.graph["n_labels"]
    if not isinstance(n_labels, int | np.integer) or n_labels < 1:
        raise ValueError(f"tree.graph['n_labels'] must be a positive int, got {n_labels!r}")
    names = tree.graph["class_names"]
    if not isinstance(names, list | tuple) or len(names) != n_labels:
        raise ValueError(
            f"tree.graph['class_names'] must be a list of {n_labels} names, got "
            f"{type(names).__name__} of length {len(names) if hasattr(names, '__len__') else '?'}"
        )
    if not nx.is_arborescence(tree):
        raise ValueError("tree is not a rooted tree (every node but one root needs exactly one parent, no cycles)")
    root = root_of(tree)
    seen_labels = set()
    for node, attrs in tree.nodes(data=True):
        for key in ("level", "card", "cpt"):
            if key not in attrs:
                raise ValueError(f"node {node!r} lacks attribute {key!r}")
        level, card = attrs["level"], attrs["card"]
        if not isinstance(level, int | np.integer) or level < 0:
            raise ValueError(f"node {node!r}: level must be a non-negative int, got {level!r}")
        if not isinstance(card, int | np.integer) or card < 2:
            raise ValueError(f"node {node!r}: card must be an int >= 2, got {card!r}")
        if level == 0:
            m = LEAF_RE.match(str(node))
            if m is None:
                raise ValueError(f"leaf {node!r}: leaf ids must be 'c<label>'")
            label = attrs.get("label")
            if not isinstance(label, int | np.integer) or int(label) != int(m.group(1)):
                raise ValueError(f"leaf {node!r}: attribute label={label!r} does not match its id")
            if not 0 <= int(label) < n_labels:
                raise ValueError(f"leaf {node!r}: label {label} outside 0..{n_labels - 1}")
            if card != 2:
                raise ValueError(f"leaf {node!r}: card must be 2 (absent/present), got {card}")
            if tree.out_degree(node) != 0:
                raise ValueError(f"leaf {node!r} has children; leaves must be childless")
            if node == root:
                raise ValueError(f"the root {node!r} is a leaf; the root must be a latent")
            if "name" not in attrs:
                raise ValueError(f"leaf {node!r} lacks attribute 'name'")
            seen_labels.add(int(label))
        elif LATENT_RE.match(str(node)) is None:
            raise ValueError(f"latent {node!r}: latent ids must be 'Z<int>'")
        _check_cpt(tree, node, root)
    missing = sorted(set(range(n_labels)) - seen_labels)
    if missing:
        raise ValueError(f"labels without a leaf: {missing[:10]}{' ...' if len(missing) > 10 else ''}")


def _check_cpt(tree: nx.DiGraph, node, root) -> None:
    cpt = tree.nodes[node]["cpt"]
    if cpt is None:
        return
    card = int(tree.nodes[node]["card"])
    arr = np.asarray(cpt)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"node {node!r}: cpt must be a float array, got dtype {arr.dtype}")
    if node == root:
        expected = (card,)
    else:
        (parent,) = tree.predecessors(node)
        expected = (card, int(tree.nodes[parent]["card"]))
    if arr.shape != expected:
        raise ValueError(f"node {node!r}: cpt shape {arr.shape}, expected {expected}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"node {node!r}: cpt has negative or non-finite entries")
    if not np.allclose(arr.sum(axis=0), 1.0, atol=1e-6):
        raise ValueError(f"node {node!r}: cpt columns must sum to 1, got {arr.sum(axis=0)}")


# --------------------------------------------------------------------------- clusters


def _check_labels(tree: nx.DiGraph, labels) -> list[int]:
    n_labels = int(tree.graph["n_labels"])
    if labels is None:
        return list(range(n_labels))
    out = [int(x) for x in np.asarray(labels).ravel()]
    bad = [x for x in out if not 0 <= x < n_labels]
    if bad:
        raise ValueError(f"labels {bad[:5]} outside 0..{n_labels - 1}")
    if len(set(out)) != len(out):
        raise ValueError("labels contain duplicates")
    return out


def cluster_of(tree: nx.DiGraph, labels=None, level: int = 1) -> dict[int, str]:
    """Map each label to its cluster id at ``level`` (CWOX Section 4: cut the tree at level 1).

    Level 1: a label's cluster is its parent when the parent is a level-1 latent,
    else the label alone (cluster id = its own leaf id). Level ``L >= 2``: the
    nearest ancestor with ``level == L``; failing that the nearest ancestor with
    ``level > L``; failing that the label alone.
    """
    if not isinstance(level, int | np.integer) or level < 1:
        raise ValueError(f"level must be an int >= 1, got {level!r}")
    labels = _check_labels(tree, labels)
    out: dict[int, str] = {}
    for lab in labels:
        leaf = leaf_id(lab)
        if leaf not in tree:
            raise ValueError(f"label {lab} has no leaf {leaf!r} in the tree")
        if level == 1:
            parents = list(tree.predecessors(leaf))
            if parents and tree.nodes[parents[0]].get("level", 0) == 1:
                out[lab] = parents[0]
            else:
                out[lab] = leaf
            continue
        exact = above = None
        node = leaf
        while True:
            parents = list(tree.predecessors(node))
            if not parents:
                break
            node = parents[0]
            lv = tree.nodes[node].get("level", 0)
            if lv == level:
                exact = node
                break
            if lv > level and above is None:
                above = node
        out[lab] = exact if exact is not None else (above if above is not None else leaf)
    return out


def clusters(tree: nx.DiGraph, labels=None, level: int = 1) -> list[list[int]]:
    """Group ``labels`` (default: all) into confusion clusters at ``level``.

    Each group keeps the order of ``labels``; groups are ordered by the position
    of their first member in ``labels``. See :func:`cluster_of` for the rule.
    """
    assignment = cluster_of(tree, labels, level)
    groups: dict[str, list[int]] = {}
    for lab, cid in assignment.items():  # dict preserves the order of ``labels``
        groups.setdefault(cid, []).append(lab)
    return list(groups.values())


# --------------------------------------------------------------------------- scores


def log_likelihood(tree: nx.DiGraph, X) -> float:
    """Total exact log-likelihood of the binary documents x labels matrix ``X``.

    Latents are summed out by an upward pass over the unique document patterns
    (weighted by their counts), touching only each document's present labels
    and their ancestors (see :mod:`cwox.hlta.inference`). Raises ``ValueError`` for a
    structure-only tree (a ``cpt`` is ``None``) or a malformed ``X``.
    """
    model = compile_tree(tree)
    X = as_binary_csr(X, n_labels=model.n_labels)
    U, counts = unique_rows(X)
    return tree_log_likelihood(model, U, counts)


def n_params(tree: nx.DiGraph) -> int:
    """Number of free parameters: ``sum_v (card_v - 1) * card_pa(v)``, ``card - 1`` for the root."""
    total = 0
    for node, attrs in tree.nodes(data=True):
        parents = list(tree.predecessors(node))
        pc = int(tree.nodes[parents[0]]["card"]) if parents else 1
        total += (int(attrs["card"]) - 1) * pc
    return total


def bic(tree: nx.DiGraph, X) -> float:
    """BIC score ``log P(X) - n_params / 2 * log N`` with ``N`` the number of documents."""
    X = as_binary_csr(X, n_labels=int(tree.graph["n_labels"]))
    return log_likelihood(tree, X) - n_params(tree) / 2.0 * np.log(X.shape[0])


# --------------------------------------------------------------------------- pgmpy


def to_pgmpy(tree: nx.DiGraph):
    """Convert to a :class:`pgmpy.models.DiscreteBayesianNetwork` with TabularCPDs.

    States are the integers ``0..card-1`` (for leaves 0 = absent, 1 = present);
    the latent nodes are declared as ``latents``. The result passes
    ``check_model()``. Raises ``ValueError`` for a structure-only tree.
    """
    from pgmpy.factors.discrete import TabularCPD
    from pgmpy.models import DiscreteBayesianNetwork

    validate_tree(tree)
    root = root_of(tree)
    latents = {n for n, d in tree.nodes(data=True) if d["level"] >= 1}
    bn = DiscreteBayesianNetwork(list(tree.edges()), latents=latents)
    bn.add_nodes_from(tree.nodes())
    cpds = []
    for node, attrs in tree.nodes(data=True):
        cpt = attrs["cpt"]
        if cpt is None:
            raise ValueError(f"node {node!r} has no cpt: structure-only trees cannot become pgmpy models")
        card = int(attrs["card"])
        states = {node: list(range(card))}
        if node == root:
            cpds.append(TabularCPD(node, card, np.asarray(cpt, float).reshape(card, 1), state_names=states))
        else:
            (parent,) = tree.predecessors(node)
            pc = int(tree.nodes[parent]["card"])
            states[parent] = list(range(pc))
            cpds.append(
                TabularCPD(node, card, np.asarray(cpt, float), evidence=[parent], evidence_card=[pc],
                           state_names=states)
            )
    bn.add_cpds(*cpds)
    bn.check_model()
    return bn
