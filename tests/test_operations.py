"""Operating cwox: retries of failed images, verified publish, damaged versions listed,
rollback, folder-scan reasons, tiny images, Ctrl-C, half-finished documents, and the
words of a changed-inputs refusal. Real Zarr stores, real photos, a real LocalCluster."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cwox.store.documents import StoreMismatch, create_documents, open_documents
from cwox.store.trees import list_versions, load_tree, prune, published_version, save_tree
from PIL import Image
from tree_factories import random_tree

from cwox.cli import EXIT_INTERRUPTED, main
from cwox.core.images import collect_inputs, load_image


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --------------------------------------------------------------------------- retries


@pytest.mark.slow
def test_rerun_retries_failed_rows_only_and_counts_the_fixed(photo_dir, tmp_path):
    from cwox.offline.documents import build_documents, dask_client

    src = tmp_path / "in"
    shutil.copytree(photo_dir, src)
    good = sorted(src.glob("*.jpg"))[0]
    broken = src / "later.jpg"
    broken.write_bytes(good.read_bytes()[:200])  # truncated: fails
    out = tmp_path / "docs.zarr"
    kw = dict(augment=1, seed=3, progress=False, batch_size=4, device="cpu", chunk_size=4)
    with dask_client(workers=1) as client:
        first = build_documents([src], out, client=client, **kw)
        assert [Path(p).name for p, _ in first.failed_images] == ["later.jpg"]
        before = {k: open_documents(out).group[k][:] for k in ("labels", "probs", "k", "error")}
        again = build_documents([src], out, client=client, **kw)  # still broken: retried, not fixed
        assert (again.retried_images, again.fixed_images) == (1, 0)
        assert "1 image(s) that had failed before: 0 fixed, 1 still failing" in "\n".join(again.lines())
        shutil.copy(good, broken)  # the user fixes the file
        fixed = build_documents([src], out, client=client, **kw)
    assert fixed.ok and (fixed.retried_images, fixed.fixed_images) == (1, 1)
    assert fixed.chunks_run == 0 and fixed.documents_run == 2  # its two views, nothing else
    assert "1 fixed, 0 still failing" in "\n".join(fixed.lines())
    docs = open_documents(out)
    rows = np.flatnonzero(docs.paths() == str(broken.resolve()))
    assert (docs.k()[rows] == 5).all() and (docs.errors()[rows] == "").all()
    others = np.setdiff1d(np.arange(docs.n_documents), rows)
    for key, old in before.items():  # the rows that had worked were not touched
        assert np.array_equal(docs.group[key][:][others], old[others]), key
    # the fixed photo (a copy of another) now has that photo's top label in its view 0
    twin = np.flatnonzero(docs.paths() == str(good.resolve()))
    assert docs.labels()[rows[0], 0] == docs.labels()[twin[0], 0]


def test_changed_inputs_are_named_not_digested(photo_dir, tmp_path):
    from cwox.offline.documents import build_documents
    from cwox.store.documents import inputs_digest

    photos = sorted(str(p.resolve()) for p in photo_dir.iterdir())
    out = tmp_path / "docs.zarr"
    create_documents(out, photos[:4], views=1, width=5, chunk_size=8,
                     attrs={"model": "efficientnet_lite0", "inputs_digest": inputs_digest(photos[:4])})
    with pytest.raises(StoreMismatch) as info:
        build_documents(photos[1:5], out, progress=False, device="cpu")
    msg = str(info.value)
    assert f"1 image(s) added ({Path(photos[4]).name})" in msg
    assert f"1 image(s) removed ({Path(photos[0]).name})" in msg
    assert inputs_digest(photos[1:5]) not in msg and inputs_digest(photos[:4]) not in msg


def test_fit_tree_refuses_to_publish_half_finished_documents(tmp_path):
    out = tmp_path / "docs.zarr"
    g = create_documents(out, [f"/p/{i}.jpg" for i in range(16)], views=1, width=2, chunk_size=8,
                         attrs={"model": "m", "class_names": [f"c{i}" for i in range(6)]})
    g["labels"][:8] = np.tile([[0, 1], [2, 3]], (4, 1))
    g["k"][:8] = 2
    g["done"][0] = True  # chunk 1 never ran
    res = run("fit-tree", out, "--out", tmp_path / "trees.zarr", "--publish")
    assert res.exit_code == 2 and "not complete (1 of 2 chunks done)" in res.output, res.output
    assert not (tmp_path / "trees.zarr").exists()


# --------------------------------------------------------------------------- tree store


def _damage_chunk(store: Path, vid: str) -> None:
    chunk = store / "versions" / vid / "cpt_values" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


@pytest.fixture()
def four_versions(tmp_path) -> Path:
    store = tmp_path / "trees.zarr"
    for seed in range(4):
        save_tree(random_tree(seed), store, meta={"model": "m"})
    return store


def test_publish_verifies_and_versions_lists_every_damaged_one(four_versions):
    store = four_versions
    assert run("tree", "publish", store, "1").exit_code == 0
    _damage_chunk(store, "v0002")
    (store / "versions" / "v0003" / "zarr.json").write_text("{not json")
    res = run("tree", "publish", store, "2")
    assert res.exit_code == 2 and "damaged" in res.output and "nothing was published" in res.output
    assert published_version(store) == "v0001"
    res = run("tree", "versions", store)
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if " v000" in line]
    assert [line.split()[-1] if "DAMAGED" not in line else "DAMAGED" for line in lines][1:3] == ["DAMAGED"] * 2
    assert len(lines) == 4 and lines[0].startswith("* v0001") and "v0004" in lines[3]
    assert "DAMAGED" not in lines[3] and "checksum" in lines[1]


def test_rollback_goes_back_through_published_versions_skipping_damaged(four_versions):
    store = four_versions
    for v in ("1", "2", "4"):
        assert run("tree", "publish", store, v).exit_code == 0
    _damage_chunk(store, "v0002")
    res = run("tree", "rollback", store)
    assert res.exit_code == 0 and "from v0004 to v0001" in res.output, res.output
    assert load_tree(store).graph["version"] == "v0001"
    res = run("tree", "rollback", store)  # nothing published before v0001
    assert res.exit_code == 2 and "no earlier published version" in res.output
    assert published_version(store) == "v0001"


def test_retention_keeps_the_rollback_target(four_versions):
    store = four_versions
    for v in ("1", "2", "4"):
        assert run("tree", "publish", store, v).exit_code == 0
    assert prune(store, keep=1) == ["v0001", "v0003"]  # v0002, where a rollback goes, stays
    res = run("tree", "rollback", store)
    assert res.exit_code == 0 and "from v0004 to v0002" in res.output
    res = run("tree", "rollback", store)
    assert res.exit_code == 2 and "v0001 (pruned)" in res.output
    assert list_versions(store) == ["v0002", "v0004"] and published_version(store) == "v0002"


# --------------------------------------------------------------------------- images


def test_folder_scan_reports_links_loops_and_image_named_folders(photo_dir, tmp_path):
    d = tmp_path / "scan"
    d.mkdir()
    shutil.copy(sorted(photo_dir.glob("*.jpg"))[0], d / "ok.jpg")
    (d / "x.jpg").mkdir()
    os.symlink("gone.jpg", d / "dangling.jpg")
    os.symlink("loop", d / "loop")
    os.symlink(str(photo_dir), d / "more")
    os.symlink("ok.jpg", d / "alias.png")
    reasons = {}
    for p in collect_inputs([d]):
        try:
            load_image(p)
            reasons[Path(p).name] = "ok"
        except Exception as exc:  # noqa: BLE001 - ImageError carries the reason
            reasons[Path(p).name] = exc.reason
    assert reasons["ok.jpg"] == reasons["alias.png"] == "ok"
    assert "dangling symbolic link" in reasons["dangling.jpg"]
    assert "loop" in reasons["loop"]
    assert "directory" in reasons["x.jpg"]
    assert "link to a folder" in reasons["more"]


@pytest.mark.parametrize("size", [(1, 1), (7, 300)])
def test_tiny_images_are_refused_with_a_reason(tmp_path, size):
    p = tmp_path / "tiny.png"
    Image.new("RGB", size, (200, 10, 10)).save(p)
    with pytest.raises(Exception, match="too small") as info:
        load_image(p)
    assert f"{size[0]}x{size[1]}" in info.value.reason
    Image.new("RGB", (8, 8)).save(p)
    assert load_image(p).size == (8, 8)


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_exits_130(monkeypatch, photo_dir, tmp_path):
    import cwox.offline.documents as offline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(offline, "build_documents", interrupted)
    res = run("documents", photo_dir, "--out", tmp_path / "d.zarr", "--quiet")
    assert res.exit_code == EXIT_INTERRUPTED == 130, res.output
    assert "rerun the same command to resume" in res.output


def test_explain_entry_point_exits_130_on_ctrl_c(monkeypatch, photo_dir):
    import sys

    import cwox.core.models as models
    from cwox.cli import explain_main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "load_model", interrupted)
    monkeypatch.setattr(sys, "argv", ["explain", str(next(photo_dir.iterdir())), "--tree", "none"])
    with pytest.raises(SystemExit) as info:
        explain_main()
    assert info.value.code == 130


def test_run_summaries_stay_out_of_the_way(four_versions):
    """The nightly job keeps its summaries in TREES/runs/, an entry the store owns."""
    from cwox.store.ownership import TREES, check_replaceable
    from cwox.store.trees import runs_dir

    (runs_dir(four_versions) / "x.json").write_text(json.dumps({"status": "published"}))
    assert check_replaceable(four_versions, TREES) == "store"
