"""DaskExecutor on a real LocalCluster (2 worker processes), through the one scheduler: the same graph as the
local executor with the same results and skip decisions, worker loss, cancellation, and real muse_bias jobs
giving the same products as the LocalExecutor.

One cluster per module (~3 s to start); the esorex test writes three full-size BIAS frames holding two IFUs
(as test_engine_esorex.py) and reduces them twice, once per executor.
"""
import hashlib
import shutil
import signal
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install dask[distributed])")

from astropy.io import fits  # noqa: E402

from pymusepipe.dask_executor import DaskExecutor, local_cluster  # noqa: E402
from pymusepipe.executors import LocalExecutor  # noqa: E402
from pymusepipe.scheduler import RunInterrupted, Scheduler  # noqa: E402

from scheduler_tasks import CommandTask  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with local_cluster(n_workers=2, cpus_per_worker=1, memory_gb_per_worker=4.0) as cluster, \
            distributed.Client(cluster) as dask_client:
        dask_client.wait_for_workers(2)
        yield dask_client


def _graph(folder, events):
    """A small graph: a chain, a failure with a dependent, a missing product, an up-to-date task."""
    def shell(name, command, **kwargs):
        return CommandTask(folder, name, ["bash", "-c", command], events=events, **kwargs)

    return [
        shell("make", 'echo "$OMP_NUM_THREADS" > A.fits', expected=["A.fits"], max_threads=8),
        shell("uses_make", "test -f ../make/A.fits && touch B.fits", expected=["B.fits"], depends_on=["make"]),
        shell("crash", "echo '[ERROR] muse_bias: boom'; exit 3"),
        shell("after_crash", "touch C.fits", expected=["C.fits"], depends_on=["crash"]),
        shell("no_product", "true", expected=["D.fits"]),
        shell("kept", "touch E.fits", up_to_date="products intact"),
        shell("after_kept", "touch F.fits", expected=["F.fits"], depends_on=["kept"]),
    ]


def test_the_same_graph_gives_the_same_results_and_skips_locally_and_on_dask(client, tmp_path):
    outcomes = {}
    for name, executor in (("local", LocalExecutor(cpus=[0, 1], pinning="none")), ("dask", DaskExecutor(client))):
        events = []
        results = Scheduler(executor, progress=False).run(_graph(tmp_path / name, events))
        outcomes[name] = ({job: result.status for job, result in results.items()},
                          sorted(event[1] for event in events if event[0] == "finalize"),
                          sorted(event[1] for event in events if event[0] == "prepare"))
        assert "exited with code 3" in results["crash"].message and "boom" in results["crash"].message
        assert "D.fits" in results["no_product"].message
        assert "depends on crash" in results["after_crash"].message
        assert not (tmp_path / name / "out" / "kept").exists()   # up to date: never started
    assert outcomes["local"] == outcomes["dask"]
    assert outcomes["dask"][0] == {"make": "done", "uses_make": "done", "crash": "failed", "after_crash": "skipped",
                                   "no_product": "failed", "kept": "uptodate", "after_kept": "done"}
    # threads are capped at what the largest worker declares (1 cpu), and esorex is told so.
    assert (tmp_path / "dask" / "out" / "make" / "A.fits").read_text().strip() == "1"


def test_the_largest_worker_is_the_memory_limit_of_a_job_with_or_without_the_margin(client, tmp_path):
    # Workers of 4 GB: a job modelled at 5 GB with the margin and 3.5 without it runs (alone on a worker); one
    # needing 4.5 GB even without the margin is refused before it starts, as with the local executor.
    events = []
    fits = CommandTask(tmp_path, "fits", ["bash", "-c", "touch A.fits"], expected=["A.fits"], memory_gb=5.0,
                       alone_gb=3.5, events=events)
    huge = CommandTask(tmp_path, "huge", ["bash", "-c", "touch B.fits"], expected=["B.fits"], memory_gb=5.0,
                       alone_gb=4.5, events=events)
    results = Scheduler(DaskExecutor(client), progress=False).run([fits, huge])
    assert results["fits"].ok, results["fits"].message
    assert results["huge"].status == "failed" and "more than the budget of 4.0 GB" in results["huge"].message
    assert not any(event[:2] == ("prepare", "huge") for event in events)


def test_workers_without_resources_are_a_clear_error(tmp_path):
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as plain:
        task = CommandTask(tmp_path, "a", ["bash", "-c", "touch A.fits"], expected=["A.fits"])
        with pytest.raises(RuntimeError, match="declare no 'cpus'"):
            Scheduler(DaskExecutor(plain), progress=False).run([task])
        # Opting out of resources runs jobs one per worker thread.
        assert Scheduler(DaskExecutor(plain, use_resources=False), progress=False).run([task])["a"].ok


def test_a_worker_lost_mid_job_is_retried_from_an_empty_folder(client, tmp_path):
    # First attempt: leave a partial product, then kill our own worker process (esorex's parent).
    marker = tmp_path / "first_attempt_happened"
    command = (f"if [ ! -e {marker} ]; then touch {marker} partial.fits; kill -9 $PPID; exec sleep 30; fi; "
               "test ! -e partial.fits && touch P.fits")
    task = CommandTask(tmp_path, "lost", ["bash", "-c", command], expected=["P.fits"])
    results = Scheduler(DaskExecutor(client), progress=False).run([task])
    assert results["lost"].ok, results["lost"].message
    assert marker.exists() and (task.cwd / "P.fits").is_file() and not (task.cwd / "partial.fits").exists()
    client.wait_for_workers(2)


def test_a_job_killing_its_worker_every_time_fails_clearly(tmp_path):
    import dask

    # No second chance: the first lost worker fails the job (default: 3 retries on other workers).
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            local_cluster(n_workers=1, cpus_per_worker=1) as cluster, distributed.Client(cluster) as one_worker:
        results = Scheduler(DaskExecutor(one_worker), progress=False).run(
            [CommandTask(tmp_path, "killer", ["bash", "-c", "kill -9 $PPID; exec sleep 30"], expected=["K.fits"]),
             CommandTask(tmp_path, "after", ["touch", "A.fits"], expected=["A.fits"], depends_on=["killer"])])
    assert results["killer"].status == "failed" and "worker died" in results["killer"].message
    assert results["after"].status == "skipped"


def test_ctrl_c_cancels_running_commands_on_the_workers(client, tmp_path):
    marker = tmp_path / "sleeper.pid"
    task = CommandTask(tmp_path, "sleeper", ["bash", "-c", f"echo $$ > {marker}; exec sleep 120"])

    def interrupt_once_running():
        # Ctrl-C once the command runs on the worker (a fixed delay races a loaded machine's slow start)
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt_once_running, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(RunInterrupted) as info:
        Scheduler(DaskExecutor(client), progress=False).run([task])
    assert info.value.results["sleeper"].status == "interrupted"
    pid = int(marker.read_text())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid) and time.monotonic() - start < 100


def _alive(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.esorex
def test_real_muse_bias_through_dask_gives_the_local_products(client, tmp_path):
    from pymusepipe.engine import RecipeEngine
    from pymusepipe.layout import PointingLayout
    from pymusepipe.replaylog import ReplayLog
    from test_engine_esorex import _write_biases  # the same three full-size frames, IFUs 3 and 7

    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    frames = _write_biases(raw_dir)
    digests = {}
    try:
        for name, executor in (("local", LocalExecutor(pinning="none")), ("dask", DaskExecutor(client))):
            layout = PointingLayout(tmp_path / name, "BIASTEST", 1)
            engine = RecipeEngine(layout.root, executor=executor,
                                  log=ReplayLog(layout.folder("log") / "bias.log", reset=True))
            jobs = engine.plan("muse_bias", [frames], area=layout, step="bias")
            report = engine.run(jobs, label="bias")
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
