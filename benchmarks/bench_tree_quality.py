"""Benchmark: tree quality of several tree builders side by side on the same real documents.

On a documents store (default: the one ``python -m cwox.pipelines.default_tree`` builds,
``build/default_docs.zarr``), the photos are split 80/20 (by photo: every view of a
photo on one side, :func:`cwox.hlta.quality.split_by_photo`). Each builder learns its
level-1 clusters on the training photos' documents; every tree is then given its
tables by the same whole-model EM on the same documents where it has none, and scored
on the held-out photos' documents.

Documents: a store written with a cumulative rule keeps each row's labels sorted by
probability, so capped rules derive from it: ``--train-cap C`` trains on
``K' = min(K, C)`` labels per row (``none``: the store's own K) and ``--train-min-k``
drops rows with fewer. The held-out documents are always those the online stage
explains, ``K = min(5, Cum(0.95))`` (CWOX Sec. 4), with at least two labels, so that
trees trained on different rules are scored on the same pairs.

Builders:

* ``HLTA (this)``: :class:`cwox.hlta.HLTA` with its defaults;
* ``HLTA (reference settings)``: the reference's defaults (``HLTA.scala``): correlation
  test 3, batch BIC of 5,000 documents, islands of at most 10, at most 15 top latents,
  next label by MI;
* ``HLTA (before)``: the learner as it was before this work: no correlation test,
  full-N BIC, next label by MI;
* ``NPMI agglomerative``: average linkage on ``1 - NPMI`` of label co-occurrence in the
  training documents, cut at the number of level-1 clusters HLTA found (labels that
  never occur in training stay alone);
* (``--only 6``) ``HLTA (this, full-N BIC)``: the defaults with the tests' BIC on all N;
* ``confusion-matrix hierarchy``: average linkage on the model's confusion between labels
  in the training documents (for each document, its top-1 label "confused with" each
  other label it holds, weighted by that label's probability; symmetrised and
  normalised by the two labels' counts), same number of clusters.

Printed per builder: held-out log-likelihood per document (nats, latents summed out),
confusion coherence (share of label pairs co-occurring in a held-out document that fall
in one level-1 cluster) and the mean share for random clusters of the same sizes,
labels in multi-label clusters, number of such clusters, largest cluster, seconds.

    python benchmarks/bench_tree_quality.py
    python benchmarks/bench_tree_quality.py --docs build/default_docs.zarr --train-cap none
    python benchmarks/bench_tree_quality.py --only 1,6 --replicate 100      # the BIC scale at 100 x N
    python benchmarks/bench_tree_quality.py --only 1 --param ud_threshold=30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import AgglomerativeClustering

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_hlta import npmi_matrix  # noqa: E402
from cwox.hlta import HLTA  # noqa: E402
from cwox.hlta.parameters import fit_parameters  # noqa: E402
from cwox.hlta.quality import (  # noqa: E402
    cluster_sizes,
    confusion_coherence,
    heldout_loglik,
    level1_assignment,
    split_by_photo,
)
from cwox.hlta.tree import tree_from_groups  # noqa: E402
from cwox.store.documents import open_documents  # noqa: E402


def agglomerative_groups(dist: np.ndarray, occurring: np.ndarray, n_clusters: int) -> list[list[int]]:
    """Average-linkage clusters (of more than one label) of the ``occurring`` labels."""
    sub = dist[np.ix_(occurring, occurring)]
    sub = np.maximum((sub + sub.T) / 2.0, 0.0)
    np.fill_diagonal(sub, 0.0)
    k = int(min(max(n_clusters, 1), len(occurring)))
    assign = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit_predict(sub)
    groups = [occurring[assign == c].tolist() for c in range(k)]
    return [g for g in groups if len(g) > 1]


def confusion_distance(labels: np.ndarray, probs: np.ndarray, k: np.ndarray, n_labels: int) -> np.ndarray:
    """``1 - similarity`` from the soft confusion of each document's top-1 label with its others."""
    conf = np.zeros((n_labels, n_labels))
    top = labels[:, 0]
    for j in range(1, labels.shape[1]):
        rows = np.flatnonzero(k > j)
        if not len(rows):
            break
        np.add.at(conf, (top[rows], labels[rows, j]), probs[rows, j])
    count = np.bincount(top[k > 0], minlength=n_labels).astype(float)
    sym = conf + conf.T
    denom = count[:, None] + count[None, :]
    sim = np.divide(sym, denom, out=np.zeros_like(sym), where=denom > 0)
    sim = sim / max(sim.max(), 1e-12)
    return 1.0 - sim


def rows_matrix(labels: np.ndarray, k: np.ndarray, rows: np.ndarray, n_labels: int) -> sp.csr_matrix:
    """Binary documents of ``rows``, each with its first ``k[row]`` stored labels."""
    kk = k[rows]
    width = int(kk.max()) if len(kk) else 0
    sub = labels[rows, :width]
    mask = np.arange(width)[None, :] < kk[:, None]
    indptr = np.concatenate([[0], np.cumsum(kk)])
    X = sp.csr_matrix((np.ones(int(kk.sum())), sub[mask], indptr), shape=(len(rows), n_labels))
    X.sort_indices()
    return X


def score(tree, test: sp.csr_matrix, seconds: float) -> dict:
    assign = level1_assignment(tree)
    share, rand = confusion_coherence(assign, test)
    in_clusters, n_clusters, largest = cluster_sizes(assign)
    return dict(ll=heldout_loglik(tree, test), coh=share, rand=rand, inc=in_clusters, nc=n_clusters,
                largest=largest, s=seconds)


def _value(text: str):
    """A ``--param`` value: None, a number, or the text."""
    if text.lower() == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", default="build/default_docs.zarr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--train-min-k", type=int, default=None,
                    help="rows with fewer labels left out of the training documents (default: the store's rule)")
    ap.add_argument("--train-cap", default="5", help="at most this many labels per training row, or 'none'")
    ap.add_argument("--only", default=None, help="comma-separated builder numbers to run (1-6)")
    ap.add_argument("--param", action="append", default=[],
                    help="KEY=VALUE for builder 1's HLTA (e.g. ud_threshold=30, candidate_order=mi)")
    ap.add_argument("--replicate", type=int, default=1,
                    help="repeat the training documents this many times (the same distribution at R x N)")
    args = ap.parse_args(argv)

    store = open_documents(args.docs)
    names = store.class_names
    L = len(names)
    labels, probs, k, photos = store.labels(), store.probs(), store.k().astype(np.int64), store.paths()
    valid = np.flatnonzero(k > 0)
    held = split_by_photo(photos[valid], args.test_fraction, args.seed)
    train_min = store.min_k if args.train_min_k is None else args.train_min_k
    cap = None if args.train_cap == "none" else int(args.train_cap)
    k_train = k if cap is None else np.minimum(k, cap)
    k_test = np.minimum(k, 5)
    train_rows = valid[~held & (k_train[valid] >= train_min)]
    test_rows = valid[held & (k_test[valid] >= 2)]
    train, test = rows_matrix(labels, k_train, train_rows, L), rows_matrix(labels, k_test, test_rows, L)
    if args.replicate > 1:
        train = sp.vstack([train] * args.replicate).tocsr()
    print(f"documents store {args.docs}: rule {store.attrs.get('rule')}, {len(np.unique(photos[valid]))} photos")
    print(f"training: {train.shape[0]} documents (K' = min(K, {cap}) >= {train_min}, mean K' "
          f"{k_train[train_rows].mean():.1f}) of {len(np.unique(photos[valid[~held]]))} photos; held out: "
          f"{test.shape[0]} documents (min(K, 5) >= 2) of {len(np.unique(photos[valid[held]]))} photos"
          + (f"; training documents repeated {args.replicate} times ({train.shape[0]})" if args.replicate > 1 else ""))
    extra = {key: _value(v) for key, v in (item.split("=", 1) for item in args.param)}
    occurring = np.flatnonzero(np.asarray(train.sum(axis=0)).ravel() > 0)
    only = None if args.only is None else {int(x) for x in args.only.split(",")}

    rows: list[tuple[str, dict]] = []
    n_level1 = None

    def hlta_row(title: str, **params) -> None:
        nonlocal n_level1
        t0 = time.perf_counter()
        est = HLTA(random_state=args.seed, **params).fit(train, class_names=names)
        res = score(est.tree_, test, time.perf_counter() - t0)
        if n_level1 is None:
            n_level1 = res["nc"]
        rows.append((title, res))

    def groups_row(title: str, groups: list[list[int]], t0: float) -> None:
        tree = fit_parameters(tree_from_groups(groups, names), train, random_state=args.seed)
        rows.append((title, score(tree, test, time.perf_counter() - t0)))

    if only is None or 1 in only:
        hlta_row(f"HLTA (this{', ' + ', '.join(args.param) if args.param else ', defaults'})", **extra)
    if only is None or 2 in only:
        hlta_row("HLTA (reference settings: CT 3, batch BIC 5000, island 10, top 15, MI order)",
                 ct_threshold=3.0, bic_batch=5000, max_island=10, max_top=15, candidate_order="mi")
    if only is None or 3 in only:
        hlta_row("HLTA (before: no CT, full-N BIC, MI order)", ct_threshold=None, bic_batch=None,
                 candidate_order="mi")
    n_clusters = n_level1 or 40
    if only is None or 4 in only:
        t0 = time.perf_counter()
        Xtr = train[:, occurring]
        groups = agglomerative_groups(1.0 - npmi_matrix(Xtr), np.arange(len(occurring)), n_clusters)
        groups_row(f"NPMI agglomerative ({n_clusters} clusters)", [occurring[g].tolist() for g in groups], t0)
    if only is None or 5 in only:
        t0 = time.perf_counter()
        dist = confusion_distance(labels[train_rows], probs[train_rows], k[train_rows], L)
        groups = agglomerative_groups(dist, occurring, n_clusters)
        groups_row(f"confusion-matrix hierarchy ({n_clusters} clusters)", groups, t0)

    if only is not None and 6 in only:
        hlta_row("HLTA (this, full-N BIC)", bic_batch=None)

    print()
    print("| builder | held-out loglik/doc | coherence | random same sizes | labels in clusters | "
          "clusters | largest | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for title, r in rows:
        print(f"| {title} | {r['ll']:.4f} | {r['coh']:.3f} | {r['rand']:.3f} | {r['inc']} | {r['nc']} | "
              f"{r['largest']} | {r['s']:.1f} |")


if __name__ == "__main__":
    main()
