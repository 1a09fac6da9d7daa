"""Targets of a whole-output explanation: top-K classes, compound classes, clusters.

A *target* is what a base explainer draws a saliency map for: one class id, or a
*compound class* (a set of class ids). CWOX Sec. 4.1 gives a compound class
``C`` the probability and logit

    P(C | x) = sum_{c in C} P(c | x),        z_C(x) = log sum_{c in C} exp z_c(x),

so a cluster, the union of the other clusters, or "the rest of my cluster" are
explained exactly like a single class.

:func:`plan_targets` lists, for a mode (SWOX, CWOX-1sA/B, CWOX-2s), every target
each stage needs, deduplicated (with two clusters, the complement of one *is*
the other), so an explainer is asked once per stage for all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from cwox.online.modes import CLUSTER_SOURCES, MODES

from cwox.core.topk import TopKRule

#: A class id or a compound class (a frozenset of class ids, at least two of them).
Target = int | frozenset

STAGES = ("cluster", "class")


def as_target(value: int | Iterable[int]) -> Target:
    """Normalise ``value`` to a :data:`Target`: an int, or a frozenset of >= 2 ids.

    A one-member set becomes its int, so ``{281}`` and ``281`` are the same target.
    """
    if isinstance(value, bool):
        raise TypeError("a target is a class id or a set of class ids, not a bool")
    if isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, Iterable)):
        return int(value)
    members = frozenset(int(v) for v in value)
    if not members:
        raise ValueError("a compound target needs at least one class id")
    if len(members) == 1:
        return next(iter(members))
    return members


def members(target: Target) -> tuple[int, ...]:
    """The class ids of ``target``, sorted."""
    return (target,) if isinstance(target, int) else tuple(sorted(target))


def target_label(target: Target, class_names: Sequence[str] | None = None) -> str:
    """A readable name: ``"tabby"`` or ``"tiger cat + tabby"`` (ids without names)."""
    ids = members(target)
    if class_names is None:
        return "+".join(str(i) for i in ids)
    return " + ".join(class_names[i] for i in ids)


def membership_matrix(
    targets: Sequence[Target], n_classes: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``T x n_classes`` 0/1 float matrix: row t marks the members of target t."""
    m = torch.zeros(len(targets), n_classes, device=device)
    for t, target in enumerate(targets):
        ids = members(target)
        bad = [i for i in ids if not 0 <= i < n_classes]
        if bad:
            raise ValueError(f"target {target!r} has class ids {bad} outside 0..{n_classes - 1}")
        m[t, list(ids)] = 1.0
    return m


def target_probabilities(probs: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Probabilities ``... x T`` of the targets: sums over members (CWOX Sec. 4.1).

    ``probs`` is ``... x n_classes`` (softmax outputs); one matrix product serves
    every target of every row.
    """
    m = membership_matrix(targets, probs.shape[-1], probs.device).to(probs.dtype)
    return probs @ m.T


def target_logits(logits: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Logits ``... x T`` of the targets: ``z_C = log sum_{c in C} exp z_c`` (CWOX Sec. 4.1).

    For a single class this is its logit unchanged. Differentiable, so Grad-CAM
    back-propagates the compound logit directly.
    """
    m = membership_matrix(targets, logits.shape[-1], logits.device).bool()
    masked = logits.unsqueeze(-2).masked_fill(~m, float("-inf"))  # ... x T x C
    return torch.logsumexp(masked, dim=-1)


# --------------------------------------------------------------------------- top-K


def top_k(
    probs: torch.Tensor,
    k: int | None = 5,
    *,
    cum: float | None = None,
    max_k: int | None = None,
) -> tuple[list[int], list[float]]:
    """The top classes of one probability vector, most probable first.

    Either a fixed ``k``, or (``cum`` given) the smallest K whose cumulative
    probability exceeds ``cum`` (the paper's ``Cum(0.95)``, Sec. 5), capped at
    ``max_k`` (the paper uses ``K = min{5, Cum(0.95)}``). Give ``k`` or ``cum``,
    not both.
    """
    probs = torch.as_tensor(probs).detach().flatten().float().cpu()
    if cum is not None and k is not None:
        raise ValueError("give either k (a fixed top-K) or cum (a cumulative threshold), not both")
    if cum is None and k is None:
        raise ValueError("give k (a fixed top-K) or cum (a cumulative threshold)")
    if cum is None and max_k is not None:
        raise ValueError("max_k caps a cumulative top-K; use it with cum")
    # One rule for both stages (cwox.core.topk): the same K and the same tie-break as the documents.
    rule = TopKRule(k=None, cum=cum, max_k=probs.numel() if max_k is None else int(max_k)) \
        if cum is not None else TopKRule(k=int(k))  # type: ignore[arg-type]
    labels, values, kk = rule.apply(probs[None])
    n = int(kk[0])
    return [int(i) for i in labels[0, :n]], [float(v) for v in values[0, :n]]


# --------------------------------------------------------------------------- clusters


def cut_clusters(tree: nx.DiGraph | None, labels: Sequence[int], level: int = 1) -> list[list[int]]:
    """Confusion clusters of ``labels``: the tree restricted to them, cut at ``level``.

    CWOX Sec. 4 / Algorithm 1 steps 2-3, via :func:`cwox.hlta.tree.clusters`. A label
    without a leaf in the tree (e.g. an imported tree that omits it) becomes its
    own one-label cluster, as does every label when ``tree`` is None. Groups keep
    the order of ``labels`` and are ordered by their first member.
    """
    labels = [int(x) for x in labels]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels contain duplicates: {labels}")
    if tree is None:
        return [[lab] for lab in labels]
    from cwox.hlta.tree import clusters, leaf_id

    n_labels = int(tree.graph.get("n_labels", len(tree.graph.get("class_names", []))))
    present = [lab for lab in labels if 0 <= lab < n_labels and leaf_id(lab) in tree]
    groups = clusters(tree, present, level=level) if present else []
    first_of = {g[0]: g for g in groups}
    in_group = {lab for g in groups for lab in g}
    out: list[list[int]] = []
    for lab in labels:
        if lab in first_of:
            out.append(first_of[lab])
        elif lab not in in_group:
            out.append([lab])
    return out


def source_clusters(
    source: str,
    tree: nx.DiGraph | None,
    labels: Sequence[int],
    *,
    level: int = 1,
    seed: int = 0,
) -> list[list[int]]:
    """Confusion clusters of ``labels`` (most probable first) from a cluster source.

    The ablation "does the tree matter?" (:data:`cwox.online.modes.CLUSTER_SOURCES`):

    * ``"hlta"``: :func:`cut_clusters` of ``tree`` (the paper; an imported tree too);
    * ``"none"``: every class alone (no tree);
    * ``"random"``: the tree's cluster sizes, filled with a seeded random permutation of
      the labels. The generator is seeded with ``seed`` and the labels themselves, so a
      photo gets the same clusters in any process and in any order of photos;
    * ``"logits"``: the tree's cluster sizes, in the tree's order, filled with runs of
      labels adjacent in logit order (``labels`` come most probable first, and the
      softmax keeps the logits' order): Finer-CAM's "similar classes" as clusters.

    ``random`` and ``logits`` keep the sizes, so they ask as many in-cluster questions
    as the tree does; only which classes go together changes. Groups are ordered by
    their first member in ``labels``, as :func:`cut_clusters` orders them.
    """
    if source not in CLUSTER_SOURCES:
        raise ValueError(f"unknown cluster source {source!r}; choose one of {', '.join(CLUSTER_SOURCES)}")
    labels = [int(x) for x in labels]
    if source == "none":
        return [[lab] for lab in labels]
    groups = cut_clusters(tree, labels, level=level)
    if source == "hlta":
        return groups
    sizes = [len(g) for g in groups]
    if source == "random":
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, *labels])
        order = [labels[i] for i in rng.permutation(len(labels))]
    else:  # logits
        order = list(labels)
    out, start = [], 0
    for n in sizes:
        out.append(order[start:start + n])
        start += n
    rank = {lab: i for i, lab in enumerate(labels)}
    out = [sorted(g, key=rank.__getitem__) for g in out]
    return sorted(out, key=lambda g: rank[g[0]])


def nearest_logit_classes(probs: torch.Tensor, target: int, n: int) -> list[int]:
    """The ``n`` classes whose logits are nearest class ``target``'s (Finer-CAM's comparisons).

    ``probs`` is the softmax output; ``log p_c - log p_d = z_c - z_d``, so distances in
    log-probability are distances in logits. Ties go to the lower class id (stable).
    """
    logp = torch.as_tensor(probs).detach().flatten().double().cpu().clamp_min(1e-300).log()
    dist = (logp - logp[int(target)]).abs()
    dist[int(target)] = float("inf")
    order = torch.sort(dist, stable=True).indices
    return [int(i) for i in order[: int(n)]]


# --------------------------------------------------------------------------- plans


@dataclass
class TargetPlan:
    """Every target a mode needs, per explainer stage, and how maps combine.

    Attributes:
        mode: one of :data:`MODES`.
        classes: the top-K class ids.
        clusters: the confusion clusters (lists of ids from ``classes``).
        stage_targets: stage -> deduplicated targets to explain at that stage
            (``"cluster"``: coarse setup; ``"class"``: fine setup of CWOX-2s stage two).
        cluster_fact, cluster_foil: per cluster, the index of ``C_i`` and of
            ``C \\ C_i`` in ``stage_targets["cluster"]`` (foil None when I = 1).
            Empty for single-stage modes.
        class_stage: the stage whose maps give the class maps (``"class"`` for
            CWOX-2s; the standard ``"cluster"`` setup for SWOX and CWOX-1s).
        class_fact, class_foil: per class (order of ``classes``), the index of
            ``c`` and of its foil in ``stage_targets[class_stage]``; the foil is
            ``C_i \\ c`` (CWOX-2s, None when J_i = 1), ``C \\ c`` (CWOX-1s, None
            when K = 1), or None (SWOX).
        class_cluster: per class, the index of its cluster.
        class_comparisons: Finer-CAM only: per class, the indices in
            ``stage_targets["cluster"]`` of its nearest-logit comparison classes.
        gamma: Finer-CAM only: the weight of the comparison classes' mean map.
    """

    mode: str
    classes: list[int]
    clusters: list[list[int]]
    stage_targets: dict[str, list[Target]] = field(default_factory=dict)
    cluster_fact: list[int] = field(default_factory=list)
    cluster_foil: list[int | None] = field(default_factory=list)
    class_stage: str = "cluster"
    class_fact: list[int] = field(default_factory=list)
    class_foil: list[int | None] = field(default_factory=list)
    class_cluster: list[int] = field(default_factory=list)
    class_comparisons: list[list[int]] = field(default_factory=list)
    gamma: float = 1.0

    @property
    def n_targets(self) -> int:
        return sum(len(v) for v in self.stage_targets.values())

    def contrast_pairs(self) -> dict[str, list[tuple[Target, Target]]]:
        """Stage -> the (fact, foil) pairs a native contrast explainer is asked for.

        CWOX-2s: ``(C_i, C \\ C_i)`` at ``"cluster"`` (when I > 1) and
        ``(c, C_i \\ c)`` at ``"class"`` (when J_i > 1); CWOX-1sA: ``(c, C \\ c)``.
        Other modes have none. Pairs are in cluster / class order, skipping rows
        without a foil.
        """
        out: dict[str, list[tuple[Target, Target]]] = {}
        if self.mode not in ("cwox2s", "cwox1sa"):
            return out
        if self.mode == "cwox2s":
            clu = self.stage_targets.get("cluster", [])
            pairs = [(clu[f], clu[g]) for f, g in zip(self.cluster_fact, self.cluster_foil, strict=True) if g is not None]
            if pairs:
                out["cluster"] = pairs
        cls = self.stage_targets.get(self.class_stage, [])
        pairs = [(cls[f], cls[g]) for f, g in zip(self.class_fact, self.class_foil, strict=True) if g is not None]
        if pairs:
            out[self.class_stage] = pairs
        return out

    def base_targets(self, with_contrasts: bool = False) -> dict[str, list[Target]]:
        """Stage -> the targets whose base maps the mode's formula reads.

        Without native contrast maps: every target of :attr:`stage_targets`. With
        them (the contrast role), each pair of :meth:`contrast_pairs` has its map
        in place of ``H_fact - H_foil``, so neither base map of a pair is read
        (:func:`cwox.online.compose.compose`); only facts without a foil remain (the
        cluster of a one-cluster stage one, a class alone in its cluster).
        """
        if not with_contrasts:
            return {s: list(t) for s, t in self.stage_targets.items()}
        pairs = self.contrast_pairs()
        rows: dict[str, list[tuple[int, int | None]]] = {}
        if self.mode == "cwox2s":
            rows.setdefault("cluster", []).extend(zip(self.cluster_fact, self.cluster_foil, strict=True))
        rows.setdefault(self.class_stage, []).extend(zip(self.class_fact, self.class_foil, strict=True))
        out: dict[str, list[Target]] = {}
        for stage, targets in self.stage_targets.items():
            if stage not in pairs:
                out[stage] = list(targets)
                continue
            used = sorted({f for f, g in rows.get(stage, []) if g is None})
            out[stage] = [targets[i] for i in used]
        return out


def plan_targets(
    classes: Sequence[int],
    clusters: Sequence[Sequence[int]],
    mode: str = "cwox2s",
    *,
    comparisons: Mapping[int, Sequence[int]] | None = None,
    gamma: float = 1.0,
) -> TargetPlan:
    """The targets ``mode`` needs for these top classes and clusters.

    * ``swox``: ``H_c`` for each class.
    * ``cwox1sa`` / ``cwox1sb``: ``H_c`` and ``H_{C \\ c}`` (C = all top classes).
    * ``cwox2s``: stage one ``H_{C_i}`` and ``H_{C \\ C_i}`` (Eq. 1); stage two
      ``H_c`` and ``H_{C_i \\ c}`` (Eq. 2).
    * ``finercam``: ``H_c`` and ``H_d`` of each of ``comparisons[c]`` (single classes,
      :func:`nearest_logit_classes`), at the standard stage; ``gamma`` weighs their mean
      (:func:`cwox.online.compose.finercam`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "finercam" and comparisons is None:
        raise ValueError("Finer-CAM needs the comparison classes of every top class")
    classes = [int(c) for c in classes]
    clusters = [[int(c) for c in cl] for cl in clusters]
    if not classes:
        raise ValueError("no classes to explain")
    flat = [c for cl in clusters for c in cl]
    if sorted(flat) != sorted(classes) or len(set(flat)) != len(flat):
        raise ValueError(f"clusters {clusters} do not partition the classes {classes}")

    lists: dict[str, list[Target]] = {s: [] for s in STAGES}
    index: dict[str, dict[Target, int]] = {s: {} for s in STAGES}

    def need(stage: str, ids: Iterable[int]) -> int:
        t = as_target(ids)
        if t not in index[stage]:
            index[stage][t] = len(lists[stage])
            lists[stage].append(t)
        return index[stage][t]

    cluster_at = {c: i for i, cl in enumerate(clusters) for c in cl}
    plan = TargetPlan(mode=mode, classes=classes, clusters=clusters)
    plan.class_cluster = [cluster_at[c] for c in classes]
    everything = set(classes)

    if mode == "cwox2s":
        many = len(clusters) > 1
        for cl in clusters:
            plan.cluster_fact.append(need("cluster", cl))
            plan.cluster_foil.append(need("cluster", everything - set(cl)) if many else None)
        plan.class_stage = "class"
        for c in classes:
            own = clusters[cluster_at[c]]
            plan.class_fact.append(need("class", [c]))
            plan.class_foil.append(need("class", set(own) - {c}) if len(own) > 1 else None)
    elif mode == "finercam":
        plan.gamma = float(gamma)
        for c in classes:
            plan.class_fact.append(need("cluster", [c]))
            plan.class_foil.append(None)
        for c in classes:
            plan.class_comparisons.append([need("cluster", [int(d)]) for d in comparisons[c]])
    else:
        plan.class_stage = "cluster"
        for c in classes:
            plan.class_fact.append(need("cluster", [c]))
            rest = everything - {c}
            plan.class_foil.append(need("cluster", rest) if mode != "swox" and rest else None)
    plan.stage_targets = {s: v for s, v in lists.items() if v}
    return plan
