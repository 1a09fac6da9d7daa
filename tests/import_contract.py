"""Check the import contract of setup.cfg (``[importlinter]``): ``python tests/import_contract.py``.

import-linter finds a package's modules by walking the folder of its ``__init__.py``;
the stage folders live at the top of the repository and join ``cwox`` only when
installed (setup.cfg's ``package_dir``). So this builds a temporary folder that looks
like the installed package (``cwox/`` with a link per stage, from ``package_dir``) and
runs ``lint-imports`` with that folder first on the path. Exit code: lint-imports'.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_view(dest: Path, root: Path = ROOT) -> Path:
    """``dest/cwox``: links to ``root/cwox``'s entries and to each stage folder; returns ``dest``."""
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    mapping = dict(
        line.split("=", 1) for line in cfg["options"]["package_dir"].strip().splitlines() if "=" in line
    )
    mapping = {k.strip(): v.strip() for k, v in mapping.items()}
    pkg = dest / "cwox"
    pkg.mkdir(parents=True)
    for entry in (root / mapping.pop("cwox", "cwox")).iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in mapping.items():
        (pkg / name.split(".", 1)[1]).symlink_to(root / folder, target_is_directory=True)
    return dest


def main() -> int:
    lint = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory() as tmp:
        view = package_view(Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(view), os.environ.get("PYTHONPATH", "")])}
        return subprocess.run([str(lint), "--no-cache", str(ROOT / "setup.cfg")], cwd=view, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
