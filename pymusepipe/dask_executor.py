"""Running esorex commands on a Dask cluster (``dask.distributed``, e.g. dask-jobqueue's SLURMCluster).

Only what differs from the local executor lives here: sending a command to a worker and getting its outcome
back. Dependencies, skipping, classification, finalisation and cancellation are the one scheduler's
(:mod:`pymusepipe.scheduler`), which runs in this process and sees the products on the shared file system.

How the contract is kept on a cluster
-------------------------------------
- **Resources.** Each command asks for ``{"cpus": threads, "memory_gb": memory}`` as Dask *worker resources*,
  so a worker never runs more esorex threads or memory than it declares. Workers must declare them::

      dask worker SCHEDULER --nthreads 8 --resources "cpus=8,memory_gb=60" --memory-limit 0

  ``--memory-limit 0``: Dask's memory monitor only sees the worker process, never its esorex children.
  ``--nthreads`` must be at least ``cpus`` (one Dask thread waits on each running esorex).
  :func:`local_cluster` builds such a ``LocalCluster``.
- **Logs** are written by the worker straight into the area's ``Esorex_log`` folder, which (like the whole
  data root) must be on a file system shared by the workers.
- **A worker lost mid-job.** The scheduler re-runs the task on another worker (``distributed.scheduler.
  allowed-failures``); each attempt starts from an empty output folder, and esorex (with everything it forked)
  dies with the worker process that started it (:mod:`pymusepipe.processes`' watchdog), so a killed attempt
  cannot keep writing.
- **Ctrl-C.** Queued tasks are cancelled; running ones see a cancellation event within a second and kill
  their esorex process group.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import uuid
from pathlib import Path

from .esorex import PINNING_LIKWID, PINNING_METHODS, PINNING_NONE, pinning_prefix
from .executors import Executor, Outcome, run_command

__all__ = ["DaskExecutor", "local_cluster", "RESOURCE_CPUS", "RESOURCE_MEMORY"]

logger = logging.getLogger(__name__)

#: Worker resource names a command asks for (declare them on every worker).
RESOURCE_CPUS = "cpus"
RESOURCE_MEMORY = "memory_gb"


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
    """Sends commands to a ``dask.distributed`` cluster, throttled by worker resources.

    Parameters
    ----------
    client : distributed.Client, optional
        Any client (``LocalCluster``, ``SLURMCluster`` from dask-jobqueue, a remote scheduler).
    scheduler : str, optional
        Scheduler address (``tcp://host:8786``) to connect to when no client is given.
    use_resources : bool
        Ask for ``cpus``/``memory_gb`` worker resources (default). Without them Dask runs one command per
        worker thread whatever its threads and memory: only for workers that cannot declare resources.
    pinning : str
        ``none`` (default: the worker's batch system places processes), ``taskset`` or ``likwid`` to pin each
        esorex to the first ``threads`` CPUs of the worker's affinity mask (right only with one job per worker).
    timeout : float, optional
        Default timeout in seconds for commands that do not set one (the worker kills esorex then).
    retries : int
        Extra attempts of a command whose task raised (e.g. a transient file-system error).
    """

    def __init__(self, client=None, *, scheduler: str | None = None, use_resources: bool = True,
                 pinning: str = PINNING_NONE, timeout: float | None = None, retries: int = 1):
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
        self._run_id = uuid.uuid4().hex[:12]
        self._largest = None

    def __repr__(self):
        return f"DaskExecutor(scheduler={self.client.scheduler.address!r}, pinning={self.pinning!r})"

    def capacity(self):
        """None: the cluster queues the commands itself, each within one worker's declared resources."""
        return None

    def job_memory_limit(self) -> float:
        """The largest worker's declared memory: a job that cannot fit there, even alone, never starts."""
        return self._worker_capacity()[1]

    @property
    def cpus(self) -> list:
        """One id per CPU of the largest worker: the engine sizes each job's threads with ``len(cpus)``."""
        return list(range(self._worker_capacity()[0]))

    def _worker_capacity(self) -> tuple:
        """(cpus, memory_gb) of the largest worker, from declared resources (or thread counts)."""
        if self._largest is not None:
            return self._largest
        info = self.client.scheduler_info(**({"n_workers": -1} if _accepts_n_workers(self.client) else {}))
        workers = info.get("workers", {})
        if not workers:
            raise RuntimeError(f"the Dask cluster at {self.client.scheduler.address} has no worker yet "
                               "(wait for workers, e.g. client.wait_for_workers(1))")
        if not self.use_resources:
            self._largest = (max(int(w.get("nthreads", 1)) for w in workers.values()), float("inf"))
            return self._largest
        lacking = [address for address, w in workers.items()
                   if RESOURCE_CPUS not in w.get("resources", {}) or RESOURCE_MEMORY not in w.get("resources", {})]
        if lacking:
            raise RuntimeError(
                f"Dask worker(s) {', '.join(sorted(lacking))} declare no '{RESOURCE_CPUS}'/'{RESOURCE_MEMORY}' "
                f"resources, so esorex jobs would never be scheduled there: start workers with "
                f"--resources \"{RESOURCE_CPUS}=N,{RESOURCE_MEMORY}=M\" --nthreads N --memory-limit 0 "
                "(or use pymusepipe.dask_executor.local_cluster), or pass use_resources=False")
        self._largest = (max(int(w["resources"][RESOURCE_CPUS]) for w in workers.values()),
                         max(float(w["resources"][RESOURCE_MEMORY]) for w in workers.values()))
        return self._largest

    def start(self, command, done):
        max_cpus, max_memory = self._worker_capacity()
        threads = max(1, min(int(command.threads), max_cpus))
        memory = min(float(command.memory_gb), max_memory)  # an oversized job runs alone on the largest worker
        if self.pinning == PINNING_LIKWID and any(" " in item for item in command.argv):
            done(Outcome(error="likwid-pin splits arguments on spaces; use pinning='taskset' or 'none'"))
            return None
        payload = {"name": command.name, "argv": list(command.argv), "cwd": str(command.cwd),
                   "stdout_path": str(command.stdout_path), "threads": threads,
                   "timeout": command.timeout or self.timeout, "pinning": self.pinning,
                   "cancel_event": f"pymusepipe-cancel-{self._run_id}"}
        resources = {RESOURCE_CPUS: threads, RESOURCE_MEMORY: memory} if self.use_resources else None
        # A unique key: a command of the same name from an earlier run must not be taken as this one's result.
        key = f"esorex-{command.name}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(run_on_worker, payload, key=key, pure=False, resources=resources,
                                    retries=self.retries)

        def finished(fut):
            try:
                outcome = fut.result()
            except Exception as error:  # noqa: BLE001 - the task raised or its worker died too often
                from distributed import KilledWorker

                if isinstance(error, KilledWorker):
                    message = ("its Dask worker died while running it, too many times (see "
                               "distributed.scheduler.allowed-failures); look for out-of-memory kills on the nodes")
                elif type(error).__name__ == "CancelledError":
                    outcome = Outcome(cancelled=True)
                    done(outcome)
                    return
                else:
                    message = f"{type(error).__name__} on its Dask worker: {error}"
                outcome = Outcome(error=message)
            done(outcome)

        future.add_done_callback(finished)
        return future

    def cancel(self, handles):
        from distributed import Event

        Event(f"pymusepipe-cancel-{self._run_id}", client=self.client).set()
        futures = [handle for handle in handles if handle is not None]
        if futures:
            self.client.cancel(futures)


def run_on_worker(payload: dict) -> Outcome:
    """Run one command on a Dask worker; esorex failures are *returned* (never raised, so that the scheduler
    does not retry a recipe that failed for a reason of its own). Problems of the worker itself (folders not
    visible) raise, and are retried elsewhere."""
    import threading

    cwd = Path(payload["cwd"])
    log_folder = Path(payload["stdout_path"]).parent
    if not log_folder.is_dir():  # the submitting process made it: not seeing it means no shared file system
        raise FileNotFoundError(f"worker {socket.gethostname()} does not see {log_folder}: the data root "
                                "must be on a file system shared by every Dask worker")
    # A previous attempt (a worker lost mid-job) may have left partial products: start from nothing.
    if cwd.exists():
        shutil.rmtree(cwd)
    cwd.mkdir(parents=True)
    threads = int(payload["threads"])
    cpus = sorted(os.sched_getaffinity(0))[:threads] if hasattr(os, "sched_getaffinity") else list(range(threads))
    argv = pinning_prefix(payload["pinning"], cpus) + list(payload["argv"])
    cancel = threading.Event()
    stop_watch = threading.Event()
    from distributed import Event, get_client

    # Made in the task's thread: only there does distributed know which worker (and client) this is.
    event = Event(payload["cancel_event"], client=get_client())

    def watch():
        while not stop_watch.is_set():
            try:
                if event.wait(timeout=1.0):
                    cancel.set()
                    return
            except Exception:  # noqa: BLE001 - no scheduler to ask: keep running
                stop_watch.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        outcome = run_command(argv, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS=str(threads)),
                              stdout_path=payload["stdout_path"], timeout=payload["timeout"], cancel_event=cancel)
    finally:
        stop_watch.set()
    outcome.argv = tuple(argv)
    outcome.host = socket.gethostname()
    return outcome


def _accepts_n_workers(client) -> bool:
    """Recent distributed lists only the first few workers in scheduler_info() unless asked for all."""
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters
