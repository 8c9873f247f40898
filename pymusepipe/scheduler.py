"""The one scheduling loop: dependencies, skip-if-up-to-date, resources, result classification, finalisation,
cancellation. Every executor (local processes, Dask, fakemode) goes through it.

A run is a graph of :class:`Task` objects (built by the engine from planned jobs). The loop starts a task when
every task it depends on has succeeded; asks the task whether it is up to date (it is then skipped without
using any resource); chooses its thread count from the free CPUs and the other ready tasks; hands its
:class:`Command` to the executor, which only *starts* commands and reports their :class:`Outcome` through a
callback; classifies the outcome (exit code, expected products, ``[ERROR]`` lines of the esorex log); lets the
task finalise (move and register its products) and record itself. A failed task's dependents are skipped with
the reason. Ctrl-C cancels the running commands, records nothing as failed and raises :class:`RunInterrupted`.

All bookkeeping (finalisation, tables) happens in the thread that called :meth:`Scheduler.run`; executors call
back from their own threads only to put outcomes in a queue.

An executor needs four methods (see :class:`~pymusepipe.executors.Executor`): ``capacity()``,
``start(command, done)``, ``cancel(handles)``, ``close()``.
"""
from __future__ import annotations

import logging
import queue
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .esorex import parse_log

__all__ = ["Command", "Outcome", "JobResult", "Task", "Scheduler", "RunInterrupted", "Capacity", "memory_refusal",
           "classify_outcome", "critical_path_priority", "STATUS_DONE", "STATUS_FAILED", "STATUS_SKIPPED",
           "STATUS_PLANNED", "STATUS_UPTODATE", "STATUS_INTERRUPTED"]

logger = logging.getLogger(__name__)

STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"          # not run because a task it depends on failed
STATUS_PLANNED = "planned"          # fakemode: would have run
STATUS_UPTODATE = "uptodate"        # resume: products intact, same fingerprint
STATUS_INTERRUPTED = "interrupted"  # stopped by the user (Ctrl-C): not a failure, rerun to resume
_OK = (STATUS_DONE, STATUS_PLANNED, STATUS_UPTODATE)


@dataclass
class Command:
    """An external command to run, and how to tell it succeeded.

    Attributes
    ----------
    name : str
        The task's name.
    argv : list of str
        The command, without any pinning prefix (the executor adds it).
    cwd : Path
        Created before the command starts; its working directory (esorex keeps ``./.logfile`` there, so
        parallel runs need distinct ones).
    stdout_path : Path
        stdout and stderr are streamed to this file.
    threads : int
        CPUs (and OpenMP threads) given to it.
    memory_gb : float
        Memory it needs.
    expected_products : list of Path
        Files that must exist after exit 0.
    esorex_log : Path, optional
        esorex's own log (its tail is shown on failure; its ``[ERROR]`` lines are counted).
    timeout : float, optional
        Seconds before the command is killed.
    """

    name: str
    argv: list
    cwd: Path
    stdout_path: Path
    threads: int = 1
    memory_gb: float = 1.0
    expected_products: list = field(default_factory=list)
    esorex_log: Path | None = None
    timeout: float | None = None


@dataclass
class Outcome:
    """What happened to a started command (filled by the executor)."""

    returncode: int | None = None
    duration: float = 0.0
    timed_out: bool = False
    cancelled: bool = False
    error: str = ""                 # the executor could not run it (not an esorex failure)
    cpu_seconds: float = -1.0       # user + system CPU of the command and its children
    max_rss_mb: float = -1.0        # peak resident memory of its largest process
    host: str = ""
    argv: tuple = ()                # as run (with the pinning prefix)
    planned: bool = False           # fakemode: not run


@dataclass
class JobResult:
    """Outcome of one task, as the user sees it."""

    name: str
    status: str
    returncode: int | None = None
    duration: float = 0.0
    message: str = ""
    log_tail: tuple = ()
    argv: tuple = ()
    cpu_seconds: float = -1.0
    max_rss_mb: float = -1.0
    threads: int = 0
    started: float = 0.0           # time.time() when it started (0: did not run)
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in _OK


@dataclass(frozen=True)
class Capacity:
    """Resources the scheduler may hand out at once."""

    cpus: int
    memory_gb: float


class Task:
    """One node of the graph (the engine subclasses it for esorex jobs and for Python steps).

    Attributes
    ----------
    name : str
    depends_on : tuple of str
        Names of tasks that must succeed first (names not in the run count as done).
    max_threads : int
        Most threads worth giving it.
    memory_gb : float
    local : bool
        Run in this process (a Python step) instead of through the executor.
    """

    name: str = ""
    depends_on: tuple = ()
    max_threads: int = 1
    memory_gb: float = 0.5
    local: bool = False

    def up_to_date(self) -> str | None:
        """A reason to skip (products intact and inputs unchanged), or None to run."""
        return None

    def memory_need(self, threads: int) -> float:
        """Peak memory (GB) when given ``threads`` threads."""
        return self.memory_gb

    def memory_alone(self, threads: int) -> float:
        """Peak memory (GB) it may be given when it runs alone: its need without the safety margin that keeps
        jobs sharing the machine apart (:mod:`pymusepipe.memory`); by default the need itself."""
        return self.memory_need(threads)

    def memory_advice(self) -> str:
        """What else than more memory would let it run, for the message of a task that cannot fit."""
        return ""

    def prepare(self, threads: int):
        """Everything needed just before it starts (SOF, replay log); returns a :class:`Command` or, for a
        local task, a callable returning a message."""
        raise NotImplementedError

    def finalize(self, result: JobResult) -> None:
        """After success: move and register the products (an exception fails the task)."""

    def record(self, result: JobResult) -> None:
        """Write the task's outcome in the tables (any status but interrupted)."""

    def discard(self, result: JobResult) -> None:
        """After a failure: forget what the task made before (its products no longer match its inputs)."""


class RunInterrupted(KeyboardInterrupt):
    """The user interrupted a run; the results so far are in :attr:`results`."""

    def __init__(self, results: dict):
        super().__init__("interrupted; rerun to resume")
        self.results = results


def classify_outcome(command: Command, outcome: Outcome, tail_lines: int = 15) -> JobResult:
    """Success means exit 0 AND every expected product present; the message names the first real error."""
    if outcome.planned:
        return JobResult(command.name, STATUS_PLANNED, argv=outcome.argv, message="fakemode: not run",
                         threads=command.threads)
    base = dict(returncode=outcome.returncode, duration=outcome.duration, argv=tuple(outcome.argv),
                cpu_seconds=outcome.cpu_seconds, max_rss_mb=outcome.max_rss_mb, threads=command.threads)
    if outcome.cancelled:
        return JobResult(command.name, STATUS_INTERRUPTED, message="interrupted", **base)
    if outcome.error:
        return JobResult(command.name, STATUS_FAILED, message=outcome.error, **base)
    log_path = command.esorex_log if command.esorex_log and Path(command.esorex_log).is_file() \
        else command.stdout_path
    log = parse_log(log_path, tail_lines=tail_lines, cwd=command.cwd)
    message = ""
    if outcome.timed_out:
        message = f"timed out after {outcome.duration:.0f} s and was killed"
    elif outcome.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        # Nobody here sent it: on a machine without swap this is the kernel's out-of-memory killer.
        message = (f"esorex was killed (SIGKILL, exit code {outcome.returncode}) at a peak of "
                   f"{max(outcome.max_rss_mb, 0) / 1024:.1f} GB, most likely by the system's out-of-memory killer: "
                   "it needs a machine with more memory, or fewer IFUs per job")
    elif outcome.returncode != 0:
        message = f"esorex exited with code {outcome.returncode}"
    else:
        missing = [Path(path).name for path in command.expected_products if not Path(path).is_file()]
        if missing:
            message = f"exit 0 but expected product(s) missing: {', '.join(missing)}"
    if message:
        # The first real cause (an unreadable file, a missing input), not the recipe's follow-on message.
        if log.headline:
            message += f": {log.headline}"
        elif log.errors:
            message += f"; first error: {log.errors[0]}"
        return JobResult(command.name, STATUS_FAILED, message=message, log_tail=tuple(log.tail), **base)
    note = ""
    if log.errors:
        # Exit 0 with [ERROR] lines happens (e.g. a missing EQUINOX): keep the products but say so.
        note = f"{len(log.errors)} [ERROR] line(s) in the esorex log, first: {log.errors[0]}"
        logger.warning("%s: exit 0 but %s", command.name, note)
    return JobResult(command.name, STATUS_DONE, message=note, **base)


def memory_refusal(task: Task, limit: float) -> str:
    """Why ``task`` can never run with ``limit`` GB, the most one job can get (empty when it can, if need be
    alone: without the memory model's safety margin)."""
    smallest, alone = task.memory_need(1), task.memory_alone(1)
    if alone <= limit:
        return ""
    advice = task.memory_advice()
    return (f"needs {smallest:.1f} GB of memory (modelled, pymusepipe.memory"
            + (f"; {alone:.1f} GB without the safety margin, which it would get running alone" if alone < smallest
               else "")
            + f"), more than the budget of {limit:.1f} GB: give more memory (memory_gb=...)"
            + (f" or {advice}" if advice else ""))


class Scheduler:
    """Runs a graph of tasks through an executor.

    Parameters
    ----------
    executor : Executor
        Starts commands (local pool, Dask, fake).
    progress : bool or None
        tqdm bar of finished tasks; None shows it only on a terminal.
    thread_policy : callable, optional
        ``(task, free_cpus, ready_count) -> threads``; default :meth:`choose_threads`.
    """

    def __init__(self, executor, *, progress: bool | None = None, thread_policy: Callable | None = None):
        self.executor = executor
        self.progress = progress
        self.thread_policy = thread_policy or self.choose_threads

    @staticmethod
    def choose_threads(task: Task, free_cpus: int, ready: int) -> int:
        """Share the free CPUs between the tasks ready to start, within what the task can use.

        Two single-threaded jobs side by side keep two cores busier than one job with two threads, because the
        recipes have long single-threaded phases; a lone job gets every free core.
        """
        share = max(1, free_cpus // max(1, ready))
        return max(1, min(task.max_threads, share))

    def _size(self, task, capacity, free_cpus, free_memory, ready_after, *, busy):
        """Threads and memory (GB) to start ``task`` with now on the local machine's ``capacity``, or None if it
        must wait; ``ready_after`` are the ready tasks after it, ``busy`` whether any job runs."""
        # Share the cores only with the ready jobs that fit in memory beside this one: a job the budget keeps
        # waiting would leave its share of the cores idle.
        room = free_memory - task.memory_need(1)
        waiting = 1 + sum(1 for other in ready_after if not other.local and other.memory_need(1) <= room + 1e-9)
        threads = self.thread_policy(task, free_cpus, waiting)
        threads = max(1, min(threads, max(free_cpus, 1)))
        memory = task.memory_need(threads)
        if memory > capacity.memory_gb and task.memory_need(1) <= capacity.memory_gb:
            while threads > 1 and task.memory_need(threads) > capacity.memory_gb:
                threads -= 1
            memory = task.memory_need(threads)
        elif memory > capacity.memory_gb:
            # It fits only without the margin: it waits for the machine to itself and takes the whole budget, so
            # that nothing starts beside it.
            if busy:
                return None
            while threads > 1 and task.memory_alone(threads) > capacity.memory_gb:
                threads -= 1
            logger.warning("%s: needs %.1f GB with the memory model's safety margin, more than the budget of "
                           "%.1f GB: runs alone (%.1f GB without the margin)", task.name, task.memory_need(1),
                           capacity.memory_gb, task.memory_alone(threads))
            memory = capacity.memory_gb
        if busy and (threads > free_cpus or memory > free_memory + 1e-9):
            return None
        return threads, memory

    def run(self, tasks: Sequence[Task], *, label: str = "") -> dict:
        """Run the tasks; returns ``{name: JobResult}`` in the order given.

        Raises
        ------
        RunInterrupted
            On Ctrl-C, after stopping every running command (none is recorded as failed).
        ValueError
            Duplicate names or a dependency cycle.
        """
        names = [task.name for task in tasks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {', '.join(duplicates)}")
        in_run = set(names)
        results: dict = {}
        # Ready tasks start in this order: those with the longest chain of tasks waiting on them first.
        priority = critical_path_priority(tasks)
        pending = sorted(tasks, key=lambda task: priority[task.name], reverse=True)
        running: dict = {}            # name -> (task, command, handle, threads, memory)
        started: dict = {}
        events: queue.Queue = queue.Queue()
        capacity = self.executor.capacity()
        free_cpus = capacity.cpus if capacity else 0
        free_memory = capacity.memory_gb if capacity else 0.0
        local_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pymusepipe-step")
        bar = _progress_bar(len(tasks), self.progress, label)

        try:
            while pending or running:
                # Start (or skip) everything whose dependencies are settled.
                progress = True
                while progress:
                    progress = False
                    ready = []
                    for task in list(pending):
                        deps = [name for name in task.depends_on if name in in_run]
                        failed = [name for name in deps if name in results and not results[name].ok]
                        if failed:
                            pending.remove(task)
                            reason = f"skipped: depends on {failed[0]}, which {results[failed[0]].status}"
                            logger.warning("%s %s", task.name, reason)
                            results[task.name] = JobResult(task.name, STATUS_SKIPPED, message=reason)
                            task.record(results[task.name])
                            bar.update(1)
                            progress = True
                        elif all(name in results for name in deps):
                            ready.append(task)
                    for index, task in enumerate(ready):
                        reason = task.up_to_date()
                        if reason:
                            pending.remove(task)
                            results[task.name] = JobResult(task.name, STATUS_UPTODATE, message=reason)
                            task.record(results[task.name])
                            bar.update(1)
                            progress = True
                            continue
                        refusal = "" if task.local else memory_refusal(task, self.executor.job_memory_limit())
                        if refusal:
                            # Never started: it would be killed by the system, or thrash the machine.
                            pending.remove(task)
                            progress = True
                            results[task.name] = JobResult(task.name, STATUS_FAILED, message=refusal)
                            logger.error("%s: %s", task.name, refusal)
                            task.record(results[task.name])
                            bar.update(1)
                            continue
                        if task.local:
                            threads, memory = 1, task.memory_gb
                        elif capacity:
                            size = self._size(task, capacity, free_cpus, free_memory,
                                              [other for other in ready[index + 1:] if other in pending],
                                              busy=bool(running))
                            if size is None:
                                continue
                            threads, memory = size
                        else:
                            threads, memory = task.max_threads, task.memory_gb
                        pending.remove(task)
                        progress = True
                        try:
                            command = task.prepare(threads)
                        except Exception as error:  # noqa: BLE001 - a set-up problem fails this task only
                            logger.error("%s could not start: %s", task.name, error)
                            result = JobResult(task.name, STATUS_FAILED, message=str(error))
                            results[task.name] = result
                            task.discard(result)
                            task.record(result)
                            bar.update(1)
                            continue
                        started[task.name] = time.time()
                        if task.local and not self.executor.executes:
                            events.put((task.name, Outcome(planned=True)))   # fakemode runs no Python step
                            running[task.name] = (task, Command(task.name, [], Path("."), Path(".")), None, 0, 0.0)
                        elif task.local:
                            handle = local_pool.submit(_run_local, task.name, command, events)
                            running[task.name] = (task, None, handle, 0, 0.0)
                        else:
                            if capacity:
                                free_cpus -= command.threads
                                free_memory -= memory
                            handle = self.executor.start(command, _callback(events, task.name))
                            running[task.name] = (task, command, handle, command.threads if capacity else 0,
                                                  memory if capacity else 0.0)
                if not running:
                    if pending:
                        raise ValueError("tasks wait on each other (dependency cycle): "
                                         + ", ".join(task.name for task in pending))
                    break
                name, outcome = events.get()
                task, command, _, threads, memory = running.pop(name)
                free_cpus += threads
                free_memory += memory
                results[name] = self._complete(task, command, outcome)
                results[name].started, results[name].ended = started.get(name, 0.0), time.time()
                bar.update(1)
        except KeyboardInterrupt:
            self._interrupt(running, events, results)
            raise RunInterrupted({task.name: results[task.name] for task in tasks if task.name in results}) \
                from None
        except Exception as error:
            # An error of ours ends the run (a table that cannot be written: disk full). Jobs still running are
            # stopped first: nobody would finalise them, and they would go on writing after the run and its
            # locks are gone. Like interrupted jobs they are not recorded; the next run does them again.
            if running:
                self._interrupt(running, events, results, why=f"{type(error).__name__}: {error}")
            raise
        finally:
            bar.close()
            local_pool.shutdown(wait=False)
        return {name: results[name] for name in names}

    def _complete(self, task: Task, command, outcome) -> JobResult:
        """Classify a finished task, finalise it if it succeeded, record it."""
        if command is None:            # a local (Python) task: outcome is (message, error)
            message, error, seconds = outcome
            result = JobResult(task.name, STATUS_FAILED if error else STATUS_DONE, duration=seconds,
                               message=error or message, threads=1)
        else:
            result = classify_outcome(command, outcome)
        if result.status in (STATUS_DONE, STATUS_PLANNED):
            try:
                task.finalize(result)
            except Exception as error:  # noqa: BLE001
                logger.error("%s: products could not be registered: %s", task.name, error)
                result = JobResult(task.name, STATUS_FAILED, result.returncode, result.duration,
                                   f"finalize failed: {error}", result.log_tail, result.argv,
                                   result.cpu_seconds, result.max_rss_mb, result.threads)
        if result.status == STATUS_FAILED:
            tail = "\n".join(result.log_tail)
            logger.error("%s failed: %s%s", task.name, result.message,
                         f"\n--- tail of its esorex log ---\n{tail}" if tail else "")
            task.discard(result)
        if result.status != STATUS_INTERRUPTED:
            task.record(result)
        if result.status in (STATUS_DONE, STATUS_PLANNED):
            logger.info("%s: %s (%.0f s)", task.name, result.status, result.duration)
        return result

    def _interrupt(self, running: dict, events: queue.Queue, results: dict, why: str = "interrupted"):
        """Stop every running command; running tasks end as interrupted (not failed, not recorded)."""
        commands = [entry[2] for entry in running.values() if entry[1] is not None]
        logger.warning("%s: stopping %d running job(s)", why, len(running))
        try:
            self.executor.cancel(commands)
        finally:
            deadline = time.monotonic() + 30.0
            while running and time.monotonic() < deadline:
                try:
                    name, _ = events.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    break
                running.pop(name, None)
                results[name] = JobResult(name, STATUS_INTERRUPTED, message="interrupted")
            for name in list(running):
                results[name] = JobResult(name, STATUS_INTERRUPTED, message="interrupted")


def critical_path_priority(tasks: Sequence[Task]) -> dict:
    """``{name: (longest chain, dependents)}``: how many tasks the longest chain starting at each task holds
    (itself included), and how many tasks depend on it directly.

    The scheduler starts the ready tasks with the largest first (critical-path-first list scheduling): a job
    many others wait on in a row (the standard star's scibasic, on which the response, every exposure's
    scipost and the combination hang) is not left behind a job nothing waits on (an offset sky's scipost).
    Counting tasks rather than estimating their run times needs no model of the recipes and orders the MUSE
    chain as well: its long recipes are long on every data set. Ties keep the plan's order (the sort is stable).
    """
    names = {task.name for task in tasks}
    dependents: dict = {name: [] for name in names}
    for task in tasks:
        for name in set(task.depends_on):
            if name in names and name != task.name:
                dependents[name].append(task.name)
    chain: dict = {}
    visiting: set = set()

    def visit(name):
        if name not in chain:
            visiting.add(name)        # a cycle (reported by the run itself) must not recurse for ever
            chain[name] = 1 + max((visit(other) for other in dependents[name] if other not in visiting),
                                  default=0)
            visiting.discard(name)
        return chain[name]

    for name in names:
        visit(name)
    return {name: (chain[name], len(dependents[name])) for name in names}


def _callback(events: queue.Queue, name: str):
    def done(outcome: Outcome):
        events.put((name, outcome))
    return done


def _run_local(name: str, function, events: queue.Queue):
    """Run a Python step in the scheduler's helper thread; report (message, error, seconds)."""
    start = time.monotonic()
    try:
        message = function() or ""
        events.put((name, (str(message), "", time.monotonic() - start)))
    except Exception as error:  # noqa: BLE001 - reported as the task's failure
        logger.debug("%s raised", name, exc_info=True)
        events.put((name, ("", f"{type(error).__name__}: {error}", time.monotonic() - start)))


class _NoBar:
    def update(self, count):
        pass

    def close(self):
        pass


def _progress_bar(total: int, enabled: bool | None, label: str = ""):
    """tqdm bar of finished tasks; ``disable=None`` writes nothing when stderr is not a terminal."""
    if enabled is False or total == 0:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="job", desc=label or "jobs", leave=False,
                disable=None if enabled is None else not enabled)

