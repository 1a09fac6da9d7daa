"""Import and export of latent trees: BIF (via pgmpy) and HLTA's ``*.nodes.json``.

BIF (the Bayesian Interchange Format) holds the whole model, CPTs included, so a
BIF round trip keeps the likelihood. The tree is turned into a pgmpy network
by :func:`cwox.hlta.tree.to_pgmpy` and written by pgmpy's ``BIFWriter``; cwox adds
per-variable ``property`` lines (``level``, ``label``, URL-quoted ``name``) so
that its own files come back exactly. A BIF without them (e.g. one written by
the HLTA Java tools) is read by its structure alone: variables without children
are the labels, the others latents, and levels are recomputed as the height
above the leaves.

``*.nodes.json`` is the tree listing the public HLTA tools write and CWOX ships
its ImageNet trees in: a JSON list of top-level nodes, each
``{"id": "Z41", "text": ..., "data": {"name": "Z41", "level": 4, "percentage": p},
"children": [...]}``. Only latents appear as nodes; a level-1 node (no
children) names its labels in ``text`` as ``cNNN-name probability`` pairs
separated by spaces (NNN the zero-padded class id; spaces in names written as
``_``). It has no CPTs, so an imported tree is structure-only (``cpt=None``)
and cuts into clusters exactly like a learned one. Conventions of this module:

* the top-level list is the root plus the latents joined to it at its level
  (HLTA's top level is a tree of latents); importing hangs the other top nodes
  under the first node of the highest level;
* ``percentage`` is ``P(Z = last state)`` computed from the CPTs when there
  are CPTs (the HLTA tools report the topic size), else the value the node
  was imported with;
* a label hanging directly under a latent that also has latent children (a
  latent of level >= 2, or the root) is written as an explicit leaf node
  ``{"id": "c12", "data": {"level": 0, ...}, "children": []}`` (an extension
  the viewers show as a plain node) so that it comes back in place; labels
  named nowhere become root singletons on import.

Both formats carry cwox's own record of the tree, which other readers ignore:
the exact class names (the ``_`` of the JSON words is lossy: ``tiger_cat``
may be ``tiger cat`` or a name with a real underscore) and the provenance
(:data:`EXPORTED_META`: model, documents, scores, ...). In nodes.json it is the
``"cwox"`` entry of the first top node's ``data``; in BIF a URL-quoted JSON
``property cwox = ...`` of the root variable. An import gives it back as
``tree.graph["meta"]``, so a round trip in either format returns the same tree,
names and metadata, and ``explain`` accepts the imported tree for its model.

An export never replaces a file it did not write: an existing ``--out`` is
replaced only when it is itself a cwox tree export (:func:`check_export_target`).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from cwox.hlta.tree import LATENT_RE, LEAF_RE
from cwox.store._atomic import atomic_write_text

__all__ = [
    "EXPORTED_META",
    "TreeFormatError",
    "check_export_target",
    "to_bif",
    "from_bif",
    "to_nodes_json",
    "from_nodes_json",
    "read_class_names",
]

_TEXT_CLASS_RE = re.compile(r"^c(\d+)-(.*)$")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class TreeFormatError(ValueError):
    """A tree file is malformed or does not describe a cwox latent tree."""


#: The provenance keys of a tree version that travel in an exported file.
EXPORTED_META = ("model", "documents", "rule", "hlta_params", "loglik", "bic", "n_params", "n_documents")
_CWOX_KEY = "cwox"
_BIF_NETWORK = "cwox_latent_tree"


def _export_record(tree: nx.DiGraph) -> dict[str, Any]:
    """cwox's record of ``tree`` in an exported file: exact class names and provenance."""
    meta = tree.graph.get("meta") or {}
    record: dict[str, Any] = {"class_names": [str(c) for c in tree.graph["class_names"]]}
    record["meta"] = {k: meta[k] for k in EXPORTED_META if meta.get(k) is not None}
    if meta.get("version"):
        record["meta"]["exported_version"] = meta["version"]
    return json.loads(json.dumps(record, default=str))


def _apply_record(tree: nx.DiGraph, record: Any, class_names: Sequence[str] | None) -> Sequence[str] | None:
    """Put an exported record's provenance on ``tree``; its class names unless given."""
    if not isinstance(record, dict):
        return class_names
    if isinstance(record.get("meta"), dict):
        tree.graph["meta"] = dict(record["meta"])
    names = record.get("class_names")
    if class_names is None and isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names
    return class_names


def check_export_target(path: str | os.PathLike) -> None:
    """Refuse to write an export over anything but an earlier cwox tree export.

    A missing path is fine; an existing file is replaced only when cwox wrote it
    (a BIF of the network ``cwox_latent_tree``, or a nodes.json whose first node
    carries the ``"cwox"`` record). Raises :class:`TreeFormatError` otherwise.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if p.is_symlink() or not p.is_file():
        raise TreeFormatError(f"{os.fspath(p)!r} exists and is not a file cwox wrote; choose another --out")
    try:
        with open(p, encoding="utf-8") as fh:
            head = fh.read(1 << 20)
    except (OSError, UnicodeDecodeError):
        head = ""
    ours = f"network {_BIF_NETWORK}" in head[:4096]
    if not ours and head.lstrip().startswith("["):
        try:
            first = json.loads(Path(p).read_text(encoding="utf-8"))[0]
            ours = isinstance(first, dict) and _CWOX_KEY in (first.get("data") or {})
        except (ValueError, IndexError, KeyError, TypeError, OSError):
            ours = False
    if not ours:
        raise TreeFormatError(
            f"{os.fspath(p)!r} exists and is not a tree file cwox exported; cwox does not replace it: "
            "choose another --out"
        )


# --------------------------------------------------------------------------- helpers


def _root(tree: nx.DiGraph) -> str:
    roots = [n for n, d in tree.in_degree() if d == 0]
    if len(roots) != 1:
        raise ValueError(f"tree must have exactly one root, found {len(roots)}")
    return roots[0]


def _has_cpts(tree: nx.DiGraph) -> bool:
    return all(d.get("cpt") is not None for _, d in tree.nodes(data=True))


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a file: a JSON list, or one name per line (blank lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TreeFormatError(f"cannot read class names from {os.fspath(path)!r}: {exc}") from exc
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            names = json.loads(text)
        except ValueError as exc:
            raise TreeFormatError(f"{os.fspath(path)!r} is not a valid JSON list of class names: {exc}") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TreeFormatError(f"{os.fspath(path)!r} must hold a JSON list of strings")
    elif stripped.startswith("{"):
        try:
            mapping = json.loads(text)
            names = [str(mapping[k]) for k in sorted(mapping, key=int)]
        except (ValueError, TypeError) as exc:
            raise TreeFormatError(f"{os.fspath(path)!r}: a JSON object of class names needs keys 0..n-1") from exc
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise TreeFormatError(f"{os.fspath(path)!r} holds no class names")
    return names


def _finish(tree: nx.DiGraph, class_names: Sequence[str] | None, default_cpt: bool) -> nx.DiGraph:
    """Fix ``class_names``/``n_labels``, add missing labels as root singletons, check."""
    labels = {d["label"] for _, d in tree.nodes(data=True) if "label" in d}
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        too_big = sorted(lab for lab in labels if lab >= len(class_names))
        if too_big:
            raise TreeFormatError(
                f"the tree names class ids up to {too_big[-1]} but only {len(class_names)} class names were given"
            )
    else:
        n = max(labels) + 1 if labels else 0
        found = {d["label"]: d["name"] for _, d in tree.nodes(data=True) if "label" in d}
        class_names = [found.get(i, f"c{i}") for i in range(n)]
    root = _root(tree)
    root_card = int(tree.nodes[root]["card"])
    for lab in range(len(class_names)):
        node = f"c{lab}"
        if node in tree:
            tree.nodes[node]["name"] = class_names[lab]
            continue
        cpt = None
        if default_cpt:  # a label the file does not model: always absent
            cpt = np.zeros((2, root_card))
            cpt[0] = 1.0
        tree.add_node(node, level=0, label=lab, name=class_names[lab], card=2, cpt=cpt)
        tree.add_edge(root, node)
    tree.graph["class_names"] = list(class_names)
    tree.graph["n_labels"] = len(class_names)
    from cwox.hlta.tree import validate_tree

    try:
        validate_tree(tree)
    except ValueError as exc:
        raise TreeFormatError(f"the file does not describe a valid latent tree: {exc}") from exc
    return tree


def _height_levels(tree: nx.DiGraph) -> dict[str, int]:
    """Level of each node as its height above the leaves (leaves 0)."""
    level: dict[str, int] = {}
    for node in reversed(list(nx.topological_sort(tree))):
        kids = list(tree.successors(node))
        level[node] = 0 if not kids else 1 + max(level[k] for k in kids)
    return level


# --------------------------------------------------------------------------- BIF


def to_bif(tree: nx.DiGraph, path: str | os.PathLike) -> None:
    """Write ``tree`` (with CPTs) as a BIF file through pgmpy's ``BIFWriter``.

    Each variable gets ``property`` lines ``level``, and for leaves ``label`` and
    ``name`` (URL-quoted, as BIF property values may not hold ``;`` or ``=``),
    which :func:`from_bif` reads back. The file is replaced atomically.
    """
    from cwox.hlta.tree import to_pgmpy
    from pgmpy.readwrite import BIFWriter

    if not _has_cpts(tree):
        raise ValueError(
            "a BIF file needs the conditional probability tables, and this tree is structure-only "
            "(cpt=None); export it as nodes.json instead"
        )
    check_export_target(path)
    model = to_pgmpy(tree)
    model.name = _BIF_NETWORK
    root = _root(tree)
    for node, data in tree.nodes(data=True):
        props = model.nodes[node]
        props.clear()  # only our own properties go into the file
        props["level"] = int(data["level"])
        if "label" in data:
            props["label"] = int(data["label"])
        if data.get("name"):
            props["name"] = urllib.parse.quote(str(data["name"]), safe="")
        if node == root:
            props[_CWOX_KEY] = urllib.parse.quote(json.dumps(_export_record(tree)), safe="")
    atomic_write_text(path, BIFWriter(model).__str__())


def from_bif(path: str | os.PathLike, class_names: Sequence[str] | None = None) -> nx.DiGraph:
    """Read a BIF file into a contract tree (CPTs included).

    Variables ``c<label>`` are leaves; other childless variables are leaves
    numbered by ``class_names`` (when they name them) or in sorted order;
    other variables are latents (renamed ``Z<k>`` unless already so named).
    Levels come from cwox's ``level`` properties when every variable has one,
    else from the structure (height above the leaves). ``class_names`` sets
    the label list; labels the file lacks hang under the root, always absent.
    """
    from pgmpy.readwrite import BIFReader

    try:
        reader = BIFReader(path=os.fspath(path), include_properties=True)
        model = reader.get_model()
    except FileNotFoundError:
        raise
    except Exception as exc:  # pyparsing, numpy and pgmpy raise many kinds on a bad file
        raise TreeFormatError(f"{os.fspath(path)!r} is not a readable BIF file: {exc}") from exc
    if not model.nodes():
        raise TreeFormatError(f"{os.fspath(path)!r} declares no variables")
    graph = nx.DiGraph(model.edges())
    graph.add_nodes_from(model.nodes())
    if not nx.is_arborescence(graph):
        raise TreeFormatError(f"{os.fspath(path)!r} is not a tree-shaped network (one root, one parent each)")
    props = {n: dict(model.nodes[n]) for n in model.nodes()}
    ids = _bif_node_ids(graph, props, class_names)
    levels = _height_levels(graph)
    if all("level" in p for p in props.values()):
        try:
            levels = {n: int(p["level"]) for n, p in props.items()}
        except ValueError as exc:
            raise TreeFormatError(f"{os.fspath(path)!r} has a non-integer level property: {exc}") from exc
    tree = nx.DiGraph()
    cpds = {cpd.variable: cpd for cpd in model.get_cpds()}
    for var in nx.dfs_preorder_nodes(graph, _root(graph)):
        cpd = cpds.get(var)
        if cpd is None:
            raise TreeFormatError(f"{os.fspath(path)!r} has no probability table for {var!r}")
        values = np.asarray(cpd.get_values(), dtype=np.float64)
        cpt = values[:, 0] if not cpd.variables[1:] else values
        node = ids[var]
        attrs: dict[str, Any] = {"level": levels[var], "card": int(cpd.variable_card), "cpt": cpt}
        name = urllib.parse.unquote(props[var]["name"]) if "name" in props[var] else None
        if node.startswith("c"):
            attrs["label"] = int(node[1:])
            attrs["name"] = name if name is not None else var
        elif name:
            attrs["name"] = name
        tree.add_node(node, **attrs)
    tree.add_edges_from((ids[u], ids[v]) for u, v in graph.edges())
    record = props[_root(graph)].get(_CWOX_KEY)
    if record is not None:
        try:
            record = json.loads(urllib.parse.unquote(record))
        except ValueError as exc:
            raise TreeFormatError(f"{os.fspath(path)!r} has a corrupt cwox property: {exc}") from exc
    return _finish(tree, _apply_record(tree, record, class_names), default_cpt=True)


def _bif_node_ids(graph: nx.DiGraph, props: dict, class_names: Sequence[str] | None) -> dict[str, str]:
    leaves = [n for n in graph if graph.out_degree(n) == 0]
    index = {name: i for i, name in enumerate(class_names)} if class_names is not None else {}
    ids: dict[str, str] = {}
    for var in leaves:
        if "label" in props[var]:
            ids[var] = f"c{int(props[var]['label'])}"
        elif LEAF_RE.match(var):
            ids[var] = var
        elif var in index:
            ids[var] = f"c{index[var]}"
    others = sorted(v for v in leaves if v not in ids)
    if others:
        if class_names is not None:
            raise TreeFormatError(f"BIF variables {others[:5]} are neither 'c<label>' nor in the class names")
        taken = {int(i[1:]) for i in ids.values()}
        free = (i for i in range(len(graph)) if i not in taken)
        ids.update({var: f"c{next(free)}" for var in others})
    latents = [n for n in graph if graph.out_degree(n) > 0]
    used = {int(m.group(1)) for v in latents if (m := LATENT_RE.match(v))}
    fresh = (k for k in range(1, 10 * len(graph) + 2) if k not in used)
    for var in latents:
        ids[var] = var if LATENT_RE.match(var) else f"Z{next(fresh)}"
    if len(set(ids.values())) != len(ids):
        raise TreeFormatError("two BIF variables map to the same node id")
    return ids


# --------------------------------------------------------------------------- nodes.json


def _percentages(tree: nx.DiGraph, root: str) -> dict[str, float]:
    """``P(node = last state)`` of every node (forward pass from the root)."""
    marg = {root: np.asarray(tree.nodes[root]["cpt"], dtype=np.float64)}
    for parent, child in nx.bfs_edges(tree, root):
        marg[child] = np.asarray(tree.nodes[child]["cpt"], dtype=np.float64) @ marg[parent]
    return {n: float(m[-1]) for n, m in marg.items()}


def _presence_given(tree: nx.DiGraph, node: str) -> dict[int, float]:
    """``P(label present | node = last state)`` of every label below ``node``."""
    card = int(tree.nodes[node]["card"])
    onehot = np.zeros(card)
    onehot[-1] = 1.0
    dist = {node: onehot}
    out = {}
    for parent, child in nx.bfs_edges(tree, node):
        dist[child] = np.asarray(tree.nodes[child]["cpt"], dtype=np.float64) @ dist[parent]
        if "label" in tree.nodes[child]:
            out[int(tree.nodes[child]["label"])] = float(dist[child][1])
    return out


def to_nodes_json(tree: nx.DiGraph, path: str | os.PathLike, *, max_words: int = 50) -> None:
    """Write ``tree`` in the HLTA ``*.nodes.json`` format (see the module docstring).

    A node without latent children (a level-1 island) has ``"children": []``
    and lists all its labels in ``text``; a higher node's ``text`` lists up to
    ``max_words`` labels below it. Labels are ordered by decreasing
    ``P(label present | node = last state)`` when the tree has CPTs (tree order
    otherwise). The file is replaced atomically.
    """
    root = _root(tree)
    n_labels = int(tree.graph["n_labels"])
    width = max(3, len(str(n_labels - 1)))
    with_cpts = _has_cpts(tree)
    pct = _percentages(tree, root) if with_cpts else {}
    top_set = _top_component(tree, root)
    top = [node for node in nx.dfs_preorder_nodes(tree, root) if node in top_set]

    def word(lab: int, p: float | None) -> str:
        name = re.sub(r"\s+", "_", str(tree.graph["class_names"][lab]).strip())
        return f"c{lab:0{width}d}-{name}" + (f" {p:.2f}" if p is not None else "")

    def text_of(node: str, leaves_only: bool) -> str:
        below = [int(tree.nodes[d]["label"]) for d in nx.dfs_preorder_nodes(tree, node) if "label" in tree.nodes[d]]
        if node in top_set:  # the other top nodes hang below the root in the graph only
            below = [lab for lab in below if _owner(tree, f"c{lab}", top_set) == node]
        probs = _presence_given(tree, node) if with_cpts else {}
        if with_cpts:
            below.sort(key=lambda lab: -probs[lab])
        if not leaves_only:
            below = below[:max_words]
        return " ".join(word(lab, probs.get(lab)) for lab in below)

    def entry(node: str) -> dict[str, Any]:
        data = tree.nodes[node]
        if "label" in data:
            return {
                "id": node,
                "text": word(int(data["label"]), None),
                "data": {"name": str(data["name"]), "level": 0, "label": int(data["label"])},
                "children": [],
            }
        kids = [k for k in tree.successors(node) if k not in top_set]
        # as in the HLTA tools, a node without latent children names its labels in
        # its text only; elsewhere labels are explicit leaf nodes (see module doc)
        leaves_only = all("label" in tree.nodes[k] for k in kids)
        return {
            "id": node,
            "text": text_of(node, leaves_only),
            "data": {
                "name": str(data.get("name") or node),
                "level": int(data["level"]),
                "percentage": pct.get(node, data.get("percentage")),
            },
            "children": [] if leaves_only else [entry(k) for k in kids],
        }

    check_export_target(path)
    entries = [entry(node) for node in top]
    entries[0]["data"][_CWOX_KEY] = _export_record(tree)
    atomic_write_text(path, json.dumps(entries, indent=1) + "\n")


def _top_component(tree: nx.DiGraph, root: str) -> set[str]:
    """The root and the latents joined to it through latents of the root's level."""
    level = tree.nodes[root]["level"]
    comp, stack = {root}, [root]
    while stack:
        for kid in tree.successors(stack.pop()):
            if "label" not in tree.nodes[kid] and tree.nodes[kid]["level"] == level:
                comp.add(kid)
                stack.append(kid)
    return comp


def _owner(tree: nx.DiGraph, node: str, top_set: set[str]) -> str:
    """The nearest ancestor of ``node`` (or itself) in ``top_set``."""
    while node not in top_set:
        node = next(iter(tree.predecessors(node)))
    return node


def from_nodes_json(path: str | os.PathLike, class_names: Sequence[str] | None = None) -> nx.DiGraph:
    """Read an HLTA ``*.nodes.json`` file into a structure-only tree (``cpt=None``).

    Latent ids, levels and (non-default) names come from the nodes; a childless
    node's labels from its ``text`` (``cNNN-name probability`` tokens); explicit
    leaf nodes (``"level": 0`` or an id ``c<label>``) anywhere. The first node
    of the highest level among the top-level nodes becomes the root and the
    other top-level nodes hang under it. Without ``class_names`` the names are
    those of the file (underscores kept) and the labels run to the largest id;
    labels named nowhere become root singletons.
    """
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TreeFormatError(f"cannot read {os.fspath(path)!r}: {exc}") from exc
    try:
        entries = json.loads(raw)
    except ValueError as exc:
        raise TreeFormatError(f"{os.fspath(path)!r} is not valid JSON: {exc}") from exc
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise TreeFormatError(f"{os.fspath(path)!r} must hold a non-empty JSON list of nodes")
    tree = nx.DiGraph()
    owner: dict[int, str] = {}

    def add_leaf(lab: int, name: str, parent: str) -> None:
        if lab in owner:
            if owner[lab] == parent:
                return
            raise TreeFormatError(f"class c{lab} ({name}) appears under both {owner[lab]} and {parent}")
        owner[lab] = parent
        tree.add_node(f"c{lab}", level=0, label=lab, name=name, card=2, cpt=None)
        tree.add_edge(parent, f"c{lab}")

    def visit(item: Any, parent: str | None, where: str) -> str:
        if not isinstance(item, dict) or "id" not in item:
            raise TreeFormatError(f"{where}: a node must be an object with an 'id'")
        node, data = str(item["id"]), item.get("data") or {}
        kids = item.get("children") or []
        if not isinstance(data, dict) or not isinstance(kids, list):
            raise TreeFormatError(f"{where} ({node}): 'data' must be an object and 'children' a list")
        if LEAF_RE.match(node) or data.get("level") == 0:
            m = LEAF_RE.match(node)
            lab = int(data["label"]) if "label" in data else (int(m.group(1)) if m else None)
            if lab is None or parent is None:
                raise TreeFormatError(f"{where}: leaf node {node!r} needs an id 'c<label>' and a parent")
            add_leaf(lab, str(data.get("name") or _text_words(item.get("text", ""), node)[0][1]), parent)
            return node
        if not LATENT_RE.match(node):
            raise TreeFormatError(f"{where}: node id {node!r} is neither a latent 'Z<k>' nor a leaf 'c<label>'")
        if node in tree:
            raise TreeFormatError(f"{where}: node {node} appears twice")
        level = data.get("level")
        if level is not None and (not isinstance(level, int) or isinstance(level, bool) or level < 1):
            raise TreeFormatError(f"{where}: node {node} has level {level!r}; latents need an int level >= 1")
        attrs: dict[str, Any] = {"level": level, "card": 2, "cpt": None}
        if data.get("name") not in (None, "", node):
            attrs["name"] = str(data["name"])
        if isinstance(data.get("percentage"), (int, float)) and not isinstance(data.get("percentage"), bool):
            attrs["percentage"] = float(data["percentage"])
        tree.add_node(node, **attrs)
        if parent is not None:
            tree.add_edge(parent, node)
        latent_kids = 0
        for i, kid in enumerate(kids):
            if visit(kid, node, f"{where}.children[{i}]").startswith("Z"):
                latent_kids += 1
        if not latent_kids:
            words = _text_words(item.get("text", ""), node)
            if not words and not kids:
                raise TreeFormatError(
                    f"{where}: node {node} has no children and its text names no classes "
                    "(expected tokens 'cNNN-name probability', e.g. 'c281-tabby 0.12')"
                )
            for lab, name in words:
                add_leaf(lab, name, node)
        return node

    tops = [visit(item, None, f"node[{i}]") for i, item in enumerate(entries)]
    _fill_levels(tree)
    root = max(tops, key=lambda n: (tree.nodes[n]["level"], -tops.index(n)))
    tree.add_edges_from((root, n) for n in tops if n != root)
    first = entries[0].get("data") or {}
    return _finish(tree, _apply_record(tree, first.get(_CWOX_KEY), class_names), default_cpt=False)


def _text_words(text: Any, node: str) -> list[tuple[int, str]]:
    """``(class id, name)`` pairs from a node text of ``cNNN-name [probability]`` tokens."""
    if not isinstance(text, str):
        raise TreeFormatError(f"node {node}: 'text' must be a string")
    out = []
    for token in text.split():
        m = _TEXT_CLASS_RE.match(token)
        if m:
            out.append((int(m.group(1)), m.group(2)))
        elif not _FLOAT_RE.match(token):
            raise TreeFormatError(
                f"node {node}: cannot read {token!r} in its text; expected 'cNNN-name probability' tokens"
            )
    return out


def _fill_levels(tree: nx.DiGraph) -> None:
    """Give latents without a ``level`` in the file their height above the leaves."""
    if any(d["level"] is None for _, d in tree.nodes(data=True)):
        heights = _height_levels(tree)
        for node, data in tree.nodes(data=True):
            if data["level"] is None:
                data["level"] = max(1, heights[node])
