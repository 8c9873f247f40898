"""Running esorex jobs: a local pool with CPU/memory budgets and pinning, and a fake one.

The interface is one method, :meth:`Executor.run`, taking :class:`ExecJob` objects (with dependencies) and
returning a :class:`JobResult` per job name. A job is a command plus what success means: exit code 0 AND
every expected product present. After success the job's ``finalize`` hook runs in the worker (the engine
moves products there, so dependents see them before they start); an exception there fails the job too.
A failed job does not stop independent ones; its dependents are skipped with a reason.

Another executor (e.g. Dask) only has to honour the same contract.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .esorex import PINNING_LIKWID, PINNING_METHODS, available_cpus, default_pinning, parse_log, pinning_prefix

__all__ = ["ExecJob", "JobResult", "Executor", "LocalExecutor", "FakeExecutor", "STATUS_DONE", "STATUS_FAILED",
           "STATUS_SKIPPED", "STATUS_PLANNED", "STATUS_UPTODATE"]

logger = logging.getLogger(__name__)

STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"      # not run because a job it depends on failed
STATUS_PLANNED = "planned"      # fakemode: would have run
STATUS_UPTODATE = "uptodate"    # resume: products exist with the same fingerprint (set by the engine)


@dataclass
class ExecJob:
    """One command to run and how to tell it succeeded.

    Attributes
    ----------
    name : str
        Unique name (also the output folder name).
    argv : list of str
        The command, without any pinning prefix (the executor adds it).
    output_dir : Path
        Created before the command starts; also its working directory (esorex keeps a temporary
        ``.logfile`` in the working directory, so parallel runs need distinct ones).
    stdout_path : Path
        The command's stdout+stderr are streamed to this file.
    expected_products : list of Path
        Files that must exist after exit 0.
    esorex_log : Path, optional
        esorex's own log, whose tail is shown on failure.
    threads : int
        CPUs (and OpenMP threads) the job gets.
    memory_gb : float
        Memory it needs, for the memory budget.
    depends_on : tuple of str
        Names of jobs that must succeed first (names not in the run are taken as already done).
    timeout : float, optional
        Seconds before the command is killed.
    finalize : callable(ExecJob), optional
        Runs after success (moving products); an exception fails the job.
    on_start : callable(ExecJob, list, int), optional
        Called with the final argv and thread count just before the command starts (the replay log); the
        command runs in ``output_dir``.
    """

    name: str
    argv: list
    output_dir: Path
    stdout_path: Path
    expected_products: list = field(default_factory=list)
    esorex_log: Path | None = None
    threads: int = 1
    memory_gb: float = 1.0
    depends_on: tuple = ()
    timeout: float | None = None
    finalize: Callable | None = None
    on_start: Callable | None = None


@dataclass
class JobResult:
    """Outcome of one job."""

    name: str
    status: str
    returncode: int | None = None
    duration: float = 0.0
    message: str = ""
    log_tail: tuple = ()
    argv: tuple = ()

    @property
    def ok(self) -> bool:
        return self.status in (STATUS_DONE, STATUS_PLANNED, STATUS_UPTODATE)


class Executor:
    """Runs jobs with dependencies: ``run(jobs) -> {name: JobResult}``."""

    #: Whether commands are really run (False: fakemode).
    executes = True

    def run(self, jobs: Sequence[ExecJob], *, label: str = "") -> dict:  # pragma: no cover - interface
        """Run the jobs (``label`` names them in progress displays); return job name -> JobResult."""
        raise NotImplementedError


def progress_bar(total: int, label: str = "", enabled: bool | None = None):
    """A tqdm bar of finished jobs; with ``enabled=None`` it writes nothing when stderr is not a terminal,
    so batch logs stay clean."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="job", desc=label or "esorex jobs", leave=False,
                disable=None if enabled is None else not enabled)


def _check_unique(jobs):
    names = [job.name for job in jobs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"job names must be unique; repeated: {', '.join(duplicates)}")


def _dependency_failure(job, results) -> str | None:
    for name in job.depends_on:
        result = results.get(name)
        if result is not None and not result.ok:
            return f"skipped: depends on {name}, which {result.status}"
    return None


class FakeExecutor(Executor):
    """fakemode: runs nothing, prints the commands, returns ``planned`` results."""

    executes = False

    def run(self, jobs: Sequence[ExecJob], *, label: str = "") -> dict:
        _check_unique(jobs)
        results = {}
        for job in jobs:
            logger.info("[fakemode] %s: %s", job.name, " ".join(job.argv))
            if job.on_start is not None:
                job.on_start(job, list(job.argv), job.threads)
            results[job.name] = JobResult(job.name, STATUS_PLANNED, argv=tuple(job.argv),
                                          message="fakemode: not run")
        return results


class LocalExecutor(Executor):
    """Runs jobs as local processes, several at a time within a CPU and a memory budget.

    Parameters
    ----------
    cpus : sequence of int, optional
        CPU ids to use (default: this process's affinity mask). ``jobs x threads <= len(cpus)`` always.
    memory_gb : float, optional
        Memory budget; default: 80% of the machine's available memory.
    pinning : str, optional
        ``likwid`` (default when likwid-pin is installed), ``taskset`` or ``none``.
    timeout : float, optional
        Default timeout in seconds for jobs that do not set one.
    tail_lines : int
        Log lines shown when a job fails.
    """

    def __init__(self, cpus: Sequence[int] | None = None, memory_gb: float | None = None,
                 pinning: str | None = None, timeout: float | None = None, tail_lines: int = 15):
        self.cpus = sorted(cpus) if cpus else available_cpus()
        self.memory_gb = float(memory_gb) if memory_gb else _available_memory_gb() * 0.8
        self.pinning = pinning or default_pinning()
        if self.pinning not in PINNING_METHODS:
            raise ValueError(f"pinning={self.pinning!r}: expected one of {', '.join(PINNING_METHODS)}")
        self.timeout = timeout
        self.tail_lines = tail_lines
        self._processes = {}
        self._lock = threading.Lock()

    def __repr__(self):
        return (f"LocalExecutor(cpus={self.cpus}, memory_gb={self.memory_gb:.1f}, pinning={self.pinning!r})")

    def run(self, jobs: Sequence[ExecJob], *, label: str = "") -> dict:
        _check_unique(jobs)
        results = {}
        pending = list(jobs)
        free_cpus = list(self.cpus)
        free_memory = self.memory_gb
        running = {}
        bar = progress_bar(len(jobs), label)
        with ThreadPoolExecutor(max_workers=max(1, len(self.cpus)), thread_name_prefix="esorex") as pool:
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
                        unfinished = {other.name for other in running.values()} | {other.name for other in pending}
                        if unfinished.intersection(job.depends_on):
                            continue
                        threads = max(1, min(job.threads, len(self.cpus)))
                        memory = min(job.memory_gb, self.memory_gb)  # an oversized job runs alone
                        if threads > len(free_cpus) or memory > free_memory + 1e-9:
                            continue
                        pending.remove(job)
                        allocated, free_cpus = free_cpus[:threads], free_cpus[threads:]
                        free_memory -= memory
                        future = pool.submit(self._run_one, job, allocated)
                        running[future] = job
                        future.resources = (allocated, memory)
                    if not running:
                        if pending:  # only possible if dependencies form a cycle
                            names = ", ".join(job.name for job in pending)
                            raise ValueError(f"jobs wait on each other (dependency cycle): {names}")
                        break
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in finished:
                        job = running.pop(future)
                        allocated, memory = future.resources
                        free_cpus = sorted(free_cpus + allocated)
                        free_memory += memory
                        results[job.name] = future.result()
                        bar.update(1)
            except BaseException:
                # Interrupted (Ctrl-C, error): stop every running esorex; nothing partial is moved.
                self._kill_all()
                raise
            finally:
                bar.close()
        return {job.name: results[job.name] for job in jobs}

    def _kill_all(self):
        with self._lock:
            processes = list(self._processes.values())
        for process in processes:
            _kill_group(process)

    def _run_one(self, job: ExecJob, cpus: list) -> JobResult:
        start = time.monotonic()
        try:
            argv = pinning_prefix(self.pinning, cpus) + list(job.argv)
            if self.pinning == PINNING_LIKWID:
                spaced = [item for item in job.argv if " " in item]
                if spaced:
                    raise ValueError(f"likwid-pin splits arguments on spaces; cannot pass {spaced[0]!r} "
                                     "(rename the folder or use pinning='taskset')")
            Path(job.output_dir).mkdir(parents=True, exist_ok=True)
            Path(job.stdout_path).parent.mkdir(parents=True, exist_ok=True)
            if job.on_start is not None:
                job.on_start(job, argv, len(cpus))
            returncode, timed_out = self._execute(job, argv, len(cpus))
        except Exception as error:  # noqa: BLE001 - any setup problem fails this job only
            logger.error("%s failed before esorex finished: %s", job.name, error)
            return JobResult(job.name, STATUS_FAILED, duration=time.monotonic() - start, message=str(error))
        duration = time.monotonic() - start
        log = parse_log(job.esorex_log if job.esorex_log and Path(job.esorex_log).is_file() else job.stdout_path,
                        tail_lines=self.tail_lines)
        message = ""
        if timed_out:
            message = f"timed out after {job.timeout or self.timeout:g} s and was killed"
        elif returncode != 0:
            message = f"esorex exited with code {returncode}"
        else:
            missing = [Path(path).name for path in job.expected_products if not Path(path).is_file()]
            if missing:
                message = f"exit 0 but expected product(s) missing: {', '.join(missing)}"
        if message:
            if log.errors:
                message += f"; first error: {log.errors[0]}"
            logger.error("%s failed: %s\n--- tail of %s ---\n%s", job.name, message, log.path, "\n".join(log.tail))
            return JobResult(job.name, STATUS_FAILED, returncode, duration, message, tuple(log.tail), tuple(argv))
        if log.errors:
            # Exit 0 with [ERROR] lines happens (e.g. missing EQUINOX): keep the products but say so.
            logger.warning("%s: exit 0 but %d [ERROR] line(s) in %s, first: %s", job.name, len(log.errors),
                           log.path, log.errors[0])
        try:
            if job.finalize is not None:
                job.finalize(job)
        except Exception as error:  # noqa: BLE001
            logger.error("%s: products could not be registered: %s", job.name, error)
            return JobResult(job.name, STATUS_FAILED, returncode, duration, f"finalize failed: {error}",
                             tuple(log.tail), tuple(argv))
        note = f"{len(log.errors)} [ERROR] line(s) in the esorex log" if log.errors else ""
        return JobResult(job.name, STATUS_DONE, returncode, duration, note, (), tuple(argv))

    def _execute(self, job: ExecJob, argv: list, threads: int) -> tuple:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(threads)
        timeout = job.timeout or self.timeout
        # Output goes straight to the file: nothing is buffered in memory, whatever esorex prints.
        with open(job.stdout_path, "ab") as stream:
            # Each job runs inside its own output folder: esorex writes its log to ./.logfile before copying
            # it to --log-dir, so two esorex sharing a working directory clobber each other's log.
            process = subprocess.Popen(argv, stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=job.output_dir, start_new_session=True)
            with self._lock:
                self._processes[job.name] = process
            try:
                return process.wait(timeout=timeout), False
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return process.wait(), True
            finally:
                with self._lock:
                    self._processes.pop(job.name, None)


def _kill_group(process: subprocess.Popen):
    """Terminate a job's whole process group (likwid-pin + esorex), then kill it if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _available_memory_gb() -> float:
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return 8.0
