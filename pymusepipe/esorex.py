"""SOF files, esorex command lines, and reading esorex logs.

Everything here builds argv lists, never shell strings: paths reach esorex exactly as given. The one
program that re-splits its arguments on spaces is ``likwid-pin``, so :func:`build_command` refuses a path
containing a space when pinning with it.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .atomic import write_atomically
from .errors import PipelineError
from .recipes import format_parameter

__all__ = ["SofEntry", "write_sof", "read_sof", "build_command", "pinning_prefix", "split_pinning_prefix",
           "check_cpus", "available_cpus",
           "format_cpu_list", "EsorexLog", "parse_log", "pipeline_version", "recipe_parameters",
           "check_parameters", "EsorexError"]

logger = logging.getLogger(__name__)

ESOREX_INSTALL_HINT = ("install the ESO pipeline (apt-get install esorex cpl-plugin-muse, or ESO's pipeline kit) "
                       "or put esorex on PATH")

PINNING_LIKWID = "likwid"
PINNING_TASKSET = "taskset"
PINNING_NONE = "none"
PINNING_METHODS = (PINNING_LIKWID, PINNING_TASKSET, PINNING_NONE)


class EsorexError(PipelineError, RuntimeError):
    """esorex cannot be found or cannot be asked something."""


@dataclass(frozen=True)
class SofEntry:
    """One line of a SOF file: an absolute path and its tag; ``mjd`` orders the lines (None: after dated ones)."""

    path: str
    tag: str
    mjd: float | None = None


def write_sof(path, entries: Iterable) -> str:
    """Write a SOF file: ``<absolute path> <TAG>`` per line, inputs sorted by MJD.

    Parameters
    ----------
    path : str or Path
        SOF file to write (its folder is created).
    entries : iterable of SofEntry or (path, tag[, mjd]) tuples

    Returns
    -------
    str
        The text written (the replay log repeats it).
    """
    rows = [entry if isinstance(entry, SofEntry) else SofEntry(*entry) for entry in entries]
    for row in rows:
        if not os.path.isabs(row.path):
            raise ValueError(f"SOF {path}: path {row.path!r} ({row.tag}) is not absolute")
        if row.tag.split() != [row.tag]:  # empty, or contains white space
            raise ValueError(f"SOF {path}: invalid tag {row.tag!r} for {row.path}")
    # Dated frames first in time order (dateobs products are numbered in this order), then undated ones.
    rows.sort(key=lambda row: (row.mjd is None, row.mjd if row.mjd is not None else 0.0))
    text = "".join(f"{row.path} {row.tag}\n" for row in rows)
    write_atomically(path, lambda temporary: temporary.write_text(text))  # never half a SOF; errors name it
    return text


def read_sof(path) -> list:
    """Read a SOF back as a list of (path, tag)."""
    lines = Path(path).read_text().splitlines()
    return [tuple(line.rsplit(None, 1)) for line in lines if line.strip() and not line.startswith("#")]


def available_cpus() -> list:
    """CPU ids this process may run on (its affinity mask), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def format_cpu_list(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``'0-2,5'``."""
    cpus = sorted(set(int(cpu) for cpu in cpus))
    if not cpus:
        raise ValueError("empty CPU list")
    ranges, start, previous = [], cpus[0], cpus[0]
    for cpu in cpus[1:] + [None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        ranges.append(f"{start}" if start == previous else f"{start}-{previous}")
        if cpu is not None:
            start = previous = cpu
    return ",".join(ranges)


def pinning_prefix(method: str, cpus: Sequence[int]) -> list:
    """argv prefix that pins a command to ``cpus``.

    ``likwid``: ``likwid-pin -q -c <ids>``, with physical ids taken from the affinity mask (the ``N:``
    numbering of likwid counts cores of the whole node, which may not be ours inside a cgroup);
    ``taskset``: ``taskset -c <ids>``; ``none``: no prefix.
    """
    if method == PINNING_NONE:
        return []
    cpu_list = format_cpu_list(cpus)
    if method == PINNING_LIKWID:
        return ["likwid-pin", "-q", "-c", cpu_list]
    if method == PINNING_TASKSET:
        return ["taskset", "-c", cpu_list]
    raise ValueError(f"pinning={method!r}: expected one of {', '.join(PINNING_METHODS)}")


def split_pinning_prefix(argv: Sequence[str]) -> tuple:
    """Undo :func:`pinning_prefix`: ``(method, cpu list text, command)`` of an argv.

    ``['likwid-pin', '-q', '-c', '0-3', 'esorex', ...]`` -> ``('likwid', '0-3', ['esorex', ...])``; an argv
    without a prefix gives ``('none', '', argv)``. The replay log uses it to write commands without this
    machine's CPU ids.
    """
    argv = [str(item) for item in argv]
    program = Path(argv[0]).name if argv else ""
    if program == "likwid-pin":
        rest = argv[1:]
        while rest[:1] == ["-q"]:
            rest = rest[1:]
        if len(rest) >= 3 and rest[0] == "-c":
            return PINNING_LIKWID, rest[1], rest[2:]
    if program == "taskset" and len(argv) >= 4 and argv[1] in ("-c", "--cpu-list"):
        return PINNING_TASKSET, argv[2], argv[3:]
    return PINNING_NONE, "", argv


def check_cpus(cpus: Sequence[int]) -> list:
    """The CPU ids, sorted, if this process may run on all of them; else ValueError naming the others.

    ``likwid-pin -c 0-23`` fails on a machine with fewer cores (and a cgroup may allow only some): the
    CPU set must come from this machine (:func:`available_cpus`), not from a configuration written elsewhere.
    """
    wanted = sorted(set(int(cpu) for cpu in cpus))
    available = available_cpus()
    missing = [cpu for cpu in wanted if cpu not in available]
    if missing:
        raise ValueError(f"CPU id(s) {format_cpu_list(missing)} are not available to this process (it may use "
                         f"{format_cpu_list(available)}); give CPU ids of this machine, or none to use them all")
    return wanted


def default_pinning() -> str:
    """``likwid`` when likwid-pin is installed (as in the original tool), else ``taskset``, else ``none``."""
    if shutil.which("likwid-pin"):
        return PINNING_LIKWID
    if shutil.which("taskset"):
        return PINNING_TASKSET
    return PINNING_NONE


def build_command(recipe: str, sof, *, output_dir, log_dir, log_file: str, parameters: Mapping | None = None,
                  pinning: str = PINNING_NONE, cpus: Sequence[int] = (), esorex: str = "esorex",
                  esorex_options: Sequence[str] = ()) -> list:
    """The argv list of one esorex run.

    ``[pinning prefix] esorex --output-dir=OUT --log-dir=LOGDIR --log-file=NAME.log [options] RECIPE
    --param=value ... SOF``

    Parameters
    ----------
    recipe : str
    sof : path
        Absolute path of the SOF file.
    output_dir, log_dir : path
        Absolute folders (``--output-dir`` must exist before esorex starts: the executor creates it).
    log_file : str
        File name inside ``log_dir`` (esorex ignores an absolute ``--log-file``).
    parameters : mapping
        Recipe parameters; values go through :func:`~pymusepipe.recipes.format_parameter`.
    pinning : str
        ``likwid``, ``taskset`` or ``none``.
    cpus : sequence of int
        CPUs to pin to (required unless ``pinning='none'``).
    esorex : str
        esorex executable.
    esorex_options : sequence of str
        Extra esorex (not recipe) options, e.g. ``--no-checksum``.
    """
    if "/" in log_file or not log_file:
        raise ValueError(f"log_file={log_file!r}: expected a bare file name (it goes inside log_dir)")
    for name, value in (("sof", sof), ("output_dir", output_dir), ("log_dir", log_dir)):
        if not Path(value).is_absolute():
            raise ValueError(f"{name}={value!r}: expected an absolute path")
    argv = [esorex, f"--output-dir={output_dir}", f"--log-dir={log_dir}", f"--log-file={log_file}",
            *esorex_options, recipe]
    for name, value in (parameters or {}).items():
        argv.append(f"--{name}={format_parameter(value)}")
    argv.append(str(sof))
    if pinning != PINNING_NONE and not cpus:
        raise ValueError(f"pinning={pinning!r} needs a CPU list")
    if pinning == PINNING_LIKWID:
        spaced = [item for item in argv if " " in item]
        if spaced:
            # No pinning helps: the SOF lists its files as 'path TAG' lines, which esorex splits on spaces.
            raise ValueError(f"likwid-pin splits arguments on spaces, so it cannot run {recipe} with "
                             f"{spaced[0]!r}; paths with spaces cannot work with esorex at all (its SOF lines "
                             "are split on white space): use a link without spaces (see Troubleshooting)")
    return pinning_prefix(pinning, cpus) + argv


_ERROR_LINE = re.compile(r"\[\s*ERROR\s*\]")
_WARNING_LINE = re.compile(r"\[\s*WARNING\s*\]")
# "12:00:00 [ ERROR ] function: [tid=000] message" (the log) or "[ ERROR ] esorex: message" (stdout).
_MESSAGE = re.compile(r"\[\s*ERROR\s*\]\s*(?:(?P<function>[\w.]*):\s*)?(?:\[tid=\d+\]\s*)?(?P<message>.*)$")
# A line of muse_cplerrorstate_dump_some: "[2/5] 'message' (code) at function:file.c:123".
_DUMPED = re.compile(r"^\[\d+/\d+\]\s+'(?P<message>.*)'\s+\(\d+\)\s+at\s+\S+$")
# Follow-on and bookkeeping lines: never the cause.
_NOT_A_CAUSE = re.compile(r"^(Dumping the \d+ most recent error|Found \d+ error\(s\)|Execution of recipe .* failed"
                          r"|Problem occurred loading frameset|A user-defined error$|An unspecified error$"
                          r"|Bad file format$|Data not found$|Illegal input$|File not found$)")
# A file esorex or a recipe could not read or open, with the file's name in one of these forms.
_FILE_PROBLEM = re.compile(r"CFITSIO|could not be (?:read|loaded|opened)|could not (?:load|open|read)"
                           r"|No such file|Data not found: filename=", re.IGNORECASE)
_FILENAMES = (re.compile(r"filename='(?P<path>[^']+)'"),
              re.compile(r"input file '(?P<path>[^']+)'"),
              re.compile(r'"(?P<path>/[^"\[]+)(?:\[(?P<ext>[^\]]+)\])?"'))
_EXTENSION = re.compile(r"extension (?P<ext>[\w.]+) from")
_CFITSIO_TEXT = re.compile(r'"(?P<text>[^"]+)" from CFITSIO[^)]*\)\s*(?P<call>\w+)\(\)=(?P<status>\d+)')
#: CFITSIO statuses of a file that could not be created or written (FILE_NOT_CREATED, WRITE_ERROR): a product
#: the recipe was saving, usually on a full disk, not an input it could not read.
_CFITSIO_WRITE_STATUS = frozenset({"105", "106"})
#: Below this many free bytes a file system counts as full when a recipe could not write a product.
_FULL_DISK_BYTES = 1 << 20
_MISSING_TAG = re.compile(r"found \d+ (?:input )?frames? with tag|No valid raw tag|no .* found in input",
                          re.IGNORECASE)


@dataclass
class EsorexLog:
    """What an esorex log says.

    Attributes
    ----------
    path : Path
    errors : list of str
        ``[ERROR]`` lines.
    n_warnings : int
    tail : list of str
        Last lines, to show the user when a run failed.
    headline : str
        The first real cause of a failure, in one line ('' when there is no error): a file that could not
        be read (with what is wrong with it now: truncated, missing), else a missing input tag, else the
        first error that is not a follow-on of another one.
    cause_path : str
        The file at fault, when the headline names one.
    """

    path: Path
    errors: list = field(default_factory=list)
    n_warnings: int = 0
    tail: list = field(default_factory=list)
    headline: str = ""
    cause_path: str = ""

    @property
    def has_errors(self) -> bool:
        return bool(self.errors)


def _error_message(line: str) -> str:
    """The message of an ``[ERROR]`` line, without time, function and thread; unwrapped if dumped."""
    match = _MESSAGE.search(line)
    message = (match.group("message") if match else line).strip()
    dumped = _DUMPED.match(message)
    message = dumped.group("message").strip() if dumped else message
    # CPL's generic prefix of errors raised by the recipes says nothing.
    return message[len("A user-defined error: "):] if message.startswith("A user-defined error: ") else message


def _file_state(path: str) -> str:
    """What is wrong with a file now, in a few words ('' if nothing is visibly wrong)."""
    from .fitsheader import FitsHeaderError, check_fits_size

    if not os.path.exists(path):
        return "it does not exist"
    try:
        check_fits_size(path)
    except FitsHeaderError as error:
        return str(error).replace(f"{path}: ", "")
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    return ""


def _disk_state(path: str) -> str:
    """'the disk is full (...)' when the file system holding ``path`` has (almost) no room left, else ''."""
    from .errors import _mount_point

    folder = os.path.dirname(path) or "."
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        stat = os.statvfs(folder)
    except OSError:
        return ""
    free = stat.f_bavail * stat.f_frsize
    if free >= _FULL_DISK_BYTES:
        return ""
    return f"the disk is full ({free // 1024} kB free on {_mount_point(Path(folder))}; df -h {folder})"


def _file_headline(messages, check_files: bool, cwd=None):
    """(headline, path) for the first file that could not be read (or written), or None."""
    for index, message in enumerate(messages):
        if not _FILE_PROBLEM.search(message):
            continue
        path = extension = None
        for pattern in _FILENAMES:
            match = pattern.search(message)
            if match:
                path = match.group("path")
                extension = match.groupdict().get("ext")
                break
        if not path:
            continue
        named = path
        if cwd is not None and not os.path.isabs(path):
            # esorex names the products it saves relative to its working folder (the job's output folder):
            # judged from this process's working folder they would always seem not to exist.
            path = os.path.join(str(cwd), path)
        extension = extension or (_EXTENSION.search(message).group("ext") if _EXTENSION.search(message) else None)
        # The library's own words for the same file (CFITSIO's text and status) say most about why.
        detail = ""
        writing = False
        for other in messages[index:]:
            cfitsio = _CFITSIO_TEXT.search(other)
            if cfitsio and named in other:
                detail = f"{cfitsio.group('text')} (CFITSIO status {cfitsio.group('status')})"
                writing = cfitsio.group("status") in _CFITSIO_WRITE_STATUS
                break
        if not detail:
            detail = "the file could not be opened" if "open" in message.lower() else message
        where = f"{path} (extension {extension})" if extension else path
        # A product that could not be saved: say so, and whether its disk is full (the usual reason).
        headline = f"cannot {'write' if writing else 'read'} {where}: {detail}"
        state = ((writing and _disk_state(path)) or _file_state(path)) if check_files else ""
        if state:
            headline += f"; now: {state}"
        return headline, path
    return None


def _headline(messages, check_files: bool, cwd=None):
    causes = [message for message in messages if message and not _NOT_A_CAUSE.match(message)]
    found = _file_headline(causes, check_files, cwd)
    if found:
        return found
    for message in causes:
        if _MISSING_TAG.search(message):
            return f"missing input: {message}", ""
    return (causes[0] if causes else (messages[0] if messages else "")), ""


def parse_log(path, tail_lines: int = 20, max_errors: int = 50, check_files: bool = True,
              cwd=None) -> EsorexLog:
    """Scan an esorex log line by line (never loads it whole): ``[ERROR]`` lines, warning count, tail, and
    the headline: the first real cause of a failure.

    Recipes report a failure several times: the cause (CFITSIO cannot read a truncated master), then its
    consequences ("Required 1, found 0 frames with tag MASTER_BIAS", "Execution of recipe failed"). The
    headline is the cause: a file that cannot be read or opened first, then a missing tag, then the first
    other error.

    Parameters
    ----------
    path : path
        esorex's log (``--log-file``) or its captured stdout.
    tail_lines, max_errors : int
        Lines kept for the tail and the error list.
    check_files : bool
        Look at the file the headline names (exists? truncated? via :func:`~pymusepipe.fitsheader.check_fits_size`,
        headers only; for a product that could not be written, is its disk full?) and say what is wrong now.
    cwd : path, optional
        esorex's working folder, against which the relative file names of its products are read.
    """
    from collections import deque

    path = Path(path)
    summary = EsorexLog(path)
    if not path.is_file():
        return summary
    tail = deque(maxlen=tail_lines)
    messages = []
    with path.open(errors="replace") as stream:
        for line in stream:
            line = line.rstrip("\n")
            tail.append(line)
            if _ERROR_LINE.search(line):
                if len(summary.errors) < max_errors:
                    summary.errors.append(line.strip())
                    messages.append(_error_message(line))
            elif _WARNING_LINE.search(line):
                summary.n_warnings += 1
    summary.tail = list(tail)
    if messages:
        summary.headline, summary.cause_path = _headline(messages, check_files, cwd)
    return summary


@functools.lru_cache(maxsize=8)
def pipeline_version(esorex: str = "esorex", recipe: str = "muse_bias") -> str:
    """Version of the installed MUSE pipeline (``RELEASE`` of ``esorex --man-page muse_bias``), e.g. ``2.8.7``.

    Raises
    ------
    EsorexError
        If esorex or the recipe cannot be found.
    """
    if shutil.which(esorex) is None:
        raise EsorexError(f"esorex executable {esorex!r} not found on PATH", ESOREX_INSTALL_HINT)
    try:
        # esorex writes a log even for --man-page: keep it out of the user's folders.
        with tempfile.TemporaryDirectory(prefix="pymusepipe_esorex_") as scratch:
            result = subprocess.run([esorex, f"--log-dir={scratch}", "--man-page", recipe],
                                    capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise EsorexError(f"cannot run {esorex} --man-page {recipe}: {error}") from error
    match = re.search(rf"{re.escape(recipe)}\s+--\s+version\s+(\S+)", result.stdout)
    if match is None:
        raise EsorexError(f"{esorex} --man-page {recipe} shows no 'version' line (is the MUSE pipeline "
                          f"installed?); exit {result.returncode}")
    return match.group(1)


@functools.lru_cache(maxsize=64)
def recipe_parameters(recipe: str, esorex: str = "esorex") -> frozenset:
    """Names of the parameters of an installed recipe (``esorex --params RECIPE``).

    Raises
    ------
    EsorexError
        If esorex is missing or does not know the recipe.
    """
    if shutil.which(esorex) is None:
        raise EsorexError(f"esorex executable {esorex!r} not found on PATH", ESOREX_INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="pymusepipe_esorex_") as scratch:
        result = subprocess.run([esorex, f"--log-dir={scratch}", "--params", recipe], capture_output=True,
                                text=True, timeout=60)
    _, found, section = result.stdout.partition("Recipe Parameters :")
    if not found:
        raise EsorexError(f"{esorex} --params {recipe} lists no recipe parameters (unknown recipe?); "
                          f"exit {result.returncode}")
    return frozenset(re.findall(r"^\s+(\w+)\s+:", section, re.M))


def check_parameters(recipe: str, parameters, esorex: str = "esorex"):
    """Raise ValueError for a parameter the installed recipe does not have (naming the closest one)."""
    import difflib

    known = recipe_parameters(recipe, esorex)
    for name in parameters:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{recipe} has no parameter '{name}'{hint} (see esorex --params {recipe})")
