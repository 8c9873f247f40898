"""DaskExecutor on a real LocalCluster (2 worker processes): the Executor contract, worker loss, and real
muse_bias jobs giving the same products as the LocalExecutor.

One cluster per module (~3 s to start); the esorex test writes three full-size BIAS frames holding two IFUs
(as test_engine_esorex.py) and reduces them twice, once per executor.
"""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install dask[distributed])")

from astropy.io import fits  # noqa: E402

from pymusepipe.dask_executor import DaskExecutor, local_cluster  # noqa: E402
from pymusepipe.executors import ExecJob  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with local_cluster(n_workers=2, cpus_per_worker=1, memory_gb_per_worker=4.0) as cluster, \
            distributed.Client(cluster) as dask_client:
        dask_client.wait_for_workers(2)
        yield dask_client


def _shell_job(folder: Path, name, command, products=(), depends_on=(), threads=1, memory_gb=1.0):
    output = folder / name
    return ExecJob(name=name, argv=["bash", "-c", command], output_dir=output,
                   stdout_path=folder / "logs" / f"{name}.stdout",
                   expected_products=[output / product for product in products], depends_on=tuple(depends_on),
                   threads=threads, memory_gb=memory_gb)


def test_contract_dependencies_failures_and_finalize(client, tmp_path):
    finalized = []
    jobs = [
        _shell_job(tmp_path, "make", 'echo "$OMP_NUM_THREADS" > A.fits', products=["A.fits"], threads=8),
        _shell_job(tmp_path, "uses_make", "test -f ../make/A.fits && touch B.fits", products=["B.fits"],
                   depends_on=["make"]),
        _shell_job(tmp_path, "crash", "echo '[ERROR] muse_bias: boom'; exit 3"),
        _shell_job(tmp_path, "after_crash", "touch C.fits", products=["C.fits"], depends_on=["crash"]),
        _shell_job(tmp_path, "no_product", "true", products=["D.fits"]),
    ]
    for job in jobs:
        job.finalize = lambda exec_job: finalized.append(exec_job.name)
    results = DaskExecutor(client, progress=False).run(jobs)
    assert {name: result.status for name, result in results.items()} == {
        "make": "done", "uses_make": "done", "crash": "failed", "after_crash": "skipped", "no_product": "failed"}
    # threads are capped at what the largest worker declares (1 cpu), and esorex is told so.
    assert (tmp_path / "make" / "A.fits").read_text().strip() == "1"
    assert "exited with code 3" in results["crash"].message and "boom" in results["crash"].message
    assert "D.fits" in results["no_product"].message
    assert "depends on crash" in results["after_crash"].message
    assert sorted(finalized) == ["make", "uses_make"]  # only after success, and before the dependent ran
    assert (tmp_path / "logs" / "crash.stdout").read_text().startswith("[ERROR]")


def test_workers_without_resources_are_a_clear_error(tmp_path):
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as plain:
        with pytest.raises(RuntimeError, match="declare no 'cpus'"):
            DaskExecutor(plain).run([_shell_job(tmp_path, "a", "true")])
        # Opting out of resources runs jobs one per worker thread.
        assert DaskExecutor(plain, use_resources=False, progress=False).run(
            [_shell_job(tmp_path, "a", "touch A.fits", products=["A.fits"])])["a"].ok


def test_a_worker_lost_mid_job_is_retried_from_an_empty_folder(client, tmp_path):
    # First attempt: leave a partial product, then kill our own worker process (esorex's parent).
    marker = tmp_path / "first_attempt_happened"
    command = (f"if [ ! -e {marker} ]; then touch {marker} partial.fits; kill -9 $PPID; exec sleep 30; fi; "
               "test ! -e partial.fits && touch P.fits")
    results = DaskExecutor(client, progress=False).run([_shell_job(tmp_path, "lost", command, products=["P.fits"])])
    assert results["lost"].ok, results["lost"].message
    assert marker.exists() and (tmp_path / "lost" / "P.fits").is_file()
    assert not (tmp_path / "lost" / "partial.fits").exists()
    client.wait_for_workers(2)


def test_a_job_killing_its_worker_every_time_fails_clearly(tmp_path):
    import dask

    # No second chance: the first lost worker fails the job (default: 3 retries on other workers).
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            local_cluster(n_workers=1, cpus_per_worker=1) as cluster, distributed.Client(cluster) as one_worker:
        results = DaskExecutor(one_worker, progress=False).run(
            [_shell_job(tmp_path, "killer", "kill -9 $PPID; exec sleep 30", products=["K.fits"]),
             _shell_job(tmp_path, "after", "touch A.fits", products=["A.fits"], depends_on=["killer"])])
    assert results["killer"].status == "failed" and "worker died" in results["killer"].message
    assert results["after"].status == "skipped"


@pytest.mark.esorex
def test_real_muse_bias_through_dask_gives_the_local_products(client, tmp_path):
    from pymusepipe.engine import RecipeEngine
    from pymusepipe.executors import LocalExecutor
    from pymusepipe.layout import PointingLayout
    from test_engine_esorex import _write_biases  # the same three full-size frames, IFUs 3 and 7

    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    frames = _write_biases(raw_dir)
    digests = {}
    try:
        for name, executor in (("local", LocalExecutor(pinning="none")), ("dask", DaskExecutor(client))):
            layout = PointingLayout(tmp_path / name, "BIASTEST", 1)
            engine = RecipeEngine(layout, executor=executor, logfile="bias.log", reset_log=True)
            jobs = engine.plan("muse_bias", [frames])
            report = engine.run(jobs, step="bias")
            assert report.ok, {job: result.message for job, result in report.results.items()}
            assert [job.parameters["nifu"] for job in jobs] == [3, 7]
            digests[name] = [_data_digest(job.products[0].destination) for job in jobs]
            # Registered like any other run: the catalogue lists both masters as done.
            assert sorted(record.status for record in engine.catalogue.records) == ["done", "done"]
            assert all((layout.folder("esorex_log") / job.log_name).is_file() for job in jobs)
        assert digests["dask"] == digests["local"]
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # 3 x 36 MB raw + 4 x 200 MB masters


def _data_digest(path):
    digest = hashlib.sha256()
    with fits.open(path) as hdus:
        for extension in ("DATA", "DQ", "STAT"):
            digest.update(np.ascontiguousarray(hdus[extension].data).tobytes())
    return digest.hexdigest()
