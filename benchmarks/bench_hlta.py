"""Benchmark: PEM-HLTA fit on planted top-K-like documents, against an NPMI baseline.

Default size: 1000 labels x 1.3 million documents (ImageNet-like). Prints the
fit wall time, the peak resident memory (``resource.getrusage``), the level-1
adjusted Rand index (ARI) of the tree's clusters against the planted groups,
and the ARI of an average-linkage agglomerative clustering of the normalised
pointwise mutual information (NPMI) matrix of the same documents with the same
number of clusters as the tree (and with the true number, as an oracle), then
a markdown table row for ``benchmarks/RESULTS.md``.

    python benchmarks/bench_hlta.py                  # full size
    python benchmarks/bench_hlta.py --docs 100000 --labels 300
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1_300_000)
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-top", type=int, default=20)
    ap.add_argument("--sibling-prob", type=float, default=0.15,
                    help="probability that a sibling group of the chosen one is active too")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    truth = planted_structure(args.labels, random_state=args.seed)
    X = sample_documents(truth, args.docs, sibling_prob=args.sibling_prob, random_state=args.seed + 1)
    t_gen = time.perf_counter() - t0
    print(f"data: {args.docs} documents x {args.labels} labels, {X.nnz / args.docs:.2f} labels/doc, "
          f"{truth.n_groups} planted groups in {truth.supergroup.max() + 1} super-groups "
          f"(sibling_prob {args.sibling_prob}, generated in {t_gen:.1f} s)")

    t0 = time.perf_counter()
    est = HLTA(max_top=args.max_top, random_state=args.seed).fit(X)
    t_fit = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    assign = cluster_of(est.tree_)
    pred = np.array([assign[i] for i in range(args.labels)])
    k = len(set(pred.tolist()))
    ari_tree = adjusted_rand_score(truth.group, pred)
    levels = max(d["level"] for _, d in est.tree_.nodes(data=True))
    assign2 = cluster_of(est.tree_, level=2)
    ari_l2 = adjusted_rand_score(truth.supergroup[truth.group], [assign2[i] for i in range(args.labels)])

    t0 = time.perf_counter()
    ari_npmi = adjusted_rand_score(truth.group, npmi_clusters(X, k))
    ari_npmi_oracle = adjusted_rand_score(truth.group, npmi_clusters(X, truth.n_groups))
    t_base = time.perf_counter() - t0

    print(f"HLTA fit: {t_fit:.1f} s wall, peak RSS {peak_mb:.0f} MiB, {levels} levels, "
          f"{k} level-1 clusters, loglik/doc {est.loglik_ / est.n_documents_:.4f}, BIC {est.bic_:.1f}")
    print(f"level-1 ARI vs planted groups: HLTA {ari_tree:.4f} | NPMI agglomerative (k={k}) "
          f"{ari_npmi:.4f} | NPMI agglomerative (true k={truth.n_groups}) {ari_npmi_oracle:.4f} "
          f"({t_base:.1f} s)")
    print(f"level-2 ARI vs planted super-groups: HLTA {ari_l2:.4f}")
    cpu = f"{os.cpu_count()} cores, {platform.machine()}"
    print()
    print("| benchmark | docs | labels | fit wall (s) | peak RSS (MiB) | HLTA level-1 ARI | "
          "NPMI-agglo ARI (same k) | NPMI-agglo ARI (true k) | machine |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| bench_hlta | {args.docs} | {args.labels} | {t_fit:.1f} | {peak_mb:.0f} | {ari_tree:.4f} | "
          f"{ari_npmi:.4f} | {ari_npmi_oracle:.4f} | {cpu} |")


if __name__ == "__main__":
    main()
