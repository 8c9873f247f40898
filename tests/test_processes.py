"""Commands die with the Python process that started them, whatever kills it, with everything they fork.

Each test builds a real process tree: a shell script (run plainly or under likwid-pin, which forks it) that
starts a background ``sleep``, a ``sleep`` in a session of its own (``setsid``) and a sub-shell with its
own ``sleep``, and writes their pids. The Python parent is a separate process, killed with SIGKILL or
interrupted with SIGINT by the test; then no process of the tree may be left running.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import pymusepipe
from pymusepipe.errors import ExecutableNotFoundError, MissingPathError
from pymusepipe.processes import alive, process_table, run_command, terminate_all

PACKAGE_ROOT = str(Path(pymusepipe.__file__).resolve().parent.parent)
LIKWID = shutil.which("likwid-pin")
MODES = ["plain", pytest.param("likwid", marks=pytest.mark.skipif(not LIKWID, reason="likwid-pin not installed"))]

TREE_SCRIPT = """\
#!/bin/sh
# $1: file receiving the pids of this shell and of everything it started
sleep 300 &
a=$!
setsid sleep 300 &
b=$!
sh -c 'sleep 300 & echo $! > "$0.inner"; wait' "$1" &
c=$!
while [ ! -s "$1.inner" ]; do sleep 0.05; done
echo $$ $a $b $c $(cat "$1.inner") > "$1.tmp" && mv "$1.tmp" "$1"
wait
"""

# The Python parent: runs the tree from a thread pool (as the local executor does), says who it is, waits.
PARENT_SCRIPT = """\
import json, os, sys, threading
from concurrent.futures import ThreadPoolExecutor
from pymusepipe import processes

mode, folder = sys.argv[1], sys.argv[2]
argv = [os.path.join(folder, "tree.sh"), os.path.join(folder, "pids")]
if mode == "likwid":
    argv = ["likwid-pin", "-q", "-c", str(sorted(os.sched_getaffinity(0))[0])] + argv
pool = ThreadPoolExecutor(2)
future = pool.submit(processes.run_command, argv, cwd=folder, stdout_path=os.path.join(folder, "out.txt"), grace=2)
with open(os.path.join(folder, "parent.tmp"), "w") as stream:
    json.dump({"pid": os.getpid(), "watchdog": processes.watchdog_pid()}, stream)
os.replace(os.path.join(folder, "parent.tmp"), os.path.join(folder, "parent.json"))
if len(sys.argv) > 3:  # fork: the child runs a second tree and must get a watchdog of its own
    child_folder = sys.argv[3]
    child = os.fork()
    if child == 0:
        argv2 = [os.path.join(child_folder, "tree.sh"), os.path.join(child_folder, "pids")]
        thread = threading.Thread(target=processes.run_command, args=(argv2,), kwargs={"cwd": child_folder})
        thread.start()
        with open(os.path.join(child_folder, "parent.tmp"), "w") as stream:
            json.dump({"pid": os.getpid(), "watchdog": processes.watchdog_pid()}, stream)
        os.replace(os.path.join(child_folder, "parent.tmp"), os.path.join(child_folder, "parent.json"))
        thread.join()
        os._exit(0)
try:
    outcome = future.result()
    print("FINISHED", outcome, flush=True)
except KeyboardInterrupt:
    stopped = processes.terminate_all(grace=2)
    outcome = future.result()
    print("INTERRUPTED", stopped, outcome.cancelled, outcome.returncode, flush=True)
    sys.exit(130)
"""


def _wait_for(condition, what, limit=60.0):
    # Waits for something to happen; fails only if it never does (no assertion on how long it took).
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"gave up waiting for {what}")


def _prepare(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "tree.sh"
    script.write_text(TREE_SCRIPT)
    script.chmod(0o755)
    return folder


def _recorded(folder: Path) -> set:
    """The pids the tree script wrote: its shell, the sleeps and the sub-shell."""
    return {int(word) for word in (folder / "pids").read_text().split()}


def _read_tree(folder: Path) -> set:
    """Pids of the tree (read once it wrote them) plus every member of its process group."""
    words = _wait_for(lambda: (folder / "pids").is_file() and (folder / "pids").read_text().split(),
                      f"{folder}/pids")
    pids = {int(word) for word in words}
    table = process_table()
    shell = int(words[0])
    if shell in table:  # its process group is the command's (likwid-pin's when pinned)
        pids |= {pid for pid, (_, group, _) in table.items() if group == table[shell][1]}
    return pids


def _start_parent(tmp_path, mode, *extra):
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    # A session of its own, so that our signals reach only this parent (as a terminal's would reach Python).
    return subprocess.Popen([sys.executable, str(script), mode, str(tmp_path), *map(str, extra)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _cleanup(pids):
    for pid in alive(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.parametrize("mode", MODES)
def test_kill_9_of_python_kills_the_whole_tree(tmp_path, mode):
    _prepare(tmp_path)
    parent = _start_parent(tmp_path, mode)
    tree = set()
    try:
        tree = _read_tree(tmp_path)
        info = json.loads(_wait_for(lambda: (tmp_path / "parent.json").is_file() and
                                    (tmp_path / "parent.json").read_text(), "parent.json"))
        recorded = _recorded(tmp_path)
        assert len(recorded) == 5 and alive(recorded) == recorded  # the whole tree runs before the kill
        if mode == "likwid":
            table = process_table()
            leaders = {table[pid][1] for pid in tree}
            assert any(b"lua" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in leaders if pid in table)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        _wait_for(lambda: not alive(tree), "the orphaned tree to die")
        assert alive(tree) == set()
        _wait_for(lambda: not alive({info["watchdog"]}), "the watchdog to exit")
    finally:
        parent.kill()
        parent.wait()
        _cleanup(tree)


def test_ctrl_c_stops_the_tree_and_is_reported_as_cancelled(tmp_path):
    _prepare(tmp_path)
    parent = _start_parent(tmp_path, "likwid" if LIKWID else "plain")
    tree = set()
    try:
        tree = _read_tree(tmp_path)
        _wait_for(lambda: (tmp_path / "parent.json").is_file(), "parent.json")
        os.kill(parent.pid, signal.SIGINT)
        out, err = parent.communicate()
        assert parent.returncode == 130, err
        # One command stopped; it reports cancelled (by us), not a failure of its own.
        assert "INTERRUPTED 1 True" in out
        assert alive(tree) == set()
    finally:
        parent.kill()
        parent.wait()
        _cleanup(tree)


def test_a_forked_child_gets_its_own_watchdog(tmp_path):
    """multiprocessing 'fork' (and Dask workers started so): killing the child kills the child's commands
    only; the parent's keep running until the parent dies."""
    _prepare(tmp_path)
    child_folder = _prepare(tmp_path / "child")
    parent = _start_parent(tmp_path, "plain", child_folder)
    parent_tree, child_tree = set(), set()
    try:
        parent_tree = _read_tree(tmp_path)
        child_tree = _read_tree(child_folder)
        parent_info = json.loads(_wait_for(lambda: (tmp_path / "parent.json").is_file() and
                                           (tmp_path / "parent.json").read_text(), "parent.json"))
        child_info = json.loads(_wait_for(lambda: (child_folder / "parent.json").is_file() and
                                          (child_folder / "parent.json").read_text(), "child parent.json"))
        assert child_info["watchdog"] != parent_info["watchdog"]
        os.kill(child_info["pid"], signal.SIGKILL)
        _wait_for(lambda: not alive(child_tree), "the child's tree to die")
        assert alive(_recorded(tmp_path)) == _recorded(tmp_path)
        assert alive({parent_info["watchdog"]})
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        _wait_for(lambda: not alive(parent_tree), "the parent's tree to die")
    finally:
        parent.kill()
        parent.wait()
        _cleanup(parent_tree | child_tree)


@pytest.mark.parametrize("mode", MODES)
def test_cancel_event_stops_the_tree(tmp_path, mode):
    _prepare(tmp_path)
    argv = [str(tmp_path / "tree.sh"), str(tmp_path / "pids")]
    if mode == "likwid":
        argv = ["likwid-pin", "-q", "-c", str(sorted(os.sched_getaffinity(0))[0])] + argv
    event = threading.Event()
    tree = set()

    def cancel_when_running():
        tree.update(_read_tree(tmp_path))
        event.set()

    watcher = threading.Thread(target=cancel_when_running)
    watcher.start()
    try:
        outcome = run_command(argv, cwd=tmp_path, stdout_path=tmp_path / "out.txt", cancel_event=event, grace=2)
        watcher.join()
        assert outcome.cancelled and not outcome.timed_out and not outcome.ok
        assert "cancelled" in outcome.describe()
        assert alive(tree) == set()
        assert not any(group == outcome.pid for _, group, state in process_table().values() if state != b"Z")
    finally:
        _cleanup(tree)


def test_timeout_stops_the_tree(tmp_path):
    _prepare(tmp_path)
    outcome = run_command([str(tmp_path / "tree.sh"), str(tmp_path / "pids")], cwd=tmp_path, timeout=3, grace=2)
    tree = _read_tree(tmp_path) if (tmp_path / "pids").is_file() else set()
    try:
        assert outcome.timed_out and not outcome.cancelled and outcome.returncode < 0
        assert "timed out" in outcome.describe()
        assert alive(tree) == set()
        assert not any(group == outcome.pid for _, group, state in process_table().values() if state != b"Z")
    finally:
        _cleanup(tree)


def test_exit_codes_output_and_signals_not_ours(tmp_path):
    log = tmp_path / "out.txt"
    log.write_text("previous run\n")
    outcome = run_command(["sh", "-c", "echo to stdout; echo to stderr >&2; exit 3"], cwd=tmp_path, stdout_path=log)
    assert (outcome.returncode, outcome.cancelled, outcome.timed_out, outcome.ok) == (3, False, False, False)
    assert log.read_text() == "previous run\nto stdout\nto stderr\n"
    assert outcome.describe() == "exited with code 3"
    assert run_command(["true"]).ok
    # Killed by a signal nobody here sent (a crash): a failure, not a cancellation.
    crash = run_command(["sh", "-c", "kill -SEGV $$"])
    assert crash.returncode == -signal.SIGSEGV and not crash.cancelled and "SIGSEGV" in crash.describe()


def test_missing_program_folder_and_preset_cancel(tmp_path):
    with pytest.raises(ExecutableNotFoundError, match="'esorex-not-installed' not found on PATH"):
        run_command(["esorex-not-installed", "--version"])
    with pytest.raises(MissingPathError, match="nowhere"):
        run_command(["true"], cwd=tmp_path / "nowhere")
    event = threading.Event()
    event.set()
    outcome = run_command(["touch", str(tmp_path / "started")], cancel_event=event)
    assert outcome.cancelled and not (tmp_path / "started").exists()


def test_terminate_all_without_commands_and_commands_after_it(tmp_path):
    assert terminate_all() == 0
    assert run_command(["true"]).ok  # a Ctrl-C earlier does not poison later runs
