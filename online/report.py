"""The files ``explain`` writes for each image, and one HTML index over all of them.

:func:`write_report` writes three files for one :class:`~cwox.online.explanation.Explanation`:

``explanation.json``
    :meth:`Explanation.to_json` plus the names of the files written, pretty-printed
    strict JSON (non-finite numbers become ``null``); with the explainer's
    ``diagnostics`` (FG-VCE's and CCE's counterfactual records,
    :mod:`cwox.online.diagnostics`) and the ``warnings`` drawn from them.
``maps.npz``
    the arrays, compressed: ``image``, ``class_maps``, ``cluster_maps`` (only when
    the mode has a cluster stage), ``classes``, ``class_names``, ``probs``, each
    extra map as ``extra_<name>``, and the clusters in two encodings:
    ``cluster_of_class[k]`` is the cluster index of ``classes[k]``, and
    ``cluster_members[cluster_offsets[i]:cluster_offsets[i + 1]]`` are the class
    ids of cluster ``i`` in their order (a ragged array in CSR form).
``grid.png``
    the picture laid out like CWOX Fig. 3 (see :mod:`cwox.online.render`).

:func:`load_report` reads them back into an ``Explanation``. :func:`write_index`
writes ``index.html``, a static page (inline CSS, no script, no external URL) with
one section per image: its grid, its top classes grouped by cluster, the warnings
and a table of the counterfactuals behind the maps (when the explainer recorded
any, failures marked), links to its files, or the reason it failed.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import numpy as np
from cwox.online.diagnostics import Row, diagnostic_notes, diagnostic_tables, diagnostic_warnings
from cwox.online.explanation import Explanation
from cwox.online.render import as_rgb_uint8, check_maps, draw_grid, format_prob, panel_letter
from cwox.store.ownership import check_page_replaceable

JSON_NAME = "explanation.json"
MAPS_NAME = "maps.npz"
GRID_NAME = "grid.png"
INDEX_NAME = "index.html"
#: In the head of every index cwox writes: an ``index.html`` without it is a user's and is never replaced.
INDEX_GENERATOR = '<meta name="generator" content="cwox report index">'

#: Bumped when the layout of the report files changes.
REPORT_FORMAT = 1

__all__ = ["IndexEntry", "load_report", "report_folder", "to_jsonable", "write_index", "write_report"]

_EXTRA_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


# --------------------------------------------------------------------------- writing files


def report_folder(out_dir: str | Path, image_path: str | os.PathLike, used: set[str]) -> Path:
    """The folder for one image's report: ``out_dir/<name>``, always a direct child of ``out_dir``.

    ``<name>`` is the photo's stem made safe for a folder name: no path separators,
    no leading dots (a photo named ``...png`` has the stem ``..``, which would be the
    parent of ``out_dir``), ``image`` when nothing is left. A name already ``used``
    in this run, or a folder there that is not a cwox report (it holds files but no
    ``explanation.json`` or question report ``why.json``), gets a ``-2``, ``-3``... suffix instead: a report never
    writes into a folder of the user's.
    """
    out = Path(out_dir)
    stem = re.sub(r"[\\/\x00-\x1f]", "_", Path(image_path).stem).strip().lstrip(".").strip() or "image"
    name, n = stem, 1
    while name in used or _foreign_folder(out / name):
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return out / name


def _foreign_folder(path: Path) -> bool:
    """True when ``path`` exists and is not a report folder cwox may write into."""
    if not (path.exists() or path.is_symlink()):
        return False
    if path.is_symlink() or not path.is_dir():
        return True
    return any(path.iterdir()) and not any((path / f).is_file() for f in (JSON_NAME, "why.json"))



@contextmanager
def _atomic(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` through a temporary file in the same folder, renamed at the end.

    A crash leaves either the old file or the new one, never half a file. The
    temporary file is opened with ``open(..., "x")``, so it gets the usual
    permissions (umask), unlike ``tempfile.mkstemp``'s private 0600.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    binary = "b" in mode
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_jsonable(obj: Any) -> Any:
    """Turn ``obj`` into plain JSON types: numpy scalars and arrays, paths, tuples, sets.

    Non-finite floats become ``None`` so that the result dumps with ``allow_nan=False``;
    anything else unknown becomes its ``str``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _cluster_arrays(explanation: Explanation) -> dict[str, np.ndarray]:
    """The clusters as ``cluster_of_class`` and the CSR pair ``cluster_members``/``cluster_offsets``."""
    position = {c: k for k, c in enumerate(explanation.classes)}
    cluster_of_class = np.empty(len(explanation.classes), dtype=np.int64)
    for i, cluster in enumerate(explanation.clusters):
        cluster_of_class[[position[c] for c in cluster]] = i
    sizes = [len(cl) for cl in explanation.clusters]
    members = [c for cl in explanation.clusters for c in cl]
    return {
        "cluster_of_class": cluster_of_class,
        "cluster_members": np.asarray(members, dtype=np.int64),
        "cluster_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
    }


def _map_arrays(explanation: Explanation) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "image": as_rgb_uint8(explanation.image),
        "class_maps": np.asarray(explanation.class_maps, dtype=np.float32),
        "classes": np.asarray(explanation.classes, dtype=np.int64),
        "class_names": np.asarray(explanation.class_names, dtype=np.str_),
        "probs": np.asarray(explanation.probs, dtype=np.float64),
    }
    if explanation.cluster_maps is not None:
        arrays["cluster_maps"] = np.asarray(explanation.cluster_maps, dtype=np.float32)
    for name, maps in explanation.extra_maps.items():
        if not _EXTRA_NAME.match(name):
            raise ValueError(
                f"extra map name {name!r} may hold only letters, digits, '_', '.' and '-'"
            )
        maps = np.asarray(maps)
        if maps.dtype == object:
            raise ValueError(f"extra map {name!r} is not numeric (dtype object)")
        arrays[f"extra_{name}"] = maps
    arrays.update(_cluster_arrays(explanation))
    return arrays


def write_report(
    explanation: Explanation,
    out_dir: str | Path,
    *,
    dpi: int = 100,
    max_columns: int = 8,
    cmap: str = "inferno",
) -> dict[str, Path]:
    """Write ``explanation.json``, ``maps.npz`` and ``grid.png`` for one image into ``out_dir``.

    Args:
        explanation: the engine's result for one image.
        out_dir: the image's report folder; created if missing, files in it replaced.
        dpi, max_columns, cmap: passed to :func:`cwox.online.render.draw_grid`.

    Returns:
        ``{"json": ..., "maps": ..., "grid": ...}``, the paths written.

    Raises:
        TypeError: ``explanation`` is not an :class:`Explanation`.
        ValueError: the photo is not an image, or maps do not match its size,
            or an extra map has a name unfit for a file.
    """
    if not isinstance(explanation, Explanation):
        raise TypeError(f"write_report needs an Explanation, got {type(explanation).__name__}")
    check_maps(explanation)
    arrays = _map_arrays(explanation)  # validates before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_NAME, "maps": out / MAPS_NAME, "grid": out / GRID_NAME}

    with _atomic(paths["maps"]) as fh:
        np.savez_compressed(fh, **arrays)
    with _atomic(paths["grid"]) as fh:
        draw_grid(explanation, fh, dpi=dpi, max_columns=max_columns, cmap=cmap)

    doc = explanation.to_json()
    doc["report_format"] = REPORT_FORMAT
    doc["files"] = {key: p.name for key, p in paths.items()}
    doc["heatmap_scaling"] = "each map scaled to its own [0, max] for display; raw values in maps.npz"
    text = json.dumps(to_jsonable(doc), indent=2, allow_nan=False, ensure_ascii=False)
    with _atomic(paths["json"], "w") as fh:
        fh.write(text + "\n")
    return paths


def load_report(report_dir: str | Path) -> Explanation:
    """Read a folder written by :func:`write_report` back into an :class:`Explanation`.

    Arrays (including non-finite probabilities) come from ``maps.npz``; the
    remaining fields (path, mode, explainer, settings, timings, diagnostics) from the JSON.
    """
    folder = Path(report_dir)
    for name in (JSON_NAME, MAPS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: not a report folder")
    doc = json.loads((folder / JSON_NAME).read_text(encoding="utf-8"))
    with np.load(folder / MAPS_NAME, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    members, offsets = arrays["cluster_members"], arrays["cluster_offsets"]
    clusters = [members[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return Explanation(
        image_path=doc["image_path"],
        image=arrays["image"],
        classes=arrays["classes"].tolist(),
        class_names=arrays["class_names"].tolist(),
        probs=arrays["probs"].tolist(),
        clusters=clusters,
        mode=doc["mode"],
        explainer=doc["explainer"],
        cluster_maps=arrays.get("cluster_maps"),
        class_maps=arrays["class_maps"],
        settings=doc.get("settings") or {},
        timings=doc.get("timings") or {},
        extra_maps={k[len("extra_"):]: v for k, v in arrays.items() if k.startswith("extra_")},
        diagnostics=doc.get("diagnostics") or {},
    )


# --------------------------------------------------------------------------- the HTML index


@dataclass
class IndexEntry:
    """One image's line in ``index.html``.

    Attributes:
        image_path: the input as given.
        report_dir: the folder :func:`write_report` wrote (``None`` for a failure).
        top: the top classes as ``(class_id, name, prob)``, most probable first.
        clusters: the confusion clusters as lists of class ids.
        mode, explainer: what drew the maps.
        status: ``"ok"``, or anything else for a failure.
        reason: why the image failed.
        diagnostics: the explanation's diagnostics as JSON (counterfactual records,
            :mod:`cwox.online.diagnostics`); ``{}`` when the explainer keeps none.
    """

    image_path: str
    report_dir: str | Path | None = None
    top: list[tuple[int, str, float]] = field(default_factory=list)
    clusters: list[list[int]] = field(default_factory=list)
    mode: str | None = None
    explainer: str | None = None
    status: str = "ok"
    reason: str | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_explanation(cls, explanation: Explanation, report_dir: str | Path) -> IndexEntry:
        """The entry of an image explained and written to ``report_dir``."""
        return cls(
            image_path=str(explanation.image_path),
            report_dir=report_dir,
            top=list(zip(explanation.classes, explanation.class_names, explanation.probs, strict=True)),
            clusters=[list(cl) for cl in explanation.clusters],
            mode=explanation.mode,
            explainer=explanation.explainer,
            diagnostics=to_jsonable(explanation.diagnostics),
        )

    @classmethod
    def from_report(cls, report_dir: str | Path) -> IndexEntry:
        """The entry of a folder written by :func:`write_report`, read from its JSON.

        Lets a batch job keep only report folders, not explanations, until the index.
        """
        path = Path(report_dir) / JSON_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: not a report folder")
        doc = json.loads(path.read_text(encoding="utf-8"))
        return cls.from_mapping({**doc, "report_dir": Path(report_dir)})

    @classmethod
    def failed(cls, image_path: str | os.PathLike, reason: str) -> IndexEntry:
        """The entry of an image that could not be explained."""
        return cls(image_path=os.fspath(image_path), status="failed", reason=str(reason))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> IndexEntry:
        """Build an entry from a dict with (some of) this class's field names.

        ``top`` may hold ``(id, name, prob)`` triples or ``{"class_id", "name", "prob"}``
        dicts and ``clusters`` lists of ids or ``{"classes": [...]}`` dicts, the forms
        of :meth:`Explanation.to_json`; other keys are ignored.
        """
        if "image_path" not in data:
            raise ValueError(f"an index entry needs 'image_path'; got keys {sorted(data)}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["image_path"] = os.fspath(kwargs["image_path"])
        kwargs["top"] = [
            (t["class_id"], t["name"], t["prob"]) if isinstance(t, Mapping) else tuple(t)
            for t in kwargs.get("top") or []
        ]
        kwargs["clusters"] = [
            list(cl["classes"]) if isinstance(cl, Mapping) else list(cl)
            for cl in kwargs.get("clusters") or []
        ]
        kwargs["diagnostics"] = to_jsonable(kwargs.get("diagnostics") or {})
        return cls(**kwargs)


def _coerce(entry: IndexEntry | Mapping[str, Any]) -> IndexEntry:
    if isinstance(entry, IndexEntry):
        return entry
    if isinstance(entry, Mapping):
        return IndexEntry.from_mapping(entry)
    raise TypeError(f"index entries must be IndexEntry or dict, got {type(entry).__name__}")


def _href(target: Path, base: Path) -> str:
    """A relative, percent-encoded URL from the folder ``base`` to ``target``."""
    try:
        rel = Path(os.path.relpath(target, base)).as_posix()
    except ValueError:  # another drive on Windows
        return target.resolve().as_uri()
    return quote(rel, safe="/")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .3em; }
h2 { font-size: 1.15em; margin: 0 0 .4em; word-break: break-all; }
.summary { color: #555; }
nav ol { columns: 2; font-size: .9em; }
section { border-top: 1px solid #ccc; padding: 1em 0; }
section img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
.meta { color: #555; margin: 0; }
table.top { border-collapse: collapse; font-size: .92em; margin: .4em 0; }
table.top td, table.top th { padding: .1em .8em .1em 0; text-align: left; }
table.top th { padding-top: .4em; }
td.p { font-variant-numeric: tabular-nums; text-align: right; }
.failed h2, .bad { color: #8b1a1a; }
.reason { font-family: monospace; white-space: pre-wrap; }
.links a { margin-right: 1em; }
table.diag caption { text-align: left; font-weight: bold; padding-top: .4em; }
ul.warnings { margin: .4em 0; padding-left: 1.2em; }
"""


def _top_table(entry: IndexEntry) -> str:
    """The top classes grouped by cluster, each cluster with its summed probability."""
    by_id = {int(c): (str(n), p) for c, n, p in entry.top}
    groups = entry.clusters or [[c] for c in by_id]
    rows = []
    for i, cluster in enumerate(groups):
        probs = [by_id[c][1] for c in cluster if c in by_id]
        total = float(sum(p for p in probs if p is not None))
        rows.append(
            f'<tr><th colspan="2">cluster ({panel_letter(i)}) p={html.escape(format_prob(total))}</th></tr>'
        )
        for c in cluster:
            name, p = by_id.get(int(c), (f"class {c}", float("nan")))
            rows.append(
                f"<tr><td>{html.escape(name)} <small>#{int(c)}</small></td>"
                f'<td class="p">{html.escape(format_prob(p))}</td></tr>'
            )
    return '<table class="top">' + "".join(rows) + "</table>"


def _table(caption: str, head: tuple[str, ...], rows: list[Row]) -> str:
    """A small ``table.top.diag`` with a caption; text escaped, bad rows and cells of class ``bad``."""
    bad = ' class="bad"'
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        f"<tr{bad if row_bad else ''}>"
        + "".join(f"<td{bad if mark else ''}>{html.escape(text)}</td>" for text, mark in cells)
        + "</tr>"
        for row_bad, cells in rows
    )
    return f'<table class="top diag"><caption>{html.escape(caption)}</caption><tr>{header}</tr>{body}</table>'


def _diagnostics_html(entry: IndexEntry) -> str:
    """The notes, the warnings and a table per kind of record (declared by the explainer
    that wrote it, :class:`cwox.online.diagnostics.RecordKind`); ``""`` without records."""
    from cwox.online.explainers import known_explainer

    known_explainer(entry.explainer)  # registers its kinds of records
    diagnostics = entry.diagnostics or {}
    names = {str(int(c)): str(n) for c, n, _p in entry.top}
    parts = []
    parts.extend(f'<p class="meta">{html.escape(n)}</p>' for n in diagnostic_notes(diagnostics))
    warnings = diagnostic_warnings(diagnostics, names)
    if warnings:
        parts.append('<ul class="warnings bad">' + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>")
    parts.extend(_table(t.caption, t.head, t.rows) for t in diagnostic_tables(diagnostics, names))
    return "".join(parts)


def _tree_link(entry: IndexEntry, tree_href: str) -> str:
    """A link to the tree page with this image's top classes (and so their clusters) highlighted."""
    classes = ",".join(str(int(c)) for c, _n, _p in entry.top)
    target = f"{tree_href}#classes={classes}&photo={quote(os.path.basename(entry.image_path))}"
    return f'<a href="{html.escape(target)}">clusters in the tree</a>'


def _section(number: int, entry: IndexEntry, base: Path, tree_href: str | None = None) -> str:
    anchor = f"img-{number}"
    title = f"{number}. {html.escape(entry.image_path)}"
    if not entry.ok:
        reason = entry.reason or entry.status or "unknown error"
        return (
            f'<section id="{anchor}" class="failed"><h2>{title}: failed</h2>'
            f'<p class="reason">{html.escape(reason)}</p></section>'
        )
    parts = [f'<section id="{anchor}" class="ok"><h2>{title}</h2>']
    meta = " / ".join(html.escape(x) for x in (entry.mode, entry.explainer) if x)
    if meta:
        parts.append(f'<p class="meta">{meta}</p>')
    folder = Path(entry.report_dir) if entry.report_dir is not None else None
    grid = folder / GRID_NAME if folder is not None else None
    if grid is not None and grid.is_file():
        alt = f"contrastive heatmaps for {entry.image_path}"
        parts.append(
            f'<img src="{html.escape(_href(grid, base))}" alt="{html.escape(alt)}">'
        )
    else:
        parts.append('<p class="bad">grid.png is missing</p>')
    parts.append(_top_table(entry))
    parts.append(_diagnostics_html(entry))
    links = [
        f'<a href="{html.escape(_href(folder / name, base))}">{name}</a>'
        for name in (JSON_NAME, MAPS_NAME, GRID_NAME)
        if folder is not None and (folder / name).is_file()
    ]
    if tree_href and entry.top:
        links.append(_tree_link(entry, tree_href))
    if links:
        parts.append('<p class="links">' + "".join(links) + "</p>")
    parts.append("</section>")
    return "".join(parts)


def check_index_replaceable(out_dir: str | Path) -> None:
    """``FileExistsError`` when ``out_dir/index.html`` exists and is not an index cwox wrote.

    ``cwox explain`` asks before it explains anything, so a user's own ``index.html``
    (a web folder given as ``--out``) stops the command at once instead of after the work.
    """
    check_page_replaceable(Path(out_dir) / INDEX_NAME, INDEX_GENERATOR, "report index")


def write_index(
    entries: Iterable[IndexEntry | Mapping[str, Any]],
    out_dir: str | Path,
    *,
    title: str = "cwox explanations",
    tree_page: str | Path | None = None,
) -> Path:
    """Write ``out_dir/index.html`` linking every image's report.

    Args:
        entries: one per input image, in order: :class:`IndexEntry` objects (see
            :meth:`IndexEntry.from_explanation` and :meth:`IndexEntry.failed`) or
            dicts with the same keys.
        out_dir: where ``index.html`` goes; report folders may lie anywhere, the
            links are relative to it.
        title: the page title.
        tree_page: the page of the tree the clusters were cut from
            (:mod:`cwox.online.tree_page`); linked at the top, and from each image with
            its classes highlighted.

    Returns:
        the path of ``index.html``.

    Raises:
        FileExistsError: ``out_dir/index.html`` exists and cwox did not write it
            (:func:`check_index_replaceable`); nothing is written.
    """
    items = [_coerce(e) for e in entries]
    base = Path(out_dir)
    check_index_replaceable(base)
    base.mkdir(parents=True, exist_ok=True)
    n_ok = sum(e.ok for e in items)
    n_failed = len(items) - n_ok
    nav = "".join(
        f'<li><a href="#img-{i}"{"" if e.ok else " class=bad"}>'
        f"{html.escape(e.image_path)}{'' if e.ok else ' (failed)'}</a></li>"
        for i, e in enumerate(items, 1)
    )
    failures = "".join(
        f'<li><a href="#img-{i}">{html.escape(e.image_path)}</a>: '
        f"{html.escape(e.reason or e.status or 'unknown error')}</li>"
        for i, e in enumerate(items, 1)
        if not e.ok
    )
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="summary">{len(items)} image{"s" * (len(items) != 1)}: '
        f"{n_ok} explained, {n_failed} failed.</p>",
    ]
    tree_href = _href(Path(tree_page), base) if tree_page is not None else None
    if tree_href:
        body.append(f'<p class="summary">Clusters cut from <a href="{html.escape(tree_href)}">this latent tree</a> '
                    "(searchable: a class, its cluster, the levels above).</p>")
    if items:
        body.append(f"<nav><ol>{nav}</ol></nav>")
    if failures:
        body.append(f'<h2 class="bad">Failed images</h2><ul class="failures">{failures}</ul>')
    body.extend(_section(i, e, base, tree_href) for i, e in enumerate(items, 1))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{INDEX_GENERATOR}'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    path = base / INDEX_NAME
    with _atomic(path, "w") as fh:
        fh.write(page)
    return path
