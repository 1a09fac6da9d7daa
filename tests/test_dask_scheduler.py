"""One run on a real `dask scheduler` with two `dask worker` processes on 127.0.0.1."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from cwox.store.documents import open_documents
from dask_procs import dask_processes, free_port

from cwox.cli import main
from cwox.core.devices import ALLOCATOR_ENV


@pytest.fixture()
def cluster(tmp_path):
    with dask_processes(tmp_path, 2) as procs:
        yield procs.address


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
                                        "--scheduler", f"tcp://127.0.0.1:{free_port()}"])
    assert res.exit_code == 2 and "cannot reach" in res.output
