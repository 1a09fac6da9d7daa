"""``cwox nightly``: the quality gate on real trees, and whole runs on real photos
with a real LocalCluster; a fault-injection run on real `dask` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from click.testing import CliRunner
from cwox.pipelines.gate import per_document_loglik, quality_gate
from cwox.store.trees import list_versions, load_tree, published_version, save_tree
from dask_procs import dask_processes
from tree_factories import random_tree

from cwox.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def fitted():
    """A PEM-HLTA tree fitted on planted documents, the held-out rest, and a random tree
    over the same labels (random CPTs: clearly worse)."""
    from cwox.hlta import HLTA
    from cwox.hlta.synthetic import planted_structure, sample_documents

    bad = random_tree(3, n_labels=16)
    names = bad.graph["class_names"]
    X = sample_documents(planted_structure(16, random_state=0), 900, random_state=1)
    good = HLTA(random_state=0).fit(X[:600], class_names=names).tree_
    return good, bad, X[600:]


def test_held_out_photos_stay_held_out_when_photos_are_added():
    """A photo's side depends on that photo only: the published tree, fitted on last
    night's training photos, never scores a document it has seen."""
    from cwox.hlta.quality import split_by_photo

    night1 = [f"/photos/{i:04d}.jpg" for i in range(300)]
    night2 = night1 + [f"/photos/new{i:04d}.jpg" for i in range(200)]
    rows1 = np.repeat(night1, 3)  # three views per photo, all on one side
    held1 = split_by_photo(rows1, 0.2)
    assert (held1.reshape(-1, 3).all(axis=1) | ~held1.reshape(-1, 3).any(axis=1)).all()
    held2 = split_by_photo(night2, 0.2)
    assert np.array_equal(held2[:300], held1[::3])
    assert 0.12 < held2.mean() < 0.28
    assert split_by_photo(["a", "b"], 0.01).sum() == 1 and split_by_photo(["a", "b"], 0.99).sum() == 1


def test_per_document_loglik_sums_to_the_exact_likelihood(fitted):
    from cwox.hlta.tree import log_likelihood

    good, _, X = fitted
    per_doc = per_document_loglik(good, X)
    assert per_doc.shape == (X.shape[0],) and (per_doc < 0).all()
    assert per_doc.sum() == pytest.approx(log_likelihood(good, X), rel=1e-9)


def test_gate_refuses_a_clearly_worse_tree_and_passes_a_better_one(fitted):
    good, bad, X = fitted
    refused = quality_gate(bad, good, X)
    assert not refused.passed and "clearly worse" in refused.reason
    assert refused.mean_delta < -1 and refused.n_heldout == 300
    better = quality_gate(good, bad, X)
    assert better.passed and better.mean_delta > 1
    same = quality_gate(good, good, X)
    assert same.passed and same.mean_delta == 0
    assert not quality_gate(good, good, X, tolerance=-0.5).passed  # asks for a gain of 0.5 nats
    assert quality_gate(good, None, X).passed
    structure_only = good.copy()
    for _, d in structure_only.nodes(data=True):
        d["cpt"] = None
    assert "structure-only" in quality_gate(good, structure_only, X).reason


@pytest.mark.slow
def test_nightly_publishes_refuses_forces_and_rolls_back(photo_dir, tmp_path):
    docs, trees = tmp_path / "docs.zarr", tmp_path / "trees.zarr"
    base = ["nightly", photo_dir, "--docs", docs, "--trees", trees, "--augment", "3", "--workers", "1",
            "--quiet", "--device", "cpu"]
    res = run(*base, "--summary", tmp_path / "run1.json")
    assert res.exit_code == 0, res.output
    first = json.loads((tmp_path / "run1.json").read_text())
    assert first["status"] == "published" and first["published"] == "v0001"
    assert first["documents"]["documents"] == 24 and first["gate"]["passed"]
    assert set(first["timings"]) == {"documents", "fit", "gate", "publish", "retention"}
    assert len(list((trees / "runs").glob("*.json"))) == 1  # kept with the trees
    assert load_tree(trees, "v0001").graph["meta"]["heldout"]["photos"] >= 1

    # a tree that must be 5 nats/document better: refused, saved, not published
    res = run(*base, "--gate-tolerance", "-5")
    assert res.exit_code == 3, res.output
    second = json.loads(res.output[res.output.index("{"):res.output.rindex("}") + 1])
    assert second["status"] == "refused by the gate" and second["version"] == "v0002"
    assert second["documents"]["computed"] == 0  # the documents resumed: nothing to redo
    assert "clearly worse" in second["gate"]["reason"] and second["gate"]["n_heldout"] > 0
    assert published_version(trees) == "v0001" and list_versions(trees) == ["v0001", "v0002"]

    res = run(*base, "--gate-tolerance", "-5", "--force")
    assert res.exit_code == 0, res.output
    assert published_version(trees) == "v0003"
    assert "despite the gate" in res.output

    res = run("tree", "rollback", trees)
    assert res.exit_code == 0 and "from v0003 to v0001" in res.output

    # new inputs: the documents store of the earlier nights is rebuilt, and says why
    fewer = tmp_path / "fewer.txt"
    fewer.write_text("\n".join(str(p) for p in sorted(photo_dir.glob("*.jpg"))) + "\n")
    res = run(*[fewer if a == photo_dir else a for a in base], "--heldout", "0")  # no gate evidence
    assert res.exit_code == 0, res.output
    fourth = json.loads(res.output[res.output.index("{"):res.output.rindex("}") + 1])
    assert fourth["documents"]["documents"] == 12 and fourth["published"] == "v0004"
    assert "rebuilt" in fourth["notes"][0] and "3 image(s) removed" in fourth["notes"][0]

    # nothing ran: the documents path is a folder of the user's
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    res = run("nightly", photo_dir, "--docs", user, "--trees", trees, "--quiet")
    assert res.exit_code == 2 and '"status": "nothing ran"' in res.output
    assert (user / "notes.txt").read_text() == "keep"


def _done_chunks(docs: Path) -> np.ndarray | None:
    import zarr

    try:
        return zarr.open_group(str(docs), mode="r")["done"][:]
    except Exception:  # noqa: BLE001 - not created yet
        return None


def _reader(trees: Path, stop: threading.Event, seen: list, errors: list) -> None:
    from cwox.hlta.tree import validate_tree

    while not stop.is_set():
        try:
            t = load_tree(trees)
            validate_tree(t)
            meta = t.graph["meta"]
            assert t.number_of_nodes() == meta["n_labels"] + meta["n_latents"]
            seen.append(t.graph["version"])
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            errors.append(repr(exc))


@pytest.mark.slow
def test_worker_killed_mid_run_and_readers_see_only_whole_versions(photo_dir, tmp_path):
    docs, trees = tmp_path / "docs.zarr", tmp_path / "trees.zarr"
    save_tree(random_tree(0), trees, publish=True)  # what readers load until the nightly publishes
    stop, seen, errors = threading.Event(), [], []
    reader = threading.Thread(target=_reader, args=(trees, stop, seen, errors), daemon=True)
    with dask_processes(tmp_path, 2, nanny=False) as cluster:
        cmd = [str(Path(sys.executable).parent / "cwox"), "nightly", str(photo_dir), "--docs", str(docs),
               "--trees", str(trees), "--scheduler", cluster.address, "--augment", "7",
               "--chunk-size", "4", "--quiet", "--device", "cpu"]
        job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
        reader.start()
        deadline = time.time() + 300
        while time.time() < deadline:  # kill one worker once the first chunk is written
            done = _done_chunks(docs)
            if done is not None and done.any():
                break
            time.sleep(0.05)
        assert done is not None and not done.all(), "the run finished before a worker could be killed"
        victim = cluster.workers[0]
        victim.send_signal(signal.SIGKILL)
        out, err = job.communicate(timeout=600)
        assert victim.wait(timeout=10) == -signal.SIGKILL
        from distributed import Client

        with Client(cluster.address) as c:
            assert len(c.scheduler_info()["workers"]) == 1
    for _ in range(20):  # a few loads after the publish, then stop the reader
        time.sleep(0.01)
    stop.set()
    reader.join(timeout=30)
    assert job.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "published" and summary["published"] == "v0002"
    from cwox.store.documents import open_documents

    d = open_documents(docs)
    assert d.complete and d.n_documents == 48 and (d.k() == 5).all() and (d.errors() == "").all()
    assert not errors, errors[:3]
    assert set(seen) == {"v0001", "v0002"}
    first_new = seen.index("v0002")  # one switch, never back: no reader mixed two versions
    assert "v0001" not in seen[first_new:] and first_new > 0
    assert nx.is_arborescence(load_tree(trees))
