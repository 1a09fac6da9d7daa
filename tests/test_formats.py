"""Tests of tree import/export (store/formats.py): BIF through pgmpy and HLTA's
``*.nodes.json``; round trips keep the clusters (and, for BIF, the likelihood)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cwox.hlta.tree import clusters, log_likelihood, validate_tree
from cwox.store.formats import (
    TreeFormatError,
    from_bif,
    from_nodes_json,
    read_class_names,
    to_bif,
    to_nodes_json,
)
from cwox.store.trees import load_tree, save_tree
from tree_factories import random_tree, sample_documents


def same_clusters(a, b, levels=(1, 2, 3)):
    for level in levels:
        assert clusters(a, level=level) == clusters(b, level=level), f"level {level}"
    rng = np.random.default_rng(0)
    subset = rng.permutation(a.graph["n_labels"])[:6].tolist()
    assert clusters(a, subset) == clusters(b, subset)


def test_bif_round_trip_keeps_everything(tmp_path):
    tree = random_tree(5)
    X = sample_documents(tree, 300, seed=1)
    to_bif(tree, tmp_path / "t.bif")
    text = (tmp_path / "t.bif").read_text()
    assert "network cwox_latent_tree" in text and "property name = tiger%20cat ;" in text
    back = from_bif(tmp_path / "t.bif")
    validate_tree(back)
    assert set(back.edges) == set(tree.edges)
    assert back.graph["class_names"] == tree.graph["class_names"]
    for node, data in tree.nodes(data=True):
        assert back.nodes[node]["level"] == data["level"]
        np.testing.assert_allclose(back.nodes[node]["cpt"], data["cpt"], rtol=1e-15)
    same_clusters(tree, back)
    assert log_likelihood(back, X) == pytest.approx(log_likelihood(tree, X), rel=1e-12)


def test_bif_without_properties_recomputes_levels(tmp_path):
    tree = random_tree(6)
    to_bif(tree, tmp_path / "t.bif")
    lines = (tmp_path / "t.bif").read_text().splitlines()
    (tmp_path / "plain.bif").write_text("\n".join(x for x in lines if "property" not in x) + "\n")
    back = from_bif(tmp_path / "plain.bif", class_names=tree.graph["class_names"])
    # level-1 islands stay level 1; levels above are heights (the top chain Z1 -> Z2 lifts Z1)
    assert clusters(back, level=1) == clusters(tree, level=1)
    assert back.nodes["Z2"]["level"] == 2 and back.nodes["Z1"]["level"] == 3
    assert back.nodes["c0"]["name"] == "tiger cat"
    X = sample_documents(tree, 100, seed=2)
    assert log_likelihood(back, X) == pytest.approx(log_likelihood(tree, X), rel=1e-12)


def test_bif_errors(tmp_path):
    tree = random_tree(1)
    for node in tree.nodes:
        tree.nodes[node]["cpt"] = None
    with pytest.raises(ValueError, match="structure-only"):
        to_bif(tree, tmp_path / "x.bif")
    (tmp_path / "bad.bif").write_text("network x {\n}\nvariable A {\n  type discrete [ 2 ] { 0, 1 };\n}\n"
                                      "probability ( A | B ) {\n  ( 0 ) 0.5;\n}\n")
    with pytest.raises(TreeFormatError, match="bad.bif"):
        from_bif(tmp_path / "bad.bif")
    with pytest.raises(FileNotFoundError):
        from_bif(tmp_path / "missing.bif")


def test_nodes_json_round_trip_keeps_clusters(tmp_path):
    tree = random_tree(7)
    to_nodes_json(tree, tmp_path / "t.nodes.json")
    entries = json.loads((tmp_path / "t.nodes.json").read_text())
    # the top level: root Z1 and Z2 (same level) listed side by side
    assert [e["id"] for e in entries] == ["Z1", "Z2"]
    assert all(e["data"]["level"] == 2 for e in entries)
    level1 = [k for e in entries for k in e["children"] if k["data"]["level"] == 1]
    assert level1 and all(k["children"] == [] for k in level1)
    assert all(0 < k["data"]["percentage"] < 1 for k in level1)
    first = level1[0]["text"].split()
    assert first[0].startswith("c0") and float(first[1]) >= float(first[3])  # by P(label | Z)
    back = from_nodes_json(tmp_path / "t.nodes.json", class_names=tree.graph["class_names"])
    validate_tree(back)
    assert all(d["cpt"] is None for _, d in back.nodes(data=True))
    assert set(back.edges) == set(tree.edges)
    assert back.graph["class_names"] == tree.graph["class_names"]
    same_clusters(tree, back)
    with pytest.raises(ValueError):
        log_likelihood(back, sample_documents(tree, 10))
    # structure-only trees also go through the store and out again, same clusters
    save_tree(back, tmp_path / "t.zarr")
    again = load_tree(tmp_path / "t.zarr", "newest")
    same_clusters(tree, again)
    to_nodes_json(again, tmp_path / "again.nodes.json")
    third = from_nodes_json(tmp_path / "again.nodes.json", class_names=tree.graph["class_names"])
    same_clusters(tree, third)
    assert third.nodes["Z10"]["percentage"] == pytest.approx(back.nodes["Z10"]["percentage"])


def test_nodes_json_without_class_names_keeps_file_names(tmp_path):
    tree = random_tree(8)
    to_nodes_json(tree, tmp_path / "t.nodes.json")
    entries = json.loads((tmp_path / "t.nodes.json").read_text())
    del entries[0]["data"]["cwox"]  # as the HLTA tools write it: no cwox record
    (tmp_path / "hlta.nodes.json").write_text(json.dumps(entries))
    back = from_nodes_json(tmp_path / "hlta.nodes.json")
    assert back.graph["n_labels"] == tree.graph["n_labels"]
    assert back.graph["class_names"][0] == "tiger_cat"  # spaces travel as '_'
    assert back.graph["class_names"][3] == "hen-of-the-woods"
    same_clusters(tree, back)


@pytest.mark.parametrize("fmt", ["json", "bif"])
def test_round_trip_gives_back_the_same_tree_names_and_metadata(tmp_path, fmt):
    """A cwox export carries the exact class names (spaces and real underscores) and the
    provenance: a store -> file -> store round trip changes nothing a reader sees."""
    tree = random_tree(8)
    names = list(tree.graph["class_names"])
    names[1] = "snake_case_name"  # a real underscore next to 'tiger cat' and 'Egyptian_cat'
    tree.graph["class_names"] = names
    for _node, data in tree.nodes(data=True):
        if "label" in data:
            data["name"] = names[data["label"]]
    meta = {"model": "efficientnet_lite0", "documents": "/d/docs.zarr", "loglik": -12.5, "bic": -20.25,
            "n_documents": 40, "hlta_params": {"max_island": 15}, "rule": {"kind": "top_k", "k": 5}}
    v = save_tree(tree, tmp_path / "a.zarr", meta=meta)
    stored = load_tree(tmp_path / "a.zarr", v)
    write, read = (to_nodes_json, from_nodes_json) if fmt == "json" else (to_bif, from_bif)
    write(stored, tmp_path / f"t.{fmt}")
    back = read(tmp_path / f"t.{fmt}")
    assert back.graph["class_names"] == names
    assert sorted(back.edges()) == sorted(stored.edges())
    assert {n: d["name"] for n, d in back.nodes(data=True) if "label" in d} == \
        {n: d["name"] for n, d in stored.nodes(data=True) if "label" in d}
    v2 = save_tree(back, tmp_path / "b.zarr", meta=back.graph["meta"])
    again = load_tree(tmp_path / "b.zarr", v2)
    for key, value in meta.items():
        assert again.graph["meta"][key] == value, key
    assert again.graph["meta"]["exported_version"] == v
    same_clusters(stored, again)


HLTA_STYLE = [
    {"id": "Z41", "text": "c005-rifle 0.03 c012-hen-of-the-woods 0.02", "data": {"name": "Z41", "level": 3,
     "percentage": 0.9}, "children": [
        {"id": "Z32", "text": "c005-rifle 0.02 c003-assault_rifle 0.01", "data": {"name": "Z32", "level": 2,
         "percentage": 0.4}, "children": [
            {"id": "Z137", "text": "c005-rifle 0.0 c003-assault_rifle 0.0", "data": {"name": "Z137", "level": 1,
             "percentage": 0.18}, "children": []},
            {"id": "Z134", "text": "c000-drum 0.01 c001-drumstick 0.01 c009-stage 0.01",
             "data": {"name": "Z134", "level": 1, "percentage": 0.26}, "children": []}]},
        {"id": "Z28", "text": "c012-hen-of-the-woods 0.01", "data": {"name": "Z28", "level": 2, "percentage": 0.29},
         "children": [
            {"id": "Z130", "text": "c012-hen-of-the-woods 0.0 c011-ping-pong_ball 0.0", "data": {"name": "Z130",
             "level": 1, "percentage": 0.23}, "children": []}]}]},
    {"id": "Z43", "text": "c004-oboe 0.02", "data": {"name": "Z43", "level": 3, "percentage": 0.01}, "children": [
        {"id": "Z39", "text": "c004-oboe 0.03", "data": {"name": "Z39", "level": 2, "percentage": 0.01},
         "children": [
            {"id": "Z243", "text": "c004-oboe 0.01 c002-bassoon 0.02", "data": {"name": "Z243", "level": 1,
             "percentage": 0.01}, "children": []}]}]},
]


def test_nodes_json_in_the_hlta_tools_shape(tmp_path):
    path = tmp_path / "model.nodes.json"
    path.write_text(json.dumps(HLTA_STYLE))
    names = [f"name {i}" for i in range(14)]
    tree = from_nodes_json(path, class_names=names)
    validate_tree(tree)
    assert tree.graph["n_labels"] == 14
    assert list(tree.predecessors("Z43")) == ["Z41"]  # other top nodes hang under the first
    assert tree.nodes["Z43"]["level"] == 3 and tree.nodes["Z41"]["percentage"] == 0.9
    assert clusters(tree, [5, 3, 0, 9, 1, 12, 11, 4, 2]) == [[5, 3], [0, 9, 1], [12, 11], [4, 2]]
    assert clusters(tree, [5, 0, 12, 4, 6], level=2) == [[5, 0], [12], [4], [6]]
    assert clusters(tree, [5, 0, 12, 4], level=3) == [[5, 0, 12], [4]]
    # labels named nowhere (6, 7, 8, 10, 13) are root singletons
    for lab in (6, 7, 8, 10, 13):
        assert list(tree.predecessors(f"c{lab}")) == ["Z41"]
    assert tree.nodes["c12"]["name"] == "name 12"
    plain = from_nodes_json(path)
    assert plain.graph["n_labels"] == 13
    assert plain.nodes["c12"]["name"] == "hen-of-the-woods"
    assert plain.nodes["c11"]["name"] == "ping-pong_ball"
    assert plain.nodes["c6"]["name"] == "c6"


def test_nodes_json_errors(tmp_path):
    path = tmp_path / "bad.nodes.json"
    path.write_text("[{not json")
    with pytest.raises(TreeFormatError, match="not valid JSON"):
        from_nodes_json(path)
    dup = json.loads(json.dumps(HLTA_STYLE))
    dup[1]["children"][0]["children"][0]["text"] = "c005-rifle 0.1"
    path.write_text(json.dumps(dup))
    with pytest.raises(TreeFormatError, match="c5 .* both Z137 and Z243"):
        from_nodes_json(path)
    words = [{"id": "Z1", "text": "nips-dataset farhan", "data": {"level": 1}, "children": []}]
    path.write_text(json.dumps(words))
    with pytest.raises(TreeFormatError, match="cannot read 'nips-dataset'"):
        from_nodes_json(path)
    path.write_text(json.dumps(HLTA_STYLE))
    with pytest.raises(TreeFormatError, match="up to 12 but only 5 class names"):
        from_nodes_json(path, class_names=list("abcde"))
    path.write_text(json.dumps([{"id": "X1", "text": "", "children": []}]))
    with pytest.raises(TreeFormatError, match="neither a latent"):
        from_nodes_json(path)


def test_read_class_names(tmp_path):
    (tmp_path / "a.txt").write_text("tiger cat\n\nhen-of-the-woods\n")
    (tmp_path / "b.json").write_text(json.dumps(["x", "y z"]))
    (tmp_path / "c.json").write_text(json.dumps({"1": "b", "0": "a"}))
    assert read_class_names(tmp_path / "a.txt") == ["tiger cat", "hen-of-the-woods"]
    assert read_class_names(tmp_path / "b.json") == ["x", "y z"]
    assert read_class_names(tmp_path / "c.json") == ["a", "b"]
    (tmp_path / "d.json").write_text("[1, 2]")
    with pytest.raises(TreeFormatError, match="list of strings"):
        read_class_names(tmp_path / "d.json")


def test_round_trips_of_a_learned_tree(tmp_path):
    """A tree fitted by hlta.HLTA: nodes.json and BIF keep its clusters at every level,
    BIF its likelihood; the imported structure-only tree cuts exactly like it."""
    from cwox.hlta import HLTA
    from cwox.hlta.synthetic import planted_structure
    from cwox.hlta.synthetic import sample_documents as planted_documents

    X = planted_documents(planted_structure(24, random_state=2), 400, random_state=3)
    tree = HLTA(random_state=0, max_top=3).fit(X).tree_
    top = max(d["level"] for _, d in tree.nodes(data=True))
    to_nodes_json(tree, tmp_path / "t.nodes.json")
    to_bif(tree, tmp_path / "t.bif")
    names = tree.graph["class_names"]
    from_json = from_nodes_json(tmp_path / "t.nodes.json", class_names=names)
    from_b = from_bif(tmp_path / "t.bif")
    levels = tuple(range(1, top + 2))
    same_clusters(tree, from_json, levels)
    same_clusters(tree, from_b, levels)
    assert log_likelihood(from_b, X) == pytest.approx(log_likelihood(tree, X), rel=1e-10)


def test_nodes_json_level1_latent_with_a_latent_child(tmp_path):
    """Unusual shapes still come back: labels of a latent that also has latent
    children are written as explicit leaf nodes."""
    tree = random_tree(9)
    kid = next(k for k in tree.successors("Z10") if k.startswith("c"))
    # move one label under a new level-1 latent hanging below Z10 (also level 1)
    tree.add_node("Z99", level=1, card=2, cpt=np.array([[0.3, 0.6, 0.5], [0.7, 0.4, 0.5]]))
    tree.remove_edge("Z10", kid)
    tree.add_edge("Z10", "Z99")
    tree.add_edge("Z99", kid)
    tree.nodes[kid]["cpt"] = np.array([[0.9, 0.2], [0.1, 0.8]])
    validate_tree(tree)
    to_nodes_json(tree, tmp_path / "t.nodes.json")
    back = from_nodes_json(tmp_path / "t.nodes.json", class_names=tree.graph["class_names"])
    assert set(back.edges) == set(tree.edges)
    same_clusters(tree, back)


FOREIGN_BIF = """// written by another HLTA tool: quoted names, s0/s1 states, word variables
network "HLCM1" {
}
variable "Z1" {
\ttype discrete[2] { "s0" "s1" };
}
variable "Z2" {
\ttype discrete[2] { "s0" "s1" };
}
variable "Z3" {
\ttype discrete[2] { "s0" "s1" };
}
variable "dog" {
\ttype discrete[2] { "s0" "s1" };
}
variable "cat-food" {
\ttype discrete[2] { "s0" "s1" };
}
variable "tabby" {
\ttype discrete[2] { "s0" "s1" };
}
variable "tiger_cat" {
\ttype discrete[2] { "s0" "s1" };
}
probability ( "Z1" ) {
\ttable 0.7 0.3;
}
probability ( "Z2" | "Z1" ) {
\ttable 0.9 0.2 0.1 0.8;
}
probability ( "Z3" | "Z1" ) {
\ttable 0.6 0.3 0.4 0.7;
}
probability ( "dog" | "Z2" ) {
\ttable 0.95 0.4 0.05 0.6;
}
probability ( "cat-food" | "Z2" ) {
\ttable 0.9 0.5 0.1 0.5;
}
probability ( "tabby" | "Z3" ) {
\ttable 0.8 0.1 0.2 0.9;
}
probability ( "tiger_cat" | "Z3" ) {
\ttable 0.85 0.3 0.15 0.7;
}
"""


def test_bif_from_another_tool(tmp_path):
    path = tmp_path / "other.bif"
    path.write_text(FOREIGN_BIF)
    tree = from_bif(path)  # labels numbered in sorted order of the variable names
    assert tree.graph["class_names"] == ["cat-food", "dog", "tabby", "tiger_cat"]
    assert {n: d["level"] for n, d in tree.nodes(data=True) if n.startswith("Z")} == {"Z1": 2, "Z2": 1, "Z3": 1}
    assert clusters(tree) == [[0, 1], [2, 3]]
    np.testing.assert_allclose(tree.nodes["c2"]["cpt"], [[0.8, 0.1], [0.2, 0.9]])
    np.testing.assert_allclose(tree.nodes["Z1"]["cpt"], [0.7, 0.3])
    names = ["tabby", "dog", "extra", "cat-food", "tiger_cat"]
    named = from_bif(path, class_names=names)
    assert named.graph["class_names"] == names
    assert clusters(named) == [[0, 4], [1, 3], [2]]
    np.testing.assert_allclose(named.nodes["c2"]["cpt"], [[1.0, 1.0], [0.0, 0.0]])  # never present
    X = np.array([[1, 1, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]])
    # the extra label, always absent, changes nothing: same likelihood as the 4-label tree
    assert log_likelihood(named, X) == pytest.approx(log_likelihood(tree, X[:, [3, 1, 0, 4]]), rel=1e-12)
    with pytest.raises(TreeFormatError, match="neither 'c<label>' nor in the class names"):
        from_bif(path, class_names=["dog", "tabby", "tiger_cat", "x"])
