"""The whole-output modes' formulas: pure functions on stacks of maps.

Every function takes saliency maps as ``n x H x W`` tensors and returns new ones;
nothing here runs a model. Notation of the CWOX paper (Sec. 4.2 and 5): the top-K
classes ``C`` are split into clusters ``C_1 .. C_I``; cluster ``C_i`` has ``J_i``
classes; ``H_t`` is the base explainer's saliency map of target ``t`` (a class or
a compound class, Sec. 4.1).

* SWOX: ``H_c`` for each top class.
* CWOX-1sA: ``ReLU[H_c - H_{C \\ c}]`` (Sec. 5).
* CWOX-1sB: ``H_c`` times the "inverse" of ``H_{C \\ c}`` (SCOUT, Wang and
  Vasconcelos 2020), see :func:`cwox1sb` for the exact definition used.
* CWOX-2s: Eq. (1) for clusters and Eq. (2) for classes.
* Finer-CAM: ``ReLU[H_c - gamma * mean_d H_d]`` over c's nearest-logit classes d
  (:func:`finercam`).

Scale. A subtraction only means something when both maps are on the same scale.
The engine guarantees it: fact and foil maps come from the same explainer, the
same stage (same layer for Grad-CAM, the same masks for RISE), the same passes;
compound targets use the logsumexp logit (Grad-CAM: a probability-weighted mean
of member gradients, same scale as one class) or the summed probability (RISE: a
probability, same scale as one class). Explainers whose raw maps are dominated by
the target's overall probability (RISE) are additionally min-max normalised per
map before composing (:func:`normalize_maps`), as the CWOX public code does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from cwox.online.targets import TargetPlan

NORMALIZATIONS = ("none", "minmax", "max")


def _check_stack(name: str, maps: torch.Tensor) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"{name} must be an n x H x W tensor, got {shape}")


def _check_same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    _check_stack(name_a, a)
    _check_stack(name_b, b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} differ in shape")


def normalize_maps(maps: torch.Tensor, how: str = "minmax") -> torch.Tensor:
    """Per-map rescaling of an ``n x H x W`` stack.

    ``"minmax"``: ``(H - min H) / (max H - min H)`` into [0, 1] (a constant map
    becomes 0); ``"max"``: ``H / max |H|`` (keeps the sign and zero); ``"none"``.
    """
    _check_stack("maps", maps)
    if how == "none":
        return maps
    flat = maps.flatten(1)
    if how == "minmax":
        lo = flat.min(dim=1).values.view(-1, 1, 1)
        span = (flat.max(dim=1).values.view(-1, 1, 1) - lo)
        return torch.where(span > 0, (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    if how == "max":
        top = flat.abs().max(dim=1).values.view(-1, 1, 1)
        return torch.where(top > 0, maps / top.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    raise ValueError(f"unknown normalisation {how!r}; choose one of {', '.join(NORMALIZATIONS)}")


def support_mask(maps: torch.Tensor, percentile: float = 0.0) -> torch.Tensor:
    """``supp(H, eps)`` of each map of an ``n x H x W`` stack, as a 0/1 float mask.

    A pixel is in the support when ``H(x) > 0`` and ``H(x) >= eps``, with ``eps``
    the ``percentile``-th percentile of that map's values (linear interpolation,
    as ``numpy.percentile``). With ``percentile=0`` this is the plain support of
    a ReLU'd map, ``H(x) > 0`` (the ``supp(Ĥ)`` of Eq. 2); a higher percentile keeps
    only the strongest part of the cluster's evidence (the ``supp(Ĥ, eps)`` of
    Eq. 2). The paper leaves eps open in our copy; the CWOX public code
    thresholds the cluster map at a percentile (50 for Grad-CAM, 70 for RISE in
    its examples) and uses the same threshold in both cases of Eq. 2, as we do.
    """
    _check_stack("maps", maps)
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"support percentile must be in [0, 100], got {percentile}")
    flat = maps.flatten(1).float()
    eps = torch.quantile(flat, float(percentile) / 100.0, dim=1).view(-1, 1, 1).to(maps.dtype)
    return ((maps > 0) & (maps >= eps)).to(maps.dtype)


def contrast(fact: torch.Tensor, foil: torch.Tensor) -> torch.Tensor:
    """``ReLU[H_fact - H_foil]``: evidence for the fact rather than the foil."""
    _check_same("fact", fact, "foil", foil)
    return torch.relu(fact - foil)


# --------------------------------------------------------------------------- one stage


def swox(class_maps: torch.Tensor) -> torch.Tensor:
    """SWOX: the plain saliency map ``H_c`` of every top class (Sec. 5)."""
    _check_stack("class_maps", class_maps)
    return class_maps.clone()


def cwox1sa(class_maps: torch.Tensor, rest_maps: torch.Tensor | None) -> torch.Tensor:
    """CWOX-1sA: ``ReLU[H_c - H_{C \\ c}]`` with ``C`` all top classes (Sec. 5).

    ``rest_maps[k]`` is the map of the compound class of all top classes but
    ``classes[k]``. With K = 1 there is no foil (``rest_maps=None``) and the map
    is ``H_c`` itself, as Eq. (1) does for I = 1.
    """
    _check_stack("class_maps", class_maps)
    if rest_maps is None:
        return class_maps.clone()
    return contrast(class_maps, rest_maps)


def cwox1sb(class_maps: torch.Tensor, rest_maps: torch.Tensor | None) -> torch.Tensor:
    """CWOX-1sB (SCOUT-style): ``N(H_c) * (1 - N(H_{C \\ c}))``.

    ``N`` is the per-map min-max normalisation into [0, 1]
    (:func:`normalize_maps`), so ``1 - N(H)`` is the "inverse" of a map: 1 where
    the foil has no evidence, 0 where it has its strongest. The product is high
    where the fact has evidence and the foil has little. With K = 1 the map is
    ``N(H_c)``.
    """
    _check_stack("class_maps", class_maps)
    fact = normalize_maps(class_maps, "minmax")
    if rest_maps is None:
        return fact
    _check_same("class_maps", class_maps, "rest_maps", rest_maps)
    return fact * (1.0 - normalize_maps(rest_maps, "minmax"))


def finercam(class_maps: torch.Tensor, comparison_maps: list[torch.Tensor], gamma: float = 1.0) -> torch.Tensor:
    """Finer-CAM (Zhang et al., CVPR 2025): ``ReLU[H_c - gamma * mean_{d in D(c)} H_d]``.

    Finer-CAM explains the score ``y_c - gamma * mean_{d in D(c)} y_d`` with ``D(c)`` the
    classes whose logits are nearest ``y_c``. Grad-CAM is linear in the score's gradient
    (``alpha`` is a mean of gradients and the map is ``sum_k alpha_k A_k``, signed here),
    and so is RISE in the score, so explaining that score equals combining the classes'
    maps: the map is ``H_c - gamma * mean_d H_d`` before the ReLU every CAM ends with.
    (With the engine's min-max normalisation of RISE maps the equality is up to each
    map's scale.)

    Args:
        class_maps: ``K x H x W``, ``H_c`` per top class.
        comparison_maps: per top class, its ``|D(c)| x H x W`` comparison maps (an
            empty stack leaves ``H_c``).
        gamma: the comparison weight (Finer-CAM's alpha; 1 in its library default).
    """
    _check_stack("class_maps", class_maps)
    if len(comparison_maps) != class_maps.shape[0]:
        raise ValueError(f"{len(comparison_maps)} comparison stacks for {class_maps.shape[0]} class maps")
    out = []
    for fact, others in zip(class_maps, comparison_maps, strict=True):
        if others.shape[0] == 0:
            out.append(torch.relu(fact))
            continue
        _check_same("class map", fact[None], "comparison map", others[:1])
        out.append(torch.relu(fact - float(gamma) * others.mean(dim=0)))
    return torch.stack(out)


# --------------------------------------------------------------------------- CWOX-2s


def cwox2s_cluster_maps(
    cluster_maps: torch.Tensor,
    complement_maps: torch.Tensor | None = None,
    *,
    differences: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (1): ``Ĥ_{C_i} = ReLU[H_{C_i} - H_{C \\ C_i}]`` if I > 1, ``H_{C_i}`` if I = 1.

    Args:
        cluster_maps: ``I x H x W``, the map of each cluster as a compound class.
        complement_maps: ``I x H x W``, the map of the union of the other
            clusters (as one compound class, as the paper writes; the public
            code instead sums the other clusters' separate maps). Ignored when I = 1.
        differences: optional ``I x H x W`` native "C_i rather than C \\ C_i"
            maps from a contrast explainer, used instead of the subtraction.
    """
    _check_stack("cluster_maps", cluster_maps)
    if cluster_maps.shape[0] == 1:
        return cluster_maps.clone()
    if differences is not None:
        _check_same("cluster_maps", cluster_maps, "differences", differences)
        return torch.relu(differences)
    if complement_maps is None:
        raise ValueError("Eq. (1) with I > 1 clusters needs the complement maps H_{C \\ C_i}")
    return contrast(cluster_maps, complement_maps)


def cwox2s_class_maps(
    cluster_hat: torch.Tensor,
    class_maps: torch.Tensor,
    rest_maps: torch.Tensor | None,
    class_cluster: list[int] | torch.Tensor,
    *,
    support: float = 0.0,
    differences: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (2): contrast each class against the rest of its cluster, inside the cluster's support.

    ``Ĥ_c = supp(Ĥ_{C_i}, eps) x ReLU[H_c - H_{C_i \\ c}]`` if J_i > 1, and
    ``supp(Ĥ_{C_i}, eps) x H_c`` if J_i = 1.

    Paper vs public code: the CWOX public code draws no class map for a
    one-class cluster when there are several clusters (the cluster map stands
    for it); we follow the paper's Eq. (2) and give it ``supp x H_c``. Its
    ``H_{C_i \\ c}`` is the rest of the cluster as one compound class here (the
    paper), where the public code sums the other classes' separate maps
    against ``(J_i - 1) H_c``.

    Args:
        cluster_hat: ``I x H x W``, the Eq. (1) maps.
        class_maps: ``K x H x W``, ``H_c`` per class.
        rest_maps: ``K x H x W``, ``H_{C_i \\ c}`` per class (rows of classes
            alone in their cluster are ignored; None when every cluster is a singleton).
        class_cluster: length K, the cluster index of each class.
        support: the support percentile (see :func:`support_mask`).
        differences: optional ``K x H x W`` native contrast maps replacing
            ``H_c - H_{C_i \\ c}`` (rows of singletons ignored).
    """
    _check_stack("cluster_hat", cluster_hat)
    _check_stack("class_maps", class_maps)
    idx = torch.as_tensor(class_cluster, dtype=torch.long, device=class_maps.device)
    if idx.shape != (class_maps.shape[0],):
        raise ValueError(f"class_cluster needs one cluster index per class map ({class_maps.shape[0]})")
    if idx.numel() and (idx.min() < 0 or idx.max() >= cluster_hat.shape[0]):
        raise ValueError("class_cluster holds an index outside the cluster maps")
    if cluster_hat.shape[1:] != class_maps.shape[1:]:
        raise ValueError(f"cluster maps {tuple(cluster_hat.shape)} and class maps {tuple(class_maps.shape)} differ in size")
    sizes = torch.bincount(idx, minlength=cluster_hat.shape[0])
    alone = (sizes[idx] == 1).view(-1, 1, 1)
    supp = support_mask(cluster_hat, support)[idx]
    if differences is not None:
        _check_same("class_maps", class_maps, "differences", differences)
        contrasted = torch.relu(differences)
    elif bool(alone.all()):
        contrasted = class_maps
    else:
        if rest_maps is None:
            raise ValueError("Eq. (2) with J_i > 1 needs the in-cluster rest maps H_{C_i \\ c}")
        _check_same("class_maps", class_maps, "rest_maps", rest_maps)
        contrasted = torch.relu(class_maps - rest_maps)
    return supp * torch.where(alone, class_maps, contrasted)


def cwox2s(
    cluster_maps: torch.Tensor,
    complement_maps: torch.Tensor | None,
    class_maps: torch.Tensor,
    rest_maps: torch.Tensor | None,
    class_cluster: list[int] | torch.Tensor,
    *,
    support: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CWOX-2s (Algorithm 1, steps 4-5): Eq. (1) then Eq. (2); returns (cluster maps, class maps)."""
    hat = cwox2s_cluster_maps(cluster_maps, complement_maps)
    return hat, cwox2s_class_maps(hat, class_maps, rest_maps, class_cluster, support=support)


# --------------------------------------------------------------------------- plans


def _pick(maps: torch.Tensor, index: list[int | None], like: list[int]) -> torch.Tensor | None:
    """Rows ``maps[index]``; entries that are None take the row of ``like`` (ignored later)."""
    if all(i is None for i in index):
        return None
    rows = [i if i is not None else j for i, j in zip(index, like, strict=True)]
    return maps[torch.as_tensor(rows, dtype=torch.long, device=maps.device)]


def _differences(
    fact: torch.Tensor, foils: list[int | None], pair_maps: torch.Tensor | None
) -> torch.Tensor | None:
    """Native contrast maps spread over the rows that have a foil (zeros elsewhere)."""
    if pair_maps is None:
        return None
    rows = [k for k, g in enumerate(foils) if g is not None]
    if pair_maps.shape[0] != len(rows) or pair_maps.shape[1:] != fact.shape[1:]:
        raise ValueError(f"{pair_maps.shape[0]} contrast maps for {len(rows)} (fact, foil) pairs")
    out = torch.zeros_like(fact)
    out[torch.as_tensor(rows, dtype=torch.long, device=fact.device)] = pair_maps.to(fact.dtype)
    return out


def compose(
    plan: TargetPlan,
    maps: Mapping[str, torch.Tensor],
    *,
    support: float = 0.0,
    contrasts: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Apply ``plan.mode``'s formula to the base maps of every stage.

    ``maps[stage]`` holds one map per target of ``plan.stage_targets[stage]``.
    ``contrasts[stage]`` (optional, from an explainer's native contrast role)
    holds one "fact rather than foil" map per pair of
    :meth:`TargetPlan.contrast_pairs`, used instead of the subtractions.
    Returns ``(cluster_maps or None, class_maps)``: ``I x H x W`` (CWOX-2s only)
    and ``K x H x W`` in the order of ``plan.classes``.
    """
    for stage, targets in plan.stage_targets.items():
        if stage not in maps:
            raise ValueError(f"no maps for stage {stage!r}")
        if maps[stage].shape[0] != len(targets):
            raise ValueError(f"stage {stage!r} has {maps[stage].shape[0]} maps for {len(targets)} targets")
    contrasts = contrasts or {}
    cls = maps[plan.class_stage]
    fact = cls[torch.as_tensor(plan.class_fact, dtype=torch.long, device=cls.device)]
    foil = _pick(cls, plan.class_foil, plan.class_fact)
    class_diff = _differences(fact, plan.class_foil, contrasts.get(plan.class_stage))
    if plan.mode == "swox":
        return None, swox(fact)
    if plan.mode == "cwox1sa":
        if class_diff is not None and foil is not None:
            return None, torch.relu(class_diff)
        return None, cwox1sa(fact, foil)
    if plan.mode == "cwox1sb":
        return None, cwox1sb(fact, foil)
    if plan.mode == "finercam":
        rows = [torch.as_tensor(r, dtype=torch.long, device=cls.device) for r in plan.class_comparisons]
        return None, finercam(fact, [cls[r] for r in rows], plan.gamma)
    if plan.mode == "cwox2s":
        clu = maps["cluster"]
        cfact = clu[torch.as_tensor(plan.cluster_fact, dtype=torch.long, device=clu.device)]
        cfoil = _pick(clu, plan.cluster_foil, plan.cluster_fact)
        cluster_diff = _differences(cfact, plan.cluster_foil, contrasts.get("cluster"))
        hat = cwox2s_cluster_maps(cfact, cfoil, differences=cluster_diff)
        return hat, cwox2s_class_maps(
            hat, fact, foil, plan.class_cluster, support=support, differences=class_diff
        )
    raise ValueError(f"unknown mode {plan.mode!r}")
