"""``make demo`` (cwox.pipelines.demo): the report, and the tree page it links to."""

from __future__ import annotations

from cwox.pipelines.demo import run_demo


def test_demo_writes_the_report_and_links_the_tree_page(tmp_path):
    index = run_demo(tmp_path / "demo")
    out = index.parent
    assert (out / "chelsea" / "grid.png").stat().st_size > 0
    page = (out / "tree.html").read_text(encoding="utf-8")
    assert "cwox tree page" in page and "tiger cat" in page  # the tree the clusters came from
    html = index.read_text(encoding="utf-8")
    assert 'href="tree.html#classes=' in html  # the photo's classes highlighted on the page
