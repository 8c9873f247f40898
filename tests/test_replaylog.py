"""The replay log is a bash script: commands run as written, comments carry time and versions, and it
replays on another machine (its own CPUs, threads and Python)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pymusepipe
from pymusepipe.replaylog import FUNCTIONS_MARK, RUNNER, ReplayLog

PACKAGE_ROOT = str(Path(pymusepipe.__file__).resolve().parent.parent)
NCPUS = len(os.sched_getaffinity(0))
LIKWID = shutil.which("likwid-pin")


def test_log_is_a_runnable_script_even_with_awkward_paths(tmp_path):
    log = ReplayLog(tmp_path / "Log" / "run.log", pipeline_version="2.8.7")
    folder = tmp_path / "a folder with 'quotes' and $dollars"
    log.stamp("step bias: 1 job")
    log.mkdir(folder)
    log.write_file(folder / "input.sof", "/raw/b1.fits BIAS\n/raw/b2.fits BIAS\n")
    log.command(["sh", "-c", 'echo "$OMP_NUM_THREADS" > "$0"; pwd > where.txt', str(folder / "threads.txt")],
                env={"OMP_NUM_THREADS": 3}, cwd=folder)
    log.move(folder / "input.sof", folder / "moved.sof")
    text = log.path.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert "# At : " in text and "pymusepipe" in text and "MUSE pipeline 2.8.7" in text
    assert "# step bias: 1 job" in text
    result = subprocess.run(["bash", str(log.path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (folder / "moved.sof").read_text() == "/raw/b1.fits BIAS\n/raw/b2.fits BIAS\n"
    # The threads are those of the machine replaying the log, not the 3 given when it was written.
    assert (folder / "threads.txt").read_text() == f"{NCPUS}\n"
    assert (folder / "where.txt").read_text() == f"{folder}\n"


def test_append_by_default_and_reset_on_request(tmp_path):
    path = tmp_path / "run.log"
    ReplayLog(path).comment("first session")
    ReplayLog(path).comment("second session")
    assert "first session" in path.read_text() and "second session" in path.read_text()
    ReplayLog(path, reset=True).comment("fresh")
    text = path.read_text()
    assert "first session" not in text and "# fresh" in text and text.startswith("#!/bin/bash")


def test_fakemode_commands_are_commented_out(tmp_path):
    log = ReplayLog(tmp_path / "fake.log", fakemode=True)
    log.stamp()
    log.command(["esorex", "muse_bias", "/sof/bias.sof"])
    log.write_file(tmp_path / "x.sof", "/raw/a.fits BIAS\n")
    body = log.path.read_text().split("# --- end of pymusepipe replay functions ---\n")[1].splitlines()
    assert body and all(line.startswith("#") for line in body)
    assert "# [fakemode] esorex muse_bias /sof/bias.sof" in body
    assert subprocess.run(["bash", str(log.path)]).returncode == 0
    assert not (tmp_path / "x.sof").exists()


def test_multiline_messages_stay_comments(tmp_path):
    log = ReplayLog(tmp_path / "m.log")
    log.comment("line one\nrm -rf /nothing")
    assert "# rm -rf /nothing" in log.path.read_text().splitlines()


def test_batches_nest_and_write_once_in_order(tmp_path):
    log = ReplayLog(tmp_path / "b.log")
    with log.batch():
        log.comment("outer 1")
        with log.batch():
            log.comment("inner")
        log.comment("outer 2")
        assert "outer" not in log.path.read_text()  # nothing written before the outer block ends
    assert log.path.read_text().splitlines()[-3:] == ["# outer 1", "# inner", "# outer 2"]


# --- portable: written on a 24-CPU machine, replayed here ------------------------------------------------------

PROBE = """#!/bin/sh
# Records what the replayed command got: its OpenMP threads, the command line of its parent (likwid-pin?)
# and the CPUs it may run on.
echo "$OMP_NUM_THREADS" > "$1"
tr '\\0' ' ' < /proc/$PPID/cmdline >> "$1"
echo >> "$1"
sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status >> "$1"
"""


def _probe(tmp_path):
    probe = tmp_path / "probe.sh"
    probe.write_text(PROBE)
    probe.chmod(0o755)
    return probe


def _replay(log_path, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYMUSEPIPE_")}
    environment.update(PYTHONPATH=PACKAGE_ROOT, **env)
    return subprocess.run(["bash", str(log_path)], capture_output=True, text=True, env=environment)


def test_log_written_on_24_cpus_replays_on_this_machine(tmp_path):
    probe = _probe(tmp_path)
    log = ReplayLog(tmp_path / "Log" / "run.log")
    log.stamp("step bias")
    # What the engine logs on a 24-CPU node: the pinned argv, 24 threads, the job folder.
    log.command(["likwid-pin", "-q", "-c", "0-23", str(probe), str(tmp_path / "got.txt")],
                env={"OMP_NUM_THREADS": 24}, cwd=tmp_path)
    log.command([sys.executable, "-m", "pymusepipe.cli", "--version"])
    text = log.path.read_text()
    assert "0-23" not in text and "OMP_NUM_THREADS=24" not in text and sys.executable not in text
    assert f"(cd {tmp_path} && {RUNNER} {probe} {tmp_path / 'got.txt'})" in text
    assert "\npython3 -m pymusepipe.cli --version\n" in text
    result = _replay(log.path)
    assert result.returncode == 0, result.stderr
    assert f"pymusepipe {pymusepipe.__version__}" in result.stdout
    threads, parent, _ = (tmp_path / "got.txt").read_text().splitlines()
    assert threads == str(NCPUS)
    if LIKWID:  # pinned with likwid-pin over this machine's CPUs
        cpus = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
        assert "likwid-pin" in parent and f"-c {cpus} " in parent


def test_replay_threads_and_pinning_can_be_chosen(tmp_path):
    probe = _probe(tmp_path)
    log = ReplayLog(tmp_path / "run.log")
    log.run(["likwid-pin", "-q", "-c", "5", str(probe), str(tmp_path / "got.txt")])
    first = str(min(os.sched_getaffinity(0)))
    assert _replay(log.path, PYMUSEPIPE_THREADS="1").returncode == 0
    threads, parent, _ = (tmp_path / "got.txt").read_text().splitlines()
    assert threads == "1"
    if LIKWID:
        assert f"-c {first} " in parent
    assert _replay(log.path, PYMUSEPIPE_PINNING="none").returncode == 0
    threads, parent, allowed = (tmp_path / "got.txt").read_text().splitlines()
    assert threads == str(NCPUS) and "likwid-pin" not in parent
    assert _replay(log.path, PYMUSEPIPE_PINNING="taskset", PYMUSEPIPE_THREADS="1").returncode == 0
    threads, _, allowed = (tmp_path / "got.txt").read_text().splitlines()
    assert (threads, allowed) == ("1", first)


OLD_LOG = """#!/bin/bash
# pymusepipe replay log: run it with bash to redo the reduction
# At : 2025-03-17 10:00:00 UTC - pymusepipe 0.1.0, MUSE pipeline 2.8.7
# muse_bias_x: 3 input(s), IFU(s) 1
mkdir -p {job}
(cd {job} && OMP_NUM_THREADS=24 likwid-pin -q -c 0-23 {probe} {job}/old.txt)
/opt/conda/envs/muse/bin/python3.11 -m pymusepipe.cli --version
# [fakemode] (cd {job} && OMP_NUM_THREADS=12 taskset -c 12-23 esorex muse_flat /x.sof)
"""


def test_a_log_of_an_older_version_is_upgraded_and_stays_runnable(tmp_path):
    probe = _probe(tmp_path)
    job = tmp_path / "job"
    old_text = OLD_LOG.format(job=job, probe=probe)
    path = tmp_path / "run.log"
    path.write_text(old_text)
    if LIKWID and NCPUS < 24:  # as written, it cannot run here
        assert _replay(path).returncode != 0 or not (job / "old.txt").exists()
        shutil.rmtree(job, ignore_errors=True)
    log = ReplayLog(path)  # appending to it upgrades it
    log.stamp("a new session")
    log.command(["likwid-pin", "-q", "-c", "0-23", str(probe), str(job / "new.txt")], env={"OMP_NUM_THREADS": 24},
                cwd=job)
    text = path.read_text()
    assert (tmp_path / "run.log.v1").read_text() == old_text  # the original is kept
    assert text.startswith("#!/bin/bash\n# pymusepipe replay log") and text.count(FUNCTIONS_MARK) == 1
    assert text.index(FUNCTIONS_MARK) < text.index("# At : 2025-03-17")
    assert "0-23" not in text and "12-23" not in text and "/opt/conda" not in text
    assert f"(cd {job} && {RUNNER} {probe} {job}/old.txt)" in text
    assert f"# [fakemode] (cd {job} && {RUNNER} esorex muse_flat /x.sof)" in text
    assert "\npython3 -m pymusepipe.cli --version\n" in text
    result = _replay(path)
    assert result.returncode == 0, result.stderr
    assert (job / "old.txt").read_text().splitlines()[0] == str(NCPUS)
    assert (job / "new.txt").read_text().splitlines()[0] == str(NCPUS)
    ReplayLog(path)  # opening it again changes nothing
    assert path.read_text() == text


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_a_full_disk_names_the_log(tmp_path):
    from pymusepipe.errors import DiskFullError

    log = ReplayLog(tmp_path / "Log" / "MusePipe.log")
    log.path = Path("/dev/full")   # every write: no space left on device
    with pytest.raises(DiskFullError, match="while writing the replay log /dev/full; free space on"):
        log.comment("a job failed")
