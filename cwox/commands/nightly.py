"""``cwox nightly``: documents, fit, quality gate, publish and retention in one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cwox.commands.common import CommandError, model_options, topk_options


@click.command("nightly")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--docs", required=True, type=click.Path(), help="Documents store (resumed, rebuilt for new inputs).")
@click.option("--trees", required=True, type=click.Path(), help="Tree store to add a version to and publish.")
@model_options
@topk_options
@click.option("--scheduler", default=None, help="Use an existing Dask cluster: tcp://host:port.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="LocalCluster worker processes.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per forward pass.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, help="Rows per task and Zarr chunk.")
@click.option("--augment", type=click.IntRange(min=0), default=0, show_default=True,
              help="Extra seeded random views per image.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of views, held-out split and EM.")
@click.option("--heldout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Share of the photos held out for the quality gate (0: no gate evidence).")
@click.option("--gate-tolerance", type=float, default=None,
              help="Nats per held-out document the new tree may be worse than the published one: "
                   "refused when mean + 2 SE of the paired difference is below -TOLERANCE (default 0.1).")
@click.option("--force", is_flag=True, help="Publish even when the gate refuses the new tree.")
@click.option("--keep", type=click.IntRange(min=1), default=5, show_default=True,
              help="Versions to keep (the published one and the rollback target are always kept).")
@click.option("--summary", "summary_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON run summary here (it is always printed, and kept in TREES/runs/).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def nightly(inputs, docs, trees, model, weights, device, top_k, cum, max_k, scheduler, workers, batch_size,
            chunk_size, augment, seed, heldout, gate_tolerance, force, keep, summary_out, quiet):
    """Build the documents of INPUTS, fit a new tree, compare it with the published one on
    held-out photos, publish it when it is not clearly worse, prune old versions.

    Safe to rerun at any time: documents resume and retry failed images; a refused or
    failed run leaves the published tree online. Prints a JSON run summary.

    Exit codes: 0 published; 1 finished with failed images or chunks (rerun); 2 nothing
    ran (a usage or set-up error); 3 the gate refused the new tree (saved, not
    published; see `cwox tree versions`, or rerun with --force); 130 interrupted.
    """
    from cwox.core.topk import TopKRule
    from cwox.pipelines.gate import DEFAULT_TOLERANCE
    from cwox.pipelines.nightly import nightly as run_nightly
    from cwox.store._atomic import atomic_write_text

    if top_k is not None and cum is not None:
        raise click.UsageError("give --top-k K or --cum P (with --max-k K), not both")
    if summary_out:
        _check_summary_target(Path(summary_out))
    result = run_nightly(
        inputs, docs, trees, model=model, weights=weights, rule=TopKRule.from_options(top_k, cum, max_k),
        augment=augment, seed=seed, scheduler=scheduler, workers=workers, device=device,
        batch_size=batch_size, chunk_size=chunk_size, keep=keep, heldout=heldout,
        tolerance=DEFAULT_TOLERANCE if gate_tolerance is None else gate_tolerance,
        force=force, progress=not quiet,
    )
    text = json.dumps(result.summary(), indent=2)
    click.echo(text)
    if summary_out:
        atomic_write_text(summary_out, text + "\n")
    kept = f" (summary kept in {result.summary_path})" if result.summary_path else ""
    click.echo(f"nightly: {result.status}: {result.message}{kept}", err=True)
    sys.exit(result.exit_code)


def _check_summary_target(path: Path) -> None:
    """--summary replaces only an earlier run summary, never a file of the user's."""
    if not path.exists():
        return
    try:
        ours = {"status", "exit_code", "timings"} <= set(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise CommandError(f"--summary {path} exists and is not a nightly run summary; "
                           "cwox does not replace it: choose another path")
