"""LocalExecutor: CPU and memory budgets, pinning, OMP_NUM_THREADS, streaming, failures and dependencies."""
import shutil
import sys

import pytest

from pymusepipe.executors import ExecJob, FakeExecutor, LocalExecutor

SLEEPER = ("import sys, time; start = time.time(); time.sleep(float(sys.argv[2])); "
           "open(sys.argv[1], 'w').write(f'{start} {time.time()}')")


def _job(tmp_path, name, argv, **kwargs):
    return ExecJob(name=name, argv=list(argv), output_dir=tmp_path / "out" / name,
                   stdout_path=tmp_path / "logs" / f"{name}.stdout", **kwargs)


def _sleep_job(tmp_path, name, seconds=0.4, **kwargs):
    return _job(tmp_path, name, [sys.executable, "-c", SLEEPER, str(tmp_path / f"{name}.time"), str(seconds)],
                expected_products=[], **kwargs)


def _max_overlap(tmp_path, names):
    spans = [tuple(map(float, (tmp_path / f"{name}.time").read_text().split())) for name in names]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_cpu_budget_caps_concurrency(tmp_path):
    names = [f"job{i}" for i in range(4)]
    results = LocalExecutor(cpus=[0, 1], pinning="none").run([_sleep_job(tmp_path, name) for name in names])
    assert all(result.status == "done" for result in results.values())
    assert _max_overlap(tmp_path, names) == 2


def test_memory_budget_serialises_big_jobs(tmp_path):
    names = ["big1", "big2"]
    executor = LocalExecutor(cpus=[0, 1], memory_gb=1.0, pinning="none")
    executor.run([_sleep_job(tmp_path, name, seconds=0.3, memory_gb=0.8) for name in names])
    assert _max_overlap(tmp_path, names) == 1


def test_threads_set_omp_and_are_capped_to_the_cores(tmp_path):
    job = _job(tmp_path, "omp", ["sh", "-c", "echo $OMP_NUM_THREADS; grep Cpus_allowed_list /proc/self/status"],
               threads=8)
    result = LocalExecutor(cpus=[0, 1], pinning="taskset").run([job])["omp"]
    assert result.status == "done" and result.argv[:3] == ("taskset", "-c", "0-1")
    lines = job.stdout_path.read_text().split("\n")
    assert lines[0] == "2" and lines[1].split()[-1] == "0-1"


@pytest.mark.skipif(shutil.which("likwid-pin") is None, reason="likwid-pin not installed")
def test_likwid_pins_to_the_allocated_cpu(tmp_path):
    probe = tmp_path / "probe.sh"  # likwid-pin re-splits arguments on spaces: pass a script, not "sh -c ..."
    probe.write_text("echo $OMP_NUM_THREADS; grep Cpus_allowed_list /proc/self/status\n")
    job = _job(tmp_path, "pinned", ["sh", str(probe)])
    executor = LocalExecutor(cpus=[1], pinning="likwid")
    assert executor.run([job])["pinned"].status == "done"
    lines = job.stdout_path.read_text().split("\n")
    assert lines[0] == "1" and lines[1].split()[-1] == "1"


def test_output_is_streamed_to_the_log_file(tmp_path):
    job = _job(tmp_path, "chatty", [sys.executable, "-c", "import sys\nfor i in range(50000): print('x' * 99)"])
    result = LocalExecutor(cpus=[0], pinning="none").run([job])["chatty"]
    assert result.status == "done" and job.stdout_path.stat().st_size == 50000 * 100


def test_each_job_runs_in_its_own_output_folder(tmp_path):
    # esorex keeps its log in ./.logfile until it ends: parallel jobs must not share a working directory.
    jobs = [_job(tmp_path, name, ["sh", "-c", "pwd"]) for name in ("one", "two")]
    LocalExecutor(cpus=[0, 1], pinning="none").run(jobs)
    for job in jobs:
        assert job.output_dir.is_dir()  # created before the command started
        assert job.stdout_path.read_text().strip() == str(job.output_dir)


def test_failure_skips_dependents_transitively_and_independents_run(tmp_path):
    jobs = [_job(tmp_path, "a", ["sh", "-c", "echo '[ ERROR ] broken input'; exit 3"]),
            _job(tmp_path, "b", ["true"], depends_on=("a",)),
            _job(tmp_path, "c", ["true"]),
            _job(tmp_path, "d", ["true"], depends_on=("b", "c"))]
    results = LocalExecutor(cpus=[0, 1], pinning="none").run(jobs)
    assert [results[name].status for name in "abcd"] == ["failed", "skipped", "done", "skipped"]
    assert results["a"].returncode == 3 and "[ ERROR ] broken input" in results["a"].message
    assert "depends on a, which failed" in results["b"].message
    assert "depends on b, which skipped" in results["d"].message


def test_missing_expected_product_and_failing_finalize(tmp_path):
    def explode(job):
        raise OSError("disk full")

    jobs = [_job(tmp_path, "noproduct", ["true"], expected_products=[tmp_path / "out" / "noproduct" / "P.fits"]),
            _job(tmp_path, "finalize", ["true"], finalize=explode)]
    results = LocalExecutor(cpus=[0], pinning="none").run(jobs)
    assert results["noproduct"].status == "failed" and "missing: P.fits" in results["noproduct"].message
    assert results["finalize"].status == "failed" and "disk full" in results["finalize"].message


def test_dependency_order_is_respected(tmp_path):
    order = tmp_path / "order.txt"
    jobs = [_job(tmp_path, name, ["sh", "-c", f"echo {name} >> {order}"], depends_on=deps)
            for name, deps in (("third", ("second",)), ("second", ("first",)), ("first", ()))]
    LocalExecutor(cpus=[0, 1], pinning="none").run(jobs)
    assert order.read_text().split() == ["first", "second", "third"]


def test_invalid_job_sets_are_refused(tmp_path):
    executor = LocalExecutor(cpus=[0], pinning="none")
    with pytest.raises(ValueError, match="unique"):
        executor.run([_job(tmp_path, "x", ["true"]), _job(tmp_path, "x", ["true"])])
    with pytest.raises(ValueError, match="cycle"):
        executor.run([_job(tmp_path, "p", ["true"], depends_on=("q",)),
                      _job(tmp_path, "q", ["true"], depends_on=("p",))])
    with pytest.raises(ValueError, match="pinning='numactl'"):
        LocalExecutor(pinning="numactl")


def test_fake_executor_runs_nothing(tmp_path):
    job = _job(tmp_path, "fake", ["sh", "-c", f"touch {tmp_path / 'ran'}"])
    result = FakeExecutor().run([job])["fake"]
    assert result.status == "planned" and result.ok and not (tmp_path / "ran").exists()
