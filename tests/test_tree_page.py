"""The tree page (``cwox tree html``): evidence figures, the command, and the page in headless Chromium.

The browser test drives a real Chromium over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages on file descriptors 3 and 4, no
network and no extra package): it types a class name into the search box key by
key, presses Enter, reads the card, follows a report's highlighting link and takes
screenshots. Needs ``/usr/bin/chromium`` (skipped without it, failed on CI).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import subprocess
import time

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from cwox.hlta.tree import cluster_of, tree_from_groups
from cwox.online.tree_page import cooccurrence_evidence, tree_page_data, write_tree_page
from PIL import Image
from test_report_browser import chromium
from tree_factories import random_tree, sample_documents

from cwox.cli import main

NAMES = ["tabby", "tiger cat", "Egyptian cat", "lynx", "espresso", "cup", "coffee mug", "missile",
         "projectile", "goldfish", "tench", "daisy"]
GROUPS = [[0, 1, 2], [4, 5, 6], [7, 8]]  # cats, coffee, rockets; lynx, goldfish, tench, daisy alone


def test_cooccurrence_counts_and_lift_by_hand():
    # 8 documents over 4 labels; labels 0 and 1 always together, 2 independent of them.
    rows = [[0, 1], [0, 1], [0, 1, 2], [2], [2, 3], [3], [], [0, 1]]
    X = sp.csr_matrix((np.ones(sum(map(len, rows))), [i for r in rows for i in r],
                       np.cumsum([0, *map(len, rows)])), shape=(8, 4))
    ev = cooccurrence_evidence(X, {"Z1": [0, 1, 2], "c3": [3]})
    assert ev["n_documents"] == 8 and ev["counts"] == {0: 4, 1: 4, 2: 3, 3: 2}
    z1 = ev["clusters"]["Z1"]
    assert "c3" not in ev["clusters"]  # a single class has no pair
    assert z1["together"] == 4  # documents 0, 1, 2, 7
    pairs = {(a, b): (n, lift) for a, b, n, lift in z1["pairs"]}
    assert pairs[(0, 1)] == (4, 2.0)  # 4 * 8 / (4 * 4)
    assert pairs[(0, 2)] == (1, round(1 * 8 / (4 * 3), 2))
    assert z1["pairs"][0][:2] == [0, 1]  # most co-occurring first
    # Lift of the cluster (cwox tree show's): co-occurring pairs summed over documents,
    # 1 + 1 + 3 + 1 = 6, against independent classes at their frequencies 4, 4, 3:
    # ((4 + 4 + 3)^2 - (16 + 16 + 9)) / 2 / 8 = 5, so 6 / 5.
    assert z1["lift"] == pytest.approx(1.2)


def test_page_data_follows_the_tree_cut():
    tree = random_tree(seed=3, n_labels=12)
    data = tree_page_data(tree, sp.csr_matrix(sample_documents(tree, 300, seed=1)))
    level1 = cluster_of(tree, level=1)
    for lab, cid in level1.items():
        if cid.startswith("Z"):
            assert data["cluster"][str(lab)] == cid and lab in data["nodes"][cid]["labels"]
        else:
            assert str(lab) not in data["cluster"]
    assert data["evidence"]["n_documents"] == 300
    assert set(data["evidence"]["clusters"]) <= set(data["nodes"])
    with pytest.raises(ValueError, match="labels"):
        tree_page_data(tree, sp.csr_matrix((5, 3)))


def test_tree_html_command(tmp_path):
    from cwox.store.trees import save_tree

    store = tmp_path / "trees.zarr"
    save_tree(tree_from_groups(GROUPS, NAMES), store, meta={"model": "toy"}, publish=True)
    out = tmp_path / "page" / "tree.html"
    res = CliRunner().invoke(main, ["tree", "html", str(store), "--out", str(out), "--docs", "none",
                                    "--classes", "tabby,cup"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "no evidence" in res.output and "#classes=0,5" in res.output
    page = out.read_text(encoding="utf-8")
    assert "Egyptian cat" in page and "<script" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page  # nothing fetched
    bad = CliRunner().invoke(main, ["tree", "html", str(store), "--out", str(out), "--docs", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "--docs" in bad.output
    again = CliRunner().invoke(main, ["tree", "html", str(store), "--out", str(out), "--docs", "none"])
    assert again.exit_code == 0, again.output  # its own page is replaced
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my notes</p>")
    refused = CliRunner().invoke(main, ["tree", "html", str(store), "--out", str(mine), "--docs", "none"])
    assert refused.exit_code == 2 and "not a tree page cwox wrote" in refused.output
    assert mine.read_text() == "<p>my notes</p>"  # never overwritten


# --------------------------------------------------------------------------- the browser


def _onto_3_and_4(read_end: int, write_end: int) -> None:
    """In the child: the command pipe's read end on fd 3, the reply pipe's write end on fd 4."""
    r = fcntl.fcntl(read_end, fcntl.F_DUPFD, 10)  # above 4 first, so neither dup2 clobbers the other
    w = fcntl.fcntl(write_end, fcntl.F_DUPFD, 10)
    os.dup2(r, 3)
    os.dup2(w, 4)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3: commands in, fd 4: out)."""

    def __init__(self, browser: str, profile: str, size: tuple[int, int] = (1200, 1400)) -> None:
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()
        # The child reads commands on fd 3 and writes replies on fd 4.
        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "--remote-debugging-pipe",
             "about:blank"],
            pass_fds=(3, 4), preexec_fn=lambda: _onto_3_and_4(to_r, from_w),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        self._buf, self._id = b"", 0
        for _ in range(100):  # the first tab may take a moment to exist
            pages = [t["targetId"] for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if pages:
                break
            time.sleep(0.1)
        page = pages[0]
        self.session = self.send("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=False)

    def send(self, method: str, session: bool = False, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._from_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str):
        res = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        return res["result"].get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", session=True, url=url)
        for _ in range(200):
            if self.js("document.readyState") == "complete" and self.js("!!document.getElementById('tree')"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{url} did not load")

    def type(self, text: str) -> None:
        """Key by key, as a person types (keyDown with text, keyUp)."""
        for ch in text:
            self.send("Input.dispatchKeyEvent", session=True, type="keyDown", text=ch, key=ch, unmodifiedText=ch)
            self.send("Input.dispatchKeyEvent", session=True, type="keyUp", key=ch)

    def press_enter(self) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", session=True, type=kind, key="Enter", code="Enter",
                      windowsVirtualKeyCode=13, nativeVirtualKeyCode=13)

    def screenshot(self, path) -> np.ndarray:
        png = base64.b64decode(self.send("Page.captureScreenshot", session=True, format="png")["data"])
        path.write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_w)
        os.close(self._from_r)


def _highlight_mask(rgb: np.ndarray) -> np.ndarray:
    """The page's highlight yellow (#fff1c2 / #fffbea with #e0a100 borders): warm, light, not white."""
    f = rgb.astype(np.int32)
    return (f[..., 0] > 240) & (f[..., 1] > 225) & (f[..., 2] < 215) & (f[..., 2] > 150)


@pytest.mark.slow
def test_search_and_highlight_in_chromium(tmp_path):
    browser = chromium()
    tree = tree_from_groups(GROUPS, NAMES)
    rng = np.random.default_rng(0)
    docs = (rng.random((400, len(NAMES))) < 0.08).astype(np.uint8)
    docs[:60, [0, 2]] = 1  # tabby and Egyptian cat share 60 documents' top-K
    page = write_tree_page(tree, tmp_path / "tree.html", documents=sp.csr_matrix(docs), source="toy.zarr")

    b = Chromium(browser, str(tmp_path / "profile"))
    try:
        b.open(page.resolve().as_uri())
        assert b.js("document.getElementById('card').hidden") is True
        b.js("document.getElementById('q').focus()")
        b.type("egypt")
        hits = b.js("[...document.querySelectorAll('#hits li')].map(li => li.textContent)")
        assert hits and hits[0].startswith("Egyptian cat"), hits
        b.press_enter()
        card = b.js("document.getElementById('card').innerText")
        assert "Egyptian cat" in card and "Confusion cluster Z1" in card
        assert "Siblings: tabby; tiger cat" in card
        assert "tabby + Egyptian cat" in card and "lift over chance" in card
        assert "Z1 (level 1, 3 classes)" in card and "Z0 (level 2, 12 classes)" in card
        assert b.js("document.querySelector('#n-Z1').classList.contains('sel')") is True
        shot = b.screenshot(tmp_path / "search.png")
        assert shot.shape[:2] == (1400, 1200) and (shot.max(axis=2) < 120).mean() > 0.005  # text drawn

        # A class alone: no cluster, said so.
        b.js("document.getElementById('q').value = ''; document.getElementById('q').focus()")
        b.type("dais")
        b.press_enter()
        assert "No confusion cluster" in b.js("document.getElementById('card').innerText")

        # A report's link: the photo's classes and their clusters highlighted.
        b.open(page.resolve().as_uri() + "#classes=1,5,3&photo=chelsea.png")
        photo = b.js("document.getElementById('photo').innerText")
        assert "Clusters of chelsea.png" in photo and "Z1" in photo and "Z2" in photo and "alone" in photo
        assert b.js("[...document.querySelectorAll('.cluster.hi')].map(e => e.id).sort()") == ["n-Z1", "n-Z2"]
        lit = b.screenshot(tmp_path / "highlight.png")
        assert _highlight_mask(lit).sum() > 5 * _highlight_mask(shot).sum() + 2000
    finally:
        b.close()


def test_index_links_each_image_to_the_tree_page(tmp_path):
    from cwox.online.report import IndexEntry, write_index

    page = write_tree_page(tree_from_groups(GROUPS, NAMES), tmp_path / "site" / "tree.html")
    entry = IndexEntry(image_path="photos/a cat.jpg", report_dir=tmp_path / "site" / "a",
                       top=[(1, "tiger cat", 0.5), (0, "tabby", 0.3)], clusters=[[1, 0]])
    index = write_index([entry, IndexEntry.failed("bad.jpg", "not an image")], tmp_path / "site", tree_page=page)
    text = index.read_text(encoding="utf-8")
    assert 'href="tree.html"' in text  # the tree the clusters were cut from
    assert 'href="tree.html#classes=1,0&amp;photo=a%20cat.jpg"' in text  # this image's classes highlighted
    assert text.count("clusters in the tree") == 1  # not for the failed image
    assert "tree.html" not in write_index([entry], tmp_path / "plain").read_text(encoding="utf-8")
