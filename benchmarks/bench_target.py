"""Benchmark: a three-pointing target reduced as one target (each night's calibrations made once) against three
independent single-pointing reductions (each pointing in a data root of its own, calibrations made three times).

Simulates a target of three overlapping pointings over two nights (1 IFU, ``--exposures`` per pointing), then
prints the wall time and the esorex CPU time of both ways, and how many calibration jobs each ran.

Usage: python benchmarks/bench_target.py [--workdir DIR] [--exposures 2] [--keep]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from data_root import link_copy
from job_timing import count_in, read_jobs
from pymusepipe.esorex import available_cpus


def _cpu_and_jobs(root: Path):
    """(esorex CPU s, calibration jobs, jobs) of a reduction, from its job tables."""
    jobs = read_jobs(root)
    return sum(job.cpu_seconds for job in jobs), count_in(jobs, "night"), len(jobs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir")
    parser.add_argument("--exposures", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    from pymusepipe.musepipe import MusePipe
    from pymusepipe.simulate import (NightPlan, ObservingBlock, Programme, TargetPlan, simulate_programme)
    from pymusepipe.target import MuseTarget

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_target_")).absolute()
    source = workdir / "simulated"
    programme = Programme(
        nights=[NightPlan("2026-03-14"), NightPlan("2026-03-15")],
        targets=[TargetPlan("MOSAIC", pointings=3, reference_image=True, blocks=[
            ObservingBlock(night=0, pointing=1, exposures=args.exposures),
            ObservingBlock(night=0, pointing=2, exposures=args.exposures, offset_sky=False),
            ObservingBlock(night=1, pointing=3, exposures=args.exposures, offset_sky=False)])])
    run = simulate_programme(source, programme, overwrite=True)
    reference = run.root / run.targets["MOSAIC"]["reference_image"]["file"]
    # The target aligns through its reference's band (SDSS r here); each independent pointing has no
    # reference and aligns through the default band (Cousins R).
    options = dict(filter_list="white,Cousins_R")

    # One target: each night's calibrations once, one graph, the mosaic.
    root = workdir / "target"
    rc = link_copy(source, root)
    start = time.monotonic()
    MuseTarget("MOSAIC", rc_filename=rc, cal_filename=root / "Config" / "calib_tables.dic",
               reference=root / reference.relative_to(source), **options).run_all_recipes(report=False)
    target_wall = time.monotonic() - start
    target_cpu, target_calibrations, target_jobs = _cpu_and_jobs(root)

    # Three independent pointings, each in its own data root (calibrations made three times).
    independent_wall = independent_cpu = 0.0
    independent_calibrations = independent_jobs = 0
    for pointing in (1, 2, 3):
        root = workdir / f"pointing{pointing}"
        raw = root / "MOSAIC" / "P01" / "Raw"
        shutil.copytree(source / "MOSAIC" / f"P{pointing:02d}" / "Raw", raw, copy_function=os.link)
        rc = root / "rc.dic"
        rc.write_text((source / "Config" / "rc.dic").read_text().replace(f"root {source}", f"root {root}"))
        start = time.monotonic()
        MusePipe("MOSAIC", 1, rc, source / "Config" / "calib_tables.dic", **options).run_all_recipes(report=False)
        independent_wall += time.monotonic() - start
        cpu, calibrations, jobs = _cpu_and_jobs(root)
        independent_cpu += cpu
        independent_calibrations += calibrations
        independent_jobs += jobs
    cores = len(available_cpus())
    print(f"{'way':<34}{'wall s':>9}{'esorex CPU s':>14}{'jobs':>6}{'calibration jobs':>18}{'busy %':>8}"
          f"{'wall/(CPU/cores)':>18}")
    for way, wall, cpu, jobs, calibrations in (
            ("one target (calibrations once)", target_wall, target_cpu, target_jobs, target_calibrations),
            ("three independent pointings", independent_wall, independent_cpu, independent_jobs,
             independent_calibrations)):
        print(f"{way:<34}{wall:>9.0f}{cpu:>14.0f}{jobs:>6}{calibrations:>18}{100 * cpu / wall:>8.0f}"
              f"{wall / (cpu / cores):>18.2f}")
    print(f"the target takes {target_wall / independent_wall:.2f} of the wall time (and also builds the mosaic)")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
