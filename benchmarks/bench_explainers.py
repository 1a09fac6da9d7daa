"""Every registered explainer: a whole-output CWOX-2s explanation against ONE map, per role.

For each explainer (``gradcam``, ``rise``, ``cce``, ``suny``, ``fgvce``: those
registered when it runs), on the default model and skimage's chelsea, with a
hand-made tree that puts the cats (tabby, tiger cat, Egyptian cat, lynx) in one
level-1 cluster, one row per role the explainer has:

* base role: a fresh :class:`cwox.online.engine.Engine` in ``cwox2s`` mode with
  ``role="base"`` (every cluster, complement, class and in-cluster rest, composed
  by Eq. 1-2) against a fresh explainer's ONE single-class base map,
  ``explain(x, [top-1 class], stage="cluster")``;
* contrast role (CCE, SUNY, FG-VCE): the engine with ``role="contrast"`` (every
  "P rather than Q" pair of CWOX-2s as a native contrast map, plus the few base
  maps Eq. 1-2 still read) against ONE native contrast map, ``contrast(x, [the
  plan's first pair])`` at that pair's stage (one "why P rather than Q" question).

FG-VCE's contrast role needs a reference bank: unless ``-p fgvce.reference_bank=PATH``
is given, one is built (untimed) from crops of skimage's chelsea and coffee, as
the tests do; a contrast whose foil has no image in the bank uses every candidate.

Goals (issue 5): at most 1.5x for SUNY and FG-VCE. Each (explainer, role) runs
in its own child process, so the peak memory (``resource.getrusage`` max RSS; on
CUDA also the allocator's peak) is its own. Fresh explainers for every timed
call: no cache carries over.

Run::

    python benchmarks/bench_explainers.py                      # paper defaults (slow on a CPU)
    python benchmarks/bench_explainers.py --small              # reduced settings, minutes on a CPU
    python benchmarks/bench_explainers.py -e suny -p suny.n_causes=5 -p suny.layer=_blocks.14
    python benchmarks/bench_explainers.py -e fgvce --role contrast

Prints one block per (explainer, role) and a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import click
import torch
from _common import cats_tree, peak_rss_mib, timed
from PIL import Image

from cwox.commands.common import parse_params

#: The five explainers of the mission, in the table's order.
EXPLAINERS = ("gradcam", "rise", "cce", "suny", "fgvce")

#: ``--small``: settings that run in minutes on a CPU (stated in the table).
SMALL: dict[str, dict[str, Any]] = {
    "gradcam": {},
    "rise": {"n_masks": 300},
    "cce": {"iterations": 5, "n_counterfactuals": 2, "n_noise": 2},
    "suny": {"layer": "_blocks.14", "n_causes": 5, "n_samples": 3},
    "fgvce": {"max_steps": 10},
}

#: Goals on the whole/single ratio, where the brief states one.
GOALS = {"suny": 1.5, "fgvce": 1.5}


def has_contrast(name: str) -> bool:
    """Whether the explainer has a native contrast role (FG-VCE: given a reference bank)."""
    from cwox.online.explainers import explainer_class

    return bool(explainer_class(name).supports_contrast)


def run_one(
    name: str, role: str, params: dict[str, Any], device: str, batch_size: int | None, repeats: int
) -> dict[str, Any]:
    """Time one explainer in one role (called in a child process); returns the figures as a dict."""
    from cwox.online.diagnostics import question_text
    from cwox.online.engine import Engine
    from cwox.online.explainers import get_explainer
    from cwox.online.explainers.fgvce import FGVCE_KEY
    from cwox.online.targets import cut_clusters, plan_targets, top_k
    from cwox.pipelines.photos import photo_crop_bank
    from skimage import data

    from cwox.core.models import load_model

    clf = load_model(device=device)
    dev = clf.device
    photo = Image.fromarray(data.chelsea())
    x = clf.preprocess(photo).to(dev)
    probs = clf.probabilities(x[None])[0]
    top = int(probs.argmax())
    tree = cats_tree(clf.class_names)
    shown = dict(params)
    if name == "fgvce" and role == "contrast" and "reference_bank" not in params:
        bank = photo_crop_bank(clf)
        params = {**params, "reference_bank": bank}
        shown["reference_bank"] = f"bench bank ({len(bank)} candidates, classes {sorted(bank.per_class_counts())})"
    if batch_size is not None:
        params = {**params, "batch_size": batch_size}
    classes, _ = top_k(probs, 5)
    plan = plan_targets(classes, cut_clusters(tree, classes), "cwox2s")
    pairs = plan.contrast_pairs()
    if role == "contrast":
        stage = "cluster" if "cluster" in pairs else "class"
        pair = pairs[stage][0]
        single_what = f"contrast({_fmt(pair[0])} rather than {_fmt(pair[1])}, stage={stage})"

        def single(ex):
            return ex.contrast(x, [pair], stage=stage)
    else:
        single_what = f"explain([{top}], stage=cluster)"

        def single(ex):
            return ex.explain(x, [top], stage="cluster")
    if name == "gradcam":  # warm-up: the first backward allocates and sets up vmap
        get_explainer(name, clf, **params).explain(x, [top])
    best = {"single": (float("inf"), float("inf")), "whole": (float("inf"), float("inf"))}
    exp = None
    for _ in range(repeats):
        single_ex = get_explainer(name, clf, **params)
        wall, cpu, _maps = timed(lambda ex=single_ex: single(ex), dev)
        best["single"] = (min(best["single"][0], wall), min(best["single"][1], cpu))
        engine = Engine(clf, tree, get_explainer(name, clf, **params), "cwox2s", top_k=5, role=role)
        wall, cpu, exp = timed(lambda eng=engine: eng.explain(photo), dev)
        best["whole"] = (min(best["whole"][0], wall), min(best["whole"][1], cpu))
    assert exp is not None
    class_stage = None
    layers = getattr(single_ex, "layers", {})
    # Stage two on another layer (Grad-CAM's and FG-VCE's finer class layer) has another
    # cost: time one map of that stage too.
    if role == "base" and layers.get("class") != layers.get("cluster"):
        best_class = (float("inf"), float("inf"))
        for _ in range(repeats):
            ex = get_explainer(name, clf, **params)
            wall, cpu, _maps = timed(lambda ex=ex: ex.explain(x, [top], stage="class"), dev)
            best_class = (min(best_class[0], wall), min(best_class[1], cpu))
        class_stage = {"wall": best_class[0], "cpu": best_class[1], "passes": getattr(ex, "forward_passes", None)}
    passes = getattr(engine.explainer, "forward_passes", None)
    single_passes = getattr(single_ex, "forward_passes", None)
    return {
        "name": name,
        "role": role,
        "params": shown,
        "device": str(dev),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "classes": exp.class_names,
        "clusters": exp.clusters,
        "single_what": single_what,
        "n_targets": exp.settings.get("n_targets", {}),
        "n_base_maps": exp.settings.get("n_base_maps", {}),
        "n_pairs": {s: len(p) for s, p in pairs.items()} if role == "contrast" else {},
        "wall_single": best["single"][0],
        "cpu_single": best["single"][1],
        "wall_whole": best["whole"][0],
        "cpu_whole": best["whole"][1],
        "class_stage": class_stage,
        "passes_single": single_passes,
        "passes_whole": passes,
        "timings": exp.timings,
        # What each native contrast question did (FG-VCE's loops: steps, flipped, pool).
        "questions": [
            {"question": question_text(r), "stage": r["stage"], "steps": r["steps"], "flipped": r["flipped"],
             "pool": r["pool"]}
            for r in exp.diagnostics.get(FGVCE_KEY, [])
        ],
        "rss_mib": peak_rss_mib(),
        "cuda_peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
    }


def _fmt(target) -> str:
    return str(target) if isinstance(target, int) else "{" + ", ".join(map(str, sorted(target))) + "}"


def _report(r: dict[str, Any]) -> str:
    """Print one (explainer, role) block; return its markdown row."""
    name, role = r["name"], r["role"]
    goal = GOALS.get(name)
    wall_ratio = r["wall_whole"] / r["wall_single"]
    cpu_ratio = r["cpu_whole"] / r["cpu_single"]
    n_maps = sum(r["n_targets"].values())
    n_base = sum(r["n_base_maps"].values())
    n_pairs = sum(r["n_pairs"].values())
    verdict = "" if goal is None else f"  goal <= {goal}x: {'MET' if min(wall_ratio, cpu_ratio) <= goal else 'MISSED'}"
    print(f"\n[{name}, {role} role] {r['params'] or 'defaults'}")
    print(f"  top-5 {r['classes']}, clusters {r['clusters']}")
    if role == "contrast":
        print(f"  whole output: {n_pairs} native contrast maps {r['n_pairs']} + {n_base} base maps {r['n_base_maps']}")
    else:
        print(f"  whole output: {n_maps} base maps {r['n_targets']}")
    print(f"  one map: {r['single_what']}")
    print(f"  one map:              wall {r['wall_single']:9.3f} s   cpu {r['cpu_single']:9.3f} s")
    print(f"  whole-output CWOX-2s: wall {r['wall_whole']:9.3f} s   cpu {r['cpu_whole']:9.3f} s")
    print(f"  ratio whole/one:      wall {wall_ratio:9.2f} x   cpu {cpu_ratio:9.2f} x{verdict}")
    cs = r.get("class_stage")
    if cs:
        print(f"  one map, class stage: wall {cs['wall']:9.3f} s   cpu {cs['cpu']:9.3f} s   "
              f"(whole / this: {r['wall_whole'] / cs['wall']:.2f}x wall, {r['cpu_whole'] / cs['cpu']:.2f}x cpu"
              + ("" if cs["passes"] is None else f"; {cs['passes']} passes") + ")")
    if r["passes_single"] is not None:
        print(f"  forward passes:       one map {r['passes_single']}, whole {r['passes_whole']}")
    for q in r.get("questions", []):
        print(f"  question ({q['stage']}) {q['question']}: {q['steps']} steps, "
              f"{'flipped' if q['flipped'] else 'did not flip'}, candidates from {q['pool']}")
    mem = f"{r['rss_mib']:.0f} MiB RSS" + ("" if r["cuda_peak_mib"] is None else f", {r['cuda_peak_mib']:.0f} MiB GPU")
    print(f"  peak memory: {mem}")
    settings = ", ".join(
        f"{k}={v}" for k, v in r["params"].items() if k not in ("batch_size", "reference_bank")
    ) or "paper defaults"
    maps = f"{n_pairs} contrast + {n_base} base" if role == "contrast" else f"{n_maps} base"
    passes = "" if r["passes_single"] is None else f" ({r['passes_single']} / {r['passes_whole']} passes)"
    if cs:
        passes += (f"; vs the class-stage map ({cs['wall']:.2f} s, cpu {cs['cpu']:.2f} s): "
                   f"{r['wall_whole'] / cs['wall']:.2f}x wall, {r['cpu_whole'] / cs['cpu']:.2f}x cpu")
    return (
        f"| {name} | {role} | {settings} | {maps} "
        f"| {r['wall_single']:.2f} s (cpu {r['cpu_single']:.2f} s) | {r['wall_whole']:.2f} s (cpu {r['cpu_whole']:.2f} s)"
        f" | {wall_ratio:.2f}x wall, {cpu_ratio:.2f}x cpu{passes} | {'-' if goal is None else f'<= {goal}x'} | {mem} |"
    )


@click.command()
@click.option("--explainer", "-e", "names", multiple=True, help="Explainers to time (default: all registered).")
@click.option("--small", is_flag=True, help="Reduced settings (see SMALL in this file) that run in minutes on a CPU.")
@click.option("--param", "-p", "items", multiple=True, help="EXPLAINER.KEY=VALUE, e.g. suny.n_causes=5 (repeatable).")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: by device.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Timings are the best of this many runs.")
@click.option("--timeout", type=click.IntRange(min=1), default=3600, show_default=True,
              help="Seconds allowed per explainer.")
@click.option("--role", "roles", multiple=True, type=click.Choice(["base", "contrast"]),
              help="Roles to time (default: base, and contrast where the explainer has one).")
@click.option("--one", hidden=True, default=None)
@click.option("--one-role", hidden=True, default="base")
@click.option("--params-json", hidden=True, default="{}")
def main(names, small, items, device, batch_size, repeats, timeout, roles, one, one_role, params_json):
    """Time a whole-output CWOX-2s explanation against one single-class map, per explainer."""
    if one is not None:  # child process: one explainer, figures as one JSON line
        print("RESULT " + json.dumps(run_one(one, one_role, json.loads(params_json), device, batch_size, repeats)))
        return
    from cwox.online.explainers import available_explainers

    known = available_explainers()
    names = names or tuple(n for n in EXPLAINERS if n in known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.BadParameter(f"unknown explainers {unknown}; registered: {known}")
    extra = parse_params(items)
    print(f"explainers: {', '.join(names)}; settings: {'small' if small else 'paper defaults'}; device {device}")
    rows = []
    for name in names:
        params = {**(SMALL.get(name, {}) if small else {}), **extra.get(name, {})}
        for role in roles or ("base", "contrast"):
            if role == "contrast" and not has_contrast(name):
                continue
            label = f"{name}, {role} role"
            cmd = [sys.executable, __file__, "--one", name, "--one-role", role, "--params-json", json.dumps(params),
                   "--device", device, "--repeats", str(repeats)] + (["--batch-size", str(batch_size)] if batch_size else [])
            shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "paper defaults"
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"\n[{label}] timed out after {timeout} s")
                rows.append(f"| {name} | {role} | {shown} | - | - | - | timed out ({timeout} s) | - | - |")
                continue
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"\n[{label}] failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
                rows.append(f"| {name} | {role} | {shown} | - | - | - | failed | - | - |")
                continue
            rows.append(_report(json.loads(line[len("RESULT "):])))
    print("\n| explainer | role | settings | maps (whole output) | one map | whole output (CWOX-2s, top 5) "
          "| ratio (forward passes one / whole) | goal | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
