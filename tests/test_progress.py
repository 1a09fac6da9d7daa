"""Progress bars over an explainer's passes: on a terminal, never when piped, never with ``--quiet``.

``explain`` runs as a real process: once with stderr on a pseudo-terminal (the
bar must show), once on a pseudo-terminal with ``--quiet`` and once piped (no
bar); the maps of the three runs must be identical, bit for bit.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from skimage import data

from cwox.core import progress as progress_mod
from cwox.core.progress import progress, quiet

RISE_ARGS = ["--explainer", "rise", "--n-masks", "32", "--batch-size", "8", "--top-k", "2",
             "--tree", "none", "--device", "cpu"]


def _on_pty(cmd: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal; its exit code and all it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                pytest.fail(f"{cmd} ran longer than {timeout} s")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@pytest.mark.slow
def test_bar_on_a_terminal_not_when_piped_nor_quiet(tmp_path):
    photo = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(photo)
    # No delay: on a fast machine these 4 batches take less than the usual DELAY.
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CWOX_PROGRESS_DELAY": "0"}
    explain = [sys.executable, "-m", "cwox.cli", "explain", str(photo), *RISE_ARGS]

    rc, shown = _on_pty([*explain, "--out", str(tmp_path / "tty")], env)
    assert rc == 0, shown
    assert "RISE masks:" in shown and "%|" in shown, shown[-2000:]

    rc, hushed = _on_pty([*explain, "--quiet", "--out", str(tmp_path / "quiet")], env)
    assert rc == 0, hushed
    assert "RISE masks" not in hushed and "%|" not in hushed
    assert "1 of 1 images explained" in hushed

    piped = subprocess.run([*explain, "--out", str(tmp_path / "piped")], env=env, capture_output=True,
                           text=True, timeout=600)
    assert piped.returncode == 0, piped.stderr
    assert "RISE masks" not in piped.stderr + piped.stdout and "%|" not in piped.stderr

    maps = [np.load(tmp_path / run / "chelsea" / "maps.npz") for run in ("tty", "quiet", "piped")]
    for key in ("class_maps", "probs"):
        assert maps[0][key].tobytes() == maps[1][key].tobytes() == maps[2][key].tobytes(), key


class _Terminal:
    """A text stream on a pseudo-terminal, so that tqdm draws on it."""

    def __init__(self) -> None:
        self.master, slave = pty.openpty()
        self.stream = os.fdopen(slave, "w", buffering=1)

    def written(self) -> str:
        self.stream.flush()
        out = []
        while select.select([self.master], [], [], 0.05)[0]:
            out.append(os.read(self.master, 65536))
        return b"".join(out).decode("utf-8", "replace")

    def close(self) -> None:
        self.stream.close()
        os.close(self.master)


def _slow_loop() -> list[slice]:
    seen = []
    for sl in progress([slice(0, 5), slice(5, 10), slice(10, 12)], total=12, desc="unit passes", unit="pass"):
        time.sleep(progress_mod.DELAY * 0.7)  # the bar appears after DELAY seconds
        seen.append(sl)
    return seen


def test_progress_yields_items_unchanged_and_draws_only_when_allowed(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term.stream)
    try:
        assert _slow_loop() == [slice(0, 5), slice(5, 10), slice(10, 12)]
        drawn = term.written()
        assert "unit passes" in drawn and "/12" in drawn  # slices counted by their length
        with quiet():
            assert not progress_mod.enabled()
            assert len(_slow_loop()) == 3
        assert progress_mod.enabled()  # restored after the block
        assert "unit passes" not in term.written()
    finally:
        term.close()


def test_quiet_option_turns_bars_off_for_the_command_only():
    import click
    from click.testing import CliRunner

    from cwox.commands.common import quiet_option, silence_progress
    from cwox.commands.evaluate import evaluate
    from cwox.commands.explain import explain

    seen = []

    @click.command()
    @quiet_option
    def cmd(quiet):
        silence_progress(quiet)
        seen.append(progress_mod.enabled())

    for args in (["--quiet"], []):
        assert CliRunner().invoke(cmd, args).exit_code == 0
        assert progress_mod.enabled()  # back on after the command
    assert seen == [False, True]
    for command in (explain, evaluate):  # both commands take it
        assert "--quiet" in [opt for p in command.params for opt in p.opts]
