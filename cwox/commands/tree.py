"""``cwox fit-tree`` and ``cwox tree ...``: fit, inspect, version, import and export latent trees.

* ``cwox fit-tree DOCS.zarr --out TREES.zarr [--publish]`` fits PEM-HLTA on a
  documents store and saves a new tree version with its provenance.
* ``cwox tree show|quality|export|import|versions|publish|rollback|prune`` work on a tree store;
  ``show --docs`` prints each cluster's co-occurrence evidence, ``quality`` scores a
  tree on documents (:mod:`cwox.hlta.quality`).

Every store or file problem ends in a one-line message and exit code 2, never
a traceback.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence

import click

from cwox.commands.common import CommandError

_FORMAT_SUFFIX = {"bif": ".bif", "json": ".json"}


def _store_errors() -> tuple[type[BaseException], ...]:
    from cwox.store.formats import TreeFormatError
    from cwox.store.trees import TreeStoreError

    return (TreeStoreError, TreeFormatError, ValueError, FileNotFoundError, PermissionError, OSError)


def _load(store: str, version: str):
    from cwox.store.trees import load_tree

    try:
        return load_tree(store, version)
    except _store_errors() as exc:
        raise CommandError(str(exc)) from exc


def _fmt(x) -> str:
    return "n/a" if x is None else (f"{x:.6g}" if isinstance(x, float) else str(x))


# --------------------------------------------------------------------------- label parsing


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def parse_labels(text: str, class_names: Sequence[str]) -> list[int]:
    """Turn ``"tabby, 281,tiger cat"`` into class ids (order kept, duplicates dropped).

    Names match exactly, then case- and ``_``/space-insensitively. Unknown or
    ambiguous names raise :class:`click.BadParameter` with close matches.
    """
    exact: dict[str, list[int]] = {}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        exact.setdefault(name, []).append(i)
        loose.setdefault(_norm(name), []).append(i)
    out: list[int] = []
    problems = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if token.isdigit():
            ids = [int(token)]
            if ids[0] >= len(class_names):
                problems.append(f"label id {token} is out of range (the tree has {len(class_names)} labels)")
                continue
        else:
            ids = exact.get(token) or loose.get(_norm(token)) or []
        if len(ids) > 1:
            problems.append(f"{token!r} names several classes ({', '.join(map(str, ids))}); give the id")
            continue
        if not ids:
            close = difflib.get_close_matches(_norm(token), list(loose), n=5, cutoff=0.6)
            hint = ("; close matches: " + ", ".join(class_names[loose[c][0]] for c in close)) if close else ""
            problems.append(f"unknown label {token!r}{hint}")
            continue
        if ids[0] not in out:
            out.append(ids[0])
    if problems:
        raise click.BadParameter("; ".join(problems), param_hint="--labels")
    if not out:
        raise click.BadParameter("no labels given", param_hint="--labels")
    return out


# --------------------------------------------------------------------------- printing


def cluster_lines(tree, labels: Sequence[int] | None = None, level: int = 1, limit: int | None = None,
                  documents=None) -> list[str]:
    """One line per cluster at ``level``: ``Z12 (3): tiger cat, tabby, Egyptian cat``.

    With ``documents`` (a binary documents x labels matrix), each multi-label cluster's
    line ends with its evidence (:func:`cwox.hlta.quality.cluster_evidence`): in how many
    documents two or more of its labels co-occur, and the lift of its pair
    co-occurrences over chance.
    """
    from cwox.hlta.quality import cluster_evidence
    from cwox.hlta.tree import cluster_of

    names = tree.graph["class_names"]
    groups: dict[str, list[int]] = {}
    for lab, cid in cluster_of(tree, labels, level=level).items():
        groups.setdefault(cid, []).append(lab)
    multi = [(cid, labs) for cid, labs in groups.items() if len(labs) > 1 or not cid.startswith("c")]
    single = [labs[0] for cid, labs in groups.items() if len(labs) == 1 and cid.startswith("c")]
    if labels is None:  # whole tree: biggest clusters first
        multi.sort(key=lambda item: -len(item[1]))
    def evidence(labs: list[int]) -> str:
        if documents is None or len(labs) < 2:
            return ""
        ev = cluster_evidence(labs, documents)
        return f"  [together in {ev.documents} documents, lift {ev.lift:.1f}]"

    lines = [f"  {cid} ({len(labs)}): {', '.join(names[i] for i in labs)}{evidence(labs)}" for cid, labs in multi]
    if limit is not None and len(lines) > limit:
        lines = lines[:limit] + [f"  ... {len(multi) - limit} more clusters"]
    if single:
        lines.append(f"  singletons ({len(single)}): {', '.join(names[i] for i in single)}")
    return lines


def tree_lines(tree, keep_labels: Sequence[int] | None = None) -> list[str]:
    """The tree with one latent per line, indented by depth; a latent's own labels
    follow it on its line, by class name. ``keep_labels`` restricts to their ancestors."""
    import networkx as nx

    root = next(n for n, d in tree.in_degree() if d == 0)
    keep = None
    if keep_labels is not None:
        keep = set()
        for lab in keep_labels:
            keep |= nx.ancestors(tree, f"c{lab}") | {f"c{lab}"}
    lines: list[str] = []

    def walk(node: str, depth: int) -> None:
        kids = [k for k in tree.successors(node) if keep is None or k in keep]
        leaves = [tree.nodes[k]["name"] for k in kids if "label" in tree.nodes[k]]
        data = tree.nodes[node]
        title = f"{node}" + (f" [{data['name']}]" if data.get("name") else "")
        line = f"{'  ' * depth}{title} (level {data['level']})"
        lines.append(line + (f": {', '.join(leaves)}" if leaves else ""))
        for kid in kids:
            if "label" not in tree.nodes[kid]:
                walk(kid, depth + 1)

    walk(root, 0)
    return lines


def _summary_line(tree) -> str:
    meta = tree.graph.get("meta", {})
    n_latents = sum(1 for _, d in tree.nodes(data=True) if "label" not in d)
    state = "published" if meta.get("published") else "not published"
    return (
        f"tree {meta.get('version', '?')} ({state}) of {meta.get('store', '?')}: model {meta.get('model') or 'unrecorded'}, "
        f"{tree.graph['n_labels']} labels, {n_latents} latents, loglik {_fmt(meta.get('loglik'))}, "
        f"BIC {_fmt(meta.get('bic'))}, created {meta.get('created_at', '?')}"
    )


# --------------------------------------------------------------------------- fit-tree


@click.command("fit-tree")
@click.argument("docs", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Tree store to add a version to (TREES.zarr).")
@click.option("--publish", "do_publish", is_flag=True, help="Make the new version the one online readers load.")
@click.option("--ud-threshold", type=float, default=3.0, show_default=True,
              help="Unidimensionality test threshold on the BIC difference (HLTA).")
@click.option("--ct-threshold", default="3", show_default=True,
              help="Correlation test threshold: a label joins an island only when that improves the BIC "
                   "by this much (the reference's CTthreshold); 'off' lets every label join some island.")
@click.option("--bic-batch", default=None,
              help="Documents the island tests' BIC is scaled to (the reference's batch BIC: 5000); "
                   "'full' for the full-N BIC. Default: the learner's (cwox.hlta.BIC_BATCH).")
@click.option("--max-island", type=click.IntRange(min=3), default=15, show_default=True,
              help="Largest island (sibling cluster of labels).")
@click.option("--max-top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Stop stacking levels when at most this many latents remain at the top.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the EM restarts.")
@click.option("--quality", is_flag=True,
              help="Also fit on the documents of 80%% of the photos and report the tree quality on the rest "
                   "(held-out loglik, confusion coherence); about doubles the time.")
def fit_tree(docs, out, do_publish, ud_threshold, ct_threshold, bic_batch, max_island, max_top, seed, quality):
    """Fit a hierarchical latent tree (PEM-HLTA) on the documents store DOCS and
    save it as a new version of the tree store --out."""
    from cwox.hlta import BIC_BATCH
    from cwox.pipelines.trees import fit_tree as fit
    from cwox.pipelines.trees import quality_report, read_documents

    params = dict(ud_threshold=ud_threshold, ct_threshold=_number_or(ct_threshold, "off", "--ct-threshold", float),
                  bic_batch=BIC_BATCH if bic_batch is None else _number_or(bic_batch, "full", "--bic-batch", int),
                  max_island=max_island, max_top=max_top, random_state=seed)
    try:
        res = fit(os.path.abspath(docs), out, publish=do_publish, **params)
        report = quality_report(os.path.abspath(docs), **params) if quality else None
        _, X, _ = read_documents(os.path.abspath(docs))
    except _store_errors() as exc:
        raise CommandError(str(exc)) from exc
    for warning in res.warnings:
        click.echo(f"warning: {warning}", err=True)
    est, tree = res.estimator, res.estimator.tree_
    top = max(d["level"] for _, d in tree.nodes(data=True))
    click.echo(f"saved tree {res.version} to {out}{' (published)' if do_publish else ''} in {res.seconds:.1f} s")
    click.echo(f"documents {res.n_documents}, labels {len(est.class_names_)}, latents {res.n_latents}, levels {top}")
    click.echo(f"loglik {est.loglik_:.6g}, BIC {est.bic_:.6g}, parameters {est.n_params_}")
    from cwox.hlta.quality import cluster_sizes, level1_assignment

    in_clusters, n_clusters, largest = cluster_sizes(level1_assignment(tree))
    click.echo(f"level 1: {in_clusters} labels in {n_clusters} multi-label clusters, largest {largest}, "
               f"{len(est.class_names_) - in_clusters} alone")
    if report is not None:
        click.echo("tree quality (fitted on 80% of the photos, scored on the rest):")
        for line in report.lines():
            click.echo(f"  {line}")
    click.echo("clusters at level 1 (largest first; evidence in these documents):")
    for line in cluster_lines(tree, level=1, limit=10, documents=X):
        click.echo(line)


def _number_or(text: str, word: str, option: str, kind):
    """``kind(text)``, or None when ``text`` is ``word`` (e.g. ``--ct-threshold off``)."""
    if str(text).strip().lower() == word:
        return None
    try:
        return kind(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is neither a number nor {word!r}", param_hint=option) from exc


# --------------------------------------------------------------------------- tree group


@click.group("tree")
def tree():
    """Inspect, version, import and export latent trees in a tree store."""


@tree.command("show")
@click.argument("store", type=click.Path())
@click.option("--version", "version", default="latest", show_default=True,
              help="Version id (v0003 or 3), 'latest' (published) or 'newest'.")
@click.option("--labels", default=None, help="Comma-separated class names or ids: show how they cut into clusters.")
@click.option("--level", type=click.IntRange(min=1), default=1, show_default=True, help="Level to cut at.")
@click.option("--docs", type=click.Path(), default=None,
              help="Documents store: print each cluster's evidence (co-occurrences, lift over chance).")
def show(store, version, labels, level, docs):
    """Print the clusters of a tree version and the tree, latents indented by level."""
    t = _load(store, version)
    X = _documents_matrix(docs, t) if docs else None
    keep = parse_labels(labels, t.graph["class_names"]) if labels else None
    click.echo(_summary_line(t))
    if keep is not None:
        n = len(set(_cluster_ids(t, keep, level)))
        click.echo(f"{len(keep)} labels cut into {n} cluster{'s' if n != 1 else ''} at level {level}:")
    else:
        click.echo(f"clusters at level {level}:")
    if X is not None:
        click.echo(f"evidence from {X.shape[0]} documents of {docs}: [documents holding two or more of the "
                   "cluster's labels, lift = their pair co-occurrences / the count expected by chance]")
    for line in cluster_lines(t, keep, level=level, documents=X):
        click.echo(line)
    click.echo("tree:")
    for line in tree_lines(t, keep):
        click.echo(line)


def _documents_matrix(docs: str, tree):
    """The learner corpus of the documents store ``docs``, checked against the tree's labels."""
    from cwox.pipelines.trees import read_documents

    try:
        store, X, _ = read_documents(docs)
    except _store_errors() as exc:
        raise CommandError(str(exc)) from exc
    if list(store.class_names) != list(tree.graph["class_names"]):
        raise CommandError(f"{docs} was made with other class names than the tree's "
                           f"({len(store.class_names)} vs {tree.graph['n_labels']} labels)")
    return X


@tree.command("quality")
@click.argument("store", type=click.Path())
@click.argument("docs", type=click.Path())
@click.option("--version", "version", default="latest", show_default=True, help="Version to score.")
@click.option("--heldout", is_flag=True,
              help="Score only the held-out side of DOCS's split by photo (20%% of the photos, seed 0): "
                   "for a tree fitted on the other side.")
def quality_(store, docs, version, heldout):
    """Score a tree version on the documents store DOCS: held-out loglik per document,
    confusion coherence against random clusters of the same sizes, cluster sizes."""
    from cwox.hlta.quality import tree_quality
    from cwox.pipelines.trees import heldout_documents

    t = _load(store, version)
    X = _documents_matrix(docs, t)
    if heldout:
        try:
            _, X, _ = heldout_documents(docs)
        except _store_errors() as exc:
            raise CommandError(str(exc)) from exc
    trained_on = t.graph.get("meta", {}).get("documents")
    if not heldout and trained_on and os.path.abspath(trained_on) == os.path.abspath(docs):
        click.echo(f"warning: tree {t.graph.get('version', '?')} was fitted on {docs}: these scores are in-sample; "
                   "fit-tree --quality gives a held-out report", err=True)
    try:
        report = tree_quality(t, X)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    click.echo(_summary_line(t))
    for line in report.lines():
        click.echo(line)


def _cluster_ids(t, labels, level):
    from cwox.hlta.tree import cluster_of

    return cluster_of(t, labels, level=level).values()


@tree.command("export")
@click.argument("store", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["bif", "json"]), required=True,
              help="bif (with CPTs, via pgmpy) or json (HLTA *.nodes.json).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--version", "version", default="latest", show_default=True, help="Version to export.")
def export(store, fmt, out, version):
    """Write a tree version as BIF or as HLTA nodes.json."""
    from cwox.store.formats import to_bif, to_nodes_json

    t = _load(store, version)
    try:
        (to_bif if fmt == "bif" else to_nodes_json)(t, out)
    except _store_errors() as exc:
        raise CommandError(str(exc)) from exc
    click.echo(f"wrote tree {t.graph['version']} of {store} to {out} ({fmt})")


@tree.command("import")
@click.argument("file", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Tree store to add the tree to.")
@click.option("--class-names", type=click.Path(dir_okay=False), default=None,
              help="Class names: one per line, or a JSON list.")
@click.option("--model", default=None,
              help="Model the tree was built for (checked online); default: the one a cwox export records.")
@click.option("--format", "fmt", type=click.Choice(["auto", "bif", "json"]), default="auto", show_default=True,
              help="File format; auto picks by the suffix (.bif, else JSON).")
@click.option("--publish", "do_publish", is_flag=True, help="Publish the imported version.")
def import_(file, out, class_names, model, fmt, do_publish):
    """Add a tree from a BIF or HLTA nodes.json FILE as a new version of --out."""
    from cwox.store.formats import from_bif, from_nodes_json, read_class_names
    from cwox.store.trees import save_tree

    if fmt == "auto":
        fmt = "bif" if file.lower().endswith(".bif") else "json"
    try:
        names = read_class_names(class_names) if class_names else None
        t = (from_bif if fmt == "bif" else from_nodes_json)(file, class_names=names)
        # provenance the file carries (a cwox export: model, documents, scores), then ours
        meta = {**(t.graph.get("meta") or {}), "imported_from": os.path.abspath(file), "import_format": fmt}
        if model:
            meta["model"] = model
        version = save_tree(t, out, meta=meta, publish=do_publish)
    except _store_errors() as exc:
        raise CommandError(str(exc) if not isinstance(exc, FileNotFoundError) else f"no such file: {file}") from exc
    n_latents = sum(1 for _, d in t.nodes(data=True) if "label" not in d)
    kind = "with CPTs" if fmt == "bif" else "structure only"
    click.echo(f"imported {file} as tree {version} of {out}{' (published)' if do_publish else ''}: "
               f"{t.graph['n_labels']} labels, {n_latents} latents, {kind}")


@tree.command("versions")
@click.argument("store", type=click.Path())
def versions(store):
    """List every version of a tree store; '*' marks the published one, 'DAMAGED' one
    that does not load whole (exit code 1 when any is damaged)."""
    from cwox.store.trees import TreeStoreError, list_versions, tree_info, verify_version

    try:
        vids = list_versions(store)
    except _store_errors() as exc:
        raise CommandError(str(exc)) from exc
    damaged = 0
    for vid in vids:  # one damaged version never hides the others
        try:
            info = tree_info(store, vid)
            problem = verify_version(store, vid)
        except TreeStoreError as exc:
            info, problem = {"published": False}, str(exc)
        mark = "*" if info["published"] else " "
        if problem:
            damaged += 1
            click.echo(f"{mark} {vid}  DAMAGED: {problem}")
            continue
        click.echo(f"{mark} {vid}  {info.get('created_at', '?')}  model={info.get('model') or '-'}  "
                   f"labels={info.get('n_labels')}  loglik={_fmt(info.get('loglik'))}  "
                   f"bic={_fmt(info.get('bic'))}")
    if damaged:
        click.echo(f"{damaged} of {len(vids)} version(s) damaged; `cwox tree publish` refuses them", err=True)
        raise SystemExit(1)


@tree.command("publish")
@click.argument("store", type=click.Path())
@click.argument("version")
def publish_(store, version):
    """Make VERSION the version online readers load (atomic), after checking that it
    loads whole (checksums); a damaged version is refused and nothing changes."""
    from cwox.store.trees import publish

    try:
        click.echo(f"published {publish(store, version)} of {store}")
    except _store_errors() as exc:
        raise CommandError(f"{exc}; nothing was published") from exc


@tree.command("rollback")
@click.argument("store", type=click.Path())
def rollback_(store):
    """Publish again the version published before the current one (atomic; repeat to go
    further back). Versions that no longer load whole are skipped."""
    from cwox.store.trees import rollback

    try:
        old, new = rollback(store)
    except _store_errors() as exc:
        raise CommandError(str(exc)) from exc
    click.echo(f"rolled back {store} from {old} to {new}")


@tree.command("prune")
@click.argument("store", type=click.Path())
@click.option("--keep", type=click.IntRange(min=0), required=True, help="How many newest versions to keep.")
def prune_(store, keep):
    """Delete old versions, keeping the --keep newest, the published one and the one
    published before it (where `cwox tree rollback` goes)."""
    from cwox.store.trees import prune

    try:
        removed = prune(store, keep)
    except _store_errors() as exc:
        raise CommandError(str(exc)) from exc
    click.echo(f"removed {len(removed)} version(s){': ' + ', '.join(removed) if removed else ''}")


@tree.command("html")
@click.argument("store", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The HTML file to write (tree.html).")
@click.option("--version", "version", default="latest", show_default=True, help="Version to draw.")
@click.option("--docs", default="auto", show_default=True,
              help="Documents store for the evidence (co-occurrence, lift): a path, 'none', or 'auto' "
                   "(the store the tree was fitted on, where it still exists).")
@click.option("--classes", default=None, help="Comma-separated class names or ids to highlight.")
def html_(store, out, version, docs, classes):
    """Write the tree as one self-contained page: search a class, see its cluster and the levels above."""
    from cwox.online.tree_page import write_tree_page

    t = _load(store, version)
    X, used = _evidence_documents(t, docs)
    try:
        path = write_tree_page(t, out, documents=X, source=os.path.basename(os.path.normpath(store)))
    except (OSError, ValueError) as exc:  # FileExistsError: a file cwox did not write
        raise CommandError(str(exc)) from exc
    shown = f" (evidence from {used})" if used else " (no documents store: no evidence)"
    click.echo(f"wrote tree {t.graph['meta'].get('version', '?')} of {store} to {path}{shown}")
    if classes:
        ids = parse_labels(classes, t.graph["class_names"])
        click.echo(f"highlighted: {path.resolve().as_uri()}#classes={','.join(map(str, ids))}")


def _evidence_documents(t, docs: str):
    """The documents x labels matrix for the evidence, and the store it came from (or None, None)."""
    from cwox.store.documents import open_documents

    recorded = (t.graph.get("meta") or {}).get("documents")
    if docs.lower() == "none" or (docs.lower() == "auto" and not (recorded and os.path.isdir(recorded))):
        return None, None
    path = recorded if docs.lower() == "auto" else docs
    try:
        d = open_documents(path)
        if list(d.class_names) != list(t.graph["class_names"]):
            raise ValueError(f"the documents in {path} have other class names than the tree")
        return d.label_matrix(), path
    except (OSError, ValueError) as exc:
        if docs.lower() == "auto":
            click.echo(f"warning: no evidence: {exc}", err=True)
            return None, None
        raise CommandError(f"--docs {docs}: {exc}") from exc
