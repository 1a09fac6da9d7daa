"""The documents pipeline on a real LocalCluster, real Zarr stores and real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from cwox.offline.documents import build_documents, default_chunk_size
from cwox.store.documents import StoreMismatch, open_documents
from PIL import Image

from cwox.cli import main
from cwox.core.images import load_image
from cwox.core.topk import TopKRule

ARRAYS = ("labels", "probs", "k", "path", "view", "error")


@pytest.fixture(scope="module")
def inputs(photo_dir, tmp_path_factory):
    """Real photos plus broken files the test makes itself, in a list file."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    good = sorted(photo_dir.iterdir())
    raw = (good[0]).read_bytes()
    (d / "truncated.jpg").write_bytes(raw[: len(raw) // 3]) if good[0].suffix == ".jpg" else None
    lst = d / "inputs.txt"
    lst.write_text("\n".join(str(p) for p in good) + f"\n{d / 'missing.jpg'}\n")
    return [str(lst), str(d)]


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("docs") / "docs.zarr"
    summary = build_documents(inputs, out, augment=2, seed=7, workers=1, progress=False,
                              batch_size=8, device="cpu")
    return out, summary


def _arrays(path):
    g = open_documents(path).group
    return {name: g[name][:] for name in ARRAYS}


def test_store_holds_topk_of_every_view(built, default_classifier):
    out, summary = built
    docs = open_documents(out)
    assert summary.n_images == 10 and summary.n_documents == 30
    assert docs.complete and docs.attrs["model"] == "efficientnet_lite0"
    assert docs.class_names == default_classifier.class_names
    assert docs.attrs["rule"] == {"kind": "top_k", "k": 5} and docs.attrs["augment"] == 2
    paths, views, labels, probs, k = docs.paths(), docs.group["view"][:], docs.labels(), docs.probs(), docs.k()
    assert views.tolist() == [0, 1, 2] * 10
    # view 0 of each good photo: exactly what the classifier says in-process
    good = [i for i in range(0, 30, 3) if k[i] > 0]
    assert len(good) == 6
    x = torch.stack([default_classifier.preprocess(load_image(paths[i])) for i in good])
    p = default_classifier.probabilities(x)
    want_labels, want_probs, _ = TopKRule(k=5).apply(p)
    assert np.array_equal(labels[good], want_labels.numpy())
    np.testing.assert_allclose(probs[good], want_probs.numpy(), rtol=1e-4, atol=1e-6)
    # probabilities are sorted and augmented views differ from the plain view somewhere
    assert (np.diff(probs[k > 0], axis=1) <= 1e-7).all()
    chelsea = [i for i in range(30) if paths[i].endswith("chelsea.jpg") or paths[i].endswith("chelsea.png")]
    assert set(labels[chelsea[0], :3]) <= {281, 282, 285, 287}
    assert not np.array_equal(probs[chelsea[0]], probs[chelsea[1]])


def test_failures_listed_with_reasons_and_others_finish(built):
    out, summary = built
    reasons = dict((p.rsplit("/", 1)[-1], r) for p, r in summary.failed_images)
    assert set(reasons) == {"empty.jpg", "text.png", "truncated.jpg", "missing.jpg"}
    assert "empty" in reasons["empty.jpg"] and "missing" in reasons["missing.jpg"]
    assert "not an image" in reasons["text.png"] and "truncated" in reasons["truncated.jpg"]
    assert not summary.ok
    docs = open_documents(out)
    assert dict(docs.failures()) == dict(summary.failed_images)
    k = docs.k()
    assert (k > 0).sum() == 18 and (k[docs.errors() != ""] == 0).all()


def test_label_matrix_is_one_call_away(built):
    docs = open_documents(built[0])
    m = docs.label_matrix()
    assert m.shape == (18, 1000) and m.dtype == np.uint8
    assert (np.asarray(m.sum(axis=1)).ravel() == 5).all()
    rows = docs.labels()[docs.k() > 0]
    assert all(set(m[i].indices) == set(rows[i]) for i in range(18))
    assert docs.label_matrix(valid_only=False).shape == (30, 1000)


def test_resume_recomputes_only_missing_chunks_and_matches(built, inputs, tmp_path):
    out, _ = built
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(out, copy)
    g = zarr.open_group(str(copy), mode="r+")
    n_chunks = g["done"].shape[0]
    assert n_chunks >= 3
    # simulate a run killed after chunk 0: later chunks not done, their rows half-written
    g["done"][1:] = False
    rows = slice(int(g.attrs["chunk_size"]), 30)
    g["labels"][rows] = 999
    g["k"][rows] = 0
    summary = build_documents(inputs, copy, augment=2, seed=7, workers=1, progress=False,
                              batch_size=8, device="cpu")
    assert summary.chunks_skipped == 1 and summary.chunks_run == n_chunks - 1
    a, b = _arrays(out), _arrays(copy)
    for name in ARRAYS:
        assert np.array_equal(a[name], b[name]), name


def test_identical_whatever_the_number_of_workers(built, inputs, tmp_path):
    out, _ = built
    build_documents(inputs, tmp_path / "w2.zarr", augment=2, seed=7, workers=2, progress=False,
                    batch_size=8, device="cpu")
    a, b = _arrays(out), _arrays(tmp_path / "w2.zarr")
    for name in ARRAYS:
        assert np.array_equal(a[name], b[name]), name


def test_other_settings_refused_unless_overwrite(built, inputs):
    out, _ = built
    with pytest.raises(StoreMismatch, match="augment"):
        build_documents(inputs, out, augment=1, seed=7, workers=1, progress=False)


def test_cli_cum_rule_and_exit_codes(photo_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "c.zarr"
    res = runner.invoke(main, ["documents", str(photo_dir), "--out", str(out), "--cum", "0.9",
                               "--max-k", "4", "--workers", "1", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "documents 6" in res.output
    docs = open_documents(out)
    probs, k = docs.probs(), docs.k()
    assert docs.attrs["rule"] == {"kind": "cum", "cum": 0.9, "max_k": 4}
    for row, kk in zip(probs, k):  # smallest K whose cumulative probability exceeds 0.9, cap 4
        assert 1 <= kk <= 4
        assert kk == 4 or row[:kk].sum() > 0.9 - 1e-6
        assert kk == 1 or row[: kk - 1].sum() <= 0.9 + 1e-6
    Image.new("RGB", (10, 10)).save(tmp_path / "x.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\x00")
    res = runner.invoke(main, ["documents", str(tmp_path / "x.jpg"), str(tmp_path / "bad.jpg"),
                               "--out", str(tmp_path / "d.zarr"), "--workers", "1", "--quiet",
                               "--device", "cpu"])
    assert res.exit_code == 1 and "bad.jpg" in res.output
    res = runner.invoke(main, ["documents", str(tmp_path / "x.jpg"), "--out", str(tmp_path / "e.zarr"),
                               "--model", "resnet18"])
    assert res.exit_code == 2 and "weights" in res.output


def test_default_chunk_size_depends_only_on_size():
    assert default_chunk_size(30) == 8
    assert default_chunk_size(1000) == 64
    assert default_chunk_size(10**6) == 256


def test_local_cluster_workers_get_the_allocator_settings():
    """Dask's worker default (MALLOC_TRIM_THRESHOLD_=65536) made torch 35% slower; ours replace it."""
    import os

    from cwox.offline.documents import dask_client

    from cwox.core.devices import ALLOCATOR_ENV

    with dask_client(workers=1) as client:
        seen = list(client.run(lambda: {k: os.environ.get(k) for k in ALLOCATOR_ENV}).values())
    assert seen == [ALLOCATOR_ENV]
