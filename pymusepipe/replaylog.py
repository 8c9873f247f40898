"""The replay log: ``Log/<logfile>`` written as a bash script.

Comment lines (``#``) carry the time, the pymusepipe and MUSE pipeline versions and messages; every command
pymusepipe executes is written as a runnable line with absolute paths (``mkdir -p``, SOF files as
here-documents, ``esorex ...`` quoted with :func:`shlex.join`, product moves ``mv``). ``bash <logfile>``
therefore redoes the reduction. Commands of fakemode runs are written commented out (they were not run).

**Portable.** The log replays on another machine than the one that wrote it: it holds no CPU ids and no
interpreter path. The top of the file defines a shell function, ``pymusepipe_run``, and every esorex line
goes through it: it sets ``OMP_NUM_THREADS`` and pins with ``likwid-pin`` over the CPUs of the machine
running the log (``PYMUSEPIPE_THREADS`` and ``PYMUSEPIPE_PINNING`` choose otherwise), and runs the command
plainly where likwid-pin is not installed. Python steps are written ``python3 -m pymusepipe....``.
A command given with a pinning prefix (``likwid-pin -q -c 3 esorex ...``) or an ``OMP_NUM_THREADS``
setting is rewritten that way. A log written by an older version is upgraded when opened: the function
block is inserted at its top and its pinned lines rewritten (the original is kept as ``<log>.v1``).

Writes are appended under a lock (jobs finish in parallel threads) and flushed at once, so the log is
complete up to the last finished command even if the run is killed; :meth:`ReplayLog.batch` groups the lines
of one job into one write, so parallel jobs never interleave inside a job's block.
"""
from __future__ import annotations

import contextlib
import datetime
import re
import shlex
import sys
import threading
from pathlib import Path
from typing import Mapping, Sequence

from .atomic import write_atomically
from .errors import from_os_error
from .esorex import PINNING_NONE, split_pinning_prefix
from .version import __version__

__all__ = ["ReplayLog", "RUNNER", "FUNCTIONS_MARK"]

_HEREDOC_MARK = "PYMUSEPIPE_EOF"

#: The shell function every computing command of the log goes through.
RUNNER = "pymusepipe_run"
#: First line of the function block (also how an older log is recognised: it lacks it).
FUNCTIONS_MARK = "# --- pymusepipe replay functions v2"

_TITLE = "#!/bin/bash\n# pymusepipe replay log: run it with bash to redo the reduction\n"

_FUNCTIONS = FUNCTIONS_MARK + r""": threads and pinning follow the machine running this log ---
#   PYMUSEPIPE_THREADS=n    OpenMP threads (and CPUs) per command; default: every CPU this shell may use
#   PYMUSEPIPE_PINNING=...  likwid (default, when likwid-pin is installed), taskset or none
# Python steps run 'python3 -m pymusepipe...': activate the environment that has pymusepipe first.
# To replay one step by hand, copy these functions with its lines.
pymusepipe_cpus() {
    # The CPU ids this shell may run on (its affinity list, e.g. 0-3,8), one per line.
    local list part
    list=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status 2>/dev/null)
    if [ -z "$list" ]; then seq 0 $(( $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1) - 1 )); return; fi
    for part in ${list//,/ }; do
        case $part in
            *-*) seq "${part%-*}" "${part#*-}" ;;
            *) echo "$part" ;;
        esac
    done
}
pymusepipe_run() {
    # pymusepipe_run COMMAND [ARG...]: run COMMAND with OMP_NUM_THREADS and pinning of this machine.
    local threads pinning cpus arg
    threads=${PYMUSEPIPE_THREADS:-$(pymusepipe_cpus | wc -l)}
    pinning=${PYMUSEPIPE_PINNING:-likwid}
    cpus=$(pymusepipe_cpus | head -n "$threads" | paste -sd, -)
    if [ "$pinning" = likwid ]; then
        command -v likwid-pin > /dev/null 2>&1 || pinning=none
        for arg in "$@"; do  # likwid-pin splits its arguments on white space
            case $arg in *[[:space:]]*) pinning=none ;; esac
        done
    fi
    case $pinning in
        likwid) OMP_NUM_THREADS=$threads likwid-pin -q -c "$cpus" "$@" ;;
        taskset) OMP_NUM_THREADS=$threads taskset -c "$cpus" "$@" ;;
        *) OMP_NUM_THREADS=$threads "$@" ;;
    esac
}
# --- end of pymusepipe replay functions ---
"""

# What an older version wrote for a job: "(cd DIR && OMP_NUM_THREADS=12 likwid-pin -q -c 0-11 esorex ...)".
_OLD_JOB = re.compile(r"(?P<head>^(?:# \[fakemode\] )?(?:\(cd .*? && )?)OMP_NUM_THREADS=\d+ "
                      r"(?:likwid-pin (?:-q )?-c [\w:,\-]+ |taskset -c [\d,\-]+ )?")
_OLD_PYTHON = re.compile(r"(?P<head>^(?:# \[fakemode\] )?(?:\(cd .*? && )?)(?P<python>\S*python[\d.]*) -m pymusepipe")
_PYTHON_NAME = re.compile(r"python[\d.]*$")


def _is_python(program: str) -> bool:
    return program == sys.executable or bool(_PYTHON_NAME.match(Path(program).name))


def portable_command(argv: Sequence[str], env: Mapping[str, str] | None = None, compute: bool | None = None) -> tuple:
    """``(argv, env)`` as the replay log writes them: no pinning prefix, no OMP_NUM_THREADS, no
    interpreter path. A computing command starts with :data:`RUNNER`: with ``compute=None``, one that was
    pinned or given ``OMP_NUM_THREADS``.
    """
    env = dict(env or {})
    method, _, command = split_pinning_prefix(argv)
    threads = env.pop("OMP_NUM_THREADS", None)
    if command and _is_python(command[0]) and command[1:2] == ["-m"]:
        command = ["python3"] + command[1:]
    if compute is None:
        compute = method != PINNING_NONE or threads is not None
    if compute:
        command = [RUNNER] + command
    return command, env


def upgrade_text(text: str) -> str:
    """The text of a log written by an older version, made portable: the function block after its title
    lines, pinned job lines through :data:`RUNNER`, Python steps as ``python3 -m``."""
    lines = text.splitlines(keepends=True)
    head = 0
    while head < len(lines) and lines[head].startswith("#") and not lines[head].startswith("# At :"):
        head += 1  # the shebang and title comments stay first
    body = []
    for line in lines[head:]:
        line = _OLD_JOB.sub(lambda match: match.group("head") + RUNNER + " ", line, count=1)
        line = _OLD_PYTHON.sub(lambda match: match.group("head") + "python3 -m pymusepipe", line, count=1)
        body.append(line)
    top = "".join(lines[:head]) or _TITLE
    if not top.endswith("\n"):
        top += "\n"
    return top + _FUNCTIONS + "".join(body)


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
            self.path.write_text(_TITLE + _FUNCTIONS)
        else:
            self._upgrade()

    def _upgrade(self):
        """Make a log written by an older version portable (once), keeping the original beside it."""
        text = self.path.read_text()
        if FUNCTIONS_MARK in text:
            return
        backup = self.path.with_name(self.path.name + ".v1")
        if not backup.exists():
            backup.write_text(text)
        upgraded = upgrade_text(text)
        write_atomically(self.path, lambda temporary: temporary.write_text(upgraded))

    def _write(self, text: str):
        buffer = getattr(self._local, "buffer", None)
        if buffer is not None:
            buffer.append(text)
            return
        try:
            with self._lock, self.path.open("a") as stream:
                stream.write(text)
        except OSError as error:
            # A write to an open file does not name it: say which file (a full disk must name its place).
            raise from_os_error(error, self.path, "writing the replay log") from error

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

    def command(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd=None,
                compute: bool | None = None):
        """A runnable command line (``VAR=value`` prefixes for ``env``; run in a subshell inside ``cwd``).

        A pinning prefix and ``OMP_NUM_THREADS`` are not written as given: the command goes through
        :data:`RUNNER`, which pins and sets threads for the machine replaying the log (``compute=True``
        forces that, ``False`` prevents it). A Python interpreter running ``-m pymusepipe...`` is written
        ``python3``.
        """
        argv, env = portable_command([str(item) for item in argv], env, compute)
        prefix = "".join(f"{key}={shlex.quote(str(value))} " for key, value in env.items())
        line = prefix + shlex.join(argv)
        if cwd is not None:
            line = f"(cd {shlex.quote(str(cwd))} && {line})"
        self._write(f"# [fakemode] {line}\n" if self.fakemode else f"{line}\n")

    def run(self, argv: Sequence[str], cwd=None, env: Mapping[str, str] | None = None):
        """A computing command (esorex): through :data:`RUNNER`, whatever pinning it ran with here."""
        self.command(argv, env=env, cwd=cwd, compute=True)

    def python(self, module: str, args: Sequence[str] = (), cwd=None):
        """A Python step: ``python3 -m <module> args``."""
        self.command(["python3", "-m", module, *map(str, args)], cwd=cwd)

    def esorex(self, argv: Sequence[str], threads: int, cwd):
        """An esorex run, in its own working folder (its threads and pinning follow the replaying machine)."""
        self.run(argv, cwd=cwd)

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
