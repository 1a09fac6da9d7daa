"""Trustworthy confusion trees: the correlation test, singletons, and the tree-quality measures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from cwox.hlta import HLTA, cluster_of
from cwox.hlta.islands import scaled_bic
from cwox.hlta.quality import (
    cluster_evidence,
    cluster_sizes,
    confusion_coherence,
    heldout_loglik,
    level1_assignment,
    split_by_photo,
    tree_quality,
)
from cwox.hlta.synthetic import planted_structure, sample_documents
from sklearn.metrics import adjusted_rand_score

A, B, C, D, E = range(5)


def _hand_made() -> sp.csr_matrix:
    """200 documents over labels A, B, C, D, E (see the test below for the arithmetic).

    A, B, C always occur together ("the group", 80 documents). E occurs in 40 of the
    80 group documents and in 6 of the 120 others. D occurs in exactly half of the
    documents of each of the four kinds (group with/without E, other with/without E),
    so D is independent of everything.
    """
    kinds = [({A, B, C, E}, 40), ({A, B, C}, 40), ({E}, 6), (set(), 114)]
    rows = []
    for labels, count in kinds:
        rows += [sorted(labels | {D})] * (count // 2) + [sorted(labels)] * (count // 2)
    X = np.zeros((len(rows), 5), dtype=np.int8)
    for i, labs in enumerate(rows):
        X[i, labs] = 1
    return sp.csr_matrix(X)


def test_correlation_test_closes_the_island_at_the_right_label():
    """The correlation test worked out by hand on 200 documents (:func:`_hand_made`).

    The island's latent Y can copy the group exactly (A, B, C are present together or
    absent together), so adding a label X to the island gains exactly ``N * MI(X; Y)``
    nats over the island with X independent, for one parameter more; with N = 200 below
    the 5,000-document batch, the correlation test's score is
    ``N * MI(X; Y) - log(200) / 2 = N * MI(X; Y) - 2.649``.

    * Seeds: A, B (MI = H(0.4) = 0.6730 nats; pair score 200 * 0.6730 - 2.649 = 132.0),
      then C (same MI with Y; score 132.0).
    * E: P(E) = 46/200 = 0.23, H(E) = 0.5393; H(E | Y) = 0.4 H(0.5) + 0.6 H(0.05)
      = 0.4 * 0.6931 + 0.6 * 0.1985 = 0.3964; MI = 0.1429; score 28.59 - 2.65 = **25.94**.
      The UD test does not split: Y already explains E, a second latent over {C, E}
      gains nothing.
    * D: independent of Y, MI = 0, score **-2.65** < 3: the island closes at D, as
      {A, B, C, E}; D alone is a singleton.

    So at ``ct_threshold`` 25.5 E joins and at 26.5 it does not (E and D then form no
    pair either: MI(D, E) = 0).
    """
    X = _hand_made()
    n = X.shape[0]
    p_e, h = 0.23, (lambda p: -p * np.log(p) - (1 - p) * np.log(1 - p))
    mi_e = h(p_e) - (0.4 * h(0.5) + 0.6 * h(0.05))
    assert scaled_bic(n * mi_e, 1, n, 5000) == pytest.approx(25.94, abs=0.01)
    assert scaled_bic(0.0, 1, n, 5000) == pytest.approx(-2.649, abs=0.001)

    for ct, island in ((3.0, {A, B, C, E}), (25.5, {A, B, C, E}), (26.5, {A, B, C})):
        tree = HLTA(ct_threshold=ct, random_state=0).fit(X).tree_
        ids = cluster_of(tree)
        assert {lab for lab in range(5) if ids[lab] == ids[A]} == island, ct
        alone = set(range(5)) - island
        assert all(ids[lab] == f"c{lab}" for lab in alone), (ct, ids)  # singletons at level 1

    # Without the test, PEM-HLTA as published puts every label in some island.
    ids = cluster_of(HLTA(ct_threshold=None, random_state=0).fit(X).tree_)
    assert not any(ids[lab] == f"c{lab}" for lab in range(5))


def _planted_with_noise(n_docs: int, noise_rate: float):
    truth = planted_structure(24, min_size=3, max_size=6, random_state=3)
    X = sample_documents(truth, n_docs, sibling_prob=0.2, noise_prob=0.0, random_state=4).tolil()
    rng = np.random.default_rng(5)
    X.resize((n_docs, truth.n_labels + 1))
    noise = truth.n_labels
    X[np.flatnonzero(rng.random(n_docs) < noise_rate), noise] = 1
    return truth, sp.csr_matrix(X), noise


def test_noise_label_stays_alone_and_the_planted_groups_are_recovered():
    """A label that shows up at random in 8% of documents (so it co-occurs a little with
    every label) is a singleton; the planted groups are the level-1 clusters."""
    truth, X, noise = _planted_with_noise(20_000, 0.08)
    est = HLTA(random_state=0).fit(X)
    ids = cluster_of(est.tree_)
    assert ids[noise] == f"c{noise}"
    pred = [ids[i] for i in range(truth.n_labels)]
    assert adjusted_rand_score(truth.group, pred) > 0.95
    # without the correlation test the noise label is absorbed into some island
    ids_off = cluster_of(HLTA(ct_threshold=None, random_state=0).fit(X).tree_)
    assert ids_off[noise] != f"c{noise}"


def test_rare_label_stays_alone_at_the_batch_scale():
    """Two labels seen together in 3 of 100,000 documents are no cluster at the reference's
    5,000-document scale (score 3 pairs' worth of evidence), but they are one under the
    full-N BIC, where a handful of co-occurrences at N = 100,000 is 'significant'."""
    rng = np.random.default_rng(0)
    truth = planted_structure(12, min_size=3, max_size=4, random_state=0)
    base = sample_documents(truth, 100_000, random_state=1).tolil()
    base.resize((100_000, 14))
    base[:3, 12] = 1
    base[:3, 13] = 1
    base[rng.choice(100_000, 2, replace=False) + 0, 12] = 1
    X = sp.csr_matrix(base)
    ids = cluster_of(HLTA(random_state=0).fit(X).tree_)
    assert ids[12] == "c12" and ids[13] == "c13"
    ids_full = cluster_of(HLTA(bic_batch=None, random_state=0).fit(X).tree_)
    assert ids_full[12] == ids_full[13] != "c12"


def test_split_by_photo_keeps_every_view_of_a_photo_together():
    photos = np.repeat([f"p{i}.jpg" for i in range(20)], 4)  # 20 photos x 4 views
    held = split_by_photo(photos, 0.25, random_state=1)
    assert 0 < held.sum() < len(photos) and held.sum() % 4 == 0  # whole photos, about a quarter
    for p in np.unique(photos):
        assert len(set(held[photos == p].tolist())) == 1
    assert np.array_equal(held, split_by_photo(photos[::-1], 0.25, random_state=1)[::-1])  # order-free
    with pytest.raises(ValueError, match="two photos"):
        split_by_photo(["a.jpg"] * 3)


def test_coherence_and_evidence_by_hand():
    # documents: {0,1} x3, {0,1,2} x1, {3,4} x2, {2} x1 ; clusters {0,1}, {3,4}, {2} alone
    rows = [[0, 1]] * 3 + [[0, 1, 2]] + [[3, 4]] * 2 + [[2]]
    X = np.zeros((len(rows), 5), dtype=np.int8)
    for i, r in enumerate(rows):
        X[i, r] = 1
    assign = level1_assignment([[0, 1], [3, 4]], 5)
    share, rand = confusion_coherence(assign, X, n_random=200, random_state=0)
    # pairs: (0,1) x4, (0,2), (1,2), (3,4) x2 = 8 pairs, 6 within a cluster
    assert share == pytest.approx(6 / 8)
    assert rand < share
    assert cluster_sizes(assign) == (4, 2, 2)
    ev = cluster_evidence([0, 1], X)
    # together in 4 documents; expected pairs by chance = f0 * f1 / N = 4 * 4 / 7
    assert ev.documents == 4 and ev.pairs == 4 and ev.lift == pytest.approx(4 / (16 / 7))


def test_tree_quality_prefers_the_planted_tree_on_held_out_documents():
    """On held-out documents of a planted structure, HLTA's tree beats the same tree
    with its labels shuffled among clusters of the same sizes (likelihood and coherence)."""
    from cwox.hlta.parameters import fit_parameters
    from cwox.hlta.tree import tree_from_groups

    truth = planted_structure(30, random_state=2)
    X = sample_documents(truth, 12_000, random_state=3)
    train, test = X[:10_000], X[10_000:]
    est = HLTA(random_state=0).fit(train)
    q = tree_quality(est.tree_, test)
    groups = [list(np.flatnonzero(truth.group == g)) for g in range(truth.n_groups)]
    planted, _ = confusion_coherence(level1_assignment(groups, 30), test)
    # sibling groups co-occur too, so even the planted clusters hold only part of the pairs
    assert q.coherence > 0.85 * planted and q.coherence > 2 * q.coherence_random
    perm = np.random.default_rng(0).permutation(30)
    shuffled = fit_parameters(tree_from_groups([perm[g] for g in groups], [str(i) for i in range(30)]),
                              train, random_state=0)
    assert q.heldout_loglik > heldout_loglik(shuffled, test) + 0.1
    assert q.heldout_loglik == pytest.approx(est.score(test), rel=1e-9)
