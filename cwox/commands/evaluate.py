"""``cwox evaluate``: contrastive faithfulness of the whole-output modes (CWOX paper, Sec. 5.1).

For each image, base explainer and mode (SWOX, CWOX-1sA/B, CWOX-2s, Finer-CAM) it scores
every in-cluster pair ``(c, C_i \\ c)`` of ``--tree`` with CAUC (Eq. 4), CDROP (Eq. 5) and
the class sensitivity of the map (Spearman, SSIM), by the paper's protocol unless
``--protocol explain`` (see :data:`cwox.online.evaluation.PROTOCOLS`); ``--cluster-source``
makes the maps from other clusters (none, random, nearest logits, another tree) while
scoring the same pairs. It writes to ``--out``:

* ``results.csv``: one row per image, explainer, mode, pair and metric;
* ``summary.md``: tables shaped like the paper's Tables 1-3 (mean ± 95% Student-t interval);
* ``curves.png``: the contrastive-score curves of one example pair, one panel per mode (Fig. 6);
* ``settings.json``: the options of the run, each explainer's parameters (``--n-masks``,
  ``-p``, the protocol's), every explainer's effective settings (defaults included) and,
  per explainer and mode, the stages it reads with their layers or masks (``stage_setup``).

Exit code: 0 every image scored, 1 some image failed (listed, the others finish),
2 a usage or set-up error (unknown explainer/mode/metric, bad ``-p`` parameter, model,
missing tree).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from cwox.commands.common import (
    CommandError,
    dedicated_params,
    explainer_error,
    explainer_params,
    model_options,
    param_option,
    quiet_option,
    silence_progress,
    tree_option,
)
from cwox.online.modes import CLUSTER_SOURCES, MODES, PAPER_CUM, PAPER_MAX_K, ROLES

METRICS = ("cauc", "cdrop", "insertion", "deletion", "spearman", "ssim")


def _split(value: str) -> list[str]:
    return [v.strip().lower() for v in value.split(",") if v.strip()]


def _check_list(value: str, allowed, option: str) -> list[str]:
    items = _split(value)
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise click.UsageError(
            f"{option}: unknown {', '.join(repr(b) for b in bad) or 'empty list'}; "
            f"choose from {', '.join(allowed)} (comma-separated)"
        )
    return list(dict.fromkeys(items))


@click.command("evaluate", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True)
@model_options
@tree_option
@click.option("--explainers", default="gradcam,rise", show_default=True,
              help="Comma-separated base explainers (gradcam, rise, cce, suny, fgvce).")
@click.option("--modes", default=",".join(MODES), show_default=True, help="Comma-separated modes.")
@click.option("--metrics", default="cauc,cdrop,spearman,ssim", show_default=True,
              help="Comma-separated: cauc, cdrop (Eq. 4, 5), insertion, deletion (single-class), "
                   "spearman, ssim (class sensitivity: similarity of two top classes' maps).")
@click.option("--protocol", type=click.Choice(("paper", "explain")), default="paper", show_default=True,
              help="paper: Eq. 2 with the plain support of the cluster map and RISE's stage two on its "
                   "own finer masks (N=3000, cells 10, p=0.14); explain: the maps 'cwox explain' shows "
                   "(display support percentile, RISE stages sharing masks).")
@click.option("--cluster-source", default="hlta", show_default=True,
              help="Where the maps' clusters come from: hlta (--tree), none (every class alone), random "
                   "(the tree's cluster sizes, classes shuffled, seeded), logits (the tree's sizes, "
                   "classes adjacent in logit order) or a PATH to another tree store. The pairs scored "
                   "are always --tree's.")
@click.option("--finer-classes", type=click.IntRange(min=1), default=3, show_default=True,
              help="Finer-CAM: nearest-logit comparison classes per class.")
@click.option("--finer-gamma", type=float, default=1.0, show_default=True,
              help="Finer-CAM: weight of the comparison classes' mean.")
@click.option("--cum", type=click.FloatRange(0, 1, min_open=True), default=PAPER_CUM, show_default=True,
              help="K = min(--max-k, Cum(--cum)), as the paper.")
@click.option("--max-k", type=click.IntRange(min=1), default=PAPER_MAX_K, show_default=True)
@click.option("--delta", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="delta-salient pixels: H >= delta * max H.")
@click.option("--step", type=click.IntRange(min=1), default=16, show_default=True,
              help="CAUC samples the deletion curve every N pixels (1 = exact Eq. 4).")
@click.option("--substrate", type=click.Choice(["zero", "blur"]), default="zero", show_default=True)
@click.option("--n-masks", type=click.IntRange(min=1), default=None, help="RISE masks (default: RISE's).")
@param_option
@click.option("--role", type=click.Choice(ROLES), default="auto", show_default=True,
              help="CWOX-2s with cce, suny or fgvce (with a bank): auto/contrast use the explainer's own "
                   "'P rather than Q' maps, base subtracts its saliency maps (Eq. 1, 2).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of randomised explainers.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per forward pass.")
@click.option("--scheduler", default=None, help="Spread images over this Dask scheduler (tcp://host:port).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Spread images over a LocalCluster of W worker processes.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N images.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="cwox-eval", show_default=True)
@click.option("--curve-points", type=click.IntRange(min=2), default=41, show_default=True,
              help="Deletion counts per curve in curves.png.")
@click.option("--no-plot", is_flag=True, help="Do not draw curves.png.")
@quiet_option
def evaluate(images, model, weights, device, tree_opt, explainers, modes, metrics, protocol, cluster_source,
             finer_classes, finer_gamma, cum, max_k, delta, step, substrate, n_masks, param_items, role, seed,
             batch_size, scheduler, workers, limit, out_dir, curve_points, no_plot, quiet):
    """Score the whole-output modes of each IMAGE with CAUC / CDROP (files, folders, .txt lists)."""
    from cwox.core.images import collect_inputs
    from cwox.online.explainers import available_explainers

    silence_progress(quiet)
    names = _check_list(explainers, tuple(available_explainers()), "--explainers")
    modes = _check_list(modes, MODES, "--modes")
    metrics = _check_list(metrics, METRICS, "--metrics")
    params, dedicated = dedicated_params(names, {"--n-masks": n_masks})
    for name, given in explainer_params(param_items, names, option="--explainers", dedicated=dedicated).items():
        params.setdefault(name, {}).update(given)
    if scheduler and workers:
        raise click.UsageError("give --scheduler ADDRESS or --workers W, not both")
    paths = collect_inputs(images)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise click.UsageError("no images found in the given inputs")

    from cwox.commands.explain import load_tree_option
    from cwox.core.models import load_model
    from cwox.offline.worker import ModelSpec
    from cwox.online import evaluation

    try:
        classifier = load_model(model, weights=weights, device=device)
    except (ValueError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    tree = load_tree_option(tree_opt, classifier.name, classifier.class_names)
    cluster_tree = None
    if cluster_source.lower() not in CLUSTER_SOURCES:  # a path: an imported tree makes the clusters
        cluster_tree = load_tree_option(cluster_source, classifier.name, classifier.class_names)
        if cluster_tree is None:
            raise click.UsageError("--cluster-source none is the 'none' source; a path must name a tree store")
    source_name = cluster_source.lower() if cluster_tree is None else "hlta"
    try:
        # Every explainer is built once here, before any image (and before any Dask worker
        # builds its own): a bad parameter is a usage error with the explainer's message.
        setup = evaluation.EvaluationSetup.build(
            explainers=names, modes=modes, metrics=metrics, cum=cum, max_k=max_k, delta=delta, step=step,
            substrate=substrate, explainer_params=params or None, seed=seed, batch_size=batch_size,
            role=role, protocol=protocol, cluster_source=source_name, finer_classes=finer_classes,
            finer_gamma=finer_gamma,
        )
        engines = setup.engines(classifier, tree, cluster_tree)
    except (ValueError, TypeError, OSError) as exc:
        raise explainer_error(exc, param_items) from exc
    settings = {
        **dataclasses.asdict(setup),
        "explainer_params": {n: setup.params_of(n) for n in setup.explainers if setup.params_of(n)},
        "model": model,
        "weights": weights,
        "device": str(classifier.device),
        "tree": tree_opt,
        "tree_version": None if tree is None else tree.graph.get("version"),
        "cluster_tree": None if cluster_tree is None else cluster_source,
        "cluster_tree_version": None if cluster_tree is None else cluster_tree.graph.get("version"),
        "n_images": len(paths),
        "explainer_settings": {n: e.explainer.settings() for n, e in engines.items()},
        "stage_setup": {n: evaluation.stage_setup(e, setup.modes) for n, e in engines.items()},
    }
    _check_out(Path(out_dir))
    kwargs = {"setup": setup, "cluster_tree": cluster_tree, "progress": not quiet}
    try:
        if scheduler or workers:
            from cwox.offline.documents import dask_client

            spec = ModelSpec(name=model, weights=weights, device=device, torch_threads=1)
            try:
                with dask_client(scheduler, workers) as client:
                    rows = evaluation.evaluate_images(classifier, paths, tree, client=client,
                                                      model_spec=spec, **kwargs)
            except ConnectionError as exc:
                raise CommandError(str(exc)) from exc
        else:
            rows = evaluation.evaluate_images(classifier, paths, tree, **kwargs)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluation.write_results_csv(rows, out / "results.csv")
    summary = evaluation.summarize(rows, explainer_params=settings["explainer_params"], role=role,
                                   setup=setup, stage_layers=settings["stage_setup"])
    (out / "summary.md").write_text(summary, encoding="utf-8")
    (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")
    failed = [r for r in rows if r.get("error")]
    for r in failed:
        click.echo(f"{r['image']}: skipped: {r['error']}", err=True)
    example = evaluation.example_pair(rows)
    if example is not None and not no_plot:
        image, explainer, target, rest = example
        evaluation.plot_curves(classifier, image, tree, explainer, target, rest, out / "curves.png",
                               setup=setup, cluster_tree=cluster_tree, n_points=curve_points)
    n_pairs = len({(r["image"], r["class"]) for r in rows if not r.get("error")})
    click.echo(f"{len(paths) - len({r['image'] for r in failed})}/{len(paths)} images scored, "
               f"{n_pairs} in-cluster pairs; wrote {out / 'results.csv'}, {out / 'summary.md'}, "
               f"{out / 'settings.json'}"
               + ("" if example is None or no_plot else f", {out / 'curves.png'}"))
    sys.exit(1 if failed else 0)


def _check_out(out: Path) -> None:
    """--out must be new, empty, or an earlier evaluation's folder: its files are replaced,
    so a folder of the user's (with its own ``summary.md``...) is refused before any work."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CommandError(f"--out {out} is a file; choose a folder")
    if not any(out.iterdir()):
        return
    try:
        ours = "explainer_settings" in json.loads((out / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise CommandError(f"--out {out} is a folder that holds other files and no earlier evaluation; "
                           "cwox does not write into it: choose a new folder")
