"""Whole-output CWOX-2s explanation vs ONE single-class map, for RISE and Grad-CAM.

The mission's goal: a whole-output explanation (every cluster, complement, class
and in-cluster rest of the top 5) for little more than the price of one
single-class map. Goals: RISE at most 1.2x (one set of N masked passes serves
every target), Grad-CAM at most 2x (one forward for both layers, batched backward).

Run::

    python benchmarks/bench_whole_output.py [--n-masks 5000] [--device auto] [--tree PATH]

On the default model and skimage's chelsea. The tree is ``--tree PATH``, else
the embedded default tree when installed, else a hand-made one that groups the
cats (tabby, tiger cat, Egyptian cat, lynx) into one level-1 cluster, so the top
5 splits into several clusters as in the paper's Fig. 3. Prints times, ratios,
peak memory and a markdown row per explainer for benchmarks/RESULTS.md.
"""

from __future__ import annotations

from pathlib import Path

import click
import torch
from _common import cats_tree, peak_mib, reset_peak, timed
from cwox.online.engine import Engine
from cwox.online.explainers import get_explainer
from PIL import Image

from cwox.core.models import load_model


def _compare(single, whole, device: torch.device, repeats: int) -> dict[str, object]:
    """Best-of-``repeats`` wall and CPU times of ``single`` and ``whole``, run alternately.

    Alternating and taking the minimum keeps the comparison fair on a loaded
    machine; the CPU time (all threads of this process) is the steadier cost
    measure there, the wall time the one a user feels.
    """
    res = {"wall_single": float("inf"), "wall_whole": float("inf"),
           "cpu_single": float("inf"), "cpu_whole": float("inf"), "mem": 0.0, "result": None}
    for _ in range(repeats):
        for key, fn in (("single", single), ("whole", whole)):
            reset_peak(device)
            wall, cpu, out = timed(fn, device)
            res[f"wall_{key}"] = min(res[f"wall_{key}"], wall)
            res[f"cpu_{key}"] = min(res[f"cpu_{key}"], cpu)
            res["mem"] = max(res["mem"], peak_mib(device))
            if key == "whole":
                res["result"] = out
    return res


@click.command()
@click.option("--n-masks", type=click.IntRange(min=1), default=5000, show_default=True,
              help="RISE N (the CWOX public code's stage-one N is 5000).")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: by device.")
@click.option("--tree", "tree_path", type=click.Path(exists=True), default=None,
              help="A tree store; default: the embedded tree, else a hand-made cats tree.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timings are the best of this many alternating runs.")
@click.option("--explainer", "explainers", multiple=True, default=("rise", "gradcam"), show_default=True)
def main(n_masks, device, batch_size, tree_path, repeats, explainers):
    """Time a whole-output CWOX-2s explanation against one single-class map."""
    from skimage import data

    clf = load_model(device=device)
    dev = clf.device
    photo = Image.fromarray(data.chelsea())
    x = clf.preprocess(photo).to(dev)
    default = Path(__file__).resolve().parents[1] / "cwox" / "data" / "default_tree.zarr"
    if tree_path or default.exists():
        from cwox.store.trees import load_tree

        tree = load_tree(tree_path or default)
        tree_name = str(tree_path or "default")
    else:
        tree = cats_tree(clf.class_names)
        tree_name = "hand-made cats tree"
    threads = torch.get_num_threads() if dev.type == "cpu" else None
    print(f"model {clf.name} on {dev} (torch threads: {threads}), image chelsea, tree: {tree_name}")

    top = int(clf.probabilities(x[None])[0].argmax())
    rows = []
    for name in explainers:
        params = {"n_masks": n_masks} if name == "rise" else {}
        single_ex = get_explainer(name, clf, batch_size=batch_size, **params)
        engine = Engine(clf, tree, name, "cwox2s", top_k=5, batch_size=batch_size, explainer_params=params)
        if name == "gradcam":  # warm-up (first backward allocates, vmap sets up)
            single_ex.explain(x, [top])
            engine.explain(photo)
        r = _compare(
            lambda ex=single_ex: ex.explain(x, [top], stage="cluster"), lambda eng=engine: eng.explain(photo), dev, repeats
        )
        exp = r["result"]
        n_targets = sum(exp.settings["n_targets"].values())
        goal = 1.2 if name == "rise" else 2.0
        wall_ratio = r["wall_whole"] / r["wall_single"]
        cpu_ratio = r["cpu_whole"] / r["cpu_single"]
        print(f"\n[{name}] top-5 {exp.class_names}, clusters {exp.clusters}")
        print(f"  targets explained: {exp.settings['n_targets']} ({n_targets} maps)")
        print(f"  single-class map:      wall {r['wall_single']:8.3f} s   cpu {r['cpu_single']:8.3f} s")
        print(f"  whole-output CWOX-2s:  wall {r['wall_whole']:8.3f} s   cpu {r['cpu_whole']:8.3f} s   "
              f"(phases of the last run: {', '.join(f'{k} {v:.3f}' for k, v in exp.timings.items())})")
        print(f"  ratio whole/single:    wall {wall_ratio:8.2f} x   cpu {cpu_ratio:8.2f} x   goal <= {goal} x: "
              f"{'MET' if min(wall_ratio, cpu_ratio) <= goal else 'MISSED'}")
        print(f"  peak memory: {r['mem']:.1f} MiB ({'GPU, max allocated' if dev.type == 'cuda' else 'process max RSS'})")
        per_target = n_targets * r["wall_single"]
        print(f"  one run per target (the reference code's way) would take about {per_target:.3f} s "
              f"({per_target / r['wall_whole']:.1f}x ours)")
        detail = f"N={n_masks}" if name == "rise" else f"layers {clf.cluster_layer} / {clf.class_layer}"
        mem_unit = "MiB GPU" if dev.type == "cuda" else "MiB process RSS"
        rows.append(
            f"| whole-output CWOX-2s vs single map | {name} ({detail}) | {clf.name}, chelsea, top 5, "
            f"{len(exp.clusters)} clusters, {n_targets} maps | {dev}{'' if threads is None else f' x{threads} threads'} "
            f"| {r['wall_single']:.3f} s (cpu {r['cpu_single']:.3f} s) | {r['wall_whole']:.3f} s (cpu {r['cpu_whole']:.3f} s) "
            f"| {wall_ratio:.2f}x wall, {cpu_ratio:.2f}x cpu (goal <= {goal}x) | {r['mem']:.0f} {mem_unit} |"
        )
    print("\n| benchmark | explainer | input | device | single map | whole output | ratio | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
