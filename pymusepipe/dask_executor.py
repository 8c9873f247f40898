"""Running esorex jobs on a Dask cluster (``dask.distributed``), within the :class:`~pymusepipe.executors.Executor`
contract.

How the contract is kept on a cluster
-------------------------------------
- **Dependencies.** A job is submitted once every job it depends on is *done and finalized*: ``finalize``
  (moving products into the layout, registering them in the catalogue) runs in this process, which holds the
  catalogue and the replay log, so a dependent must wait for it, not only for its dependency's esorex. Jobs
  whose dependencies are met all go to the scheduler at once; a failed job's dependents are skipped.
- **Resources.** Each job asks for ``{"cpus": threads, "memory_gb": memory}`` as Dask *worker resources*, so a
  worker never runs more esorex threads or memory than it declares. Workers must declare them::

      dask worker SCHEDULER --nthreads 8 --resources "cpus=8,memory_gb=60" --memory-limit 0

  ``--memory-limit 0``: Dask's memory monitor only sees the worker process, never its esorex children, so
  it cannot protect anything here; with a limit it can only pause or kill a worker for the wrong reason.
  The resources are the throttle. ``--nthreads`` must be at least ``cpus`` (one Dask thread waits on each
  running esorex). :func:`local_cluster` builds such a ``LocalCluster``.
- **Logs** are written by the worker straight into the pointing's ``Esorex_log`` folder, which (like the
  whole data root) must be on a file system shared by the workers; a worker that cannot see the job's
  folders fails the job with that message.
- **A worker lost mid-job.** The scheduler re-runs the task on another worker (up to the
  ``distributed.scheduler.allowed-failures`` setting, default 3); each attempt starts from an empty output
  folder, and esorex dies with the Dask thread that started it (``setpriv --pdeathsig``, Linux), so a killed
  attempt cannot keep writing. After too many losses the job fails with a message saying so.
- **Never done without products.** The worker checks the exit code and the expected products; this process
  checks the products again on its own view of the file system before ``finalize``.

Any other engine (Parsl, a batch system) only needs the same ``run(jobs) -> {name: JobResult}``.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Sequence

from .esorex import PINNING_LIKWID, PINNING_METHODS, PINNING_NONE, parse_log, pinning_prefix
from .executors import (STATUS_DONE, STATUS_FAILED, STATUS_SKIPPED, ExecJob, Executor, JobResult, _check_unique,
                        _dependency_failure)

__all__ = ["DaskExecutor", "local_cluster", "RESOURCE_CPUS", "RESOURCE_MEMORY"]

logger = logging.getLogger(__name__)

#: Worker resource names a job asks for (declare them on every worker).
RESOURCE_CPUS = "cpus"
RESOURCE_MEMORY = "memory_gb"

#: Seconds the workers' capacity is remembered between questions to the scheduler.
_CAPACITY_TTL = 5.0


def local_cluster(n_workers: int = 2, cpus_per_worker: int = 1, memory_gb_per_worker: float = 4.0, **kwargs):
    """A ``LocalCluster`` whose workers declare the resources :class:`DaskExecutor` throttles on.

    Parameters
    ----------
    n_workers : int
        Worker processes.
    cpus_per_worker : int
        CPUs (esorex threads) each worker may run at once; also its Dask thread count.
    memory_gb_per_worker : float
        Memory each worker may give to its esorex jobs.
    **kwargs
        Passed to ``distributed.LocalCluster`` (e.g. ``dashboard_address=":8787"``).

    Returns
    -------
    distributed.LocalCluster
        Close it (``with local_cluster() as cluster:``) when done.
    """
    from distributed import LocalCluster

    if n_workers < 1 or cpus_per_worker < 1 or memory_gb_per_worker <= 0:
        raise ValueError(f"local_cluster(n_workers={n_workers}, cpus_per_worker={cpus_per_worker}, "
                         f"memory_gb_per_worker={memory_gb_per_worker}): all must be positive")
    kwargs.setdefault("dashboard_address", ":0")  # a free port: never clash with another cluster
    return LocalCluster(n_workers=n_workers, threads_per_worker=cpus_per_worker, processes=True,
                        memory_limit=0,  # Dask cannot see esorex's memory: resources throttle instead
                        resources={RESOURCE_CPUS: cpus_per_worker, RESOURCE_MEMORY: memory_gb_per_worker},
                        **kwargs)


class DaskExecutor(Executor):
    """Runs jobs on a ``dask.distributed`` cluster, throttled by worker resources.

    Parameters
    ----------
    client : distributed.Client, optional
        Any client (``LocalCluster``, ``SLURMCluster`` from dask-jobqueue, a remote scheduler).
    scheduler : str, optional
        Scheduler address (``tcp://host:8786``) to connect to when no client is given.
    use_resources : bool
        Ask for ``cpus``/``memory_gb`` worker resources (default). Without them Dask runs one job per worker
        thread whatever its threads and memory: only for workers that cannot declare resources.
    pinning : str
        ``none`` (default: the worker's batch system places processes), ``taskset`` or ``likwid`` to pin
        each esorex to the first ``threads`` CPUs of the worker's affinity mask (right only with one job
        per worker).
    timeout : float, optional
        Default timeout in seconds for jobs that do not set one (the worker kills esorex then).
    retries : int
        Extra attempts of a job whose task raised (e.g. a transient file-system error). Worker loss is
        retried by the scheduler itself (``distributed.scheduler.allowed-failures``).
    tail_lines : int
        Log lines shown when a job fails.
    progress : bool or None
        tqdm progress bar of finished jobs; ``None`` (default) shows it only on a terminal.
    """

    def __init__(self, client=None, *, scheduler: str | None = None, use_resources: bool = True,
                 pinning: str = PINNING_NONE, timeout: float | None = None, retries: int = 1,
                 tail_lines: int = 15, progress: bool | None = None):
        if client is None:
            if not scheduler:
                raise ValueError("DaskExecutor needs a distributed.Client or a scheduler address "
                                 "(e.g. scheduler='tcp://head-node:8786')")
            from distributed import Client

            client = Client(scheduler)
        if pinning not in PINNING_METHODS:
            raise ValueError(f"pinning={pinning!r}: expected one of {', '.join(PINNING_METHODS)}")
        if retries < 0:
            raise ValueError(f"retries={retries}: expected 0 or more")
        self.client = client
        self.use_resources = bool(use_resources)
        self.pinning = pinning
        self.timeout = timeout
        self.retries = int(retries)
        self.tail_lines = tail_lines
        self.progress = progress
        self._capacity = None  # (time asked, (cpus, memory_gb))

    def __repr__(self):
        return f"DaskExecutor(scheduler={self.client.scheduler.address!r}, pinning={self.pinning!r})"

    @property
    def cpus(self) -> list:
        """One id per CPU of the largest worker: the engine sizes per-job threads with ``len(cpus)``."""
        return list(range(self._worker_capacity()[0]))

    # ------------------------------------------------------------------ capacity
    def _worker_capacity(self) -> tuple:
        """(cpus, memory_gb) of the largest worker; asked again after a few seconds (workers come and go,
        and planning asks for ``cpus`` once per group of frames)."""
        now = time.monotonic()
        if self._capacity is None or now - self._capacity[0] > _CAPACITY_TTL:
            self._capacity = (now, self._ask_capacity())
        return self._capacity[1]

    def _ask_capacity(self) -> tuple:
        """(cpus, memory_gb) of the largest worker, from declared resources (or thread counts)."""
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {}) \
            if _accepts_n_workers(self.client) else self.client.scheduler_info().get("workers", {})
        if not workers:
            raise RuntimeError(f"the Dask cluster at {self.client.scheduler.address} has no worker yet "
                               "(wait for workers, e.g. client.wait_for_workers(1))")
        if not self.use_resources:
            return max(int(info.get("nthreads", 1)) for info in workers.values()), float("inf")
        lacking = [address for address, info in workers.items()
                   if RESOURCE_CPUS not in info.get("resources", {}) or RESOURCE_MEMORY not in info.get("resources", {})]
        if lacking:
            raise RuntimeError(
                f"Dask worker(s) {', '.join(sorted(lacking))} declare no '{RESOURCE_CPUS}'/'{RESOURCE_MEMORY}' "
                f"resources, so esorex jobs would never be scheduled there: start workers with "
                f"--resources \"{RESOURCE_CPUS}=N,{RESOURCE_MEMORY}=M\" --nthreads N --memory-limit 0 "
                "(or use pymusepipe.dask_executor.local_cluster), or pass use_resources=False")
        cpus = max(int(info["resources"][RESOURCE_CPUS]) for info in workers.values())
        memory = max(float(info["resources"][RESOURCE_MEMORY]) for info in workers.values())
        return cpus, memory

    # ------------------------------------------------------------------ running
    def run(self, jobs: Sequence[ExecJob], *, label: str = "") -> dict:
        """Run ``jobs`` on the cluster; returns ``{name: JobResult}`` in the order of ``jobs``.

        ``label`` names the progress bar (e.g. the step).
        """
        from distributed import as_completed

        _check_unique(jobs)
        if not jobs:
            return {}
        max_cpus, max_memory = self._worker_capacity()
        results, pending, running = {}, list(jobs), {}
        completed = as_completed()
        bar = _progress_bar(len(jobs), self.progress, label)
        try:
            while pending or running:
                for job in list(pending):
                    reason = _dependency_failure(job, results)
                    if reason:
                        pending.remove(job)
                        logger.warning("%s %s", job.name, reason)
                        results[job.name] = JobResult(job.name, STATUS_SKIPPED, message=reason)
                        bar.update(1)
                        continue
                    waiting = {other.name for other in running.values()} | {other.name for other in pending}
                    if waiting.intersection(job.depends_on):
                        continue
                    pending.remove(job)
                    future = self._submit(job, max_cpus, max_memory, results)
                    if future is not None:
                        running[future] = job
                        completed.add(future)
                    else:
                        bar.update(1)
                if not running:
                    if pending:
                        raise ValueError("jobs wait on each other (dependency cycle): "
                                         + ", ".join(job.name for job in pending))
                    break
                future = next(completed)
                job = running.pop(future)
                results[job.name] = self._collect(job, future)
                bar.update(1)
        except BaseException:
            # Interrupted: drop queued tasks. A running esorex finishes on its worker (Dask cannot interrupt a
            # running task); its products stay in Pipe_products and are not registered.
            self.client.cancel(list(running))
            raise
        finally:
            bar.close()
        return {job.name: results[job.name] for job in jobs}

    def _submit(self, job: ExecJob, max_cpus: int, max_memory: float, results: dict):
        """Send one job to the scheduler; returns its future (None if it failed before submission)."""
        threads = max(1, min(int(job.threads), max_cpus))
        memory = min(float(job.memory_gb), max_memory)  # an oversized job runs alone on the largest worker
        if memory < job.memory_gb:
            logger.warning("%s asks for %.1f GB, more than any Dask worker declares (%.1f GB): it runs alone",
                           job.name, job.memory_gb, max_memory)
        argv = list(job.argv)
        if self.pinning == PINNING_LIKWID and any(" " in item for item in argv):
            message = "likwid-pin splits arguments on spaces; use pinning='taskset' or 'none'"
            results[job.name] = JobResult(job.name, STATUS_FAILED, message=message)
            return None
        try:
            Path(job.stdout_path).parent.mkdir(parents=True, exist_ok=True)
            if job.on_start is not None:
                job.on_start(job, argv, threads)
        except Exception as error:  # noqa: BLE001 - a set-up problem fails this job only
            logger.error("%s failed before submission: %s", job.name, error)
            results[job.name] = JobResult(job.name, STATUS_FAILED, message=str(error))
            return None
        payload = {
            "name": job.name, "argv": argv, "output_dir": str(job.output_dir), "stdout_path": str(job.stdout_path),
            "esorex_log": str(job.esorex_log) if job.esorex_log else None,
            "expected_products": [str(path) for path in job.expected_products], "threads": threads,
            "timeout": job.timeout or self.timeout, "pinning": self.pinning, "tail_lines": self.tail_lines,
        }
        resources = {RESOURCE_CPUS: threads, RESOURCE_MEMORY: memory} if self.use_resources else None
        # A unique key: a job of the same name from an earlier run must not be taken as this one's result.
        key = f"esorex-{job.name}-{uuid.uuid4().hex[:8]}"
        return self.client.submit(run_job_on_worker, payload, key=key, pure=False, resources=resources,
                                  retries=self.retries)

    def _collect(self, job: ExecJob, future) -> JobResult:
        """JobResult of a finished task: worker outcome, products re-checked here, then ``finalize``."""
        from distributed import KilledWorker

        try:
            outcome = future.result()
        except KilledWorker:
            message = ("its Dask worker died while running it, too many times (see "
                       "distributed.scheduler.allowed-failures); look for out-of-memory kills on the nodes")
            logger.error("%s failed: %s", job.name, message)
            return JobResult(job.name, STATUS_FAILED, message=message)
        except Exception as error:  # noqa: BLE001 - the task raised: this job failed, others go on
            logger.error("%s failed on its Dask worker: %s: %s", job.name, type(error).__name__, error)
            return JobResult(job.name, STATUS_FAILED, message=f"{type(error).__name__}: {error}")
        argv = tuple(outcome["argv"])
        message = outcome["message"]
        if not message:
            # The shared file system as this process sees it must hold the products too.
            missing = [Path(path).name for path in job.expected_products if not Path(path).is_file()]
            if missing:
                message = (f"worker {outcome['host']} reported success but {', '.join(missing)} is not visible "
                           f"here: is {Path(job.output_dir).parent} on a file system shared with the workers?")
        if message:
            logger.error("%s failed on %s: %s\n--- tail of %s ---\n%s", job.name, outcome["host"], message,
                         outcome["log_path"], "\n".join(outcome["log_tail"]))
            return JobResult(job.name, STATUS_FAILED, outcome["returncode"], outcome["duration"], message,
                             tuple(outcome["log_tail"]), argv)
        if outcome["n_errors"]:
            logger.warning("%s: exit 0 but %d [ERROR] line(s) in %s, first: %s", job.name, outcome["n_errors"],
                           outcome["log_path"], outcome["first_error"])
        try:
            if job.finalize is not None:
                job.finalize(job)
        except Exception as error:  # noqa: BLE001
            logger.error("%s: products could not be registered: %s", job.name, error)
            return JobResult(job.name, STATUS_FAILED, outcome["returncode"], outcome["duration"],
                             f"finalize failed: {error}", tuple(outcome["log_tail"]), argv)
        note = f"{outcome['n_errors']} [ERROR] line(s) in the esorex log" if outcome["n_errors"] else ""
        return JobResult(job.name, STATUS_DONE, outcome["returncode"], outcome["duration"], note, (), argv)


def run_job_on_worker(payload: dict) -> dict:
    """Run one esorex command on a Dask worker and say what happened (plain data: it travels back).

    Failures of esorex are *returned* (exit code, missing products, log tail), never raised, so that the
    scheduler does not retry a recipe that failed for a reason of its own. Problems of the worker itself
    (folders not visible) raise, and are retried elsewhere.
    """
    output_dir = Path(payload["output_dir"])
    log_folder = Path(payload["stdout_path"]).parent
    if not log_folder.is_dir():  # the submitting process made it: not seeing it means no shared file system
        raise FileNotFoundError(f"worker {socket.gethostname()} does not see {log_folder}: the data root "
                                "must be on a file system shared by every Dask worker")
    # A previous attempt (a worker lost mid-job) may have left partial products: start from nothing.
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    threads = int(payload["threads"])
    cpus = sorted(os.sched_getaffinity(0))[:threads] if hasattr(os, "sched_getaffinity") else list(range(threads))
    argv = pinning_prefix(payload["pinning"], cpus) + list(payload["argv"])
    launcher = _die_with_parent_prefix()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.monotonic()
    timed_out = False
    with open(payload["stdout_path"], "ab") as stream:
        process = subprocess.Popen(launcher + argv, stdout=stream, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, cwd=output_dir, start_new_session=True)
        try:
            returncode = process.wait(timeout=payload["timeout"])
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
            returncode = process.wait()
    duration = time.monotonic() - start
    esorex_log = payload["esorex_log"]
    log = parse_log(esorex_log if esorex_log and Path(esorex_log).is_file() else payload["stdout_path"],
                    tail_lines=payload["tail_lines"])
    message = ""
    if timed_out:
        message = f"timed out after {payload['timeout']:g} s and was killed"
    elif returncode != 0:
        message = f"esorex exited with code {returncode}"
    else:
        missing = [Path(path).name for path in payload["expected_products"] if not Path(path).is_file()]
        if missing:
            message = f"exit 0 but expected product(s) missing: {', '.join(missing)}"
    if message and log.errors:
        message += f"; first error: {log.errors[0]}"
    return {"returncode": returncode, "duration": duration, "message": message, "argv": argv,
            "log_path": str(log.path), "log_tail": list(log.tail) if message else [],
            "n_errors": len(log.errors), "first_error": log.errors[0] if log.errors else "",
            "host": socket.gethostname()}


def _die_with_parent_prefix() -> list:
    """``setpriv --pdeathsig KILL`` (util-linux, Linux): esorex is killed if the worker thread that started it
    dies, so a lost worker's attempt cannot keep writing while the retry runs. Empty where unavailable.

    A ``preexec_fn`` could do the same, but Python documents it as unsafe in threaded programs (a worker is).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL"] if setpriv else []


def _kill_group(process):
    try:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _accepts_n_workers(client) -> bool:
    """Recent distributed lists only the first few workers in scheduler_info() unless asked for all."""
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


class _NoBar:
    def update(self, count):
        pass

    def close(self):
        pass


def _progress_bar(total: int, enabled: bool | None, label: str = ""):
    """tqdm bar of finished jobs; ``disable=None`` writes nothing when stderr is not a terminal."""
    if enabled is False:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="job", desc=label or "esorex jobs", disable=None if enabled is None else False,
                leave=False)
