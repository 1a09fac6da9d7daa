"""One run on a real `dask scheduler` with two `dask worker` processes on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cwox.store.documents import open_documents

from cwox.cli import main
from cwox.core.devices import ALLOCATOR_ENV

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_workers(address: str, n: int, timeout: float = 60.0) -> None:
    from distributed import Client

    with Client(address, timeout="20s") as c:
        c.wait_for_workers(n, timeout=timeout)


@pytest.fixture()
def cluster(tmp_path):
    dask = shutil.which("dask", path=str(BIN)) or "dask"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    # started the way the README tells users to start their workers
    env = {**os.environ, "OMP_NUM_THREADS": "1", **ALLOCATOR_ENV}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1.0)
        for i in range(2):
            procs.append(subprocess.Popen(
                [dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                 "--host", "127.0.0.1", "--name", f"w{i}", "--local-directory", str(tmp_path)],
                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_workers(address, 2)
        yield address
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_documents_through_an_external_scheduler(cluster, photo_dir, tmp_path):
    out = tmp_path / "remote.zarr"
    res = CliRunner().invoke(main, ["documents", str(photo_dir), "--out", str(out), "--scheduler",
                                    cluster, "--augment", "1", "--chunk-size", "4", "--quiet",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    docs = open_documents(out)
    assert docs.complete and docs.n_documents == 12 and (docs.k() == 5).all()
    # both workers did work: each task records nothing about its worker, so ask the scheduler
    from distributed import Client

    with Client(cluster) as c:
        assert len(c.scheduler_info()["workers"]) == 2
        # Dask keeps allocator settings already in a worker's environment (README)
        seen = c.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert set(seen.values()) == {ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]}
    # same result as a LocalCluster run with the same settings
    local = tmp_path / "local.zarr"
    res = CliRunner().invoke(main, ["documents", str(photo_dir), "--out", str(local), "--workers", "1",
                                    "--augment", "1", "--chunk-size", "4", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    a, b = open_documents(out), open_documents(local)
    assert np.array_equal(a.labels(), b.labels())
    np.testing.assert_array_equal(a.probs(), b.probs())


def test_unreachable_scheduler_is_a_clear_error(photo_dir, tmp_path):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        res = CliRunner().invoke(main, ["documents", str(photo_dir), "--out", str(tmp_path / "x.zarr"),
                                        "--scheduler", f"tcp://127.0.0.1:{_free_port()}"])
    assert res.exit_code == 2 and "cannot reach" in res.output
