"""External commands that die with this Python process, even on ``kill -9``.

A reduction starts esorex through ``likwid-pin`` (a Lua script that *forks* esorex) or ``taskset``. Each
command is started in a session and process group of its own, so that Ctrl-C in the terminal does not reach
it half-way and so that the whole tree (``likwid-pin`` and the esorex it forked) can be stopped at once.
The price: when the Python process dies without cleaning up (``kill -9``, the out-of-memory killer, a lost
Dask worker), nothing would stop those groups, and esorex would go on writing into a folder the next run
reuses. ``prctl(PR_SET_PDEATHSIG)`` (``setpriv --pdeathsig``) does not help: it only reaches the direct
child (likwid-pin), not what that child forks.

So every Python process that starts commands also starts one small **watchdog** process (lazily, on the
first command). The watchdog reads from a pipe whose only writer is this process: the process groups to
watch (``+PID``) and to forget (``-PID``). When this process dies, however it dies, the kernel closes the
pipe; the watchdog reads end-of-file and kills every group still registered, plus every descendant of
their leaders that left the group (``setsid``): SIGTERM, then SIGKILL after a grace period.

Inside this process, :func:`run_command` waits for the command, a timeout or a cancellation event, and
:func:`terminate_all` stops every running command (Ctrl-C). A command stopped by either is reported as
``cancelled`` (by us), not as a failure of the command; a command that died of a signal nobody here sent
(a crash, the out-of-memory killer) is a failure.

Works from any thread (a local thread pool) and inside Dask worker processes (each gets its own watchdog).
Linux (``/proc``, ``pidfd_open``) gives the exact behaviour; elsewhere process groups are still killed.

Known window: between the ``fork`` of a command and its registration with the watchdog (the time of an
``exec``, well under a millisecond) a ``kill -9`` of this process would leave that one command running.
"""
from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .errors import ExecutableNotFoundError, MissingPathError, from_os_error

__all__ = ["CommandOutcome", "run_command", "terminate_all", "running_commands", "watchdog_pid",
           "process_table", "tree_members", "alive", "signal_tree", "DEFAULT_GRACE"]

logger = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL when a command is stopped.
DEFAULT_GRACE = 5.0
#: Seconds between two looks at a cancellation event while a command runs.
_POLL_INTERVAL = 0.2
#: Seconds between two looks at a running command's peak memory.
_MEMORY_SAMPLING = 1.0
#: Seconds to wait for killed processes to be gone.
_KILL_WAIT = 5.0


def process_table() -> dict:
    """pid -> (parent pid, process group, state) of every process, from ``/proc`` (empty without it)."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as stream:
                data = stream.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()  # the command name may contain spaces and ')'
        table[int(name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def tree_members(leaders) -> set:
    """Live processes in the process groups of ``leaders``, and descendants of the leaders that left the
    group (``setsid``) while their chain of parents still links them."""
    table = process_table()
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, (_, group, _) in table.items() if group in leaders}
    todo = [pid for pid in leaders if pid in table] + list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.discard(os.getpid())
    return {pid for pid in found if table[pid][2] != b"Z"}


def alive(pids) -> set:
    """Those of ``pids`` that still run (zombies count as dead: nothing reaps orphans in some containers)."""
    table = process_table()
    return {pid for pid in pids if pid in table and table[pid][2] != b"Z"}


def signal_tree(leaders, pids, signum):
    """Send ``signum`` to the process groups of ``leaders`` and to ``pids``, ignoring those already gone."""
    for leader in leaders:
        try:
            os.killpg(leader, signum)
        except OSError:
            pass
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


# The watchdog reads the pipe; at end of file it stops what is registered and exits.
# It is a separate Python process importing nothing of ours (it must start fast and outlive us): the four
# functions above are given to it as source text.
_WATCHDOG_SOURCE = "import os\n\n" + "\n".join(
    inspect.getsource(function) for function in (process_table, tree_members, alive, signal_tree)) + r"""
import signal, sys, time

GRACE = float(sys.argv[1])
for name in ("SIGINT", "SIGHUP", "SIGQUIT", "SIGTSTP"):
    try:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    except (AttributeError, OSError, ValueError):
        pass
leaders = set()
for line in iter(sys.stdin.buffer.readline, b""):
    line = line.strip()
    try:
        pid = int(line[1:])
    except ValueError:
        continue
    if line[:1] == b"+":
        leaders.add(pid)
    elif line[:1] == b"-":
        leaders.discard(pid)
if leaders:
    victims = tree_members(leaders)  # before any signal: a dying parent would orphan escaped children
    signal_tree(leaders, victims, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline:
        victims = alive(victims) | tree_members(leaders)
        if not victims:
            break
        time.sleep(0.05)
    signal_tree(leaders, alive(victims) | tree_members(leaders), signal.SIGKILL)
"""


@dataclass(frozen=True)
class CommandOutcome:
    """How a command ended.

    Attributes
    ----------
    returncode : int
        Exit status; negative: killed by that signal (``-15`` after a timeout or a cancellation).
    duration : float
        Seconds from start to end.
    timed_out : bool
        Killed because it ran longer than its ``timeout``.
    cancelled : bool
        Stopped by us: its ``cancel_event`` was set or :func:`terminate_all` was called (Ctrl-C). Not a
        failure of the command; the job should simply be run again.
    pid : int
        Process id of the command (also its process group id); 0 if it never started.
    cpu_seconds : float
        User + system CPU time of the command and of the children it waited for (-1 when unknown).
    max_rss_mb : float
        Peak resident memory of the largest of those processes [MB] (-1 when unknown).
    """

    returncode: int
    duration: float
    timed_out: bool = False
    cancelled: bool = False
    pid: int = 0
    cpu_seconds: float = -1.0
    max_rss_mb: float = -1.0

    @property
    def ok(self) -> bool:
        """Exit status 0 and neither timed out nor cancelled."""
        return self.returncode == 0 and not self.timed_out and not self.cancelled

    def describe(self) -> str:
        """One phrase for a message: ``'exited with code 1'``, ``'was killed by signal SIGSEGV'``, ..."""
        if self.cancelled:
            return "was cancelled (interrupted) and stopped"
        if self.timed_out:
            return f"timed out after {self.duration:.0f} s and was stopped"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = str(-self.returncode)
            why = " (the out-of-memory killer?)" if self.returncode == -signal.SIGKILL else ""
            return f"was killed by signal {name}{why}"
        return f"exited with code {self.returncode}"


class _Watchdog:
    """The watchdog process of this Python process, started on first use and again after a fork."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process = None
        self._owner = None      # pid of the process that started it (a forked child needs its own)
        self._groups = set()
        self._abandoned = []

    def _start(self):
        executable = sys.executable or shutil.which("python3") or "python3"
        # -I -S: no site packages or user paths, so it starts in a few tens of milliseconds.
        self._process = subprocess.Popen(
            [executable, "-I", "-S", "-c", _WATCHDOG_SOURCE, str(DEFAULT_GRACE)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        self._owner = os.getpid()
        for group in self._groups:
            self._send(f"+{group}\n")

    def _send(self, text):
        self._process.stdin.write(text.encode())
        self._process.stdin.flush()

    def _ensure(self):
        if self._owner != os.getpid() or self._process is None or self._process.poll() is not None:
            if self._process is not None and self._owner == os.getpid():
                logger.warning("the process watchdog (pid %s) had stopped; starting a new one", self._process.pid)
            self._start()

    def register(self, group: int):
        with self._lock:
            self._groups.add(group)
            self._update(f"+{group}\n")

    def unregister(self, group: int):
        with self._lock:
            self._groups.discard(group)
            self._update(f"-{group}\n")

    def _update(self, text):
        for attempt in (1, 2):
            try:
                self._ensure()
                self._send(text)
                return
            except (BrokenPipeError, OSError, ValueError):
                # The watchdog died (someone killed it): start a new one, which gets every group again.
                self._drop()
                if attempt == 2:
                    logger.warning("cannot start the process watchdog: commands would survive a kill -9 "
                                   "of this process")

    def pid(self) -> int | None:
        with self._lock:
            self._ensure()
            return self._process.pid

    def _drop(self):
        process, self._process = self._process, None
        if process is not None:
            self._abandoned.append(process)  # kept referenced: no implicit close or wait at garbage collection
            try:
                process.stdin.close()
            except (OSError, ValueError):
                pass

    def forget_after_fork(self):
        """In a forked child: close the parent's pipe, so the parent's watchdog still sees it close when the
        parent dies, and forget the parent's groups."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._drop()
        self._owner, self._groups = None, set()


_WATCHDOG = _Watchdog()


class _Running:
    """A command being run: its process, and whether we are the ones stopping it."""

    def __init__(self, process: subprocess.Popen, argv):
        self.process = process
        self.argv = list(argv)
        self.cancelled = False
        self.timed_out = False
        self.stop_lock = threading.Lock()
        self.peak_rss_mb = -1.0
        self._sampled = -_MEMORY_SAMPLING
        self.pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(process.pid)
            except OSError:
                self.pidfd = None

    def sample_memory(self):
        """Remember the peak resident memory (``VmHWM``, a high-water mark) of the largest process of the
        command's tree, looked at about once a second."""
        now = time.monotonic()
        if now - self._sampled < _MEMORY_SAMPLING:
            return
        self._sampled = now
        for pid in tree_members({self.process.pid}):
            try:
                with open(f"/proc/{pid}/status", "rb") as stream:
                    for line in stream:
                        if line.startswith(b"VmHWM:"):
                            self.peak_rss_mb = max(self.peak_rss_mb, int(line.split()[1]) / 1024.0)
                            break
            except (OSError, ValueError):
                continue

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the leader to exit, without reaping it (its pid stays reserved, so
        killing its group afterwards cannot hit a stranger)."""
        if self.pidfd is not None:
            # poll, not select: a Dask worker may hold more than FD_SETSIZE (1024) descriptors.
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            return bool(poller.poll(max(0.0, timeout) * 1000.0))
        try:
            self.process.wait(timeout=max(0.0, timeout))
            return True
        except subprocess.TimeoutExpired:
            return False

    def signal_group(self, signum, pids=()):
        """Send ``signum`` to the command's process group and to ``pids`` (its descendants elsewhere)."""
        if self.process.returncode is not None:
            return  # reaped: its process group id may belong to someone else by now
        signal_tree([self.process.pid], pids, signum)

    def begin_stop(self):
        """SIGTERM to the group and to descendants that left it; returns those descendants."""
        victims = tree_members({self.process.pid}) if self.process.returncode is None else set()
        self.signal_group(signal.SIGTERM, victims)
        return victims

    def end_stop(self, victims, deadline):
        """Wait for the leader until ``deadline``, then SIGKILL whatever is left and wait until it is gone
        (the caller may clean the job's folder next: nothing of the command may still write there)."""
        if self.process.returncode is None:
            self.wait_exit(deadline - time.monotonic())
            self.kill_rest(victims)

    def kill_rest(self, victims=()):
        """SIGKILL the group and ``victims``, and wait (a few seconds at most) until none of them runs."""
        if self.process.returncode is not None:
            return
        remaining = alive(victims) | tree_members({self.process.pid})
        limit = time.monotonic() + _KILL_WAIT
        while remaining and time.monotonic() < limit:
            self.signal_group(signal.SIGKILL, remaining)
            time.sleep(0.01)
            remaining = alive(remaining) | tree_members({self.process.pid})
        if remaining:
            logger.warning("processes %s of %s survive SIGKILL (uninterruptible I/O?)",
                           sorted(remaining), shlex.join(self.argv))

    def stop(self, grace: float):
        """SIGTERM to the whole tree, SIGKILL after ``grace`` s (also to members outliving the leader)."""
        with self.stop_lock:
            self.end_stop(self.begin_stop(), time.monotonic() + grace)

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


_RUNNING: dict = {}           # leader pid -> _Running
_RUNNING_LOCK = threading.Lock()
_GENERATION = [0]             # calls of terminate_all(), to catch commands starting meanwhile


@contextlib.contextmanager
def _signals_deferred():
    """In the main thread, hold back the Python-level SIGINT/SIGTERM/SIGHUP handlers (KeyboardInterrupt)
    during the block. Yields a list: the held-back ``(handler, signum, frame)``, for the caller to run
    (:func:`_deliver`) where it can clean up; delivered at once if the block raises. Other threads never
    receive these signals and need nothing."""
    pending = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    previous = {}

    def record(signum, frame):
        pending.append((previous[signum], signum, frame))

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        handler = signal.getsignal(signum)
        if callable(handler):
            try:
                previous[signum] = signal.signal(signum, record)
            except (ValueError, OSError):
                pass
    try:
        yield pending
    except BaseException:
        _restore(previous)
        _deliver(pending)  # the user's Ctrl-C wins over the error
        raise
    _restore(previous)


def _restore(previous):
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _deliver(pending):
    """Run the first held-back signal handler (it raises KeyboardInterrupt, or Terminated)."""
    if pending:
        handler, signum, frame = pending[0]
        del pending[:]
        handler(signum, frame)


def _after_fork_in_child():
    # A forked child (multiprocessing 'fork') does not own its parent's commands: it must neither keep the
    # parent's watchdog pipe open nor stop the parent's commands at its exit.
    global _RUNNING_LOCK
    _WATCHDOG.forget_after_fork()
    _RUNNING_LOCK = threading.Lock()
    _RUNNING.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def running_commands() -> list:
    """argv of every command this process is running now."""
    with _RUNNING_LOCK:
        return [list(entry.argv) for entry in _RUNNING.values()]


def watchdog_pid() -> int:
    """Process id of this process's watchdog (started if needed); for tests and diagnostics."""
    return _WATCHDOG.pid()


def _start(argv, cwd, env, stdout_path, append):
    program = str(argv[0])
    if os.sep not in program and shutil.which(program, path=(env or os.environ).get("PATH")) is None:
        raise ExecutableNotFoundError(f"program '{program}' not found on PATH",
                                      _install_hint(program))
    if cwd is not None and not Path(cwd).is_dir():
        raise MissingPathError(f"working folder {cwd} of '{program}' does not exist",
                               "create it first (the executor makes each job's output folder)")
    output = subprocess.DEVNULL
    if stdout_path is not None:
        try:
            output = open(stdout_path, "ab" if append else "wb")
        except OSError as error:
            raise from_os_error(error, stdout_path, "creating") from error
    try:
        # A session of its own: Ctrl-C in the terminal reaches Python only, which then decides; and
        # killpg() reaches likwid-pin and the esorex it forked together.
        return subprocess.Popen([str(item) for item in argv], stdout=output, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=dict(env) if env is not None else None,
                                start_new_session=True, close_fds=True)
    except FileNotFoundError as error:
        raise ExecutableNotFoundError(f"program '{program}' not found", _install_hint(program)) from error
    except OSError as error:
        raise from_os_error(error, program, "starting") from error
    finally:
        if output is not subprocess.DEVNULL:
            output.close()  # the child has its own copy


def _install_hint(program: str) -> str:
    name = Path(program).name
    packages = {"esorex": "esorex cpl-plugin-muse", "likwid-pin": "likwid", "taskset": "util-linux"}
    if name in packages:
        return f"install it (apt-get install {packages[name]}) or put it on PATH"
    return "install it or put it on PATH"


def run_command(argv: Sequence[str], *, cwd=None, env: Mapping[str, str] | None = None, stdout_path=None,
                timeout: float | None = None, cancel_event: threading.Event | None = None, append: bool = True,
                grace: float = DEFAULT_GRACE) -> CommandOutcome:
    """Run a command to its end, a timeout or a cancellation; it and all it forks die with this process.

    Parameters
    ----------
    argv : sequence of str
        The command, with its pinning prefix if any (``likwid-pin -q -c 0-3 esorex ...``).
    cwd : path, optional
        Working folder (must exist).
    env : mapping, optional
        The whole environment of the command (default: this process's).
    stdout_path : path, optional
        File receiving stdout and stderr, streamed (nothing kept in memory); default: discarded.
    timeout : float, optional
        Seconds after which the command is stopped (``timed_out``).
    cancel_event : threading.Event, optional
        When set (by another thread, e.g. on Ctrl-C), the command is stopped (``cancelled``); a command
        whose event is already set does not start.
    append : bool
        Append to ``stdout_path`` (default) instead of truncating it.
    grace : float
        Seconds between SIGTERM and SIGKILL when stopping the command.

    Returns
    -------
    CommandOutcome

    Raises
    ------
    ExecutableNotFoundError
        If the program is not installed.
    MissingPathError, PermissionDeniedError, DiskFullError
        If the working folder is missing or the output file cannot be created.
    """
    if not argv:
        raise ValueError("run_command: empty command")
    start = time.monotonic()
    if cancel_event is not None and cancel_event.is_set():
        return CommandOutcome(returncode=-signal.SIGTERM, duration=0.0, cancelled=True)
    with _RUNNING_LOCK:
        generation = _GENERATION[0]
    # From fork to registration, Ctrl-C must wait: raised inside Popen (which returns only once the child
    # has exec'ed) it would leave a running command that nobody knows about.
    with _signals_deferred() as pending:
        process = _start(argv, cwd, env, stdout_path, append)
        entry = _Running(process, argv)
        with _RUNNING_LOCK:
            _RUNNING[process.pid] = entry
            # terminate_all() ran while this command was starting: it is cancelled too.
            entry.cancelled = _GENERATION[0] != generation
        _WATCHDOG.register(process.pid)
    try:
        _deliver(pending)  # a Ctrl-C that came while starting: raised here, where the command is stopped
        deadline = None if timeout is None else start + float(timeout)
        while not entry.cancelled:
            entry.sample_memory()
            slice_ = _POLL_INTERVAL if cancel_event is not None else _MEMORY_SAMPLING
            if deadline is not None:
                slice_ = min(slice_, deadline - time.monotonic())
            if entry.wait_exit(slice_):
                break
            if cancel_event is not None and cancel_event.is_set():
                entry.cancelled = True
                entry.stop(grace)
                break
            if deadline is not None and time.monotonic() >= deadline:
                entry.timed_out = True
                entry.stop(grace)
                break
        if entry.cancelled and entry.process.returncode is None:
            entry.stop(grace)  # cancelled by terminate_all() while starting (a no-op if it is stopping it)
        # The leader has exited but is not reaped yet: whatever it left behind in its group goes too.
        entry.kill_rest()
    except BaseException:
        # KeyboardInterrupt or another exception in this thread: never leave the command behind.
        entry.cancelled = True
        entry.stop(grace)
        raise
    finally:
        _WATCHDOG.unregister(process.pid)
        with _RUNNING_LOCK:
            _RUNNING.pop(process.pid, None)
        with entry.stop_lock:  # terminate_all() may still be stopping it
            cpu_seconds = -1.0
            if process.returncode is None:
                # Reaped here with its resource usage: the CPU time of it and of its waited-for children
                # (likwid-pin's esorex), which the job tables record. (Its ru_maxrss is not used: a forked
                # child starts with this Python process's resident pages, which would count as its peak.)
                _, status, usage = os.wait4(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(status)
                cpu_seconds = usage.ru_utime + usage.ru_stime
            max_rss_mb = entry.peak_rss_mb
            returncode = process.returncode
            entry.close()
    return CommandOutcome(returncode=returncode, duration=time.monotonic() - start, timed_out=entry.timed_out,
                          cancelled=entry.cancelled, pid=process.pid, cpu_seconds=cpu_seconds,
                          max_rss_mb=max_rss_mb)


def terminate_all(grace: float = DEFAULT_GRACE) -> int:
    """Stop every command this process is running (all at once), as cancelled; for Ctrl-C.

    Each one gets SIGTERM, then SIGKILL after ``grace`` seconds; the :func:`run_command` calls waiting on
    them return ``cancelled=True``. Commands started afterwards run normally.

    Returns
    -------
    int
        How many commands were stopped.
    """
    with _RUNNING_LOCK:
        _GENERATION[0] += 1
        entries = list(_RUNNING.values())
    victims = {}
    for entry in entries:
        entry.cancelled = True
        victims[entry] = entry.begin_stop()
    deadline = time.monotonic() + grace  # one grace period for all, not one each
    for entry in entries:
        with entry.stop_lock:
            entry.end_stop(victims[entry], deadline)
    if entries:
        logger.info("stopped %d running command(s)", len(entries))
    return len(entries)


@atexit.register
def _stop_at_exit():
    # A normal exit with commands still running (daemon threads): stop them now rather than leaving it
    # to the watchdog.
    if _RUNNING:
        terminate_all(grace=2.0)
