"""Tests of the versioned tree store (store/trees.py): round trips, versions,
atomic publish under concurrent readers, failed writes, prune, model guard."""

from __future__ import annotations

import json
import os
import threading

import networkx as nx
import numpy as np
import pytest
from cwox.store import trees as st
from cwox.store.trees import (
    CorruptStoreError,
    IncompatibleTreeError,
    StoreNotFoundError,
    VersionNotFoundError,
    check_compatible,
    list_versions,
    load_tree,
    prune,
    publish,
    published_version,
    save_tree,
    tree_info,
)
from tree_factories import random_tree, sample_documents


def assert_same_tree(a: nx.DiGraph, b: nx.DiGraph, cpts: bool = True) -> None:
    assert set(a.nodes) == set(b.nodes)
    assert set(a.edges) == set(b.edges)
    assert a.graph["class_names"] == b.graph["class_names"]
    assert a.graph["n_labels"] == b.graph["n_labels"]
    for node in a.nodes:
        for key in ("level", "card", "label"):
            assert a.nodes[node].get(key) == b.nodes[node].get(key), (node, key)
        if cpts:
            np.testing.assert_array_equal(a.nodes[node]["cpt"], b.nodes[node]["cpt"])


def test_round_trip_keeps_structure_cpts_and_clusters(tmp_path):
    tree = random_tree(1)
    tree.nodes["c11"]["never_occurs"] = True  # extra scalar attributes (HLTA sets this one) survive
    tree.nodes["Z10"]["blob"] = object()  # others are dropped, with a warning
    path = tmp_path / "trees.zarr"
    with pytest.warns(UserWarning, match="'blob' of Z10"):
        vid = save_tree(tree, path, meta={"model": "effnet", "loglik": -12.5, "n_documents": 40})
    assert vid == "v0001"
    back = load_tree(path, version=vid)
    assert_same_tree(tree, back)
    assert back.nodes["c11"]["never_occurs"] is True and "blob" not in back.nodes["Z10"]
    assert back.graph["loglik"] == -12.5 and back.graph["n_documents"] == 40
    assert "node_attrs" not in tree_info(path, vid)
    # each parent's child order survives (nodes.json export relies on it)
    for node in tree.nodes:
        assert list(back.successors(node)) == list(tree.successors(node))
    assert back.graph["version"] == "v0001"
    meta = back.graph["meta"]
    assert meta["model"] == "effnet" and meta["loglik"] == -12.5 and meta["n_documents"] == 40
    # n_params computed from the structure: sum (card-1) * parent card
    want = sum((d["card"] - 1) * (tree.nodes[p[0]]["card"] if (p := list(tree.predecessors(n))) else 1)
               for n, d in tree.nodes(data=True))
    assert meta["n_params"] == want
    assert meta["n_labels"] == 12 and meta["has_cpts"] is True
    assert meta["published"] is False


def test_round_trip_same_clusters_and_likelihood(tmp_path):
    htree = pytest.importorskip("cwox.hlta.tree")
    tree = random_tree(2)
    X = sample_documents(tree, 200, seed=3)
    save_tree(tree, tmp_path / "t.zarr", publish=True)
    back = load_tree(tmp_path / "t.zarr")
    for level in (1, 2):
        assert htree.clusters(back, level=level) == htree.clusters(tree, level=level)
    assert htree.log_likelihood(back, X) == pytest.approx(htree.log_likelihood(tree, X), rel=1e-12)


def test_versions_publish_and_latest(tmp_path):
    path = tmp_path / "t.zarr"
    v1 = save_tree(random_tree(1), path)
    with pytest.raises(VersionNotFoundError, match="no version .* has been published.*v0001"):
        load_tree(path)
    assert published_version(path) is None
    v2 = save_tree(random_tree(2), path, publish=True)
    v3 = save_tree(random_tree(3), path)
    assert list_versions(path) == ["v0001", "v0002", "v0003"] == [v1, v2, v3]
    assert load_tree(path).graph["version"] == "v0002"
    assert load_tree(path, "newest").graph["version"] == "v0003"
    assert load_tree(path, "1").graph["version"] == "v0001"
    publish(path, v3)
    assert published_version(path) == "v0003"
    assert tree_info(path)["published"] is True
    assert tree_info(path, "v0001")["published"] is False
    with pytest.raises(VersionNotFoundError, match="no version 'v0009'.*v0001, v0002, v0003"):
        load_tree(path, "v0009")


def test_prune_keeps_newest_and_published(tmp_path):
    path = tmp_path / "t.zarr"
    for seed in range(5):
        save_tree(random_tree(seed), path, publish=(seed == 1))
    removed = prune(path, keep=2)
    assert removed == ["v0001", "v0003"]
    assert list_versions(path) == ["v0002", "v0004", "v0005"]
    assert load_tree(path).graph["version"] == "v0002"
    assert prune(path, keep=0) == ["v0004", "v0005"]
    assert list_versions(path) == ["v0002"]
    # numbers of pruned versions are never reused (readers may cache by version id)
    assert save_tree(random_tree(9), path) == "v0006"
    with pytest.raises(ValueError, match="keep"):
        prune(path, keep=-1)


def test_failed_write_leaves_store_and_pointer_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "t.zarr"
    save_tree(random_tree(1), path, publish=True)
    real_put = st._put_array
    calls = {"n": 0}

    def failing_put(group, name, values):  # fault injection: die after a few arrays
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full (simulated)")
        return real_put(group, name, values)

    monkeypatch.setattr(st, "_put_array", failing_put)
    with pytest.raises(OSError, match="simulated"):
        save_tree(random_tree(2), path, publish=True)
    monkeypatch.undo()
    assert list_versions(path) == ["v0001"]
    assert published_version(path) == "v0001"
    assert os.listdir(path / ".staging") == []  # the partial version was removed
    assert_same_tree(load_tree(path), random_tree(1))
    # a leftover from a killed writer (no cleanup ran) is ignored too
    (path / ".staging" / "new-crashed").mkdir()
    (path / ".staging" / "new-crashed" / "zarr.json").write_text("{")
    assert list_versions(path) == ["v0001"]
    assert save_tree(random_tree(3), path) == "v0002"


def test_concurrent_reader_never_sees_a_mix(tmp_path):
    """A reader loading in a loop while a writer saves and publishes: every tree
    it gets is whole and self-consistent (its root CPT encodes its generation)."""
    path = tmp_path / "t.zarr"
    n_gen = 12

    def generation_tree(g: int) -> nx.DiGraph:
        return random_tree(seed=g, root_p=(g + 1) / 100)

    save_tree(generation_tree(0), path, meta={"generation": 0}, publish=True)
    expected = {g: generation_tree(g) for g in range(n_gen)}
    stop = threading.Event()
    seen, errors = [], []

    def reader():
        while not stop.is_set():
            try:
                tree = load_tree(path)
                g = tree.graph["meta"]["generation"]
                assert round(tree.nodes["Z1"]["cpt"][1] * 100) - 1 == g
                assert_same_tree(tree, expected[g])
                seen.append(g)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for g in range(1, n_gen):
            save_tree(expected[g], path, meta={"generation": g}, publish=True)
            if g % 2 == 0:  # pruning the version a reader may be reading: it follows the pointer again
                prune(path, keep=1)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert len(set(seen)) >= 2, f"the reader saw too few generations: {sorted(set(seen))}"
    assert seen == sorted(seen), "a reader went back to an older tree"
    assert load_tree(path).graph["meta"]["generation"] == n_gen - 1


def test_concurrent_writers_get_distinct_versions(tmp_path):
    path = tmp_path / "t.zarr"
    save_tree(random_tree(0), path)
    got, errors = [], []

    def writer(seed):
        try:
            for i in range(4):
                got.append((save_tree(random_tree(seed), path, meta={"writer": seed, "i": i}), seed, i))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert sorted(v for v, _, _ in got) == [f"v{n:04d}" for n in range(2, 10)]
    for vid, seed, i in got:  # each version holds what its writer wrote
        tree = load_tree(path, vid)
        assert (tree.graph["meta"]["writer"], tree.graph["meta"]["i"]) == (seed, i)
        assert_same_tree(tree, random_tree(seed))


def test_structure_only_tree_round_trip(tmp_path):
    tree = random_tree(4)
    for node in tree.nodes:
        tree.nodes[node]["cpt"] = None
    tree.nodes["Z10"]["name"] = "cats"
    tree.nodes["Z10"]["percentage"] = 0.25
    save_tree(tree, tmp_path / "t.zarr")
    back = load_tree(tmp_path / "t.zarr", "newest")
    assert_same_tree(tree, back, cpts=False)
    assert all(d["cpt"] is None for _, d in back.nodes(data=True))
    assert back.nodes["Z10"]["name"] == "cats" and back.nodes["Z10"]["percentage"] == 0.25
    assert "percentage" not in back.nodes["Z11"]
    info = back.graph["meta"]
    assert info["has_cpts"] is False and info["n_params"] is None


def test_bad_input_and_bad_stores(tmp_path):
    tree = random_tree(1)
    tree.nodes["Z10"]["cpt"] = np.ones((3, 3))
    with pytest.raises(ValueError, match="Z10 has a CPT of shape"):
        save_tree(tree, tmp_path / "a.zarr")
    tree = random_tree(1)
    tree.remove_node("c11")
    with pytest.raises(ValueError, match=r"labels without a leaf: \[11\]"):
        save_tree(tree, tmp_path / "a.zarr")
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        save_tree(random_tree(1), tmp_path / "a.zarr", meta={"x": object()})
    assert not (tmp_path / "a.zarr" / "versions").exists() or list_versions(tmp_path / "a.zarr") == []
    with pytest.raises(StoreNotFoundError, match="no tree store"):
        load_tree(tmp_path / "missing.zarr")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(st.TreeStoreError, match="not a tree store"):
        save_tree(random_tree(1), tmp_path / "junk")
    path = tmp_path / "t.zarr"
    save_tree(random_tree(1), path, publish=True)
    (path / "latest").write_text("garbage")
    with pytest.raises(CorruptStoreError, match="pointer file .* is corrupt"):
        load_tree(path)
    publish(path, "v0001")
    # Zarr reads a missing chunk as fill values: the checksum catches it
    chunk = next((path / "versions" / "v0001" / "cpt_values").rglob("c/*"))
    chunk.rename(tmp_path / "chunk")
    with pytest.raises(CorruptStoreError, match="v0001 .* damaged"):
        load_tree(path)
    (tmp_path / "chunk").rename(chunk)
    load_tree(path)
    (path / "versions" / "v0001" / "parent" / "zarr.json").write_text("{not json")
    with pytest.raises(CorruptStoreError, match="v0001 .* cannot be read"):
        load_tree(path)


def test_meta_numpy_values_are_stored_as_json(tmp_path):
    meta = {"loglik": np.float64(-3.5), "n_documents": np.int64(7), "hlta_params": {"max_island": 15,
            "seed": np.int32(0)}, "documents": tmp_path / "docs.zarr"}
    save_tree(random_tree(1), tmp_path / "t.zarr", meta=meta)
    info = tree_info(tmp_path / "t.zarr", "v0001")
    assert info["loglik"] == -3.5 and info["n_documents"] == 7
    assert info["hlta_params"] == {"max_island": 15, "seed": 0}
    assert info["documents"] == os.fspath(tmp_path / "docs.zarr")
    assert info["cwox_version"] and info["created_at"].endswith("+00:00")
    raw = json.loads((tmp_path / "t.zarr" / "versions" / "v0001" / "zarr.json").read_text())
    assert raw["attributes"]["loglik"] == -3.5


def test_check_compatible(tmp_path):
    path = tmp_path / "t.zarr"
    save_tree(random_tree(1), path, meta={"model": "efficientnet-lite0"}, publish=True)
    tree = load_tree(path)
    names = list(tree.graph["class_names"])
    check_compatible(tree, "efficientnet-lite0", names)
    check_compatible(tree, None, names)
    with pytest.raises(IncompatibleTreeError, match="'efficientnet-lite0'.*'resnet50'"):
        check_compatible(tree, "resnet50", names)
    other = names.copy()
    other[3] = "hen"
    with pytest.raises(IncompatibleTreeError, match="first at class 3: tree has 'hen-of-the-woods', classifier has 'hen'"):
        check_compatible(tree, "efficientnet-lite0", other)
    with pytest.raises(IncompatibleTreeError, match="12 classes .* has 11"):
        check_compatible(tree, "efficientnet-lite0", names[:-1])
