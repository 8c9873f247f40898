"""A lock on a folder (a pointing, a shared calibration folder) held by the running process.

Two runs on one pointing would delete each other's job folders under a running esorex. A run that writes
into a folder therefore first creates ``<folder>/pymusepipe.lock``: a small JSON file saying who holds it
(host, process id, start time, command, user). A second run on the same folder stops at once with one line
naming the holder.

- **Atomic**: the lock is written completely under a unique temporary name, then hard-linked to
  ``pymusepipe.lock``; the link fails if the lock exists, so of two runs starting together exactly one
  gets it, and nobody ever reads a half-written lock (where hard links are not supported, the lock is
  created with ``O_CREAT | O_EXCL``).
- **Released on any exit** Python sees: the context manager, and ``atexit`` for the rest.
- **Stale locks**: a ``kill -9``, a crash or a reboot leaves the file. A lock from this host whose process
  no longer runs (or whose pid now belongs to another process, or that dates from before the last boot)
  is taken over, with a warning. A lock from another host is never taken over: pymusepipe cannot see
  processes there, so the error says how to check and what to delete.
- **Re-entrant** within one process: taking the lock of a folder this process already holds (a second
  ``MusePipe`` on the same pointing in one IPython session) only counts one more holder.

Only commands that write take locks: ``scan``, ``status`` and ``report`` read, and fakemode runs nothing.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import getpass
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from .errors import LockHeldError, MissingPathError, PipelineError, from_os_error

__all__ = ["FolderLock", "LOCK_NAME", "LockHeldError", "read_lock", "lock_folders"]

logger = logging.getLogger(__name__)

LOCK_NAME = "pymusepipe.lock"

_HELD = {}                    # absolute lock path -> [FolderLock, count] held by this process
_HELD_LOCK = threading.Lock()


def _hostname() -> str:
    return socket.gethostname()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """Start time of a process in clock ticks since boot (``/proc/PID/stat`` field 22), '' if unknown: with
    the boot id it tells a pid reused by another process from the one that wrote the lock."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    fields = data[data.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else ""


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _command_line() -> str:
    """This process's command line as the user typed it: ``pymusepipe run ...``, ``python -m pymusepipe run ...``
    (whose ``sys.argv[0]`` is the path of the package's ``__main__.py``), ``script.py ...``."""
    if not sys.argv or not sys.argv[0]:
        return "python"
    program = Path(sys.argv[0])
    if program.name == "__main__.py":
        return f"python -m {program.parent.name} {shlex.join(sys.argv[1:])}".rstrip()
    return shlex.join([program.name] + sys.argv[1:])


def read_lock(path) -> dict | None:
    """What a lock file says (a dict), ``None`` if there is none; raises ``ValueError`` if unreadable."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise from_os_error(error, path, "reading") from error
    try:
        content = json.loads(text)
        if not isinstance(content, dict) or "pid" not in content or "host" not in content:
            raise ValueError
        return content
    except ValueError:
        raise ValueError(f"lock file {path} is not a pymusepipe lock ({len(text)} bytes)") from None


def _holder_text(holder: dict) -> str:
    command = holder.get("command") or "?"
    if len(command) > 120:
        command = command[:117] + "..."
    return (f"pid {holder.get('pid')} of user {holder.get('user', '?')} on host {holder.get('host')}, "
            f"since {holder.get('started', '?')} ({command})")


def _holder_is_dead(holder: dict) -> str:
    """Why a same-host holder is certainly gone ('' if it may still run)."""
    boot = holder.get("boot_id")
    if boot and _boot_id() and boot != _boot_id():
        return "the machine rebooted since"
    try:
        pid = int(holder["pid"])
    except (TypeError, ValueError):
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} no longer runs"
    except PermissionError:
        pass  # it runs, as another user
    started = holder.get("process_start")
    now = _process_start(pid)
    if started and now and started != now:
        return f"process {pid} no longer runs (the pid now belongs to another process)"
    if _process_state(pid) == "Z":
        return f"process {pid} has exited (zombie)"
    return ""


def _process_state(pid: int) -> str:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    return data[data.rfind(b")") + 2:].split()[0].decode()


class FolderLock:
    """The lock of one folder, held by this process.

    Parameters
    ----------
    folder : str or Path
        The folder to lock (a pointing folder, a shared calibration folder). It must exist.
    command : str, optional
        What holds it, shown to a second run (default: this process's command line).
    purpose : str, optional
        What the lock protects, for messages (default: the folder).

    Examples
    --------
    >>> with FolderLock(layout.pointing_dir):       # doctest: +SKIP
    ...     pipe.run_all_recipes()
    """

    def __init__(self, folder, *, command: str | None = None, purpose: str | None = None):
        self.folder = Path(folder).absolute()
        self.path = self.folder / LOCK_NAME
        if command is None:
            command = _command_line()
        self.command = command
        self.purpose = purpose or str(self.folder)
        self.token = uuid.uuid4().hex
        self._owner_pid = None

    def __repr__(self):
        return f"FolderLock({str(self.folder)!r}, held={self.held})"

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (through this object or another one on the same folder)."""
        with _HELD_LOCK:
            entry = _HELD.get(str(self.path))
        return entry is not None and entry[0]._owner_pid == os.getpid()

    def _payload(self) -> dict:
        return {"host": _hostname(), "pid": os.getpid(), "user": _user(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": self.command, "process_start": _process_start(os.getpid()), "boot_id": _boot_id(),
                "token": self.token, "version": 1}

    def acquire(self) -> "FolderLock":
        """Take the lock, or raise.

        Raises
        ------
        LockHeldError
            Another live run holds it (or a run on another host, or the lock file is unreadable).
        MissingPathError
            The folder does not exist.
        PermissionDeniedError, DiskFullError
            The lock file cannot be written.
        """
        key = str(self.path)
        with _HELD_LOCK:
            entry = _HELD.get(key)
            if entry is not None and entry[0]._owner_pid == os.getpid():
                entry[1] += 1
                return self
        if not self.folder.is_dir():
            raise MissingPathError(f"cannot lock {self.folder}: the folder does not exist",
                                   "check the data root, target and pointing")
        for _ in range(5):  # each round either creates the lock, raises, or removed a stale one
            payload = self._payload()
            if self._create(payload):
                self._owner_pid = os.getpid()
                with _HELD_LOCK:
                    _HELD[key] = [self, 1]
                return self
            holder = self._read_holder()
            if holder is None:
                continue  # released meanwhile: try again
            self._check_stale(holder)
        raise LockHeldError(f"cannot take the lock {self.path}: other runs keep taking and releasing it",
                            "wait until the other runs on this folder have finished", lock_path=self.path)

    def _create(self, payload) -> bool:
        """Create the lock file atomically with ``payload``; False if it exists."""
        data = (json.dumps(payload, indent=1) + "\n").encode()
        temporary = self.folder / f".{LOCK_NAME}.{payload['host']}.{payload['pid']}.{self.token}"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(descriptor, data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise from_os_error(error, self.path, "creating the lock") from error
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as error:
            # NFS may report an error for a link that was made: the link count tells.
            with contextlib.suppress(OSError):
                if os.stat(temporary).st_nlink == 2:
                    return True
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK,
                                   errno.EACCES):
                raise from_os_error(error, self.path, "creating the lock") from error
            return self._create_exclusive(data)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def _create_exclusive(self, data) -> bool:
        """Fallback for file systems without hard links."""
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as error:
            raise from_os_error(error, self.path, "creating the lock") from error
        try:
            os.write(descriptor, data)
            os.fsync(descriptor)
        except OSError as error:
            os.close(descriptor)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise from_os_error(error, self.path, "writing the lock") from error
        os.close(descriptor)
        return True

    def _read_holder(self):
        # Where the lock was made with O_EXCL it may be empty for an instant: look again before judging.
        for attempt in range(10):
            try:
                return read_lock(self.path)
            except ValueError as error:
                if attempt == 9:
                    raise LockHeldError(
                        f"{self.purpose} is locked by {self.path}, which is unreadable ({error})",
                        f"if no other pymusepipe run uses {self.folder}, delete {self.path} and rerun",
                        lock_path=self.path) from None
                time.sleep(0.1)
        return None

    def _check_stale(self, holder: dict):
        """Raise if ``holder`` may still run; otherwise remove its lock (with a warning)."""
        if holder.get("host") != _hostname():
            raise LockHeldError(
                f"{self.purpose} is locked by another pymusepipe run: {_holder_text(holder)}; lock file "
                f"{self.path}",
                f"pymusepipe cannot see processes on {holder.get('host')}: if that run is over "
                f"(ssh {holder.get('host')} ps -p {holder.get('pid')}), delete {self.path} and rerun",
                holder=holder, lock_path=self.path)
        why = _holder_is_dead(holder)
        if not why:
            raise LockHeldError(
                f"{self.purpose} is in use by another pymusepipe run: {_holder_text(holder)}",
                f"wait for it to finish, or stop it (kill {holder.get('pid')}) and rerun; lock file {self.path}",
                holder=holder, lock_path=self.path)
        # Move it aside under a unique name, then check that what we moved is what we judged: another run
        # may have replaced the stale lock in between, and its fresh lock must be put back, not deleted.
        aside = self.folder / f".{LOCK_NAME}.stale.{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        except OSError as error:
            raise from_os_error(error, self.path, "removing the stale lock") from error
        try:
            moved = read_lock(aside)
        except ValueError:
            moved = None
        if moved is not None and moved.get("token") != holder.get("token"):
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        else:
            logger.warning("took over the stale lock %s: it was held by %s, but %s", self.path,
                           _holder_text(holder), why)
        with contextlib.suppress(OSError):
            os.unlink(aside)

    def release(self):
        """Give the lock back (the file is removed when the last holder in this process releases it)."""
        key = str(self.path)
        with _HELD_LOCK:
            entry = _HELD.get(key)
            if entry is None or entry[0]._owner_pid != os.getpid():
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD[key]
        entry[0]._remove_file()

    def _remove_file(self):
        try:
            current = read_lock(self.path)
        except (ValueError, PipelineError):
            current = None
        if current is None or current.get("token") != self.token:
            logger.warning("lock %s is no longer ours (%s); left in place", self.path,
                           _holder_text(current) if current else "removed or unreadable")
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
        return False


@contextlib.contextmanager
def lock_folders(folders, *, command: str | None = None):
    """Hold the locks of several folders (a pointing and a shared calibration folder), taken in a fixed
    order so that two runs cannot each hold one and wait for the other."""
    unique = sorted({str(Path(folder).absolute()) for folder in folders})
    with contextlib.ExitStack() as stack:
        for folder in unique:
            stack.enter_context(FolderLock(folder, command=command))
        yield


@atexit.register
def _release_all():
    with _HELD_LOCK:
        entries = [entry for entry in _HELD.values() if entry[0]._owner_pid == os.getpid()]
        _HELD.clear()
    for lock, _ in entries:
        lock._remove_file()


def _forget_after_fork():
    # A forked child holds nothing: its exit must not remove the parent's locks.
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
