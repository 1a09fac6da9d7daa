"""``cwox fit-tree --quality``, ``cwox tree quality`` and ``cwox tree show --docs``."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from cwox.store.documents import create_documents

from cwox.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_photo_documents(path, X, names, views=4):
    """A documents store whose rows are ``views`` views of ``len(X) / views`` photos."""
    n = X.shape[0]
    k = X.sum(axis=1).astype(np.int16)
    width = int(max(1, k.max()))
    g = create_documents(path, [f"photo{i}.jpg" for i in range(n // views)], views=views, width=width,
                         chunk_size=n, attrs={"model": "toy-model", "class_names": list(names)})
    order = np.argsort(-X, axis=1, kind="stable")[:, :width]
    g["labels"][:] = np.where(np.arange(width)[None, :] < k[:, None], order, -1).astype(np.int32)
    g["k"][:] = k
    g["done"][:] = True


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from cwox.hlta.synthetic import planted_structure, sample_documents

    d = tmp_path_factory.mktemp("q")
    truth = planted_structure(16, min_size=3, max_size=5, random_state=0)
    X = sample_documents(truth, 2000, random_state=1).toarray().astype(np.int8)
    X = X[X.sum(axis=1) > 0][:1600]
    names = [f"class {i}" for i in range(16)]
    write_photo_documents(d / "docs.zarr", X, names)
    res = run("fit-tree", d / "docs.zarr", "--out", d / "trees.zarr", "--publish", "--quality")
    assert res.exit_code == 0, res.output
    return d, truth, names, res.output


def test_fit_tree_quality_summary(fitted):
    _, _, _, out = fitted
    assert "tree quality (fitted on 80% of the photos, scored on the rest)" in out
    share, rand = map(float, re.search(r"confusion coherence\s+([\d.]+) \(random .*?: ([\d.]+)\)", out).groups())
    assert share > 2 * rand
    assert re.search(r"held-out loglik / doc\s+-\d", out)
    assert re.search(r"level 1: \d+ labels in \d+ multi-label clusters, largest \d+", out)
    assert "lift" in out  # clusters printed with their evidence


def test_tree_show_prints_each_clusters_evidence(fitted):
    from cwox.hlta.quality import cluster_evidence
    from cwox.hlta.tree import clusters
    from cwox.store.documents import open_documents
    from cwox.store.trees import load_tree

    d, _, names, _ = fitted
    res = run("tree", "show", d / "trees.zarr", "--docs", d / "docs.zarr")
    assert res.exit_code == 0, res.output
    X = open_documents(d / "docs.zarr").label_matrix()
    big = max(clusters(load_tree(d / "trees.zarr")), key=len)
    ev = cluster_evidence(big, X)
    line = next(ln for ln in res.output.splitlines() if ", ".join(names[i] for i in big) in ln)
    assert f"together in {ev.documents} documents, lift {ev.lift:.1f}" in line
    assert ev.lift > 1.5
    wrong = run("tree", "show", d / "trees.zarr", "--docs", d / "nope.zarr")
    assert wrong.exit_code == 2 and "cannot read documents store" in wrong.output


def test_tree_quality_command(fitted):
    d, _, _, _ = fitted
    res = run("tree", "quality", d / "trees.zarr", d / "docs.zarr")
    assert res.exit_code == 0, res.output
    assert "in-sample" in res.output  # the tree was fitted on these documents: said so
    assert "confusion coherence" in res.output and "held-out documents      1600" in res.output
    held = run("tree", "quality", d / "trees.zarr", d / "docs.zarr", "--heldout")
    # about 20 of the 100 photos (held out by a hash of each path), all 4 views of each
    from cwox.pipelines.trees import heldout_documents

    n_held = heldout_documents(d / "docs.zarr")[1].shape[0]
    assert n_held % 4 == 0 and 0.1 * 1600 <= n_held <= 0.3 * 1600
    assert held.exit_code == 0 and f"held-out documents      {n_held}\n" in held.output
    assert "in-sample" not in held.output
