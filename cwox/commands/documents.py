"""``cwox documents``: build the top-K documents store on Dask."""

from __future__ import annotations

import sys

import click

from cwox.commands.common import CommandError, model_options, topk_options


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Documents store to write (DOCS.zarr).")
@model_options
@topk_options
@click.option("--no-cap", is_flag=True,
              help="With --cum: no cap on K (the rule of the reference HLTA code: --cum 0.95 --no-cap --min-k 2).")
@click.option("--min-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rows with fewer labels stay in the store but are left out of the tree learner's corpus "
                   "(2 drops one-label documents, as the reference does). Recorded in the store.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="LocalCluster worker processes.")
@click.option("--scheduler", default=None, help="Use an existing Dask cluster: tcp://host:port.")
@click.option("--augment", type=click.IntRange(min=0), default=0, show_default=True,
              help="Extra seeded random views per image.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the augmentations.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, help="Rows per task and Zarr chunk.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help="Refuse larger images.")
@click.option("--overwrite", is_flag=True, help="Replace a store made with other settings.")
@click.option("--reference-bank", "bank", is_flag=True,
              help="Also store FG-VCE's reference bank (its candidate features) beside the documents.")
@click.option("--per-class", type=click.IntRange(min=1), default=20, show_default=True,
              help="Reference images per class in the bank (FG-VCE: 20).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def documents(inputs, out, model, weights, device, top_k, cum, max_k, no_cap, min_k, batch_size, workers, scheduler,
              augment, seed, chunk_size, max_pixels, overwrite, bank, per_class, quiet):
    """Classify INPUTS (image files, folders, list files) and store each image's top-K labels.

    Resumable: rerunning with the same settings computes only what is missing.
    Exit code 0 when every image was used, 1 when any failed (they are listed).
    """
    from cwox.core.images import DEFAULT_MAX_PIXELS
    from cwox.core.topk import TopKRule
    from cwox.offline.documents import build_documents
    from cwox.store.documents import StoreMismatch

    try:
        rule = TopKRule.from_options(top_k, cum, max_k, no_cap=no_cap, min_k=min_k)
        summary = build_documents(
            inputs, out, model=model, weights=weights, rule=rule, batch_size=batch_size,
            workers=workers, scheduler=scheduler, augment=augment, seed=seed,
            chunk_size=chunk_size, device=device, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
            overwrite=overwrite, progress=not quiet,
        )
    except (StoreMismatch, ValueError, ConnectionError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from exc
    for line in summary.lines():
        click.echo(line)
    if bank:
        from cwox.offline.reference_bank import build_reference_bank

        try:
            ref = build_reference_bank(inputs, out, model=model, weights=weights, device=device,
                                       scheduler=scheduler, workers=workers, per_class=per_class,
                                       batch_size=batch_size, overwrite=overwrite)
        except (ValueError, ConnectionError, FileNotFoundError, FileExistsError) as exc:
            raise CommandError(f"reference bank: {exc}") from exc
        click.echo(f"reference bank {ref.summary()}")
    sys.exit(0 if summary.ok else 1)
