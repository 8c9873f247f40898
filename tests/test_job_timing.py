"""The benchmarks' timing bounds (benchmarks/job_timing.py) on a hand-made night of jobs."""
import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "job_timing.py"
_SPEC = importlib.util.spec_from_file_location("job_timing", _PATH)
job_timing = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(job_timing)


def _job(name, wall, cpu, reads=(), writes=()):
    return job_timing.TimedJob(name=name, recipe=f"muse_{name}", area="night", started=0.0, duration=wall,
                               cpu_seconds=cpu, threads=1, max_rss_mb=0.0, reads=set(reads), writes=set(writes))


@pytest.fixture
def night():
    # bias -> flat -> wavecal, then lsf and twilight side by side, then two branches after the twilight.
    return [_job("bias", 15, 14, (), {"MASTER_BIAS"}),
            _job("flat", 23, 22, {"MASTER_BIAS"}, {"TRACE"}),
            _job("wavecal", 15, 14, {"MASTER_BIAS", "TRACE"}, {"WAVECAL"}),
            _job("lsf", 40, 40, {"WAVECAL"}, {"LSF"}),
            _job("twilight", 44, 42, {"WAVECAL"}, {"TWILIGHT"}),
            _job("scibasic", 30, 30, {"TWILIGHT"}, {"PIXTABLE"}),
            _job("scipost", 38, 69, {"PIXTABLE", "LSF"}, {"CUBE"}),
            _job("skypost", 60, 60, {"TWILIGHT"}, {"SKYCUBE"})]


def test_serial_jobs_are_those_every_other_job_waits_for_or_follows(night):
    assert [job.name for job in job_timing.serial_jobs(night)] == ["bias", "flat", "wavecal"]


def test_the_wall_time_bound_adds_the_serial_head_to_the_rest_spread_over_the_cores(night):
    cpu = sum(job.cpu_seconds for job in night)
    shortest, serial = job_timing.wall_lower_bound(night, cpu, cores=2)
    head_wall, head_cpu = 15 + 23 + 15, 14 + 22 + 14
    assert shortest == pytest.approx(head_wall + (cpu - head_cpu) / 2)
    # Both bounds hold; here the serial head makes the second one the tighter.
    assert shortest > job_timing.critical_path(night)[0]
    assert shortest > cpu / 2
    # With one core, nothing overlaps: the bound is all the CPU time (the serial jobs' idle share aside).
    assert job_timing.wall_lower_bound(night, cpu, cores=1)[0] == pytest.approx(head_wall + cpu - head_cpu)
