"""The reference's document rule (cumulative 0.95, no cap, one-label documents dropped),
recorded in the documents store and enforced on resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cwox.store.documents import open_documents

from cwox.cli import main
from cwox.core.topk import TopKRule


def test_reference_rule_no_cap_and_min_k():
    p = torch.tensor([[0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.07], [0.96, 0.01, 0.01, 0.01, 0.005, 0.005, 0.0]])
    rule = TopKRule.reference()
    labels, probs, k = rule.apply(p)
    assert k.tolist() == [7, 1]  # cumulative 0.93 after 6 labels: 7 are needed, and no cap stops it
    assert TopKRule(cum=0.95, max_k=5).apply(p)[2].tolist() == [5, 1]  # the capped rule stops at 5
    assert labels.shape[1] == 7 and labels[1, 1:].eq(-1).all()
    assert rule.keeps(k.numpy()).tolist() == [True, False]
    assert rule.describe() == {"kind": "cum", "cum": 0.95, "max_k": None, "min_k": 2}
    assert TopKRule.from_description(rule.describe()) == rule
    assert TopKRule(cum=0.9, max_k=4).describe() == {"kind": "cum", "cum": 0.9, "max_k": 4}  # as before
    with pytest.raises(ValueError, match="min-k 6 is above the fixed K 5"):
        TopKRule(k=5, min_k=6)
    with pytest.raises(ValueError, match="--cum"):
        TopKRule.from_options(None, None, None, no_cap=True)


@pytest.mark.slow
def test_min_k_is_recorded_applied_and_refused_on_resume_with_other_settings(photo_dir, tmp_path):
    out = tmp_path / "ref.zarr"
    args = ["documents", str(photo_dir), "--out", str(out), "--cum", "0.95", "--no-cap", "--min-k", "2",
            "--augment", "1", "--workers", "1", "--quiet", "--device", "cpu"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    docs = open_documents(out)
    assert docs.attrs["rule"] == {"kind": "cum", "cum": 0.95, "max_k": None, "min_k": 2}
    assert docs.min_k == 2 and docs.attrs["width"] == len(docs.class_names)  # no cap: room for every class
    k, probs = docs.k(), docs.probs()
    for row, kk in zip(probs, k):  # the smallest K whose cumulative probability exceeds 0.95, uncapped
        assert row[:kk].sum() > 0.95 - 1e-5 and row[: kk - 1].sum() <= 0.95 + 1e-5
    X = docs.label_matrix()
    assert X.shape[0] == int((k >= 2).sum()) and np.all(np.diff(X.indptr) >= 2)  # K = 1 rows left out
    assert docs.label_matrix(min_k=1).shape[0] == int((k >= 1).sum())  # ...but kept in the store
    assert np.array_equal(docs.kept_rows(), np.flatnonzero(k >= 2))

    again = CliRunner().invoke(main, args)  # same settings: resumes, nothing to compute
    assert again.exit_code == 0 and "0 computed" in again.output, again.output
    other = CliRunner().invoke(main, [a if a != "2" else "1" for a in args])  # --min-k 1
    assert other.exit_code == 2
    assert "rule" in other.output and "'min_k': 2" in other.output and "--overwrite" in other.output
    capped = CliRunner().invoke(main, [a for a in args if a != "--no-cap"])
    assert capped.exit_code == 2 and "'max_k': None" in capped.output
    assert open_documents(out).attrs["rule"]["min_k"] == 2  # the refused runs changed nothing
