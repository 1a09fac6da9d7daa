"""Benchmark: ``cwox evaluate``'s scoring in one metrics call per photo against one call per pair.

``score_explanations`` scores all of a photo's (pair, mode) maps in one
``contrastive_scores`` call, each pair's CAUC summed over its own smallest ``n_delta``
(``n_delta`` given per heatmap). Before, it made one call per pair (``n_delta="min"``).
Both ways on the same explanations, side by side: forward passes (counted on the model),
time (best of two alternating runs) and the largest difference of the scores.

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluate_calls.py LIST.txt [--limit 6] [--explainer gradcam]

``LIST.txt``: photos, one per line, relative to the list (as ``cwox evaluate`` reads it).
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial

import numpy as np
import torch
from _common import count_passes
from cwox.online.evaluation import (
    EvaluationSetup,
    contrast_pairs,
    explain_modes,
    score_explanations,
)
from cwox.online.metrics import contrastive_scores
from cwox.online.targets import cut_clusters
from cwox.store.default_tree import DEFAULT_TREE
from cwox.store.trees import load_tree

from cwox.core.images import collect_inputs
from cwox.core.models import load_model


def per_pair(model, x, exps, setup: EvaluationSetup, clusters) -> np.ndarray:
    """The previous scoring: one ``contrastive_scores`` call per pair, CAUC then CDROP per mode."""
    modes = list(exps)
    first = exps[modes[0]]
    out = []
    for c, rest in contrast_pairs(first, clusters):
        k = first.classes.index(c)
        maps = np.stack([exps[m].class_maps[k] for m in modes])
        sc = contrastive_scores(model, x, maps, [([c], list(rest))], delta=setup.delta, step=setup.step,
                                n_delta="min", substrate=setup.substrate, batch_size=setup.batch_size)
        out += [v for i in range(len(modes)) for v in (sc.cauc[i], sc.cdrop[i])]
    return np.array(out)


def one_call(clf, x, exps, setup: EvaluationSetup, name: str, clusters) -> np.ndarray:
    """Today's scoring (``score_explanations``), its CAUC and CDROP values in the same order."""
    return np.array([r["value"] for r in score_explanations(clf, x, exps, setup, name, clusters)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", help="a .txt list of photos (paths relative to the list)")
    parser.add_argument("--limit", type=int, default=6, help="first N photos of the list (default 6)")
    parser.add_argument("--explainer", default="gradcam")
    args = parser.parse_args()

    torch.set_num_threads(1)
    clf = load_model("efficientnet_lite0", device="cpu")
    model = clf.module
    tree = load_tree(DEFAULT_TREE)
    setup = EvaluationSetup.build(explainers=[args.explainer], metrics=["cauc", "cdrop"], step=64)
    engine = setup.engines(clf, tree)[args.explainer]
    totals = {"per pair": [0.0, 0], "one call": [0.0, 0]}
    n_pairs, diff = 0, 0.0
    for path in collect_inputs([args.photos])[: args.limit]:
        x, exps = explain_modes(engine, path, setup.modes)
        first = next(iter(exps.values()))
        clusters = cut_clusters(tree, first.classes, level=engine.level)
        ways = {
            "per pair": partial(per_pair, model, x, exps, setup, clusters),
            "one call": partial(one_call, clf, x, exps, setup, path, clusters),
        }
        best, values = dict.fromkeys(ways, math.inf), {}
        for _ in range(2):
            for name, fn in ways.items():
                t0 = time.perf_counter()
                values[name] = fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        for name, fn in ways.items():
            totals[name][0] += best[name]
            totals[name][1] += count_passes(model, fn)
        pairs = len(contrast_pairs(first, clusters))
        n_pairs += pairs
        if pairs:
            diff = max(diff, float(np.abs(values["per pair"] - values["one call"]).max()))
        print(f"{path}: {pairs} pairs, per pair {best['per pair']:.2f} s, one call {best['one call']:.2f} s", flush=True)
    (t_old, p_old), (t_new, p_new) = totals["per pair"], totals["one call"]
    print(f"{n_pairs} pairs ({args.explainer}, 5 modes, step 64, CPU, 1 thread)")
    print(f"forward passes: per pair {p_old}, one call {p_new} ({100 * (1 - p_new / p_old):.1f}% fewer)")
    print(f"time: per pair {t_old:.1f} s, one call {t_new:.1f} s ({t_old / t_new:.2f}x)")
    print(f"max |per pair - one call| = {diff:.2e}")


if __name__ == "__main__":
    main()
