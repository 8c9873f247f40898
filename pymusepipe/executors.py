"""Executors: what differs between engines that run commands. The scheduling itself (dependencies, skipping,
classification, finalisation) is :mod:`pymusepipe.scheduler`'s, the same for all.

An executor has four methods:

- ``capacity()`` -> :class:`~pymusepipe.scheduler.Capacity` (CPUs and memory the scheduler may hand out at
  once), or None when the executor queues commands itself (a Dask cluster);
- ``start(command, done)`` starts a :class:`~pymusepipe.scheduler.Command` and returns a handle; ``done`` is
  called once, from any thread, with its :class:`~pymusepipe.scheduler.Outcome`;
- ``cancel(handles)`` stops running commands (their outcome says ``cancelled``);
- ``close()``.

:class:`LocalExecutor` runs commands as local processes pinned to CPU ids; :class:`FakeExecutor` runs nothing
(fakemode). ``pymusepipe.dask_executor.DaskExecutor`` sends them to a Dask cluster. Another engine (Parsl, a
batch system) is one more class with these four methods (``docs/cluster.rst``).
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from .esorex import PINNING_LIKWID, PINNING_METHODS, available_cpus, default_pinning, pinning_prefix
from .scheduler import (STATUS_DONE, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_PLANNED, STATUS_SKIPPED,
                        STATUS_UPTODATE, Capacity, Command, JobResult, Outcome)

__all__ = ["Executor", "LocalExecutor", "FakeExecutor", "Command", "Outcome", "JobResult", "run_command",
           "available_memory_gb", "DEFAULT_MEMORY_FRACTION", "STATUS_DONE", "STATUS_FAILED", "STATUS_SKIPPED",
           "STATUS_PLANNED", "STATUS_UPTODATE", "STATUS_INTERRUPTED"]

logger = logging.getLogger(__name__)

#: Share of the machine's available memory the jobs get by default: the rest is for this process, the system
#: and the page cache, and it is also the room a job running alone has above its need without the model's margin.
DEFAULT_MEMORY_FRACTION = 0.8


class Executor:
    """Starts commands; see the module documentation for the contract."""

    #: Whether commands are really run (False: fakemode).
    executes = True

    def capacity(self) -> Capacity | None:  # pragma: no cover - interface
        raise NotImplementedError

    def job_memory_limit(self) -> float:
        """The most memory (GB) one job can be given: the budget (:meth:`capacity`), or what the executor
        knows of its largest worker when it queues the jobs itself."""
        capacity = self.capacity()
        return float(capacity.memory_gb) if capacity is not None else float("inf")

    def start(self, command: Command, done: Callable[[Outcome], None]):  # pragma: no cover - interface
        raise NotImplementedError

    def cancel(self, handles: Sequence) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class FakeExecutor(Executor):
    """fakemode: runs nothing; every command is ``planned``.

    ``memory_gb`` is the budget the plan assumes (unlimited by default): given, fakemode plans what a real run
    with that budget would (IFU modes, muse_scipost's sky method).
    """

    executes = False

    def __init__(self, memory_gb: float | None = None):
        self.memory_gb = float(memory_gb) if memory_gb else float("inf")

    def capacity(self) -> Capacity | None:
        return Capacity(cpus=len(available_cpus()), memory_gb=self.memory_gb)

    def start(self, command: Command, done):
        logger.info("[fakemode] %s: %s", command.name, " ".join(command.argv))
        done(Outcome(planned=True, argv=tuple(command.argv)))
        return command.name

    def cancel(self, handles):
        pass


class LocalExecutor(Executor):
    """Runs commands as local processes, each pinned to its own CPU ids.

    Parameters
    ----------
    cpus : sequence of int, optional
        CPU ids to use (default: this process's affinity mask).
    memory_gb : float, optional
        Memory the jobs may use together; default: :data:`DEFAULT_MEMORY_FRACTION` of the machine's
        available memory.
    pinning : str, optional
        ``likwid`` (default when likwid-pin is installed), ``taskset`` or ``none``.
    timeout : float, optional
        Default timeout in seconds for commands that do not set one.
    """

    def __init__(self, cpus: Sequence[int] | None = None, memory_gb: float | None = None,
                 pinning: str | None = None, timeout: float | None = None):
        self.cpus = sorted(cpus) if cpus else available_cpus()
        self.memory_gb = float(memory_gb) if memory_gb else available_memory_gb() * DEFAULT_MEMORY_FRACTION
        self.pinning = pinning or default_pinning()
        if self.pinning not in PINNING_METHODS:
            raise ValueError(f"pinning={self.pinning!r}: expected one of {', '.join(PINNING_METHODS)}")
        self.timeout = timeout
        self._free = list(self.cpus)
        self._lock = threading.Lock()
        self._cancel = {}              # name -> threading.Event
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.cpus)), thread_name_prefix="esorex")

    def __repr__(self):
        return f"LocalExecutor(cpus={self.cpus}, memory_gb={self.memory_gb:.1f}, pinning={self.pinning!r})"

    def capacity(self) -> Capacity:
        return Capacity(cpus=len(self.cpus), memory_gb=self.memory_gb)

    def start(self, command: Command, done):
        with self._lock:
            threads = max(1, min(command.threads, len(self._free)))
            allocated, self._free = self._free[:threads], self._free[threads:]
            event = self._cancel[command.name] = threading.Event()

        def work():
            try:
                outcome = self._run(command, allocated, event)
            except Exception as error:  # noqa: BLE001 - a set-up problem fails this command only
                outcome = Outcome(error=f"could not run: {error}")
            finally:
                with self._lock:
                    self._free = sorted(self._free + allocated)
                    self._cancel.pop(command.name, None)
            done(outcome)

        self._pool.submit(work)
        return command.name

    def cancel(self, handles):
        with self._lock:
            events = [self._cancel[name] for name in handles if name in self._cancel]
        for event in events:
            event.set()

    def close(self):
        self.cancel(list(self._cancel))
        self._pool.shutdown(wait=True)

    def cancel_all(self):
        """Stop every command this process runs (Ctrl-C), including one still starting."""
        from .processes import terminate_all

        self.cancel(list(self._cancel))
        terminate_all()

    def _run(self, command: Command, cpus: list, cancel_event) -> Outcome:
        if self.pinning == PINNING_LIKWID:
            spaced = [item for item in command.argv if " " in item]
            if spaced:
                raise ValueError(f"likwid-pin splits arguments on spaces; cannot pass {spaced[0]!r}")
        argv = pinning_prefix(self.pinning, cpus) + list(command.argv)
        env = dict(os.environ, OMP_NUM_THREADS=str(len(cpus)))
        outcome = run_command(argv, cwd=command.cwd, env=env, stdout_path=command.stdout_path,
                              timeout=command.timeout or self.timeout, cancel_event=cancel_event)
        outcome.argv = tuple(argv)
        return outcome


def run_command(argv, *, cwd, env, stdout_path, timeout=None, cancel_event=None) -> Outcome:
    """Run one command (it and everything it forks die with this process, even on ``kill -9``: see
    :mod:`pymusepipe.processes`) and describe how it ended as the scheduler needs it."""
    from .processes import run_command as run_process

    Path(cwd).mkdir(parents=True, exist_ok=True)
    Path(stdout_path).parent.mkdir(parents=True, exist_ok=True)
    ended = run_process(argv, cwd=cwd, env=env, stdout_path=stdout_path, timeout=timeout, cancel_event=cancel_event)
    return Outcome(returncode=ended.returncode, duration=ended.duration, timed_out=ended.timed_out,
                   cancelled=ended.cancelled, cpu_seconds=ended.cpu_seconds, max_rss_mb=ended.max_rss_mb)


def available_memory_gb() -> float:
    """The machine's available memory (``MemAvailable``), in GB."""
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return 8.0
