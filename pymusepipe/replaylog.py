"""The replay log: ``Log/<logfile>`` written as a bash script.

Comment lines (``#``) carry the time, the pymusepipe and MUSE pipeline versions and messages; every command
pymusepipe executes is written as a runnable line with absolute paths (``mkdir -p``, SOF files as
here-documents, ``esorex ...`` quoted with :func:`shlex.join`, product moves ``mv``). ``bash <logfile>``
therefore redoes the reduction. Commands of fakemode runs are written commented out (they were not run).

Writes are appended under a lock (jobs finish in parallel threads) and flushed at once, so the log is
complete up to the last finished command even if the run is killed; :meth:`ReplayLog.batch` groups the lines
of one job into one write, so parallel jobs never interleave inside a job's block.
"""
from __future__ import annotations

import contextlib
import datetime
import shlex
import threading
from pathlib import Path
from typing import Mapping, Sequence

from .version import __version__

__all__ = ["ReplayLog"]

_HEREDOC_MARK = "PYMUSEPIPE_EOF"


class ReplayLog:
    """Append-only bash-script log.

    Parameters
    ----------
    path : str or Path
        Log file (its folder is created).
    reset : bool
        Start the file afresh instead of appending.
    pipeline_version : str, optional
        MUSE pipeline version, written in time-stamp comments.
    fakemode : bool
        Write commands commented out, tagged ``[fakemode]``.
    """

    def __init__(self, path, reset: bool = False, pipeline_version: str | None = None, fakemode: bool = False):
        self.path = Path(path).absolute()
        self.pipeline_version = pipeline_version
        self.fakemode = fakemode
        self._lock = threading.Lock()
        self._local = threading.local()  # per-thread buffer of batch()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if reset or not self.path.exists() or self.path.stat().st_size == 0:
            self.path.write_text("#!/bin/bash\n# pymusepipe replay log: run it with bash to redo the reduction\n")

    def _write(self, text: str):
        buffer = getattr(self._local, "buffer", None)
        if buffer is not None:
            buffer.append(text)
            return
        with self._lock, self.path.open("a") as stream:
            stream.write(text)

    @contextlib.contextmanager
    def batch(self):
        """Write everything logged inside the block (by this thread) at once, as one contiguous block."""
        if getattr(self._local, "buffer", None) is not None:
            yield self  # nested: the outer block writes
            return
        self._local.buffer = []
        try:
            yield self
        finally:
            text, self._local.buffer = "".join(self._local.buffer), None
            if text:
                self._write(text)

    def stamp(self, message: str = ""):
        """A time-stamp comment with versions, and an optional message."""
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        versions = f"pymusepipe {__version__}"
        if self.pipeline_version:
            versions += f", MUSE pipeline {self.pipeline_version}"
        fake = " [fakemode]" if self.fakemode else ""
        self._write(f"# At : {now}{fake} - {versions}\n")
        if message:
            self.comment(message)

    def comment(self, message: str):
        """Message as comment line(s)."""
        self._write("".join(f"# {line}\n" for line in str(message).splitlines() or [""]))

    def command(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd=None):
        """A runnable command line (``VAR=value`` prefixes for ``env``; run in a subshell inside ``cwd``)."""
        prefix = "".join(f"{key}={shlex.quote(str(value))} " for key, value in (env or {}).items())
        line = prefix + shlex.join(str(item) for item in argv)
        if cwd is not None:
            line = f"(cd {shlex.quote(str(cwd))} && {line})"
        self._write(f"# [fakemode] {line}\n" if self.fakemode else f"{line}\n")

    def esorex(self, argv: Sequence[str], threads: int, cwd):
        """An esorex run, in its own working folder, with its thread count."""
        self.command(argv, env={"OMP_NUM_THREADS": threads}, cwd=cwd)

    def mkdir(self, folder):
        self.command(["mkdir", "-p", str(folder)])

    def move(self, source, destination):
        self.command(["mv", "-f", str(source), str(destination)])

    def write_file(self, path, text: str):
        """A file written by pymusepipe (a SOF), as a here-document, so the log does not depend on it."""
        if _HEREDOC_MARK in text:
            raise ValueError(f"{path}: content contains the here-document marker {_HEREDOC_MARK}")
        body = text if text.endswith("\n") or not text else text + "\n"
        lines = f"cat > {shlex.quote(str(path))} <<'{_HEREDOC_MARK}'\n{body}{_HEREDOC_MARK}\n"
        if self.fakemode:
            lines = "".join(f"# [fakemode] {line}\n" for line in lines.splitlines())
        self._write(lines)
