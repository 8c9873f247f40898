"""Fault injection through the real recipes, as the user meets each fault: the ``pymusepipe run`` command line
(``python -m pymusepipe run --rc ... --cal ... --target ... --pointing 1 --first ... --last ...``, a
subprocess exactly as typed in a terminal).

Every fault test checks what the user sees and what is left on disk:

(a) the one line the user sees (stderr, no traceback);
(b) the exit status;
(c) nothing is counted done that is not intact: every product a table of ``Astro_Tables`` counts done exists
    with the size and CRC-32 recorded (:func:`check_tables`);
(d) the raw data are byte-identical before and after (:func:`raw_hashes`);
(e) one rerun of the same command ends with exit 0 and intact products.

Cheap by design (CI has 2 cores): one simulated night of one IFU with only its BIAS and FLAT frames is written
once per module; each test works on a fresh copy. Only muse_bias (and once muse_flat) run, with
``--parameters '{"bias": {"combine": "average"}, "flat": {"combine": "average"}}'`` (faster than ESO's sigma
clipping, and as good for faults). What the user sees is printed (``pytest -rP`` shows it). A module fixture runs the bias step once; tests that start from a finished bias step copy it,
so that their rerun finds everything up to date and runs no recipe.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.table import Table

import pymusepipe
from pymusepipe.lock import LOCK_NAME, read_lock
from pymusepipe.processes import alive, process_table
from pymusepipe.products import JobTable, ProductCatalogue, file_checksum

pytestmark = pytest.mark.esorex

PACKAGE_ROOT = str(Path(pymusepipe.__file__).resolve().parent.parent)
TARGET = "SIMGAL"
NIGHT = "2026-03-14"
#: Options of every run: no HTML report (figures cost seconds and are not what is tested), one esorex per IFU
#: (the only mode for one IFU; said explicitly for a 2-core box), a cheaper bias combination.
CHEAP = ("--ifu-mode", "fanout", "--no-report",
         "--parameters", '{"bias": {"combine": "average"}, "flat": {"combine": "average"}}')
#: Seconds a command may take before the test gives up on it (a hang is a failure, not a wait forever).
TIMEOUT = 600


# --- running the command as the user does ---------------------------------------------------------------------

def _environment(**changes) -> dict:
    environment = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    environment.pop("PYMUSEPIPE_DEBUG", None)   # the user's view: no traceback
    environment.update(changes)
    return environment


def _command(*args) -> list:
    return [sys.executable, "-m", "pymusepipe", *[str(arg) for arg in args]]


def cli(*args, env=None, cwd=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``python -m pymusepipe ARGS`` to its end; stdout and stderr as text."""
    return subprocess.run(_command(*args), capture_output=True, text=True, env=env or _environment(), cwd=cwd,
                          timeout=timeout)


def start_cli(*args, logs: Path, env=None) -> subprocess.Popen:
    """Start ``python -m pymusepipe ARGS`` in the background, its output to files in ``logs`` (never a pipe that
    could fill up while nobody reads it)."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout.txt", "wb") as out, open(logs / "stderr.txt", "wb") as err:
        return subprocess.Popen(_command(*args), stdout=out, stderr=err, env=env or _environment(), cwd=logs)


def run_args(rc: Path, cal: Path, last: str = "bias", *extra) -> list:
    """``run`` on the one pointing, from the bias step to ``last``."""
    return ["run", "--rc", rc, "--cal", cal, "--target", TARGET, "--pointing", "1", "--first", "bias",
            "--last", last, *CHEAP, *extra]


def one_error_line(stderr: str) -> str:
    """The one ``pymusepipe: error:`` line of a failed command (and no traceback anywhere)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("pymusepipe: error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


# --- a data root: its configuration, raw files, tables, processes ---------------------------------------------

class Root:
    """A data root written by the simulator (or a copy): its configuration files and folders."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def rc(self) -> Path:
        return self.path / "Config" / "rc.dic"

    @property
    def cal(self) -> Path:
        return self.path / "Config" / "calib_tables.dic"

    @property
    def pointing(self) -> Path:
        return self.path / TARGET / "P01"

    @property
    def raw(self) -> Path:
        return self.pointing / "Raw"

    @property
    def night(self) -> Path:
        return self.path / "Calibrations" / NIGHT

    def args(self, last="bias", *extra) -> list:
        return run_args(self.rc, self.cal, last, *extra)

    def bias_frames(self) -> list:
        return sorted(path for path in self.raw.iterdir() if fits.getval(path, "OBJECT") == "BIAS")

    def master_bias(self) -> Path:
        (path,) = (self.night / "Master" / "Bias").glob("MASTER_BIAS_*.fits")
        return path

    def write_rc(self, root=None, musecalib=None):
        """``rc.dic`` naming ``root`` and the kit (default: this folder and its ``calib``)."""
        root = Path(root or self.path)
        kit = Path(musecalib or root / "calib")
        self.rc.write_text(f"musecalib {kit / 'musecalib'}/\nmusecalib_time {kit / 'musecalib_time'}/\n"
                           f"root {root}/\n")


def copy_root(source: Root, destination: Path) -> Root:
    """A fresh copy of a data root, its ``rc.dic`` pointing at the copy."""
    shutil.copytree(source.path, destination, symlinks=True)
    copy = Root(destination)
    copy.write_rc()
    return copy


def raw_hashes(root: Path) -> dict:
    """SHA-256 of every file under every ``Raw/`` folder of a data root (links followed): (d)."""
    hashes = {}
    for raw in sorted(root.rglob("Raw")):
        for path in sorted(raw.rglob("*")):
            if path.is_file():
                with open(path, "rb") as stream:
                    hashes[str(path.relative_to(root))] = hashlib.file_digest(stream, "sha256").hexdigest()
    assert hashes, f"no raw file under {root}"
    return hashes


class Tables:
    """What the tables of a data root count: ``products`` (path relative to the root -> ProductRecord, status
    done) and ``jobs`` (job name -> JobRecord), read through :mod:`pymusepipe.products`."""

    def __init__(self, products, jobs):
        self.products = products
        self.jobs = jobs

    def done_jobs(self, recipe: str) -> list:
        return sorted(name for name, job in self.jobs.items() if job.recipe == recipe and job.status == "done")

    def products_of(self, recipe: str) -> list:
        return sorted(path for path, record in self.products.items() if record.recipe == recipe)


def check_tables(root: Path) -> Tables:
    """(c): every product counted done in a table under ``root`` exists, inside the root, with the size and
    CRC-32 recorded; every job counted done has products counted done; product paths are stored relative to the
    data root. Fails the test naming the first product that is not intact."""
    root = Path(root)
    products, jobs = {}, {}
    for tables in sorted(root.rglob("Astro_Tables")):
        for table_file in sorted(tables.glob("*_products.fits")):
            stored = [str(path) for path in Table.read(table_file)["path"]]
            assert not any(path.startswith("/") for path in stored), f"{table_file}: absolute paths {stored}"
        for record in ProductCatalogue(tables, root=root).records:
            if record.status != "done":
                continue
            path = Path(record.path)
            assert path.is_relative_to(root), f"{path} (counted done in {tables}) is outside {root}"
            assert path.is_file(), f"{path} is counted done in {tables} but does not exist"
            assert path.stat().st_size == record.size, \
                f"{path}: {path.stat().st_size} bytes, counted done with {record.size}"
            assert file_checksum(path) == record.checksum, f"{path}: CRC-32 differs from the one recorded"
            products[str(path.relative_to(root))] = record
        for jobs_file in sorted(tables.glob("*_jobs.fits")):
            recipe = jobs_file.name[:-len("_jobs.fits")]
            for job in JobTable(tables, recipe, root=root).records.values():
                jobs[job.job] = job
                if job.status == "done":
                    made = [path for path, record in products.items() if record.job == job.job]
                    assert made, f"job {job.job} is counted done but none of its products is"
    return Tables(products, jobs)


def recipe_processes(marker) -> dict:
    """pid -> (program, command line) of the live esorex and likwid-pin processes whose command line names
    ``marker`` (a run's data root), found through ``/proc``."""
    marker = str(marker).encode()
    found = {}
    for pid, (_, _, state) in process_table().items():
        if state == b"Z":
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # esorex itself, or likwid-pin (a Lua script: lua /usr/bin/likwid-pin -q -c ... esorex ...).
        programs = {os.path.basename(item).decode(errors="replace") for item in argv[:2]} & {"esorex", "likwid-pin"}
        if programs and marker in b" ".join(argv):
            found[pid] = (programs.pop(), b" ".join(argv).decode(errors="replace"))
    return found


def watchdogs_of(pid: int) -> set:
    """The process watchdog(s) started by a pymusepipe process (``python -I -S -c ...``, children of it)."""
    found = set()
    for child, (parent, _, _) in process_table().items():
        if parent != pid:
            continue
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-I" in argv and b"-S" in argv and b"-c" in argv:
            found.add(child)
    return found


def wait_for_recipe(root: Root, process: subprocess.Popen, timeout: float = 180.0, settle: float = 1.5) -> dict:
    """Wait until the run's esorex runs, then ``settle`` seconds more (well inside a recipe that takes 15 s or
    more); returns its recipe processes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before any recipe was seen running")
        if any(program == "esorex" for program, _ in recipe_processes(root.path).values()):
            time.sleep(settle)
            found = recipe_processes(root.path)
            if process.poll() is None and found:
                return found
            pytest.fail(f"the recipe ended within {settle} s: too short to interrupt (exit {process.poll()})")
        time.sleep(0.05)
    pytest.fail(f"no esorex of {root.path} seen running within {timeout:.0f} s")


def wait_until_gone(marker, seconds: float) -> dict:
    """The recipe processes of ``marker`` still alive after waiting up to ``seconds`` for them to go."""
    deadline = time.monotonic() + seconds
    left = recipe_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = recipe_processes(marker)
    return left


def locks_under(root: Path) -> list:
    return sorted(root.rglob(LOCK_NAME))


# --- data, made once ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """One night of one IFU: the simulator's demo programme with only its BIAS (3) and FLAT (3) frames written."""
    from pymusepipe.simulate import demo_programme, simulate_programme

    root = tmp_path_factory.mktemp("faults") / "simulated"
    simulate_programme(root, demo_programme(ifus=(1,)), only=("BIAS", "FLAT"))
    yield Root(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def bias_done(simulated, tmp_path_factory):
    """A copy of the simulated night whose bias step has run (through the command line)."""
    root = copy_root(simulated, tmp_path_factory.mktemp("faults_bias") / "data")
    succeeded(cli(*root.args("bias"), cwd=root.path.parent))
    yield root
    shutil.rmtree(root.path, ignore_errors=True)


@pytest.fixture
def work(tmp_path):
    """A scratch folder for one test, removed at its end (copies of a night are a few hundred MB)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


# --- 1. kill -9 of Python while a recipe runs ------------------------------------------------------------------

def test_kill_9_mid_recipe_leaves_no_recipe_running_and_the_rerun_takes_the_lock_over(simulated, work):
    root = copy_root(simulated, work / "data")
    raw_before = raw_hashes(root.path)
    run = start_cli(*root.args("bias"), logs=work / "killed")
    try:
        recipes = wait_for_recipe(root, run)
        watchdogs = watchdogs_of(run.pid)
        assert watchdogs, "no process watchdog beside the run"
        programs = {program for program, _ in recipes.values()}
        assert "esorex" in programs and ("likwid-pin" in programs or not shutil.which("likwid-pin")), recipes
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == -signal.SIGKILL
    # Nobody cleaned up in Python: the watchdog stops likwid-pin and esorex (SIGTERM, SIGKILL after 5 s).
    survivors = wait_until_gone(root.path, seconds=12.0)
    assert survivors == {}, f"recipe processes outlive the killed run: {survivors} (were {recipes})"
    deadline = time.monotonic() + 5.0
    while alive(watchdogs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(watchdogs) == set(), "the watchdog outlives its work"
    # The locks stay behind (nobody removed them), naming the dead process.
    locks = locks_under(root.path)
    assert root.pointing / LOCK_NAME in locks
    assert all(read_lock(lock)["pid"] == run.pid for lock in locks)
    tables = check_tables(root.path)
    assert tables.products_of("muse_bias") == [] and tables.done_jobs("muse_bias") == []
    # (e) The same command again: the stale locks are taken over with a warning, the bias is made.
    rerun = succeeded(cli(*root.args("bias"), cwd=work))
    taken = [line for line in rerun.stderr.splitlines() if "took over the stale lock" in line]
    print(f"kill -9: exit {run.returncode}; the rerun says:", *taken, sep="\n  ")
    assert any(str(root.pointing / LOCK_NAME) in line and f"pid {run.pid} " in line
               and f"process {run.pid} no longer runs" in line for line in taken), rerun.stderr
    assert locks_under(root.path) == []
    tables = check_tables(root.path)
    assert len(tables.done_jobs("muse_bias")) == 1 and len(tables.products_of("muse_bias")) == 1
    assert raw_hashes(root.path) == raw_before


# --- 2. Ctrl-C while a recipe runs -----------------------------------------------------------------------------

def test_ctrl_c_mid_recipe_stops_the_recipe_fails_no_job_and_says_how_to_resume(simulated, work):
    root = copy_root(simulated, work / "data")
    raw_before = raw_hashes(root.path)
    run = start_cli(*root.args("bias"), logs=work / "interrupted")
    try:
        recipes = wait_for_recipe(root, run)
        run.send_signal(signal.SIGINT)   # what Ctrl-C in the terminal sends to it
        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    stderr = (work / "interrupted" / "stderr.txt").read_text()
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    print(f"Ctrl-C: exit {run.returncode}: {last}")
    assert last == "pymusepipe: interrupted; rerun to resume", stderr
    # The whole tree is gone by the time the command returns; the locks are released.
    assert recipe_processes(root.path) == {}, f"still running after Ctrl-C (were {recipes})"
    assert locks_under(root.path) == []
    tables = check_tables(root.path)
    assert [name for name, job in tables.jobs.items() if job.status == "failed"] == []
    assert tables.products_of("muse_bias") == []
    rerun = succeeded(cli(*root.args("bias"), cwd=work))
    assert "1 done" in rerun.stdout
    tables = check_tables(root.path)
    assert len(tables.done_jobs("muse_bias")) == 1 and len(tables.products_of("muse_bias")) == 1
    assert [name for name, job in tables.jobs.items() if job.status == "failed"] == []
    assert raw_hashes(root.path) == raw_before


# --- 3. a master truncated on disk -----------------------------------------------------------------------------

def test_truncated_master_is_made_again_and_said_so_and_the_next_steps_succeed(bias_done, work):
    root = copy_root(bias_done, work / "data")
    raw_before = raw_hashes(root.path)
    master = root.master_bias()
    size = master.stat().st_size
    os.truncate(master, size // 2)   # a disk that filled up, an interrupted copy...
    result = succeeded(cli(*root.args("flat"), cwd=work))
    said = f"product {master.name} size {size // 2} bytes, {size} when made: making it again"
    print("truncated master:", [line for line in result.stderr.splitlines() if "making it again" in line])
    assert said in result.stderr, result.stderr
    assert said in (root.pointing / "Log" / "MusePipe.log").read_text()
    tables = check_tables(root.path)
    assert master.stat().st_size == size
    assert str(master.relative_to(root.path)) in tables.products
    assert len(tables.done_jobs("muse_bias")) == 1 and len(tables.done_jobs("muse_flat")) == 1
    assert {record.tag for record in tables.products.values() if record.recipe == "muse_flat"} >= \
        {"MASTER_FLAT", "TRACE_TABLE"}
    (flat,) = [tables.jobs[name] for name in tables.done_jobs("muse_flat")]
    assert f"{master} MASTER_BIAS" in Path(flat.sof).read_text()
    # (e) Once more: everything up to date, nothing made again.
    again = succeeded(cli(*root.args("flat"), cwd=work))
    assert "making it again" not in again.stderr and "2 uptodate" in again.stderr
    assert raw_hashes(root.path) == raw_before


# --- 4. a raw frame truncated in its data ------------------------------------------------------------------------

def _add_fourth_bias(root: Root):
    """A fourth exposure in the bias template (a copy of the third, one minute later), so that three remain
    when one is left out: muse_bias needs three."""
    frames = root.bias_frames()
    assert len(frames) == 3
    with fits.open(frames[-1]) as hdus:
        header = hdus[0].header
        mjd = header["MJD-OBS"] + 60.0 / 86400.0
        date_obs = header["DATE-OBS"]
    new_date = date_obs[:14] + f"{int(date_obs[14:16]) + 1:02d}" + date_obs[16:]
    fourth = root.raw / f"MUSE.{new_date}.fits"
    shutil.copyfile(frames[-1], fourth)
    with fits.open(fourth, mode="update") as hdus:
        header = hdus[0].header
        header["MJD-OBS"], header["DATE-OBS"] = mjd, new_date
        header["ARCFILE"], header["ORIGFILE"] = fourth.name, "MUSE_WFM_BIAS004_0004.fits"
        header["HIERARCH ESO TPL EXPNO"] = 4
    for frame in frames + [fourth]:
        with fits.open(frame, mode="update") as hdus:
            hdus[0].header["HIERARCH ESO TPL NEXP"] = 4
    return frames + [fourth]


def test_truncated_raw_frame_is_left_out_with_its_reason_and_the_others_are_reduced(simulated, work):
    root = copy_root(simulated, work / "data")
    frames = _add_fourth_bias(root)
    cut = frames[1]
    os.truncate(cut, int(cut.stat().st_size * 0.6))   # an interrupted download: it ends inside the data
    raw_before = raw_hashes(root.path)
    result = succeeded(cli(*root.args("bias"), cwd=work))
    said = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith(f"{cut.name}: ")]
    print("truncated raw frame:", said)
    assert len(said) == 1 and "truncated" in said[0] and "download it again" in said[0], result.stderr
    assert "1 left out" in result.stderr
    excluded = Table.read(root.pointing / "Astro_Tables" / "RAW_excluded_list_table.fits")
    assert [Path(name).name for name in excluded["filename"]] == [cut.name]
    tables = check_tables(root.path)
    (job,) = [tables.jobs[name] for name in tables.done_jobs("muse_bias")]
    used = sorted(Path(path).name for path in json.loads(job.inputs))
    assert used == sorted(frame.name for frame in frames if frame != cut)
    assert len(tables.products_of("muse_bias")) == 1
    # (e) The same command again: up to date, the frame still left out.
    again = succeeded(cli(*root.args("bias"), cwd=work))
    assert "1 uptodate" in again.stdout and f"{cut.name}: truncated" in again.stderr
    check_tables(root.path)
    assert raw_hashes(root.path) == raw_before


# --- 5. two runs on one pointing ----------------------------------------------------------------------------------

def _files(root: Path) -> dict:
    """path -> (size, modification time) of every file under ``root``."""
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in root.rglob("*") if path.is_file()}


def test_second_run_on_a_pointing_stops_at_once_naming_the_holder(simulated, work):
    root = copy_root(simulated, work / "data")
    raw_before = raw_hashes(root.path)
    first = start_cli(*root.args("bias"), logs=work / "first")
    stopped = {}
    try:
        recipes = wait_for_recipe(root, first)
        # Hold the first run inside its recipe while the others try (its esorex paused, its lock held).
        for pid in recipes:
            os.kill(pid, signal.SIGSTOP)
            stopped[pid] = True
        before = _files(root.path)
        second = cli(*root.args("bias"), cwd=work, timeout=180)
        assert second.returncode == 1, second.stderr
        line = one_error_line(second.stderr)
        print(f"second run: exit {second.returncode}: {line}")
        assert f"{TARGET} pointing 1 is in use by another pymusepipe run: pid {first.pid} of user " in line, line
        assert f"on host {socket.gethostname()}" in line and f"kill {first.pid}" in line, line
        assert "(python -m pymusepipe run --rc /" in line, line   # the holder's command, as typed
        # It stopped before writing anything: no table, no copy of the configuration, no log.
        assert _files(root.path) == before
        # Meanwhile a dry run, a scan and the status are allowed.
        dry = succeeded(cli(*root.args("bias", "--fake"), cwd=work, timeout=180))
        assert "planned only (fakemode)" in dry.stdout
        scan = succeeded(cli("scan", "--rc", root.rc, "--cal", root.cal, "--target", TARGET, "--pointing", "1",
                             cwd=work, timeout=180))
        assert "BIAS 3" in scan.stdout
        status = succeeded(cli("status", "--rc", root.rc, "--cal", root.cal, "--target", TARGET, "--pointing", "1",
                               cwd=work, timeout=180))
        assert "bias" in status.stdout
        assert first.poll() is None, "the first run did not survive the others"
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        try:
            first.wait(timeout=TIMEOUT)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == 0, (work / "first" / "stderr.txt").read_text()
    assert "1 done" in (work / "first" / "stdout.txt").read_text()
    # (e) The second command again, now alone: everything up to date.
    again = succeeded(cli(*root.args("bias"), cwd=work))
    assert "1 uptodate" in again.stdout
    tables = check_tables(root.path)
    assert len(tables.done_jobs("muse_bias")) == 1 and len(tables.products_of("muse_bias")) == 1
    assert raw_hashes(root.path) == raw_before


# --- 6. a full file system -----------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(work):
    """A 60 MB tmpfs (root only; skipped elsewhere): room for the tables and logs of a run, not for a master
    bias of 200 MB."""
    mount_point = work / "small_disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip() or 'mount failed'}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_disk_is_one_line_naming_the_place_and_the_rerun_after_making_room_completes(simulated, small_disk,
                                                                                           work):
    # The reduction on the small disk; its raw files are links to the simulated ones (nothing to copy).
    root = Root(small_disk / "data")
    shutil.copytree(simulated.path / "Config", root.path / "Config")
    shutil.copytree(simulated.path / "calib", root.path / "calib")
    root.raw.mkdir(parents=True)
    for frame in simulated.raw.iterdir():
        (root.raw / frame.name).symlink_to(frame)
    root.write_rc()
    raw_before = raw_hashes(root.path)
    result = cli(*root.args("bias"), cwd=work)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    print(f"full disk: exit {result.returncode}: {line}")
    print(*[entry for entry in result.stderr.splitlines() if "cannot write" in entry], sep="\n")
    # Whichever write meets the full disk first (the recipe's product, then a table): it says so, where, and
    # what to do.
    assert re.search(r"disk (is )?full", line), line
    assert re.search(rf"(free space|kB free) on {re.escape(str(small_disk))}[ ;]", line), line
    assert f"df -h {root.path}/" in line and "rerun" in line, line
    # The recipe's own failure says why, in the log lines before it.
    assert "cannot write" in result.stderr and "the disk is full" in result.stderr, result.stderr
    left = [str(path) for path in root.path.rglob("*") if ".tmp" in path.name or path.name.endswith(".part")]
    assert left == []
    tables = check_tables(root.path)
    assert tables.products_of("muse_bias") == [] and tables.done_jobs("muse_bias") == []
    assert locks_under(root.path) == []
    # Make room (a bigger disk), then the same command.
    subprocess.run(["mount", "-o", "remount,size=600m", str(small_disk)], check=True)
    succeeded(cli(*root.args("bias"), cwd=work))
    tables = check_tables(root.path)
    assert len(tables.done_jobs("muse_bias")) == 1 and len(tables.products_of("muse_bias")) == 1
    assert raw_hashes(root.path) == raw_before


# --- 7. a data root with a space -----------------------------------------------------------------------------------

def test_data_root_with_a_space_is_refused_when_the_configuration_is_read(bias_done, work):
    spaced = copy_root(bias_done, work / "My Data")
    kit = work / "kit"
    kit.symlink_to(spaced.path / "calib")       # only the data root has a space
    spaced.write_rc(root=spaced.path, musecalib=kit)
    raw_before = raw_hashes(spaced.path)
    before = _files(spaced.path)
    result = cli(*spaced.args("bias"), cwd=work)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    print(f"space in the root: exit {result.returncode}: {line}")
    assert line.startswith(f"pymusepipe: error: configuration error: root = '{spaced.path}' (from {spaced.rc}) "
                           "contains a space"), line
    assert "SOF files as 'path TAG' lines" in line, line
    assert "ln -s " in line and "then set 'root " in line, line
    assert _files(spaced.path) == before   # refused before anything was written
    # The way out: a link without spaces, named in rc.dic.
    link = work / "My_Data"
    link.symlink_to(spaced.path)
    spaced.write_rc(root=link)
    rerun = succeeded(cli(*spaced.args("bias"), cwd=work))
    assert "1 uptodate" in rerun.stdout
    tables = check_tables(link)
    assert len(tables.products_of("muse_bias")) == 1
    assert raw_hashes(spaced.path) == raw_before


# --- 8. esorex missing -----------------------------------------------------------------------------------------------

def test_missing_esorex_is_one_line_with_the_way_out(bias_done, work):
    root = copy_root(bias_done, work / "data")
    raw_before = raw_hashes(root.path)
    (work / "bin").mkdir()
    result = cli(*root.args("bias"), cwd=work, env=_environment(PATH=str(work / "bin")))
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    print(f"no esorex: exit {result.returncode}: {line}")
    assert line == ("pymusepipe: error: esorex executable 'esorex' not found on PATH; install the ESO pipeline "
                    "(apt-get install esorex cpl-plugin-muse, or ESO's pipeline kit) or put esorex on PATH"), line
    check_tables(root.path)
    rerun = succeeded(cli(*root.args("bias"), cwd=work))
    assert "1 uptodate" in rerun.stdout
    assert len(check_tables(root.path).products_of("muse_bias")) == 1
    assert raw_hashes(root.path) == raw_before


# --- 9. a reduction folder moved elsewhere ----------------------------------------------------------------------------

def test_moved_reduction_folder_resumes_with_nothing_to_run_and_reads_from_its_new_place(bias_done, work):
    old = copy_root(bias_done, work / "old" / "data")
    tables_before = check_tables(old.path)
    raw_before = raw_hashes(old.path)
    new = Root(work / "elsewhere" / "reduction")
    new.path.parent.mkdir(parents=True)
    shutil.move(old.path, new.path)
    new.write_rc()
    assert not old.path.exists()
    logs = {path: path.stat().st_mtime_ns for path in (new.night / "Esorex_log").iterdir()}
    result = succeeded(cli(*new.args("bias"), cwd=work))
    print("moved:", [entry for entry in result.stdout.splitlines() if entry.startswith("bias ")])
    assert "1 uptodate" in result.stdout and "1 done" not in result.stdout
    assert {path: path.stat().st_mtime_ns for path in (new.night / "Esorex_log").iterdir()} == logs, \
        "a recipe ran"
    tables = check_tables(new.path)
    assert set(tables.products) == set(tables_before.products)
    for name, job in tables.jobs.items():
        assert job.started == tables_before.jobs[name].started   # the record of the run that made it
        assert all(path.startswith(str(new.path)) for path in json.loads(job.inputs) + json.loads(job.products))
    for table in new.path.rglob("Astro_Tables/*.fits"):   # the raw table was rewritten by the rerun's scan
        content = table.read_bytes()
        assert str(old.path).encode() not in content and str(bias_done.path).encode() not in content, table
    # What the next recipes would read: the SOFs a dry run writes in the replay log.
    dry = succeeded(cli(*new.args("flat", "--fake"), cwd=work))
    log = (new.pointing / "Log" / "MusePipe.log").read_text()
    block = log[log.rindex("SIMGAL P01: 2 job(s)"):]
    sof_lines = [line.split("] ", 1)[1] for line in block.splitlines()
                 if line.startswith("# [fakemode] /")]
    assert sof_lines and all(line.startswith(str(new.path)) for line in sof_lines), sof_lines
    assert f"{new.master_bias()} MASTER_BIAS" in sof_lines
    assert "2 planned" in dry.stderr
    assert raw_hashes(new.path) == raw_before
