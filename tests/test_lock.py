"""Folder locks: one run per pointing, stale locks taken over, other hosts' locks never taken."""
import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pymusepipe
from pymusepipe.errors import LockHeldError, MissingPathError
from pymusepipe.lock import LOCK_NAME, FolderLock, lock_folders, read_lock

PACKAGE_ROOT = str(Path(pymusepipe.__file__).resolve().parent.parent)

# A second process taking the lock: prints what happened, then holds the lock until its stdin closes.
HOLDER = """\
import os, sys, time
from pymusepipe.errors import PipelineError
from pymusepipe.lock import FolderLock
folder, go = sys.argv[1], sys.argv[2]
while go != "-" and not os.path.exists(go):
    time.sleep(0.001)
try:
    lock = FolderLock(folder, command="holder test").acquire()
except PipelineError as error:
    print("REFUSED", error, flush=True)
    sys.exit(1)
print("ACQUIRED", os.getpid(), flush=True)
if sys.stdin.read() == "exit-without-release":
    sys.exit(0)  # atexit releases it
lock.release()
"""


def _holder(tmp_path, folder, go="-"):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    return subprocess.Popen([sys.executable, str(script), str(folder), str(go)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))


def _write_lock(folder, **fields):
    content = {"host": socket.gethostname(), "pid": 1, "user": "someone", "started": "2025-03-16T23:00:00+00:00",
               "command": "pymusepipe run --target NGC1000", "token": "old"}
    content.update(fields)
    (folder / LOCK_NAME).write_text(json.dumps(content))
    return content


def _dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_lock_file_says_who_holds_it_and_goes_away(tmp_path):
    with FolderLock(tmp_path, command="pymusepipe run --target NGC1000") as lock:
        content = read_lock(tmp_path / LOCK_NAME)
        assert content["host"] == socket.gethostname() and content["pid"] == os.getpid()
        assert content["command"] == "pymusepipe run --target NGC1000" and content["started"]
        assert lock.held
        assert [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]  # no temporary file left
    assert not (tmp_path / LOCK_NAME).exists() and not lock.held


def test_second_run_on_the_same_folder_stops_at_once_naming_the_holder(tmp_path):
    first = _holder(tmp_path, tmp_path)
    try:
        assert first.stdout.readline().startswith("ACQUIRED")
        second = _holder(tmp_path, tmp_path)
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 1
        assert out.count("\n") == 1 and out.startswith("REFUSED")
        assert f"pid {first.pid}" in out and socket.gethostname() in out and "holder test" in out
        assert f"kill {first.pid}" in out
        with pytest.raises(LockHeldError, match=f"pid {first.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        first.communicate("")
    assert not (tmp_path / LOCK_NAME).exists()


def test_only_one_of_many_simultaneous_runs_gets_the_lock(tmp_path):
    go = tmp_path / "go"
    runs = [_holder(tmp_path, tmp_path, go) for _ in range(6)]
    go.write_text("")
    outputs = []
    try:
        losers = [run for run in runs]
        winners = []
        for run in runs:
            line = run.stdout.readline()
            outputs.append(line)
            if line.startswith("ACQUIRED"):
                winners.append(run)
                losers.remove(run)
        for run in losers:
            run.communicate("")
        assert len(winners) == 1, outputs
        assert all(run.returncode == 1 for run in losers)
    finally:
        for run in runs:
            if run.returncode is None:
                run.communicate("")


def test_reentrant_within_one_process(tmp_path):
    with FolderLock(tmp_path):
        with FolderLock(tmp_path) as inner:  # a second MusePipe on the same pointing in one session
            assert inner.held
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    _write_lock(tmp_path, pid=_dead_pid())
    with caplog.at_level(logging.WARNING, logger="pymusepipe.lock"):
        with FolderLock(tmp_path):
            assert read_lock(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    assert "took over the stale lock" in caplog.text and "no longer runs" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_lock_left_by_kill_9_is_taken_over(tmp_path):
    holder = _holder(tmp_path, tmp_path)
    assert holder.stdout.readline().startswith("ACQUIRED")
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate()
    assert read_lock(tmp_path / LOCK_NAME)["pid"] == holder.pid  # kill -9 leaves it
    with FolderLock(tmp_path):
        assert read_lock(tmp_path / LOCK_NAME)["pid"] == os.getpid()


def test_reused_pid_and_reboot_make_a_lock_stale(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        # The pid runs, but it is another process than the one that wrote the lock.
        _write_lock(tmp_path, pid=sleeper.pid, process_start="1")
        with FolderLock(tmp_path):
            pass
        _write_lock(tmp_path, pid=sleeper.pid, boot_id="another-boot")
        with FolderLock(tmp_path):
            pass
        # Same pid and start time: that process holds it.
        start = Path(f"/proc/{sleeper.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19].decode()
        _write_lock(tmp_path, pid=sleeper.pid, process_start=start)
        with pytest.raises(LockHeldError, match=f"pid {sleeper.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_lock_of_another_host_is_reported_never_taken(tmp_path):
    content = _write_lock(tmp_path, host="node042", pid=_dead_pid())
    with pytest.raises(LockHeldError) as info:
        FolderLock(tmp_path).acquire()
    message = str(info.value)
    assert "node042" in message and f"pid {content['pid']}" in message
    assert f"delete {tmp_path / LOCK_NAME}" in message and "ssh node042" in message
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == content


def test_unreadable_lock_is_reported(tmp_path):
    (tmp_path / LOCK_NAME).write_text("garbage")
    with pytest.raises(LockHeldError, match="unreadable.*delete"):
        FolderLock(tmp_path).acquire()


def test_released_at_exit_without_release(tmp_path):
    holder = _holder(tmp_path, tmp_path)
    assert holder.stdout.readline().startswith("ACQUIRED")
    holder.communicate("exit-without-release")
    assert holder.returncode == 0
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_forked_child_does_not_release_the_parents_lock(tmp_path):
    with FolderLock(tmp_path):
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                atexit._run_exitfuncs()  # what a normal exit of the child would run
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert (tmp_path / LOCK_NAME).exists()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path, caplog):
    lock = FolderLock(tmp_path).acquire()
    _write_lock(tmp_path, pid=12345, token="someone-else")
    with caplog.at_level(logging.WARNING, logger="pymusepipe.lock"):
        lock.release()
    assert read_lock(tmp_path / LOCK_NAME)["token"] == "someone-else"
    assert "no longer ours" in caplog.text


def test_several_folders_and_a_missing_one(tmp_path):
    (tmp_path / "P01").mkdir()
    (tmp_path / "Calib").mkdir()
    with lock_folders([tmp_path / "P01", tmp_path / "Calib", tmp_path / "P01"]):
        assert (tmp_path / "P01" / LOCK_NAME).exists() and (tmp_path / "Calib" / LOCK_NAME).exists()
    assert not (tmp_path / "P01" / LOCK_NAME).exists()
    with pytest.raises(MissingPathError, match="nowhere"):
        FolderLock(tmp_path / "nowhere").acquire()


def test_a_run_on_a_locked_pointing_stops_before_writing_anything(tmp_path):
    # A second MusePipe on a pointing another process is reducing: refused at once, naming the holder, before
    # its scan tables, its copy of the configuration or a reset of the replay log touch the first run's folder.
    from rawframes import empty_calibration_kit, primary_header, write_raw

    from pymusepipe.musepipe import MusePipe

    calib, raw = empty_calibration_kit(tmp_path)
    write_raw(raw / "bias.fits", primary_header("CALIB", "BIAS"))
    pointing = raw.parent
    first = _holder(tmp_path, pointing)
    try:
        assert first.stdout.readline().startswith("ACQUIRED")
        before = sorted(pointing.rglob("*"))
        with pytest.raises(LockHeldError, match=f"NGC1000 pointing 1 is in use by another pymusepipe run: "
                                                f"pid {first.pid} "):
            MusePipe("NGC1000", 1, musecalib=calib, root=tmp_path / "data", reset_log=True, verbose=False)
        assert sorted(pointing.rglob("*")) == before
    finally:
        first.communicate("")


def test_the_holder_command_reads_as_typed(monkeypatch):
    from pymusepipe.lock import _command_line

    monkeypatch.setattr(sys, "argv", [f"{PACKAGE_ROOT}/pymusepipe/__main__.py", "run", "--target", "NGC 1000"])
    assert _command_line() == "python -m pymusepipe run --target 'NGC 1000'"
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/pymusepipe", "run"])
    assert _command_line() == "pymusepipe run"
