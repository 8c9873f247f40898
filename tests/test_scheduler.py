"""The one scheduler with the local and fake executors: budgets, threads, pinning, dependencies, skipping,
classification, finalisation, interruption."""
import logging
import shutil
import signal
import sys
import threading
import time

import pytest

from pymusepipe.executors import FakeExecutor, LocalExecutor
from pymusepipe.scheduler import RunInterrupted, Scheduler, critical_path_priority

from scheduler_tasks import CommandTask, max_overlap, sleep_task


def _alive(pid) -> bool:
    """A process that exists and is not a zombie waiting for its (re-)parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _run(tasks, **executor_options):
    executor_options.setdefault("pinning", "none")
    return Scheduler(LocalExecutor(**executor_options), progress=False).run(tasks)


def test_cpu_budget_caps_concurrency(tmp_path):
    names = [f"job{i}" for i in range(4)]
    results = _run([sleep_task(tmp_path, name) for name in names], cpus=[0, 1])
    assert all(result.status == "done" for result in results.values())
    assert max_overlap(tmp_path, names) == 2


def test_memory_budget_never_runs_two_jobs_that_do_not_fit_together(tmp_path):
    names = ["big1", "big2", "big3"]
    _run([sleep_task(tmp_path, name, seconds=0.3, memory_gb=0.8) for name in names], cpus=[0, 1], memory_gb=1.0)
    assert max_overlap(tmp_path, names) == 1


def test_a_lone_job_gets_every_core_and_ready_jobs_share_them(tmp_path):
    events = []
    probe = ["sh", "-c", "echo $OMP_NUM_THREADS; grep Cpus_allowed_list /proc/self/status"]
    lone = CommandTask(tmp_path, "lone", probe, max_threads=8, events=events)
    pair = [CommandTask(tmp_path, name, probe, max_threads=8, depends_on=("lone",), events=events)
            for name in ("left", "right")]
    results = _run([lone, *pair], cpus=[0, 1], pinning="taskset")
    assert results["lone"].argv[:3] == ("taskset", "-c", "0-1")
    assert lone.stdout_path.read_text().split("\n")[0] == "2"
    # Two jobs ready at once: one core each, side by side.
    assert [task.stdout_path.read_text().split("\n")[0] for task in pair] == ["1", "1"]
    assert {results[task.name].argv[2] for task in pair} == {"0", "1"}


def test_ready_jobs_that_cannot_fit_in_memory_beside_it_do_not_take_its_threads(tmp_path):
    # Two jobs ready together, each needing most of the memory budget: they run one after the other, so the
    # first must get both cores instead of leaving one idle for a job that cannot start beside it.
    events = []
    probe = ["sh", "-c", "echo $OMP_NUM_THREADS"]
    big = [CommandTask(tmp_path, name, probe, max_threads=8, memory_gb=3.0, events=events)
           for name in ("big1", "big2")]
    small = [CommandTask(tmp_path, name, probe, max_threads=8, memory_gb=0.5, events=events)
             for name in ("small1", "small2")]
    _run(big, cpus=[0, 1], memory_gb=4.0)
    assert [task.stdout_path.read_text().split()[0] for task in big] == ["2", "2"]
    # Jobs that do fit together still share the cores.
    _run(small, cpus=[0, 1], memory_gb=4.0)
    assert [task.stdout_path.read_text().split()[0] for task in small] == ["1", "1"]


@pytest.mark.skipif(shutil.which("likwid-pin") is None, reason="likwid-pin not installed")
def test_likwid_pins_to_the_allocated_cpu(tmp_path):
    probe = tmp_path / "probe.sh"  # likwid-pin re-splits arguments on spaces: pass a script, not "sh -c ..."
    probe.write_text("echo $OMP_NUM_THREADS; grep Cpus_allowed_list /proc/self/status\n")
    task = CommandTask(tmp_path, "pinned", ["sh", probe])
    assert _run([task], cpus=[1], pinning="likwid")["pinned"].status == "done"
    lines = task.stdout_path.read_text().split("\n")
    assert lines[0] == "1" and lines[1].split()[-1] == "1"


def test_output_is_streamed_to_the_log_file_and_cpu_time_measured(tmp_path):
    task = CommandTask(tmp_path, "chatty", [sys.executable, "-c",
                                            "import sys, time\nfor i in range(50000): print('x' * 99)\n"
                                            "x = bytearray(200 * 2**20)\ntime.sleep(1.5)"])
    result = _run([task], cpus=[0])["chatty"]
    assert result.status == "done" and task.stdout_path.stat().st_size == 50000 * 100
    # Its own peak memory (sampled in /proc): not the pytest process's it was forked from.
    assert result.cpu_seconds > 0 and 200 < result.max_rss_mb < 300


def test_each_job_runs_in_its_own_output_folder(tmp_path):
    # esorex keeps its log in ./.logfile until it ends: parallel jobs must not share a working directory.
    tasks = [CommandTask(tmp_path, name, ["sh", "-c", "pwd"]) for name in ("one", "two")]
    _run(tasks, cpus=[0, 1])
    for task in tasks:
        assert task.stdout_path.read_text().strip() == str(task.cwd)


@pytest.mark.parametrize("argv", [["sh", "-c", "kill -9 $$"],                 # the job itself is killed
                                  ["sh", "-c", "sh -c 'kill -9 $$'; exit $?"]])  # a shell reports it: 137
def test_a_job_killed_by_sigkill_is_reported_as_out_of_memory_likely(tmp_path, argv):
    results = _run([CommandTask(tmp_path, "killed", argv)], cpus=[0, 1])
    assert results["killed"].status == "failed"
    assert results["killed"].message.startswith("esorex was killed (SIGKILL, exit code")
    assert "out-of-memory killer" in results["killed"].message


def test_failure_skips_dependents_transitively_and_independents_run(tmp_path):
    events = []
    tasks = [CommandTask(tmp_path, "a", ["sh", "-c", "echo '[ ERROR ] broken input'; exit 3"], events=events),
             CommandTask(tmp_path, "b", ["true"], depends_on=("a",), events=events),
             CommandTask(tmp_path, "c", ["true"], events=events),
             CommandTask(tmp_path, "d", ["true"], depends_on=("b", "c"), events=events)]
    results = _run(tasks, cpus=[0, 1])
    assert [results[name].status for name in "abcd"] == ["failed", "skipped", "done", "skipped"]
    assert results["a"].returncode == 3 and results["a"].message == "esorex exited with code 3: broken input"
    assert "depends on a, which failed" in results["b"].message
    assert "depends on b, which skipped" in results["d"].message
    assert ("discard", "a") in events and ("finalize", "c") in events and ("finalize", "a") not in events
    assert ("record", "b", "skipped") in events


def test_up_to_date_tasks_are_skipped_without_running(tmp_path):
    events = []
    tasks = [CommandTask(tmp_path, "made", ["sh", "-c", f"touch {tmp_path / 'ran'}"], up_to_date="same inputs",
                         events=events),
             CommandTask(tmp_path, "next", ["true"], depends_on=("made",), events=events)]
    results = _run(tasks, cpus=[0])
    assert results["made"].status == "uptodate" and not (tmp_path / "ran").exists()
    assert results["next"].status == "done"
    assert not any(event[:2] == ("prepare", "made") for event in events)


def test_missing_expected_product_and_failing_finalize(tmp_path):
    def explode():
        raise OSError("disk full")

    tasks = [CommandTask(tmp_path, "noproduct", ["true"], expected=["P.fits"]),
             CommandTask(tmp_path, "finalize", ["true"], finalize=explode)]
    results = _run(tasks, cpus=[0])
    assert results["noproduct"].status == "failed" and "missing: P.fits" in results["noproduct"].message
    assert results["finalize"].status == "failed" and "disk full" in results["finalize"].message


def test_dependency_order_is_respected(tmp_path):
    order = tmp_path / "order.txt"
    tasks = [CommandTask(tmp_path, name, ["sh", "-c", f"echo {name} >> {order}"], depends_on=deps)
             for name, deps in (("third", ("second",)), ("second", ("first",)), ("first", ()))]
    _run(tasks, cpus=[0, 1])
    assert order.read_text().split() == ["first", "second", "third"]


def test_the_task_with_the_longest_chain_waiting_on_it_starts_first(tmp_path):
    """One CPU, two ready tasks: the one three others wait on in a row starts before the one nothing waits on,
    although the plan lists it second."""
    order = tmp_path / "order.txt"
    graph = (("offset_sky", ()), ("standard_star", ()), ("response", ("standard_star",)),
             ("scipost", ("response",)), ("combine", ("scipost",)))
    tasks = [CommandTask(tmp_path, name, ["sh", "-c", f"echo {name} >> {order}"], depends_on=deps)
             for name, deps in graph]
    assert critical_path_priority(tasks) == {"offset_sky": (1, 0), "standard_star": (4, 1), "response": (3, 1),
                                             "scipost": (2, 1), "combine": (1, 0)}
    _run(tasks, cpus=[0])
    assert order.read_text().split() == ["standard_star", "response", "scipost", "offset_sky", "combine"]


def test_invalid_graphs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        _run([CommandTask(tmp_path, "x", ["true"]), CommandTask(tmp_path, "x", ["true"])], cpus=[0])
    with pytest.raises(ValueError, match="cycle"):
        _run([CommandTask(tmp_path, "p", ["true"], depends_on=("q",)),
              CommandTask(tmp_path, "q", ["true"], depends_on=("p",))], cpus=[0])
    with pytest.raises(ValueError, match="pinning='numactl'"):
        LocalExecutor(pinning="numactl")


def test_fake_executor_runs_nothing(tmp_path):
    task = CommandTask(tmp_path, "fake", ["sh", "-c", f"touch {tmp_path / 'ran'}"])
    result = Scheduler(FakeExecutor(), progress=False).run([task])["fake"]
    assert result.status == "planned" and result.ok and not (tmp_path / "ran").exists()


def test_timeout_kills_the_whole_process_group(tmp_path):
    marker = tmp_path / "child.pid"
    task = CommandTask(tmp_path, "hang", ["sh", "-c", f"sleep 60 & echo $! > {marker}; wait"])
    original = task.prepare

    def prepare(threads):
        command = original(threads)
        command.timeout = 1.0
        return command

    task.prepare = prepare
    result = _run([task], cpus=[0])["hang"]
    assert result.status == "failed" and "timed out" in result.message
    assert not _alive(int(marker.read_text()))


def test_ctrl_c_stops_running_jobs_without_recording_a_failure(tmp_path):
    events = []
    tasks = [CommandTask(tmp_path, "long", ["sleep", "60"], events=events),
             CommandTask(tmp_path, "after", ["true"], depends_on=("long",), events=events)]
    timer = threading.Timer(1.0, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
    timer.start()
    start = time.monotonic()
    with pytest.raises(RunInterrupted) as info:
        _run(tasks, cpus=[0])
    assert time.monotonic() - start < 20
    assert info.value.results["long"].status == "interrupted"
    assert "after" not in info.value.results
    assert not any(event[0] in ("record", "discard") for event in events)
    assert str(info.value) == "interrupted; rerun to resume"


def test_a_job_needing_more_memory_than_the_budget_is_never_started(tmp_path):
    events = []
    huge = CommandTask(tmp_path, "huge", ["sh", "-c", f"touch {tmp_path / 'ran'}"], memory_gb=50.0, events=events)
    after = CommandTask(tmp_path, "after", ["true"], depends_on=("huge",), events=events)
    results = _run([huge, after], cpus=[0, 1], memory_gb=4.0)
    assert results["huge"].status == "failed" and "more than the budget of 4.0 GB" in results["huge"].message
    assert results["after"].status == "skipped" and not (tmp_path / "ran").exists()
    assert not any(event[:2] == ("prepare", "huge") for event in events)


def test_a_job_above_the_budget_only_with_the_margin_waits_and_runs_alone_on_every_core(tmp_path, caplog):
    # The memory model's margin keeps jobs sharing the machine apart. A job above the whole budget with it but not
    # without it (a full field's muse_standard: 16.2 GB measured, 21.1 modelled, 18.4 budgeted on 24 GiB) still
    # runs: once nothing else does, on every core, with nothing started beside it.
    events = []
    first = sleep_task(tmp_path, "first", seconds=0.4, memory_gb=0.2, events=events)
    big = sleep_task(tmp_path, "big", seconds=0.4, memory_gb=5.0, alone_gb=3.5, max_threads=8, events=events)
    rest = [sleep_task(tmp_path, name, seconds=0.4, memory_gb=0.2, events=events) for name in ("second", "third")]
    with caplog.at_level(logging.WARNING, logger="pymusepipe.scheduler"):
        results = _run([first, big, *rest], cpus=[0, 1], memory_gb=4.0)
    assert {result.status for result in results.values()} == {"done"}
    for other in ("first", "second", "third"):
        assert max_overlap(tmp_path, ["big", other]) == 1, other
    assert ("prepare", "big", 2) in events
    assert "big: needs 5.0 GB" in caplog.text and "runs alone (3.5 GB without the margin)" in caplog.text


def test_a_job_above_the_budget_even_without_the_margin_is_refused_saying_both(tmp_path):
    events = []
    big = CommandTask(tmp_path, "big", ["sh", "-c", f"touch {tmp_path / 'ran'}"], memory_gb=5.0, alone_gb=4.5,
                      events=events)
    results = _run([big], cpus=[0, 1], memory_gb=4.0)
    assert results["big"].status == "failed" and not (tmp_path / "ran").exists()
    assert "needs 5.0 GB" in results["big"].message and "4.5 GB without the safety margin" in results["big"].message


def test_an_error_recording_a_job_stops_the_jobs_still_running(tmp_path):
    # A table that cannot be written (a full disk) while another job runs ends the run: the other job must not
    # go on, unwatched, after the run (and its locks) are gone.
    from pymusepipe.errors import DiskFullError

    marker = tmp_path / "long.pid"

    class Unrecordable(CommandTask):
        def record(self, result):
            raise DiskFullError("disk full (no space left on device) while writing x_jobs.fits", "free space")

    tasks = [CommandTask(tmp_path, "long", ["sh", "-c", f"echo $$ > {marker}; exec sleep 60"]),
             Unrecordable(tmp_path, "short", ["sh", "-c", "sleep 0.5"])]
    start = time.monotonic()
    with pytest.raises(DiskFullError):
        _run(tasks, cpus=[0, 1])
    assert time.monotonic() - start < 30
    assert not _alive(int(marker.read_text()))
