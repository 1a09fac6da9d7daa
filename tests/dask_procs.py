"""Real `dask scheduler` and `dask worker` processes on 127.0.0.1, started the way the
README tells users to start theirs (for the tests that need a cluster of processes)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cwox.core.devices import ALLOCATOR_ENV

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_workers(address: str, n: int, timeout: float = 60.0) -> None:
    from distributed import Client

    with Client(address, timeout="20s") as c:
        c.wait_for_workers(n, timeout=timeout)


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]


@contextlib.contextmanager
def dask_processes(folder: Path, n_workers: int = 2, nanny: bool = True) -> Iterator[Cluster]:
    """A scheduler and ``n_workers`` single-threaded workers; all stopped at the end.

    Without ``nanny`` each worker's process is the one started (its PID is the
    worker's), so a worker killed by PID stays dead instead of being restarted."""
    found = shutil.which("dask", path=str(BIN))  # this interpreter's, so workers import this cwox
    dask = [found] if found else [sys.executable, "-m", "dask"]  # a venv without the script
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", **ALLOCATOR_ENV}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": folder}
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], **quiet)]
    try:
        time.sleep(1.0)
        for i in range(n_workers):
            procs.append(subprocess.Popen(
                [*dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                 *([] if nanny else ["--no-nanny"]), "--host", "127.0.0.1", "--name", f"w{i}", "--local-directory", str(folder)], **quiet))
        wait_for_workers(address, n_workers)
        yield Cluster(address, procs[0], procs[1:])
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
