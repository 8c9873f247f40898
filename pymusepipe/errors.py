"""The errors pymusepipe reports to people, and how an operating-system error becomes one.

Every error a user can fix is a :class:`PipelineError`: its message names the file, folder, keyword or
setting at fault and what was expected, and its ``hint`` says what to do. The console script prints such
an error as one line (``pymusepipe: error: <message>; <hint>``) without a traceback (``--debug`` shows it).

Several types also derive from the built-in exception a caller would catch without knowing pymusepipe
(``ValueError`` for a configuration error, ``FileNotFoundError`` for a missing folder, ``OSError`` for a
full disk), so existing ``except`` clauses keep working.

| type | raised when | also a |
|---|---|---|
| :class:`PipelineError` | base of all below | ``Exception`` |
| :class:`UsageError` | a command-line value is wrong (exit status 2) | ``ValueError`` |
| ``config.ConfigError`` | a configuration file or setting is wrong | ``ValueError`` |
| :class:`MissingPathError` | a target, pointing, ``Raw/`` folder or input file does not exist | ``FileNotFoundError`` |
| ``rawdata.RawFolderError`` | the ``Raw/`` folder of a pointing does not exist | ``FileNotFoundError`` |
| :class:`PermissionDeniedError` | a file or folder cannot be read or written (permissions, read-only) | ``PermissionError`` |
| :class:`DiskFullError` | no space left (``ENOSPC``) or quota exceeded (``EDQUOT``) | ``OSError`` |
| :class:`ExecutableNotFoundError` | esorex, likwid-pin or taskset is not installed | ``FileNotFoundError`` |
| ``esorex.EsorexError`` | esorex cannot be run or asked something | ``RuntimeError`` |
| :class:`LockHeldError` | another run holds the lock of a pointing or calibration folder | - |
| :class:`StepInputError` | a step lacks inputs or calibrations (run an earlier step first) | ``RuntimeError`` |
| :class:`StepFailedError` | a recipe failed; the message has the first real cause from its log | ``RuntimeError`` |

Ctrl-C stays a ``KeyboardInterrupt`` everywhere; the console script turns it into exit status 130.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["PipelineError", "UsageError", "MissingPathError", "PermissionDeniedError", "DiskFullError",
           "ExecutableNotFoundError", "LockHeldError", "StepInputError", "StepFailedError", "from_os_error",
           "EXIT_ERROR", "EXIT_USAGE", "EXIT_INTERRUPTED"]

#: Exit status of the console script: an error, a wrong command line, Ctrl-C (128 + SIGINT).
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

RESUME_HINT = "rerun the same command to resume: finished jobs are kept"


class PipelineError(Exception):
    """An error a user can fix.

    Parameters
    ----------
    message : str
        What is wrong, naming the path, keyword or setting at fault and what was expected.
    hint : str, optional
        What to do about it.
    """

    #: Exit status of the console script for this error.
    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = str(message)
        self.hint = str(hint or "")

    def __str__(self):
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(PipelineError, ValueError):
    """A value given on the command line is wrong (the console script exits with status 2)."""

    exit_code = EXIT_USAGE


class MissingPathError(PipelineError, FileNotFoundError):
    """A file or folder that must exist does not."""


class PermissionDeniedError(PipelineError, PermissionError):
    """A file or folder cannot be read or written."""


class DiskFullError(PipelineError, OSError):
    """No space left on the file system (or the quota is exceeded)."""


class ExecutableNotFoundError(PipelineError, FileNotFoundError):
    """An external program (esorex, likwid-pin, taskset) is not installed or not on ``PATH``."""


class LockHeldError(PipelineError):
    """Another run holds the lock of a folder; ``holder`` is what its lock file says (a dict)."""

    def __init__(self, message: str, hint: str = "", holder: dict | None = None, lock_path=None):
        super().__init__(message, hint)
        self.holder = dict(holder or {})
        self.lock_path = lock_path


class StepInputError(PipelineError, RuntimeError):
    """A step cannot be planned: inputs or calibrations are missing (an earlier step must run first)."""


class StepFailedError(PipelineError, RuntimeError):
    """A step ran and at least one of its jobs failed; the message gives the first real cause."""


def _mount_point(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def from_os_error(error: OSError, path=None, action: str | None = "writing") -> Exception:
    """The :class:`PipelineError` saying what an ``OSError`` means for the user, naming the file.

    Parameters
    ----------
    error : OSError
        The error caught.
    path : str or Path, optional
        The file being read or written (``error.filename`` when not given; writes of an open file do not
        set it).
    action : str or None
        ``'writing'``, ``'reading'``..., for the message; None when unknown (the message then says
        ``writing`` for a full disk, ``accessing`` for a permission, nothing otherwise).

    Returns
    -------
    Exception
        A :class:`DiskFullError`, :class:`PermissionDeniedError` or :class:`MissingPathError` (with the
        ``errno`` of ``error``), a :class:`PipelineError` for other errors with an ``errno``, or ``error``
        itself when it carries no ``errno`` (its message was written for people already).
    """
    if isinstance(error, PipelineError):
        return error
    path = path if path is not None else (error.filename or "")
    where = f" {path}" if path else ""
    code = error.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "disk quota exceeded" if code == errno.EDQUOT else "disk full (no space left on device)"
        folder = Path(path).parent if path else Path.cwd()
        new = DiskFullError(f"{what} while {action or 'writing'}{where}",
                            f"free space on {_mount_point(folder)} (df -h {folder}), then {RESUME_HINT}")
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "read-only file system" if code == errno.EROFS else "permission denied"
        new = PermissionDeniedError(f"{why} while {action or 'accessing'}{where}",
                                    "check the owner and permissions of that file and its folder (ls -ld), "
                                    "or choose a folder you can write to")
    elif code == errno.ENOENT:
        new = MissingPathError(f"no such file or folder{where}",
                               "check the path (moved or deleted files, a typo in the configuration)")
    elif code is not None:
        doing = f" while {action}" if action else ""
        new = PipelineError(f"{error.strerror or error}{doing}{where}")
    else:
        return error
    new.errno = code
    new.filename = str(path) if path else None
    return new
