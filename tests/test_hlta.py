"""Tests of the HLTA learner (hlta/): structure recovery, exact likelihood, contract, errors."""

from __future__ import annotations

import copy
import itertools

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from cwox.hlta import (
    HLTA,
    bic,
    cluster_of,
    clusters,
    log_likelihood,
    n_params,
    to_pgmpy,
    tree_from_groups,
    validate_tree,
)
from cwox.hlta.data import as_binary_csr, pairwise_mutual_information, unique_rows
from cwox.hlta.inference import compile_tree, expected_counts
from cwox.hlta.synthetic import planted_structure, sample_documents
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score, mutual_info_score

# --------------------------------------------------------------------------- fixtures


def _random_cpt(rng, card, parent_card=None):
    shape = (card,) if parent_card is None else (card, parent_card)
    a = rng.random(shape) + 0.05
    return a / a.sum(axis=0)


@pytest.fixture
def hand_tree():
    """A 6-label tree with a ternary latent, a leaf under the root and a chain of latents."""
    rng = np.random.default_rng(3)
    g = nx.DiGraph(n_labels=6, class_names=[f"class{i}" for i in range(6)])
    g.add_node("Z0", level=2, card=2, cpt=_random_cpt(rng, 2))
    g.add_node("Z1", level=1, card=2, cpt=_random_cpt(rng, 2, 2))
    g.add_node("Z2", level=1, card=3, cpt=_random_cpt(rng, 3, 2))
    g.add_edges_from([("Z0", "Z1"), ("Z0", "Z2")])
    for lab, parent in enumerate(["Z1", "Z1", "Z2", "Z2", "Z2", "Z0"]):
        pc = g.nodes[parent]["card"]
        g.add_node(f"c{lab}", level=0, label=lab, name=f"class{lab}", card=2, cpt=_random_cpt(rng, 2, pc))
        g.add_edge(parent, f"c{lab}")
    return g


def _brute_force_joint(tree, x):
    """{latent assignment: P(x, latents)} by enumerating every latent state."""
    latents = [n for n, d in tree.nodes(data=True) if d["level"] >= 1]
    out = {}
    for states in itertools.product(*(range(tree.nodes[z]["card"]) for z in latents)):
        val = dict(zip(latents, states, strict=True))
        val.update({f"c{i}": int(x[i]) for i in range(tree.graph["n_labels"])})
        p = 1.0
        for n, d in tree.nodes(data=True):
            par = list(tree.predecessors(n))
            p *= d["cpt"][val[n]] if not par else d["cpt"][val[n], val[par[0]]]
        out[states] = p
    return latents, out


@pytest.fixture(scope="module")
def planted():
    truth = planted_structure(80, random_state=1)
    X = sample_documents(truth, 30_000, random_state=11)
    est = HLTA(max_top=3, random_state=0).fit(X)
    return truth, X, est


# --------------------------------------------------------------------------- structure recovery


def test_planted_groups_recovered_at_level_1(planted):
    truth, X, est = planted
    sizes = np.bincount(truth.group)
    assert sizes.min() == 2 and sizes.max() >= 9  # unequal groups, 2..10
    freq = np.asarray(X.sum(axis=0)).ravel()
    assert freq.max() > 4 * freq.min()  # uneven label frequencies
    assign = cluster_of(est.tree_)
    ari = adjusted_rand_score(truth.group, [assign[i] for i in range(truth.n_labels)])
    assert ari >= 0.95


def test_planted_super_groups_form_level_2(planted):
    truth, _, est = planted
    levels = {d["level"] for _, d in est.tree_.nodes(data=True)}
    assert max(levels) >= 2
    assign = cluster_of(est.tree_, level=2)
    ari = adjusted_rand_score(truth.supergroup[truth.group], [assign[i] for i in range(truth.n_labels)])
    assert ari >= 0.8


def test_fitted_tree_follows_contract(planted):
    truth, X, est = planted
    tree = est.tree_
    validate_tree(tree)
    assert tree.graph["n_labels"] == truth.n_labels
    assert est.class_names_ == [str(i) for i in range(truth.n_labels)]
    latents = [n for n, d in tree.nodes(data=True) if d["level"] >= 1]
    assert all(tree.nodes[z]["card"] == 2 for z in latents)  # binary latents
    top = max(tree.nodes[z]["level"] for z in latents)
    for z in latents:
        parents = list(tree.predecessors(z))
        level = tree.nodes[z]["level"]
        if level < top:  # stacked levels: the parent is one level up
            assert tree.nodes[parents[0]]["level"] == level + 1
        elif parents:  # the top level is a tree of latents among themselves
            assert tree.nodes[parents[0]]["level"] == top
    for lab in range(truth.n_labels):  # every leaf hangs from a level-1 latent
        assert tree.nodes[next(tree.predecessors(f"c{lab}"))]["level"] == 1


def test_fit_likelihood_matches_tree_and_improves_on_independence(planted):
    _, X, est = planted
    assert est.loglik_ == pytest.approx(log_likelihood(est.tree_, X), rel=1e-9)
    assert est.score(X) == pytest.approx(est.loglik_ / X.shape[0])
    p = np.asarray(X.mean(axis=0)).ravel()
    indep = float(np.asarray(X.sum(axis=0)).ravel() @ np.log(p) + (X.shape[0] - np.asarray(X.sum(axis=0)).ravel()) @ np.log1p(-p))
    assert est.loglik_ > indep + 1000


# --------------------------------------------------------------------------- exact likelihood


def test_log_likelihood_equals_brute_force_enumeration(hand_tree):
    X = (np.random.default_rng(0).random((40, 6)) < 0.35).astype(float)
    X[:4] = 0  # empty documents count too
    expected = sum(np.log(sum(_brute_force_joint(hand_tree, x)[1].values())) for x in X)
    assert log_likelihood(hand_tree, X) == pytest.approx(expected, rel=1e-10)


def test_log_likelihood_equals_pgmpy_variable_elimination():
    from pgmpy.inference import VariableElimination

    truth = planted_structure(8, random_state=4)
    X = sample_documents(truth, 3000, random_state=5)
    est = HLTA(max_top=2, random_state=0).fit(X)
    assert any(d["level"] >= 1 for _, d in est.tree_.nodes(data=True))
    bn = est.to_pgmpy()
    assert bn.check_model()
    leaves = [f"c{i}" for i in range(8)]
    joint = VariableElimination(bn).query(variables=leaves, joint=True, show_progress=False)
    U, counts = unique_rows(as_binary_csr(X))
    dense = U.toarray().astype(int)
    probs = np.array([joint.get_value(**{leaf: int(v) for leaf, v in zip(leaves, row, strict=True)}) for row in dense])
    assert log_likelihood(est.tree_, X) == pytest.approx(float(counts @ np.log(probs)), rel=1e-9)


def test_expected_counts_equal_brute_force(hand_tree):
    X = (np.random.default_rng(1).random((30, 6)) < 0.4).astype(float)
    X[:3] = 0
    model = compile_tree(hand_tree)
    counts, ll = expected_counts(model, sp.csr_matrix(X), chunk=7)  # several chunks
    assert ll == pytest.approx(log_likelihood(hand_tree, X), rel=1e-10)
    z2 = model.nodes.index("Z2")
    c3 = model.nodes.index("c3")
    want_z2 = np.zeros((3, 2))
    want_c3 = np.zeros((2, 3))
    for x in X:
        latents, joint = _brute_force_joint(hand_tree, x)
        total = sum(joint.values())
        for states, p in joint.items():
            s = dict(zip(latents, states, strict=True))
            want_z2[s["Z2"], s["Z0"]] += p / total
            want_c3[int(x[3]), s["Z2"]] += p / total
    np.testing.assert_allclose(counts[z2], want_z2, rtol=1e-9)
    np.testing.assert_allclose(counts[c3], want_c3, rtol=1e-9)
    np.testing.assert_allclose(counts[0].sum(), len(X))


def test_bic_and_n_params(hand_tree):
    # root: 1; Z1|Z0: 2; Z2|Z0: 2*2; leaves under Z1: 2*1*2; under Z2: 3*1*3; under Z0: 1*2
    assert n_params(hand_tree) == 1 + 2 + 4 + 4 + 9 + 2
    X = (np.random.default_rng(2).random((25, 6)) < 0.3).astype(float)
    assert bic(hand_tree, X) == pytest.approx(log_likelihood(hand_tree, X) - 22 / 2 * np.log(25))


def test_estimator_bic_attribute(planted):
    _, X, est = planted
    assert est.n_params_ == n_params(est.tree_)
    assert est.n_documents_ == X.shape[0]
    assert est.bic_ == pytest.approx(est.loglik_ - est.n_params_ / 2 * np.log(X.shape[0]))


# --------------------------------------------------------------------------- edge cases


def test_never_occurring_labels_and_empty_documents():
    truth = planted_structure(20, random_state=6)
    X = sample_documents(truth, 4000, random_state=7).tolil()
    X[:, [3, 11]] = 0  # labels that never occur
    X = sp.vstack([X.tocsr(), sp.csr_matrix((500, 20))]).tocsr()  # documents with no labels
    X.eliminate_zeros()
    est = HLTA(random_state=0).fit(X)
    tree = est.tree_
    root = next(n for n, deg in tree.in_degree() if deg == 0)
    for lab in (3, 11):
        assert list(tree.predecessors(f"c{lab}")) == [root]
        assert tree.nodes[f"c{lab}"]["cpt"][1].max() < 1e-3  # ~all mass on "absent"
        assert [lab] in clusters(tree, level=1)
    assert est.n_documents_ == 4500
    # empty documents are evidence: dropping them changes the fitted likelihood
    assert est.loglik_ == pytest.approx(log_likelihood(tree, X), rel=1e-9)
    assert log_likelihood(tree, X[:4000]) != pytest.approx(est.loglik_)


def test_no_label_ever_occurs():
    est = HLTA().fit(sp.csr_matrix((10, 4)))
    validate_tree(est.tree_)
    assert clusters(est.tree_) == [[0], [1], [2], [3]]
    assert np.isfinite(est.loglik_)


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.array([[0, 2], [1, 0]]), "binary"),
        (np.array([[0, -1], [1, 0]]), "negative"),
        (np.array([[0.0, np.nan], [1, 0]]), "NaN"),
        (np.zeros((0, 5)), "empty"),
        (np.zeros((3, 0)), "empty"),
        (np.zeros(5), "2-D"),
    ],
)
def test_bad_input_raises(X, message):
    with pytest.raises(ValueError, match=message):
        HLTA().fit(X)


def test_class_name_count_must_match():
    with pytest.raises(ValueError, match="class names"):
        HLTA().fit(np.eye(3), class_names=["a", "b"])


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="max_island"):
        HLTA(max_island=2).fit(np.eye(3))


def test_fit_accepts_a_documents_store_object():
    class Store:
        class_names = ["cat", "dog", "car", "bus"]

        def label_matrix(self):
            return sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]] * 20))

    est = HLTA(random_state=0).fit(Store())
    assert est.class_names_ == Store.class_names
    assert est.tree_.nodes["c2"]["name"] == "car"


def test_unfitted_estimator_raises():
    with pytest.raises(NotFittedError):
        HLTA().clusters()


def test_likelihood_of_structure_only_tree_raises(hand_tree):
    for n in hand_tree:
        hand_tree.nodes[n]["cpt"] = None
    validate_tree(hand_tree)  # a structure-only tree is valid
    assert clusters(hand_tree) == [[0, 1], [2, 3, 4], [5]]
    with pytest.raises(ValueError, match="structure-only"):
        log_likelihood(hand_tree, np.zeros((2, 6)))
    with pytest.raises(ValueError, match="structure-only"):
        to_pgmpy(hand_tree)


def test_log_likelihood_checks_columns(hand_tree):
    with pytest.raises(ValueError, match="6 labels"):
        log_likelihood(hand_tree, np.zeros((2, 5)))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda g: g.remove_node("c5"), "without a leaf"),
        (lambda g: g.nodes["Z1"].update(cpt=np.ones((2, 2))), "sum to 1"),
        (lambda g: g.nodes["c0"].update(cpt=np.ones((2, 3)) / 2), "shape"),
        (lambda g: g.add_edge("c0", "c1"), "rooted tree|children"),
        (lambda g: g.nodes["c2"].update(label=4), "does not match"),
        (lambda g: nx.relabel_nodes(g, {"Z1": "latent1"}, copy=False), "Z<int>"),
        (lambda g: g.graph.update(class_names=["a"]), "class_names"),
        (lambda g: g.nodes["Z2"].pop("level"), "level"),
    ],
)
def test_validate_tree_rejects_broken_trees(hand_tree, breakage, message):
    breakage(hand_tree)
    with pytest.raises(ValueError, match=message):
        validate_tree(hand_tree)


# --------------------------------------------------------------------------- clusters contract


def test_clusters_order_and_levels(hand_tree):
    assert clusters(hand_tree, labels=[4, 0, 5, 2, 1]) == [[4, 2], [0, 1], [5]]
    assert cluster_of(hand_tree, labels=[5, 0]) == {5: "c5", 0: "Z1"}
    # level 2: every label's nearest level-2 ancestor is the root
    assert clusters(hand_tree, level=2) == [[0, 1, 2, 3, 4, 5]]
    # level 3: no ancestor of level >= 3, every label alone
    assert clusters(hand_tree, level=3) == [[i] for i in range(6)]
    with pytest.raises(ValueError, match="duplicates"):
        clusters(hand_tree, labels=[1, 1])
    with pytest.raises(ValueError, match="outside"):
        clusters(hand_tree, labels=[9])


def test_tree_from_groups_gives_back_its_groups():
    names = [f"k{i}" for i in range(7)]
    tree = tree_from_groups([[4, 1], [0, 5, 2]], names)
    validate_tree(tree)  # structure-only, so CPTs are not checked
    assert clusters(tree, labels=range(7)) == [[0, 2, 5], [1, 4], [3], [6]]
    assert cluster_of(tree, labels=[3, 4]) == {3: "c3", 4: "Z1"}
    assert tree.nodes["c2"]["name"] == "k2"
    with pytest.raises(ValueError, match="label 1 is in group 1 and in group 2"):
        tree_from_groups([[1, 2], [1]], names)
    with pytest.raises(ValueError, match="outside 0..6"):
        tree_from_groups([[7]], names)


# --------------------------------------------------------------------------- round trips


def test_from_tree_round_trip(planted):
    _, X, est = planted
    again = HLTA.from_tree(copy.deepcopy(est.tree_))
    assert again.clusters() == est.clusters()
    assert again.clusters(level=2) == est.clusters(level=2)
    assert again.score(X) == pytest.approx(est.score(X), rel=1e-12)
    assert again.n_params_ == est.n_params_
    assert again.bic_ == pytest.approx(est.bic_)


def test_to_pgmpy_structure(hand_tree):
    bn = to_pgmpy(hand_tree)
    assert bn.check_model()
    assert set(bn.latents) == {"Z0", "Z1", "Z2"}
    assert set(bn.edges()) == set(hand_tree.edges())
    np.testing.assert_allclose(bn.get_cpds("Z2").get_values(), hand_tree.nodes["Z2"]["cpt"])


# --------------------------------------------------------------------------- data helpers


def test_unique_rows_and_mutual_information():
    rng = np.random.default_rng(8)
    dense = (rng.random((300, 7)) < 0.2).astype(float)
    dense[rng.random(300) < 0.3, 3:] = 0
    X = as_binary_csr(dense)
    U, counts = unique_rows(X)
    Ud = U.toarray()
    assert len({tuple(r) for r in Ud}) == len(Ud)
    for row, c in zip(Ud, counts, strict=True):
        assert c == np.all(dense == row, axis=1).sum()
    mi = pairwise_mutual_information(U, counts)
    for a, b in [(0, 1), (2, 5), (3, 6)]:
        assert mi[a, b] == pytest.approx(mutual_info_score(dense[:, a], dense[:, b]), abs=1e-12)


# --------------------------------------------------------------------------- EM and options


def test_global_em_does_not_decrease_likelihood():
    truth = planted_structure(30, random_state=9)
    X = sample_documents(truth, 5000, random_state=10)
    before = HLTA(global_em_iter=0, random_state=0).fit(X)
    after = HLTA(global_em_iter=3, random_state=0).fit(X)
    assert before.clusters() == after.clusters()  # same structure, same seed
    assert after.loglik_ >= before.loglik_ - 1e-6
    assert after.loglik_ > before.loglik_ + 1.0  # and EM does move the parameters


def test_max_island_caps_island_size():
    truth = planted_structure(40, min_size=8, max_size=10, random_state=12)
    X = sample_documents(truth, 8000, random_state=13)
    sizes = sorted(len(c) for c in HLTA(max_island=4, random_state=0).fit(X).clusters())
    assert sizes[-2] <= 4  # only the last island of a level may exceed the cap


def test_fit_accepts_an_opened_documents_store_not_a_path(tmp_path):
    """hlta never opens a store (layers point down): it takes the opened documents object."""
    documents = pytest.importorskip("cwox.store.documents")
    path = tmp_path / "docs.zarr"
    names = ["cat", "dog", "car", "bus"]
    g = documents.create_documents(path, [f"img{i}.jpg" for i in range(40)], views=1, width=3,
                                   chunk_size=16, attrs={"class_names": names})
    labels = np.tile(np.array([[0, 1, -1], [2, 3, -1], [0, -1, -1], [2, 3, 1]]), (10, 1))
    g["labels"][:] = labels
    g["k"][:] = (labels >= 0).sum(axis=1)
    store = documents.open_documents(path)
    est = HLTA(random_state=0).fit(store)
    assert est.class_names_ == names
    assert est.n_documents_ == 40
    assert est.score(store) == pytest.approx(est.loglik_ / 40)
    with pytest.raises(TypeError, match="open_documents"):
        HLTA(random_state=0).fit(str(path))
