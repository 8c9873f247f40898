"""Benchmark: the demo's wall time next to the time spent inside esorex (the wrapper's overhead).

Runs ``pymusepipe.demo.run_demo`` (simulation + run_all_recipes through the real recipes, 1 IFU), then reads
the per-recipe job tables in ``Astro_Tables/`` and prints, per step, the wall time of the step, the sum and the
longest of its esorex run times, and how much of the step was neither (planning, SOFs, moves, tables).

Usage: python benchmarks/bench_demo.py [WORKDIR]
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.table import Table

from pymusepipe.demo import report, run_demo


def main(workdir=None):
    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench_demo_")) / "demo"
    pipe, result = run_demo(workdir)
    tables = pipe.layout.folder("astro_tables")
    durations = {}
    for path in tables.glob("*_jobs.fits"):
        jobs = Table.read(path)
        for row in jobs:
            durations[str(row["job"])] = float(row["duration"])
    print(f"{'step':<18}{'jobs':>5}{'wall s':>9}{'esorex sum s':>14}{'esorex max s':>14}{'wall-esorex s':>14}")
    total_wall = total_sum = total_critical = 0.0
    for name, step in pipe.steps.items():
        jobs = [job.name for job in step.report.jobs] if step.report else []
        times = [durations.get(job, 0.0) for job in jobs]
        esorex_sum = sum(times)
        longest = max(times) if times else 0.0
        # Time of the step not spent in esorex (negative when jobs ran concurrently).
        overhead = step.seconds - esorex_sum
        total_wall += step.seconds
        total_sum += esorex_sum
        total_critical += longest
        print(f"{name:<18}{len(jobs):>5}{step.seconds:>9.1f}{esorex_sum:>14.1f}{longest:>14.1f}{overhead:>14.1f}")
    print(f"{'all steps':<18}{'':>5}{total_wall:>9.1f}{total_sum:>14.1f}{total_critical:>14.1f}")
    print(f"simulation: {result['seconds_simulation']:.1f} s; demo total: {result['seconds_total']:.1f} s")
    print(f"wrapper time outside esorex: {total_wall - total_sum:.1f} s over {len(durations)} job(s) "
          "(negative: esorex jobs ran concurrently)")
    print(report(result))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
