"""Tests of ``cwox fit-tree`` and ``cwox tree show|export|import|versions|publish|prune``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from cwox.hlta.tree import clusters
from cwox.store.trees import list_versions, load_tree, published_version, save_tree, tree_info
from tree_factories import random_tree

from cwox.cli import main


def run(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def assert_clean_error(result, *fragments: str):
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for frag in fragments:
        assert frag in result.output, result.output


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "trees.zarr"
    save_tree(random_tree(3), path, meta={"model": "efficientnet_lite0", "loglik": -10.0}, publish=True)
    return path


def write_documents(path, X, class_names, model="toy-model"):
    """A real documents store (store.documents) holding the rows of binary ``X``."""
    from cwox.store.documents import create_documents

    n, _ = X.shape
    k = X.sum(axis=1).astype(np.int16)
    width = int(max(1, k.max()))
    g = create_documents(path, [f"img{i}.jpg" for i in range(n)], views=1, width=width, chunk_size=n,
                         attrs={"model": model, "class_names": list(class_names)})
    order = np.argsort(-X, axis=1, kind="stable")[:, :width]
    labels = np.where(np.arange(width)[None, :] < k[:, None], order, -1).astype(np.int32)
    g["labels"][:] = labels
    g["k"][:] = k
    g["done"][:] = True


def test_fit_tree_saves_a_version_with_provenance(tmp_path):
    from cwox.hlta.synthetic import planted_structure, sample_documents

    truth = planted_structure(14, random_state=0)
    X = sample_documents(truth, 300, random_state=1).toarray().astype(np.int8)
    X[:, 13] = 0  # a label that never occurs: a root singleton
    names = [f"class {i}" for i in range(14)]
    docs = tmp_path / "docs.zarr"
    write_documents(docs, X, names)
    out = tmp_path / "trees.zarr"
    result = run("fit-tree", docs, "--out", out, "--publish", "--seed", "1", "--max-top", "5")
    assert result.exit_code == 0, result.output
    assert "saved tree v0001" in result.output and "(published)" in result.output
    assert "loglik" in result.output and "BIC" in result.output and "clusters at level 1" in result.output
    info = tree_info(out)
    X = X[X.sum(axis=1) > 0]  # the documents store drops documents without labels
    assert info["model"] == "toy-model" and info["n_documents"] == X.shape[0]
    assert info["documents"] == str(docs.resolve())
    assert info["hlta_params"]["max_top"] == 5 and info["hlta_params"]["random_state"] == 1
    assert info["bic"] < info["loglik"] < 0 and info["n_params"] > 0
    tree = load_tree(out)
    assert tree.graph["class_names"] == names
    root = next(n for n, d in tree.in_degree() if d == 0)
    assert list(tree.predecessors("c13")) == [root]  # never occurs: hangs under the root
    assert tree.nodes["c13"]["cpt"][1].max() < 0.01
    assert tree.nodes["c13"].get("never_occurs") is True  # extra node attributes survive the store
    # the printed loglik is the stored tree's exact log-likelihood
    from cwox.hlta.tree import log_likelihood

    assert log_likelihood(tree, X) == pytest.approx(info["loglik"], rel=1e-6)
    # and the loaded tree wraps back into a fitted estimator with the same scores
    from cwox.hlta import HLTA

    est = HLTA.from_tree(tree, **info["hlta_params"])
    assert est.loglik_ == info["loglik"] and est.n_params_ == info["n_params"]
    assert est.bic_ == pytest.approx(info["bic"], rel=1e-12)


def test_fit_tree_errors(tmp_path):
    assert_clean_error(run("fit-tree", tmp_path / "nope.zarr", "--out", tmp_path / "t.zarr"),
                       "cannot read documents store", "nope.zarr")
    assert_clean_error(run("fit-tree", tmp_path, "--out", tmp_path / "t.zarr"), "cannot read documents store")


def test_show_prints_clusters_and_tree(store):
    result = run("tree", "show", store)
    assert result.exit_code == 0, result.output
    out = result.output
    tree = load_tree(store)
    assert "tree v0001 (published)" in out and "model efficientnet_lite0" in out
    names = tree.graph["class_names"]
    for group in clusters(tree):
        if len(group) > 1:
            parent = next(iter(tree.predecessors(f"c{group[0]}")))
            assert f"{parent} ({len(group)}): " + ", ".join(names[i] for i in group) in out
    assert "singletons (2): " in out
    tree_part = out.split("tree:\n", 1)[1].splitlines()
    assert tree_part[0].startswith("Z1 (level 2)")
    assert any(line.startswith("  Z2 (level 2)") for line in tree_part)
    assert any(line.startswith("    Z10 (level 1): ") for line in tree_part)


def test_show_with_labels(store):
    tree = load_tree(store)
    names = tree.graph["class_names"]
    a, b = clusters(tree)[0][:2]  # two labels of one island
    lone = tree.graph["n_labels"] - 1  # the root singleton
    result = run("tree", "show", store, "--labels", f"{names[a]},{b}, {names[lone].upper()}")
    assert result.exit_code == 0, result.output
    assert "3 labels cut into 2 clusters at level 1" in result.output
    assert f"{names[a]}, {names[b]}" in result.output
    assert f"singletons (1): {names[lone]}" in result.output
    # the tree part is restricted to their ancestors
    tree_part = result.output.split("tree:\n", 1)[1]
    others = [n for i, n in enumerate(names) if i not in (a, b, lone)]
    assert not any(n in tree_part for n in others if n not in (names[a], names[b], names[lone]))


def test_show_unknown_labels_suggest_close_matches(store):
    result = run("tree", "show", store, "--labels", "tabbby,tiger cat,999")
    assert_clean_error(result, "unknown label 'tabbby'", "close matches: tabby", "label id 999 is out of range")


def test_show_errors(store, tmp_path):
    assert_clean_error(run("tree", "show", tmp_path / "missing.zarr"), "no tree store")
    assert_clean_error(run("tree", "show", store, "--version", "v0042"), "no version 'v0042'", "v0001")
    save_tree(random_tree(4), store)
    (store / "latest").write_text("{broken")
    assert_clean_error(run("tree", "show", store), "pointer file", "corrupt")
    assert run("tree", "show", store, "--version", "2").exit_code == 0


def test_export_import_round_trips(store, tmp_path):
    tree = load_tree(store)
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(tree.graph["class_names"]) + "\n")
    for fmt, suffix in (("bif", ".bif"), ("json", ".nodes.json")):
        out_file = tmp_path / f"tree{suffix}"
        result = run("tree", "export", store, "--format", fmt, "--out", out_file)
        assert result.exit_code == 0, result.output
        target = tmp_path / f"imported-{fmt}.zarr"
        result = run("tree", "import", out_file, "--out", target, "--class-names", names_file,
                     "--model", "efficientnet_lite0", "--publish")
        assert result.exit_code == 0, result.output
        assert "imported" in result.output and "v0001" in result.output
        back = load_tree(target)
        assert back.graph["meta"]["model"] == "efficientnet_lite0"
        assert back.graph["class_names"] == tree.graph["class_names"]
        for level in (1, 2):
            assert clusters(back, level=level) == clusters(tree, level=level)
        has_cpts = fmt == "bif"
        assert back.graph["meta"]["has_cpts"] is has_cpts


def test_import_errors(tmp_path):
    bad = tmp_path / "bad.nodes.json"
    bad.write_text("[{]")
    assert_clean_error(run("tree", "import", bad, "--out", tmp_path / "t.zarr"), "not valid JSON")
    assert_clean_error(run("tree", "import", tmp_path / "none.bif", "--out", tmp_path / "t.zarr"), "no such file")
    bif = tmp_path / "bad.bif"
    bif.write_text("this is not a BIF file")
    assert_clean_error(run("tree", "import", bif, "--out", tmp_path / "t.zarr"), "bad.bif")
    good = tmp_path / "good.nodes.json"
    good.write_text(json.dumps([{"id": "Z1", "text": "c000-a 0.1 c001-b 0.2", "data": {"level": 1},
                                 "children": []}]))
    names = tmp_path / "names.json"
    names.write_text("[1, 2]")
    assert_clean_error(run("tree", "import", good, "--out", tmp_path / "t.zarr", "--class-names", names),
                       "list of strings")
    assert not (tmp_path / "t.zarr").exists()


def test_versions_publish_prune(store):
    for seed in (5, 6):
        save_tree(random_tree(seed), store)
    result = run("tree", "versions", store)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [ln[2:].split()[0] for ln in lines] == ["v0001", "v0002", "v0003"]
    assert lines[0].startswith("* v0001") and lines[1].startswith("  v0002")
    assert run("tree", "publish", store, "v0003").exit_code == 0
    assert published_version(store) == "v0003"
    result = run("tree", "prune", store, "--keep", "0")  # v0001, published before, is where a rollback goes
    assert result.exit_code == 0 and "removed 1 version(s): v0002" in result.output
    assert list_versions(store) == ["v0001", "v0003"]
    assert_clean_error(run("tree", "publish", store, "v0002"), "no version 'v0002'")
