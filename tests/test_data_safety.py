"""Never lose a user's data: every command and library call that removes or replaces
a path touches only what cwox made (recognised by its own metadata).

Each test puts a real user file (a photo, a note) where cwox is asked to write and
checks that it survives, byte for byte.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cwox.store.documents import create_documents, open_documents
from cwox.store.ownership import (
    DOCUMENTS,
    TREES,
    NotOurStoreError,
    check_replaceable,
    remove_store,
    store_kind,
)
from cwox.store.trees import list_versions, save_tree
from tree_factories import random_tree

from cwox.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(map(str, args)))


@pytest.fixture()
def victim(photo_dir, tmp_path) -> Path:
    """A user's folder: two real photos and a note."""
    d = tmp_path / "victim"
    d.mkdir()
    for p in sorted(photo_dir.iterdir())[:2]:
        shutil.copy(p, d / p.name)
    (d / "notes.txt").write_text("my notes\n")
    return d


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def tree_store(tmp_path) -> Path:
    store = tmp_path / "trees.zarr"
    for seed in range(2):
        save_tree(random_tree(seed), store, meta={"model": "efficientnet_lite0"}, publish=True)
    return store


@pytest.mark.parametrize("overwrite", [False, True])
def test_documents_out_a_photo_folder_is_refused_and_kept(victim, overwrite):
    before = snapshot(victim)
    res = run("documents", victim, "--out", victim, "--workers", "1", "--quiet", "--device", "cpu",
              *(["--overwrite"] if overwrite else []))
    assert res.exit_code == 2, res.output
    assert "cwox did not make" in res.output and "notes.txt" in res.output
    assert "--overwrite" not in res.output  # it would not help, and must not be suggested
    assert snapshot(victim) == before


def test_documents_overwrite_never_deletes_a_tree_store(photo_dir, tree_store):
    before = snapshot(tree_store)
    res = run("documents", photo_dir, "--out", tree_store, "--overwrite", "--quiet", "--device", "cpu")
    assert res.exit_code == 2 and "tree store, not a documents store" in res.output, res.output
    assert snapshot(tree_store) == before and list_versions(tree_store) == ["v0001", "v0002"]


def _docs(path: Path) -> None:
    create_documents(path, ["/x/a.jpg", "/x/b.jpg"], views=1, width=5, chunk_size=8,
                     attrs={"model": "m", "class_names": ["a", "b"]})


def test_a_documents_store_is_replaced_only_when_it_holds_nothing_else(tmp_path, photo_dir):
    docs = tmp_path / "docs.zarr"
    _docs(docs)
    assert store_kind(docs) == DOCUMENTS and check_replaceable(docs, DOCUMENTS) == "store"
    _docs(docs)  # a cwox documents store is replaced
    assert open_documents(docs).n_documents == 2
    photo = sorted(photo_dir.iterdir())[0]
    shutil.copy(photo, docs / photo.name)  # the user put a photo inside
    with pytest.raises(NotOurStoreError, match=photo.name):
        _docs(docs)
    res = run("documents", photo_dir, "--out", docs, "--overwrite", "--quiet", "--device", "cpu")
    assert res.exit_code == 2 and photo.name in res.output and "--overwrite" not in res.output
    assert (docs / photo.name).read_bytes() == photo.read_bytes()


def test_remove_store_only_removes_the_kind_asked_for(victim, tree_store, tmp_path):
    before = snapshot(victim)
    for kind in (DOCUMENTS, TREES):
        with pytest.raises(NotOurStoreError):
            remove_store(victim, kind)
    assert snapshot(victim) == before
    with pytest.raises(NotOurStoreError, match="not a documents store"):
        remove_store(tree_store, DOCUMENTS)
    (tmp_path / "empty").mkdir()
    assert check_replaceable(tmp_path / "empty", TREES) == "empty"
    assert check_replaceable(tmp_path / "absent", TREES) == "absent"
    with pytest.raises(NotOurStoreError, match="is a file"):
        check_replaceable(victim / "notes.txt", TREES)
    assert remove_store(tree_store, TREES) and not tree_store.exists()


def test_reference_bank_never_replaces_a_user_folder(victim, tmp_path):
    from cwox.store.reference_bank import ReferenceBank, load_reference_bank, save_reference_bank

    bank = ReferenceBank(features=np.ones((2, 3)), labels=[1, 1], shapley=[0.5, 0.2],
                         positions=[[0, 0], [1, 1]], image=[0, 0], image_paths=["/x/a.jpg"],
                         image_labels=[1], image_probs=[0.9], model="m", layer="l", grid=(2, 2))
    before = snapshot(victim)
    for group in (None, "reference_bank"):
        with pytest.raises(NotOurStoreError):
            save_reference_bank(bank, victim, group=group, overwrite=True)
    assert snapshot(victim) == before
    own = tmp_path / "bank.zarr"
    save_reference_bank(bank, own, group=None)
    save_reference_bank(bank, own, group=None, overwrite=True)  # its own bank: replaced
    assert len(load_reference_bank(own)) == 2
    docs = tmp_path / "docs.zarr"
    _docs(docs)
    save_reference_bank(bank, docs)
    save_reference_bank(bank, docs, overwrite=True)
    (docs / "mine.txt").write_text("keep")
    with pytest.raises(NotOurStoreError, match="mine.txt"):
        save_reference_bank(bank, docs, overwrite=True)
    assert (docs / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("fmt", ["json", "bif"])
def test_tree_export_replaces_only_its_own_files(tree_store, victim, fmt):
    target = victim / "notes.txt"
    before = target.read_bytes()
    res = run("tree", "export", tree_store, "--format", fmt, "--out", target)
    assert res.exit_code == 2 and "not a tree file cwox exported" in res.output, res.output
    assert target.read_bytes() == before
    own = victim.parent / f"t.{fmt}"
    for _ in range(2):  # an earlier export of its own is replaced
        res = run("tree", "export", tree_store, "--format", fmt, "--out", own)
        assert res.exit_code == 0, res.output


def test_report_folders_stay_inside_out_and_skip_user_folders(tmp_path):
    from cwox.online.report import report_folder

    out = tmp_path / "out"
    (out / "cat").mkdir(parents=True)
    (out / "cat" / "mine.txt").write_text("keep")
    used: set[str] = set()
    names = ["...png", "..png", ".jpg", "cat.jpg", "cat.png", "a\\b.jpg"]
    folders = [report_folder(out, n, used) for n in names]
    assert all(f.parent == out and f.resolve().parent == out.resolve() for f in folders)
    assert len(set(folders)) == len(folders)
    assert out / "cat" not in folders  # the user's folder is never written into


@pytest.mark.slow
def test_explain_a_photo_named_dots_writes_inside_out(photo_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sorted(photo_dir.glob("*.png"))[0], src / "...png")
    out = tmp_path / "sub" / "out"
    res = CliRunner().invoke(main, ["explain", str(src / "...png"), "--out", str(out), "--device", "cpu",
                                    "--tree", "none", "--top-k", "2"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out"]  # nothing beside out
    grids = list(out.rglob("grid.png"))
    assert len(grids) == 1 and grids[0].parent.parent == out
    # A second run into the same --out replaces cwox's own index; a user's index.html is
    # never replaced, and the refusal comes before any image is explained.
    again = CliRunner().invoke(main, ["explain", str(src / "...png"), "--out", str(out), "--device", "cpu",
                                      "--tree", "none", "--top-k", "2"])
    assert again.exit_code == 0, again.output
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html>my home page</html>")
    res = CliRunner().invoke(main, ["explain", str(src / "...png"), "--out", str(site), "--device", "cpu",
                                    "--tree", "none", "--top-k", "2"])
    assert res.exit_code == 2, res.output
    assert "not a report index cwox wrote" in res.output and "--overwrite" not in res.output
    assert (site / "index.html").read_text() == "<html>my home page</html>"
    assert sorted(p.name for p in site.iterdir()) == ["index.html"]  # nothing explained into it


def test_evaluate_refuses_a_user_folder_before_any_work(victim, photo_dir):
    before = snapshot(victim)
    res = run("evaluate", sorted(photo_dir.iterdir())[0], "--out", victim, "--explainers", "gradcam",
              "--device", "cpu", "--quiet")
    assert res.exit_code == 2 and "does not write into it" in res.output, res.output
    assert snapshot(victim) == before


def test_a_link_to_a_store_is_judged_by_its_target(tmp_path, victim):
    import os

    docs = tmp_path / "real.zarr"
    _docs(docs)
    os.symlink(docs, tmp_path / "link.zarr")
    assert check_replaceable(tmp_path / "link.zarr", DOCUMENTS) == "store"
    _docs(tmp_path / "link.zarr")  # replaced through the link; the link stays
    assert (tmp_path / "link.zarr").is_symlink() and open_documents(tmp_path / "link.zarr").n_documents == 2
    os.symlink(victim, tmp_path / "photos_link")
    with pytest.raises(NotOurStoreError, match="cwox did not make"):
        remove_store(tmp_path / "photos_link", DOCUMENTS)
    os.symlink(tmp_path / "nothing", tmp_path / "dangling")
    with pytest.raises(NotOurStoreError, match="link to nothing"):
        check_replaceable(tmp_path / "dangling", DOCUMENTS)
