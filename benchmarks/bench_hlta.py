"""Benchmark: PEM-HLTA fit on planted top-K-like documents, against an NPMI baseline.

Default size: 1000 labels x 1.3 million documents (ImageNet-like). For each learner
setting asked for (``--configs``; default: this learner's defaults, and the same without
the correlation test) it prints the fit wall and CPU time, the peak resident memory
(``resource.getrusage``, the whole process), the level-1 adjusted Rand index (ARI) of
the tree's clusters against the planted groups, and the ARI of an average-linkage
agglomerative clustering of the normalised pointwise mutual information (NPMI) matrix
of the same documents with the same number of clusters as the tree (and with the true
number, as an oracle), then markdown table rows for ``benchmarks/RESULTS.md``.

``--real-docs STORE`` instead fits each setting on a real documents store and prints
its BIC and its held-out log-likelihood (split by photo, :mod:`cwox.hlta.quality`).

    python benchmarks/bench_hlta.py                  # full size
    python benchmarks/bench_hlta.py --sibling-prob 0.4   # strongly co-occurring sibling groups
    python benchmarks/bench_hlta.py --docs 100000 --labels 300 --configs this,no-ct,full-n,before
    python benchmarks/bench_hlta.py --real-docs build/default_docs.zarr --configs this,before
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cwox.hlta import HLTA, cluster_of  # noqa: E402
from cwox.hlta.synthetic import planted_structure, sample_documents  # noqa: E402


def npmi_matrix(X: sp.csr_matrix) -> np.ndarray:
    """Normalised PMI ``log(p(a,b) / p(a)p(b)) / -log p(a,b)`` of label pairs (-1 if never together)."""
    n = X.shape[0]
    Xc = sp.csc_matrix(X)
    co = (Xc.T @ Xc).toarray() / n
    p = np.diag(co).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(co / np.outer(p, p))
        npmi = pmi / -np.log(co)
    npmi[co <= 0] = -1.0
    np.fill_diagonal(npmi, 1.0)
    return np.nan_to_num(npmi, nan=-1.0, posinf=1.0, neginf=-1.0)


def npmi_clusters(X: sp.csr_matrix, n_clusters: int) -> np.ndarray:
    """Average-linkage agglomerative clustering on the distance ``1 - NPMI``."""
    dist = 1.0 - npmi_matrix(X)
    dist = np.maximum((dist + dist.T) / 2.0, 0.0)
    np.fill_diagonal(dist, 0.0)
    model = AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed", linkage="average")
    return model.fit_predict(dist)


#: Learner settings by name: this learner's defaults, and each test or scale switched.
CONFIGS = {
    "this": {},
    "no-ct": {"ct_threshold": None},
    "full-n": {"bic_batch": None},
    "mi-order": {"candidate_order": "mi"},
    "before": {"ct_threshold": None, "bic_batch": None, "candidate_order": "mi"},
    "reference": {"ct_threshold": 3.0, "bic_batch": 5000, "max_island": 10, "max_top": 15, "candidate_order": "mi"},
}


def timed_fit(X, **params):
    t0, c0 = time.perf_counter(), time.process_time()
    est = HLTA(**params).fit(X)
    return est, time.perf_counter() - t0, time.process_time() - c0


def real_documents(path: str, configs: list[str], seed: int) -> None:
    """BIC on all documents and held-out loglik (split by photo) of each setting on a real store."""
    from cwox.hlta.quality import heldout_loglik, split_by_photo
    from cwox.store.documents import open_documents

    store = open_documents(path)
    X, photos = store.label_matrix(), store.paths()[store.kept_rows()]
    held = split_by_photo(photos, 0.2, seed)
    print(f"real documents {path}: {X.shape[0]} documents, rule {store.attrs.get('rule')}")
    print("| setting | fit wall (s) | fit cpu (s) | BIC (all documents) | loglik/doc | held-out loglik/doc | "
          "labels alone |")
    print("|---|---|---|---|---|---|---|")
    for name in configs:
        est, wall, cpu = timed_fit(X, random_state=seed, **CONFIGS[name])
        part = HLTA(random_state=seed, **CONFIGS[name]).fit(X[~held])
        alone = sum(1 for v in cluster_of(est.tree_).values() if v.startswith("c"))
        print(f"| {name} {CONFIGS[name]} | {wall:.1f} | {cpu:.1f} | {est.bic_:.1f} | "
              f"{est.loglik_ / est.n_documents_:.4f} | {heldout_loglik(part.tree_, X[held]):.4f} | {alone} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1_300_000)
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-top", type=int, default=20)
    ap.add_argument("--sibling-prob", type=float, default=0.15,
                    help="probability that a sibling group of the chosen one is active too")
    ap.add_argument("--configs", default="this,no-ct", help=f"comma-separated settings among {sorted(CONFIGS)}")
    ap.add_argument("--real-docs", default=None, help="a documents store: BIC and held-out loglik per setting")
    args = ap.parse_args(argv)
    configs = args.configs.split(",")
    if args.real_docs:
        real_documents(args.real_docs, configs, args.seed)
        return

    t0 = time.perf_counter()
    truth = planted_structure(args.labels, random_state=args.seed)
    X = sample_documents(truth, args.docs, sibling_prob=args.sibling_prob, random_state=args.seed + 1)
    t_gen = time.perf_counter() - t0
    print(f"data: {args.docs} documents x {args.labels} labels, {X.nnz / args.docs:.2f} labels/doc, "
          f"{truth.n_groups} planted groups in {truth.supergroup.max() + 1} super-groups "
          f"(sibling_prob {args.sibling_prob}, generated in {t_gen:.1f} s)")

    cpu = f"{os.cpu_count()} cores, {platform.machine()}"
    table = []
    for name in configs:
        est, t_fit, c_fit = timed_fit(X, max_top=args.max_top, random_state=args.seed, **CONFIGS[name])
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        assign = cluster_of(est.tree_)
        pred = np.array([assign[i] for i in range(args.labels)])
        k = len(set(pred.tolist()))
        alone = int(sum(1 for v in pred if v.startswith("c")))
        ari_tree = adjusted_rand_score(truth.group, pred)
        levels = max(d["level"] for _, d in est.tree_.nodes(data=True))
        assign2 = cluster_of(est.tree_, level=2)
        ari_l2 = adjusted_rand_score(truth.supergroup[truth.group], [assign2[i] for i in range(args.labels)])
        t0 = time.perf_counter()
        ari_npmi = adjusted_rand_score(truth.group, npmi_clusters(X, k))
        ari_npmi_oracle = adjusted_rand_score(truth.group, npmi_clusters(X, truth.n_groups))
        t_base = time.perf_counter() - t0
        print(f"[{name}] HLTA fit: {t_fit:.1f} s wall, {c_fit:.1f} s cpu, peak RSS {peak_mb:.0f} MiB, {levels} levels, "
              f"{k} level-1 clusters ({alone} labels alone), loglik/doc {est.loglik_ / est.n_documents_:.4f}, "
              f"BIC {est.bic_:.1f}")
        print(f"[{name}] level-1 ARI vs planted groups: HLTA {ari_tree:.4f} | NPMI agglomerative (k={k}) "
              f"{ari_npmi:.4f} | NPMI agglomerative (true k={truth.n_groups}) {ari_npmi_oracle:.4f} "
              f"({t_base:.1f} s); level-2 ARI vs super-groups: HLTA {ari_l2:.4f}", flush=True)
        table.append(f"| bench_hlta {name} | {args.docs} | {args.labels} | {args.sibling_prob} | {t_fit:.1f} | "
                     f"{c_fit:.1f} | {peak_mb:.0f} | {ari_tree:.4f} | {ari_npmi:.4f} | {ari_npmi_oracle:.4f} | {cpu} |")
    print()
    print("| benchmark | docs | labels | sibling prob | fit wall (s) | fit cpu (s) | peak RSS (MiB) | "
          "HLTA level-1 ARI | NPMI-agglo ARI (same k) | NPMI-agglo ARI (true k) | machine |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
