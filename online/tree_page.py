"""A latent tree as one self-contained, searchable HTML page (``cwox tree html``).

The page shows the hierarchical latent tree (CWOX Sec. 3, Fig. 5) the way the online
stage uses it: type a class name and see its *confusion cluster* (the level-1 cut of
CWOX Sec. 4, :func:`cwox.hlta.tree.cluster_of`), its siblings in that cluster, the
evidence for the cluster and the latents above it up to the root; the whole tree
below, collapsible level by level. Given a documents store, the evidence is how
often the cluster's classes share a document's top-K and their *lift over chance*,
``lift(a, b) = n_ab * N / (n_a * n_b)`` (1 when a and b fall in the top-K
independently; the co-occurrence HLTA's islands are grown from, CWOX Sec. 3).

A report links to the page with ``#classes=281,282,...&photo=NAME``: those classes and
their clusters are highlighted and listed at the top.

One file, no network: the tree travels as JSON inside the page, CSS and script are
inline, nothing is fetched.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
from cwox.hlta.quality import cluster_evidence, pair_cooccurrence
from cwox.hlta.tree import cluster_of, root_of
from cwox.store.ownership import check_page_replaceable

__all__ = ["PAGE_NAME", "cooccurrence_evidence", "tree_page_data", "tree_page_html", "write_tree_page"]

#: The page's file name beside an ``index.html`` report.
PAGE_NAME = "tree.html"
#: Marks a page this module wrote: only such a file is ever replaced.
GENERATOR = '<meta name="generator" content="cwox tree page">'
#: Pairs of classes listed per cluster (the most frequent first).
MAX_PAIRS = 12


def cooccurrence_evidence(X: sp.spmatrix, groups: Mapping[str, Sequence[int]], max_pairs: int = MAX_PAIRS) -> dict[str, Any]:
    """Co-occurrence counts and lift over chance of each group's classes in the documents ``X``.

    The numbers are :mod:`cwox.hlta.quality`'s, the same ``cwox tree show --docs`` prints.

    Args:
        X: binary documents x labels matrix (a document's top-K labels).
        groups: cluster id -> its class ids.
        max_pairs: pairs kept per group, most co-occurring first.

    Returns:
        ``{"n_documents": N, "counts": {label: n_a}, "clusters": {id: {"together": n,
        "lift": l, "pairs": [[a, b, n_ab, lift], ...], "n_pairs": m}}}``: ``together``
        counts the documents holding two or more of the group's classes, ``lift`` the
        cluster's co-occurring pairs against what independent classes would give
        (:class:`~cwox.hlta.quality.ClusterEvidence`), and per pair
        ``lift = n_ab * N / (n_a * n_b)`` (:func:`~cwox.hlta.quality.pair_cooccurrence`).
    """
    X = sp.csr_matrix(X)
    freq = np.asarray((X > 0).sum(axis=0)).ravel()
    labels = sorted({int(lab) for g in groups.values() for lab in g})
    out: dict[str, Any] = {}
    for cid, members in groups.items():
        ids = [int(m) for m in members]
        if len(ids) < 2:
            continue
        ev = cluster_evidence(ids, X)
        pairs = [[a, b, n, None if lift is None else round(lift, 2)] for a, b, n, lift in pair_cooccurrence(ids, X)]
        lift = ev.lift
        out[cid] = {
            "together": ev.documents,
            "lift": round(lift, 2) if np.isfinite(lift) else None,
            "pairs": pairs[:max_pairs],
            "n_pairs": len(pairs),
        }
    return {"n_documents": int(X.shape[0]), "counts": {lab: int(freq[lab]) for lab in labels}, "clusters": out}


def tree_page_data(tree: nx.DiGraph, X: sp.spmatrix | None = None, *, source: str | None = None) -> dict[str, Any]:
    """The JSON the page is drawn from: names, latents with their children, level-1 clusters, evidence."""
    names = [str(n) for n in tree.graph["class_names"]]
    root = root_of(tree)
    nodes: dict[str, Any] = {}
    for node, attrs in tree.nodes(data=True):
        if "label" in attrs:
            continue
        kids = list(tree.successors(node))
        nodes[str(node)] = {
            "level": int(attrs["level"]),
            "name": attrs.get("name") or None,
            "latents": sorted((str(k) for k in kids if "label" not in tree.nodes[k]),
                              key=lambda k: (-int(tree.nodes[k]["level"]), k)),
            "labels": sorted(int(tree.nodes[k]["label"]) for k in kids if "label" in tree.nodes[k]),
            "parent": next((str(p) for p in tree.predecessors(node)), None),
        }
    level1 = {int(lab): str(cid) for lab, cid in cluster_of(tree, level=1).items()}
    groups: dict[str, list[int]] = {}
    for lab, cid in level1.items():
        if cid in nodes:
            groups.setdefault(cid, []).append(lab)
    parent_of = {int(tree.nodes[leaf]["label"]): str(next(tree.predecessors(leaf)))
                 for leaf, d in tree.nodes(data=True) if "label" in d}
    meta = tree.graph.get("meta", {}) or {}
    data: dict[str, Any] = {
        "names": names,
        "root": str(root),
        "nodes": nodes,
        "parent": {str(k): v for k, v in parent_of.items()},
        "cluster": {str(lab): cid for lab, cid in level1.items() if cid in nodes},
        "meta": {
            "version": meta.get("version"),
            "store": source or meta.get("store"),
            "model": meta.get("model"),
            "created_at": meta.get("created_at"),
            "n_documents": meta.get("n_documents"),
            "published": bool(meta.get("published")),
        },
        "evidence": None,
    }
    if X is not None:
        if X.shape[1] != len(names):
            raise ValueError(f"the documents have {X.shape[1]} labels, the tree {len(names)}")
        data["evidence"] = cooccurrence_evidence(X, groups)
    return data


def _json_for_script(data: Any) -> str:
    """JSON safe inside ``<script>``: no ``</`` and no U+2028/2029 line breaks."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def tree_page_html(data: Mapping[str, Any], title: str = "cwox latent tree") -> str:
    """The page for :func:`tree_page_data`'s ``data``, as one HTML string."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{GENERATOR}'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f'<header><h1>{html.escape(title)}</h1><p id="about"></p></header>\n'
        '<div id="finder"><label for="q">Find a class</label>'
        '<input id="q" type="search" autocomplete="off" spellcheck="false" '
        'placeholder="type a class name, e.g. tabby, espresso, lynx">'
        '<ul id="hits" role="listbox"></ul></div>\n'
        '<section id="photo" hidden></section>\n'
        '<section id="card" hidden></section>\n'
        '<section id="treebox"><h2>The tree <small>(click a latent to open or close it)</small></h2>'
        '<p class="tools"><button id="expand" type="button">open all</button>'
        '<button id="collapse" type="button">close all</button></p><div id="tree"></div></section>\n'
        f'<script id="tree-data" type="application/json">{_json_for_script(data)}</script>\n'
        f"<script>{_JS}</script>\n</body></html>\n"
    )


def write_tree_page(
    tree: nx.DiGraph,
    out: str | os.PathLike,
    *,
    documents: sp.spmatrix | None = None,
    source: str | None = None,
    title: str | None = None,
) -> Path:
    """Write the tree's page to ``out`` (a file path) and return it.

    Args:
        tree: a tree of the contract (:mod:`cwox.hlta.tree`).
        out: the HTML file to write (its folder is created); an existing file is
            replaced only when it is a page this module wrote (FileExistsError otherwise).
        documents: the binary documents x labels matrix for the evidence, or None.
        source: the tree store's name to show (default: recorded in the tree).
        title: the page title.
    """
    path = Path(out)
    check_page_replaceable(path, GENERATOR, "tree page")
    data = tree_page_data(tree, documents, source=source)
    meta = data["meta"]
    title = title or f"cwox latent tree {meta.get('version') or ''}".strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(tree_page_html(data, title), encoding="utf-8")
    os.replace(tmp, path)
    return path


_CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; --accent: #0b69a3; --soft: #e6f1f8;
        --hi: #fff1c2; --hi-line: #e0a100; --chip: #f0f4f8; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
       margin: 0 auto; padding: 1.2em 1.6em 3em; max-width: 1100px; background: #fbfcfd; }
h1 { font-size: 1.45em; margin: 0 0 .15em; }
h2 { font-size: 1.1em; margin: 0 0 .5em; }
h2 small { color: var(--muted); font-weight: normal; }
#about { color: var(--muted); margin: 0 0 1em; }
#finder { position: relative; margin-bottom: 1em; }
#finder label { display: block; font-weight: 600; margin-bottom: .3em; }
#q { width: 100%; font-size: 1.1em; padding: .55em .8em; border: 2px solid var(--line); border-radius: 8px;
     outline: none; background: #fff; }
#q:focus { border-color: var(--accent); }
#hits { list-style: none; margin: .2em 0 0; padding: 0; position: absolute; z-index: 2; width: 100%;
        background: #fff; border: 1px solid var(--line); border-radius: 8px; box-shadow: 0 6px 18px #0002; }
#hits:empty { display: none; }
#hits li { padding: .35em .8em; cursor: pointer; }
#hits li.on, #hits li:hover { background: var(--soft); }
#hits small, .muted { color: var(--muted); }
section.panel, #card, #photo { background: #fff; border: 1px solid var(--line); border-radius: 10px;
        padding: 1em 1.2em; margin: 0 0 1em; }
#photo { border-color: var(--hi-line); background: #fffbea; }
#card h2 { font-size: 1.3em; }
.chip { display: inline-block; background: var(--chip); border: 1px solid var(--line); border-radius: 999px;
        padding: .05em .65em; margin: .12em .15em; cursor: pointer; white-space: nowrap; font-size: .93em; }
.chip:hover { border-color: var(--accent); }
.chip.self { background: var(--accent); color: #fff; border-color: var(--accent); }
.chip.hi { background: var(--hi); border-color: var(--hi-line); font-weight: 600; }
.path { margin: .4em 0; }
.path a { color: var(--accent); cursor: pointer; text-decoration: none; }
.path a:hover { text-decoration: underline; }
.path .sep { color: var(--muted); margin: 0 .35em; }
table.ev { border-collapse: collapse; margin: .5em 0; font-size: .93em; }
table.ev th, table.ev td { padding: .2em .8em .2em 0; text-align: left; border-bottom: 1px solid var(--line); }
table.ev td.n { text-align: right; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; height: .6em; background: var(--accent); border-radius: 3px; vertical-align: middle; }
#treebox { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 1em 1.2em; }
.tools button { font: inherit; font-size: .85em; margin-right: .5em; padding: .15em .7em; border-radius: 6px;
        border: 1px solid var(--line); background: var(--chip); cursor: pointer; }
#tree details { margin: .1em 0 .1em 1.1em; }
#tree > details { margin-left: 0; }
#tree summary { cursor: pointer; padding: .12em .3em; border-radius: 6px; }
#tree summary:hover { background: var(--soft); }
.lv { display: inline-block; min-width: 4.2em; font-size: .78em; color: #fff; background: #7b8794;
      border-radius: 4px; padding: 0 .4em; margin-right: .4em; text-align: center; }
.lv1 { background: #3e9a6b; } .lv2 { background: #0b69a3; } .lv3 { background: #6b4fbb; }
.lv4, .lv5, .lv6 { background: #9b2c6f; }
.zid { font-weight: 600; margin-right: .4em; }
.cluster { margin: .1em 0 .1em 1.1em; padding: .1em .35em; border-radius: 6px; border: 1px solid transparent; }
.cluster.hi { background: var(--hi); border-color: var(--hi-line); }
.cluster.sel, summary.sel { outline: 2px solid var(--accent); }
.alone { margin: .1em 0 .1em 1.1em; }
.preview { color: var(--muted); font-size: .9em; }
"""

_JS = r"""
(function () {
  const D = JSON.parse(document.getElementById('tree-data').textContent);
  const names = D.names, nodes = D.nodes, ev = D.evidence;
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
  const norm = (s) => String(s).toLowerCase().replace(/[\s_]+/g, ' ').trim();
  const short = (lab) => names[lab].split(',')[0];
  const level = (z) => nodes[z].level;
  const sizeOf = {};
  function classesUnder(z) {
    if (sizeOf[z]) return sizeOf[z];
    let out = [];
    for (const k of nodes[z].latents) out = out.concat(classesUnder(k));
    return (sizeOf[z] = out.concat(nodes[z].labels));
  }
  function ancestors(z) { const out = []; while (z) { out.push(z); z = nodes[z].parent; } return out; }

  // ---- header
  const m = D.meta, n1 = Object.values(nodes).filter((n) => n.level === 1).length;
  const about = [m.published ? 'published' : 'not published',
                 m.store && ('of ' + m.store), m.model && ('model ' + m.model),
                 names.length + ' classes', Object.keys(nodes).length + ' latents',
                 n1 + ' confusion clusters at level 1',
                 m.n_documents && (Number(m.n_documents).toLocaleString('en') + ' documents')].filter(Boolean);
  $('about').textContent = about.join(' \u00b7 ') +
      (ev ? '' : ' \u00b7 no documents store given: no co-occurrence evidence (cwox tree html --docs DOCS)');

  // ---- the tree
  function chip(lab, cls) {
    return '<span class="chip' + (cls ? ' ' + cls : '') + '" data-lab="' + lab + '" title="' + esc(names[lab]) +
           ' (#' + lab + ')">' + esc(short(lab)) + '</span>';
  }
  function clusterRow(z) {
    return '<div class="cluster" id="n-' + z + '"><span class="lv lv1">level 1</span><span class="zid">' + z +
           '</span>' + nodes[z].labels.map((l) => chip(l)).join('') + '</div>';
  }
  function block(z) {
    const n = nodes[z], all = classesUnder(z);
    const preview = all.slice(0, 4).map(short).join(', ') + (all.length > 4 ? ', \u2026' : '');
    let inner = '';
    for (const k of n.latents) inner += level(k) === 1 && !nodes[k].latents.length ? clusterRow(k) : block(k);
    if (n.labels.length)
      inner += '<div class="alone"><span class="muted">' + n.labels.length + ' class' + (n.labels.length > 1 ? 'es' : '') +
               ' alone (no level-1 cluster): </span>' + n.labels.map((l) => chip(l)).join('') + '</div>';
    return '<details id="n-' + z + '"><summary><span class="lv lv' + n.level + '">level ' + n.level +
           '</span><span class="zid">' + z + (n.name ? ' [' + esc(n.name) + ']' : '') + '</span>' +
           '<span class="preview">' + all.length + ' classes: ' + esc(preview) + '</span></summary>' + inner + '</details>';
  }
  $('tree').innerHTML = block(D.root);
  $('n-' + D.root).open = true;
  $('expand').onclick = () => document.querySelectorAll('#tree details').forEach((d) => (d.open = true));
  $('collapse').onclick = () => document.querySelectorAll('#tree details').forEach((d) => (d.open = d.id === 'n-' + D.root));

  function reveal(z) {
    for (const a of ancestors(nodes[z] ? nodes[z].parent : null)) { const el = $('n-' + a); if (el) el.open = true; }
    const el = $('n-' + z);
    if (!el) return;
    if (el.tagName === 'DETAILS') el.open = true;
    document.querySelectorAll('.sel').forEach((e) => e.classList.remove('sel'));
    (el.tagName === 'DETAILS' ? el.querySelector('summary') : el).classList.add('sel');
  }

  // ---- the card of one class
  function evidenceHtml(z) {
    if (!ev) return '<p class="muted">Evidence: give the documents store the tree was fitted on ' +
                    '(<code>cwox tree html TREES --docs DOCS</code>) to see how often these classes share a top-K.</p>';
    const e = ev.clusters[z];
    if (!e) return '';
    const maxN = Math.max(1, ...e.pairs.map((p) => p[2]));
    const rows = e.pairs.map((p) => '<tr><td>' + esc(short(p[0])) + ' + ' + esc(short(p[1])) + '</td><td class="n">' + p[2] +
        '</td><td><span class="bar" style="width:' + Math.round(80 * p[2] / maxN) + 'px"></span></td><td class="n">' +
        (p[3] === null ? '\u2013' : p[3].toFixed(2) + '\u00d7') + '</td></tr>').join('');
    return '<p>Evidence from ' + ev.n_documents.toLocaleString('en') + ' documents: <b>' + e.together +
           '</b> hold two or more of these classes in their top-K' +
           (e.lift === null ? '' : '; their pairs co-occur <b>' + e.lift.toFixed(1) + '\u00d7</b> as often as independent classes would') +
           '.</p><table class="ev"><tr><th>pair</th><th>documents with both</th><th></th>' +
           '<th>lift over chance</th></tr>' + rows + '</table>' +
           (e.n_pairs > e.pairs.length ? '<p class="muted">' + (e.n_pairs - e.pairs.length) + ' more pairs not shown.</p>' : '') +
           '<p class="muted">Lift = n(a, b) \u00b7 N / (n(a) \u00b7 n(b)): 1 means no more often than chance.</p>';
  }
  function pathHtml(start) {
    return '<div class="path">' + ancestors(start).map((a) => '<a data-z="' + a + '">' + a + ' <small>(level ' +
           level(a) + ', ' + classesUnder(a).length + ' classes)</small></a>').join('<span class="sep">\u2192</span>') + '</div>';
  }
  function show(lab) {
    lab = Number(lab);
    const z = D.cluster[lab], card = $('card');
    let h = '<h2>' + esc(names[lab]) + ' <small class="muted">#' + lab + '</small></h2>';
    if (z) {
      const sibs = nodes[z].labels.filter((l) => l !== lab);
      h += '<p>Confusion cluster <b>' + z + '</b> (level 1), ' + nodes[z].labels.length + ' classes: ' +
           chip(lab, 'self') + sibs.map((l) => chip(l)).join('') + '</p>';
      h += '<p>Siblings: ' + (sibs.length ? sibs.map((l) => esc(names[l])).join('; ') : 'none') + '</p>';
      h += evidenceHtml(z);
      h += '<h3>Levels above</h3>' + pathHtml(z);
    } else {
      h += '<p>No confusion cluster: the tree keeps this class alone, directly under <b>' + D.parent[lab] +
           '</b>, so CWOX-2s gives it a cluster of its own.</p><h3>Levels above</h3>' + pathHtml(D.parent[lab]);
    }
    card.innerHTML = h;
    card.hidden = false;
    card.dataset.label = lab;
    reveal(z || D.parent[lab]);
  }

  // ---- search
  const index = names.map((n, i) => [norm(n), i]);
  let hits = [], cursor = 0;
  function search(text) {
    const q = norm(text);
    if (!q) return [];
    const starts = [], words = [], inside = [];
    for (const [n, i] of index) {
      if (n.startsWith(q)) starts.push(i);
      else if (n.split(/[ ,]+/).some((w) => w.startsWith(q))) words.push(i);
      else if (n.includes(q)) inside.push(i);
    }
    if (/^\d+$/.test(q) && Number(q) < names.length) starts.unshift(Number(q));
    return starts.concat(words, inside).slice(0, 12);
  }
  function drawHits() {
    $('hits').innerHTML = hits.map((i, k) => '<li data-lab="' + i + '"' + (k === cursor ? ' class="on"' : '') + '>' +
        esc(names[i]) + ' <small>#' + i + (D.cluster[i] ? ' \u00b7 cluster ' + D.cluster[i] : ' \u00b7 alone') + '</small></li>').join('');
  }
  $('q').addEventListener('input', (e) => { hits = search(e.target.value); cursor = 0; drawHits(); });
  $('q').addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      cursor = (cursor + (e.key === 'ArrowDown' ? 1 : hits.length - 1)) % Math.max(hits.length, 1); drawHits(); e.preventDefault();
    } else if (e.key === 'Enter' && hits.length) { show(hits[cursor]); hits = []; drawHits(); }
    else if (e.key === 'Escape') { hits = []; drawHits(); }
  });
  document.addEventListener('click', (e) => {
    const t = e.target.closest('[data-lab],[data-z]');
    if (!t) return;
    if (t.dataset.lab !== undefined) { show(t.dataset.lab); hits = []; drawHits(); $('card').scrollIntoView({block: 'nearest'}); }
    else { reveal(t.dataset.z); $('n-' + t.dataset.z).scrollIntoView({block: 'center'}); }
  });

  // ---- a photo's clusters, from a report's link: #classes=281,282&photo=chelsea.png
  function applyHash() {
  document.querySelectorAll('#tree .hi').forEach((e) => e.classList.remove('hi'));
  $('photo').hidden = true;
  const args = new URLSearchParams(location.hash.replace(/^#/, ''));
  const picked = (args.get('classes') || '').split(',').filter((s) => /^\d+$/.test(s)).map(Number).filter((i) => i < names.length);
  if (picked.length) {
    const groups = [];
    for (const lab of picked) {
      const z = D.cluster[lab] || null, g = groups.find((x) => z && x.z === z);
      if (g) g.labs.push(lab); else groups.push({z: z, labs: [lab]});
    }
    for (const g of groups) {
      if (g.z) { $('n-' + g.z).classList.add('hi'); }
      for (const lab of g.labs) document.querySelectorAll('#tree .chip[data-lab="' + lab + '"]').forEach((c) => c.classList.add('hi'));
      for (const a of ancestors(g.z ? nodes[g.z].parent : D.parent[g.labs[0]])) $('n-' + a).open = true;
    }
    const photo = args.get('photo');
    $('photo').innerHTML = '<h2>' + (photo ? 'Clusters of ' + esc(photo) : 'Highlighted classes') + '</h2>' +
      groups.map((g) => '<p>' + (g.z ? '<b>' + g.z + '</b> (level 1): ' : '<b>alone</b>: ') +
        g.labs.map((l) => chip(l, 'hi')).join('') +
        (g.z && nodes[g.z].labels.length > g.labs.length ? ' <span class="muted">with ' +
          nodes[g.z].labels.filter((l) => !g.labs.includes(l)).map((l) => esc(short(l))).join(', ') + '</span>' : '') + '</p>').join('');
    $('photo').hidden = false;
    show(picked[0]);
  }
  }
  applyHash();
  window.addEventListener('hashchange', applyHash);
})();
"""
