"""``cwox explain`` (also the stand-alone ``explain``): whole-output explanations of photos.

For each image: print its top classes grouped into confusion clusters, and write
``OUT/<image-stem>/`` (grid.png, explanation.json, maps.npz) plus ``OUT/index.html``.
A bad image is reported with its reason and skipped; the others finish.
Exit code: 0 all explained, 1 some image failed, 2 a usage or set-up error
(bad option, unknown model, missing or incompatible tree).

Heavy modules (torch, the engine) are imported inside the command, so
``cwox --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cwox.commands.common import (
    CommandError,
    dedicated_params,
    explainer_error,
    explainer_keys,
    explainer_params,
    model_options,
    param_option,
    quiet_option,
    silence_progress,
    topk_options,
    tree_option,
)
from cwox.online.modes import MODES, ROLES
from cwox.store.default_tree import DEFAULT_TREE


def load_tree_option(value: str, model_name: str, class_names: list[str]):
    """The tree named by ``--tree``: ``default`` (embedded), ``none``, or a tree store path.

    Raises :class:`CommandError` (exit 2) when it is missing, unreadable, or built
    for another model or class list.
    """
    if value.lower() == "none":
        return None
    if value.lower() == "default":
        path = DEFAULT_TREE
        if not path.exists():
            raise CommandError(
                f"no default tree is installed ({path} is missing); pass --tree PATH to a tree store "
                "(cwox fit-tree builds one) or --tree none to explain without clusters"
            )
    else:
        path = Path(value)
        if not path.exists():
            raise CommandError(f"--tree {value}: no such tree store")
    from cwox.store.trees import IncompatibleTreeError, TreeStoreError, check_compatible, load_tree

    try:
        tree = load_tree(path)
    except (TreeStoreError, OSError, ValueError) as exc:
        raise CommandError(f"--tree {value}: cannot load a tree: {exc}") from exc
    try:
        check_compatible(tree, model_name, class_names)
    except IncompatibleTreeError as exc:
        raise CommandError(f"--tree {value} does not fit --model {model_name}: {exc}") from exc
    return tree


def format_clusters(explanation) -> list[str]:
    """Lines of the top classes grouped into clusters, with probabilities."""
    lines = []
    for i, cluster in enumerate(explanation.clusters):
        members = ", ".join(f"{explanation.name_of(c)} {explanation.prob_of(c):.3f}" for c in cluster)
        lines.append(f"  cluster {i + 1} (p={explanation.cluster_prob(i):.3f}): {members}")
    return lines


def _unique_dir(out: Path, image_path: str, used: set[str]) -> Path:
    from cwox.online.report import report_folder

    return report_folder(out, image_path, used)


@click.command("explain", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True)
@model_options
@tree_option
@click.option("--explainer", default="gradcam", show_default=True,
              help="gradcam, rise, cce, suny or fgvce.")
@click.option("--role", type=click.Choice(ROLES), default="auto", show_default=True,
              help="base: subtract saliency maps (Eq. 1, 2); contrast: the explainer's native "
                   "'P rather than Q' maps (cce, suny, fgvce); auto: contrast where available.")
@click.option("--reference-bank", type=click.Path(), default=None,
              help="FG-VCE's reference bank (a store written by `cwox documents --reference-bank`).")
@click.option("--why", "why_p", default=None,
              help="Ask one question instead: why class P (name or id) ... (cce, suny, fgvce).")
@click.option("--rather-than", "rather_q", default=None,
              help="... rather than Q (names or ids, comma-separated for several).")
@click.option("--other", "other_image", type=click.Path(dir_okay=False), default=None,
              help="CCE's O-contrast: why is IMAGE a P while this other image is Q.")
@click.option("--mode", type=click.Choice(MODES), default="cwox2s", show_default=True,
              help="Whole-output mode (finercam: Finer-CAM, each class against its nearest-logit classes).")
@topk_options
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward/backward pass (default: by device).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of randomised explainers (RISE masks).")
@click.option("--n-masks", type=click.IntRange(min=1), default=None,
              help="RISE: number of masks N (default 5000, the CWOX public code's stage-one N).")
@param_option
@click.option("--support", type=click.FloatRange(0, 100), default=None,
              help="Support percentile of Eq. (2), a display choice: it keeps the strongest part of "
                   "the cluster's evidence (default: the explainer's, Grad-CAM 50, RISE 70, as the CWOX "
                   "public code's examples; 0 is the paper's plain support, what `cwox evaluate` scores).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="cwox-out", show_default=True,
              help="Output folder; each image gets OUT/<image-stem>/.")
@quiet_option
def explain(images, model, weights, device, tree_opt, explainer, role, reference_bank, why_p, rather_q,
            other_image, mode, top_k, cum, max_k, batch_size, seed, n_masks, param_items, support, out_dir,
            quiet):
    """Explain the top classes of each IMAGE (files, folders, or .txt lists of paths)."""
    from cwox.core.images import ImageError, collect_inputs

    silence_progress(quiet)

    if top_k is not None and cum is not None:
        raise click.UsageError("give --top-k K or --cum P (with --max-k K), not both")
    paths = collect_inputs(images)
    if not paths:
        raise click.UsageError("no images found in the given inputs")

    from cwox.core.models import load_model
    from cwox.online.engine import Engine
    from cwox.online.explainers import available_explainers, explainer_class

    explainer = explainer.lower()
    if explainer not in available_explainers():
        raise click.UsageError(f"unknown --explainer {explainer!r}; choose one of {', '.join(available_explainers())}")
    given, dedicated = dedicated_params([explainer], {"--n-masks": n_masks, "--reference-bank": reference_bank})
    params = given.get(explainer, {})
    params.update(explainer_params(param_items, [explainer], option="--explainer",
                                   dedicated=dedicated).get(explainer, {}))
    if (rather_q or other_image) and not why_p:
        raise click.UsageError("--rather-than and --other go with --why P")
    try:
        classifier = load_model(model, weights=weights, device=device)
    except (ValueError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    # What the explainer ships with for this model (FG-VCE: its embedded bank), under the user's own.
    params = {**explainer_class(explainer).default_params(classifier), **params}
    if why_p:
        sys.exit(_ask(paths, classifier, explainer, why_p, rather_q, other_image, params,
                      batch_size, seed, Path(out_dir), param_items))
    tree = load_tree_option(tree_opt, classifier.name, classifier.class_names)
    try:
        engine = Engine(
            classifier, tree, explainer, mode,
            top_k=top_k, cum=cum, max_k=max_k if cum is not None else None,
            seed=seed, batch_size=batch_size, support=support, role=role, explainer_params=params,
        )
    except (ValueError, TypeError, OSError) as exc:  # e.g. a bad -p value: the explainer's own message
        raise explainer_error(exc, param_items) from exc

    from tqdm import tqdm

    from cwox.online.report import IndexEntry, check_index_replaceable, write_index, write_report

    out = Path(out_dir)
    try:  # a user's own index.html in --out: stop now, not after explaining every image
        check_index_replaceable(out)
    except FileExistsError as exc:
        raise CommandError(str(exc)) from exc
    used: set[str] = set()
    entries = []
    failed = 0
    bar = tqdm(paths, desc="explain", unit="image", disable=True if len(paths) < 3 or quiet else None,
               file=sys.stderr)
    for path in bar:
        try:
            result = engine.explain(path)
        except ImageError as exc:
            failed += 1
            entries.append(IndexEntry.failed(path, exc.reason))
            tqdm.write(f"skipped {path}: {exc.reason}", file=sys.stderr)
            continue
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory on one huge image
            failed += 1
            entries.append(IndexEntry.failed(path, f"{type(exc).__name__}: {exc}"))
            tqdm.write(f"failed {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        target = _unique_dir(out, path, used)
        write_report(result, target)
        entries.append(IndexEntry.from_explanation(result, target))
        lines = [f"{path} -> {target}/ ({result.timings['total']:.2f} s)", *format_clusters(result)]
        tqdm.write("\n".join(lines))
        for warning in result.warnings():  # e.g. an FG-VCE counterfactual that did not flip
            tqdm.write(f"  warning: {warning}", file=sys.stderr)
    bar.close()
    tree_page = None
    if tree is not None:  # the page of the tree the clusters come from, linked from index.html
        from cwox.online.tree_page import PAGE_NAME, write_tree_page

        try:
            source = "the embedded default tree" if tree_opt.lower() == "default" else tree_opt
            tree_page = write_tree_page(tree, out / PAGE_NAME, source=source)
        except FileExistsError as exc:  # a file of the user's own: keep it, link no tree
            click.echo(f"warning: no tree page: {exc}", err=True)
    index = write_index(entries, out, tree_page=tree_page)
    click.echo(f"{len(paths) - failed} of {len(paths)} images explained; index: {index}")
    sys.exit(1 if failed else 0)


def _ask(paths, classifier, explainer, why_p, rather_q, other_image, params, batch_size, seed, out,
         param_items=()) -> int:
    """``--why P [--rather-than Q | --other IMAGE2]``: the explainer's own pair of maps per image."""
    import numpy as np

    from cwox.core.images import ImageError, load_image
    from cwox.online.diagnostics import diagnostic_notes
    from cwox.online.explainers import explainer_class, get_explainer
    from cwox.online.question import (
        answer_question,
        question_explainers,
        resolve_classes,
        write_question_report,
    )

    order = explainer_class(explainer).question_maps
    if not order:
        raise click.UsageError(f"--why needs --explainer {', '.join(question_explainers())} (not {explainer})")
    names = classifier.class_names
    try:
        fact = resolve_classes(why_p, names)
        foil = resolve_classes(rather_q, names) if rather_q else None
        other = load_image(other_image) if other_image else None
        if batch_size is not None:
            params["batch_size"] = batch_size
        if "seed" in (explainer_keys(explainer) or ()):
            params["seed"] = seed  # as the engine does
    except (ValueError, OSError, ImageError) as exc:
        raise CommandError(str(exc)) from exc
    try:
        method = get_explainer(explainer, classifier, **params)
    except (ValueError, TypeError, OSError) as exc:
        raise explainer_error(exc, param_items) from exc
    question = f"why {'+'.join(names[i] for i in fact)}"
    if foil:
        question += f" rather than {'+'.join(names[i] for i in foil)}"
    if other_image:
        question += f" (while {Path(other_image).name} is {'+'.join(names[i] for i in foil) if foil else 'its top class'})"
    failed, used = 0, set()
    for path in paths:
        try:
            image = load_image(path)
            answer = answer_question(method, classifier, image, fact, foil, other)
        except ImageError as exc:
            failed += 1
            click.echo(f"skipped {path}: {exc.reason}", err=True)
            continue
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        target = _unique_dir(out, path, used)
        meta = {"image": str(path), "explainer": explainer, "question": question,
                "fact": fact, "foil": foil, "settings": method.settings()}
        # The answer's records of a kind the explainer declared (FG-VCE: its reference bank)
        # that state plain facts: shown under the maps and printed.
        notes = diagnostic_notes({key: [value] for key, value in answer["extra"].items()})
        if notes:
            meta["note"] = " ".join(notes)
            for note in notes:
                click.echo(f"  {note}")
        files = write_question_report(target, np.asarray(classifier.crop(image)), answer, meta,
                                      order=order)
        click.echo(f"{path}: {question} -> {files['png']}")
    return 1 if failed else 0
