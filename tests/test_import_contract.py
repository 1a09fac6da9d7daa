"""The house stays as drawn: the import contract of setup.cfg holds, and no stage imports the face."""

from __future__ import annotations

import re
import subprocess
import sys

from import_contract import ROOT

STAGES = ("cwox/core", "hlta", "store", "offline", "online", "pipelines")


def test_the_import_contract_holds():
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "import_contract.py")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "Layers point down" in done.stdout


def test_no_stage_imports_the_face():
    """``cwox/__init__.py`` re-exports every stage; a stage importing it would point up."""
    face = re.compile(r"^\s*(from cwox import |import cwox\s*$)", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for stage in STAGES for p in (ROOT / stage).rglob("*.py")
                 if face.search(p.read_text())]
    assert offenders == []
