"""Benchmark: how busy the demo keeps the cores, as one graph and step by step.

Simulates the demo's observing run once (1 IFU, seed 1), then reduces copies of it through the real recipes with
``run_all_recipes(graph=True)`` (every step planned first, one dependency graph) and/or ``graph=False`` (each
step waits for the previous one, the way the first version ran). For each it prints the chain's wall time, the
CPU time of its esorex processes (user + system of each job and its children, measured when the job ends) and

    busy = esorex CPU / wall              (the machine's cores x 100% is the most possible)
    wall / (esorex CPU / cores)           (1.00 = no core ever idle)

and the critical path of its jobs (the longest chain of jobs each needing the one before: no schedule is
shorter), then whether both reductions gave the same final cube (pixels), and the demo's comparison with the
truth. The wall time is the chain's; the HTML report drawn after it is timed apart.

Usage: python benchmarks/bench_demo.py [--mode graph|steps|both] [--workdir DIR] [--keep]
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from data_root import link_copy
from job_timing import describe_chain, summary, wall_lower_bound
from pymusepipe.demo import DEMO_FILTER, compare_with_truth, final_products, report
from pymusepipe.esorex import available_cpus


def _reduce(source: Path, target: Path, graph: bool):
    from pymusepipe.musepipe import MusePipe
    from pymusepipe.simulate.run import SimulatedRun  # noqa: F401  (documents what `source` holds)

    rc, cal = link_copy(source, target), target / "Config" / "calib_tables.dic"
    pipe = MusePipe("SIMGAL", 1, rc, cal, logfile="bench.log", reset_log=True,
                    filter_list=f"white,{DEMO_FILTER}", filter_for_alignment=DEMO_FILTER)
    start = time.monotonic()
    pipe.run_all_recipes(graph=graph, report=False)
    wall = time.monotonic() - start
    start = time.monotonic()
    pipe.make_report()
    print(f"{'graph' if graph else 'steps'}: the HTML report (QC figures) after the chain: "
          f"{time.monotonic() - start:.0f} s", flush=True)
    return pipe, wall, summary(target)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("graph", "steps", "both"), default="both")
    parser.add_argument("--workdir", help="work folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the reductions (several GB)")
    args = parser.parse_args(argv)
    from pymusepipe.simulate import simulate_run

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_demo_")).absolute()
    source = workdir / "simulated"
    start = time.monotonic()
    run = simulate_run(source, seed=1, overwrite=True)
    print(f"simulation: {time.monotonic() - start:.0f} s ({source})")
    cores = len(available_cpus())
    modes = ("graph", "steps") if args.mode == "both" else (args.mode,)
    cubes, pipes = {}, {}
    print(f"{'mode':<7}{'wall s':>9}{'esorex CPU s':>14}{'jobs':>6}{'busy %':>8}{'wall/(CPU/cores)':>18}"
          f"{'peak RSS MB':>13}{'critical path s':>17}")
    chains = {}
    for mode in modes:
        pipe, wall, timing = _reduce(source, workdir / mode, graph=(mode == "graph"))
        pipes[mode] = pipe
        cubes[mode] = final_products(pipe)[1]
        cpu = timing["cpu"]
        chains[mode] = timing
        print(f"{mode:<7}{wall:>9.0f}{cpu:>14.0f}{timing['count']:>6}{100 * cpu / wall:>8.0f}"
              f"{wall / (cpu / cores):>18.2f}{timing['rss_mb']:>13.0f}{timing['critical_path']:>17.0f}", flush=True)
    print(f"cores: {cores}; targets: busy >= {0.9 * cores * 100:.0f} %, wall/(CPU/cores) <= 1.15")
    for mode, timing in chains.items():
        # No schedule finishes before the chain of dependent jobs does: with these recipes' run times, the
        # best wall/(CPU/cores) any scheduler could reach is max(chain, CPU/cores) / (CPU/cores).
        bound = max(timing["critical_path"], timing["cpu"] / cores) / (timing["cpu"] / cores)
        print(f"{mode}: critical path {timing['critical_path']:.0f} s of dependent jobs, so no scheduler reaches "
              f"wall/(CPU/cores) below {bound:.2f} with these recipe run times\n{describe_chain(timing['chain'])}")
        # Tighter: the jobs no other recipe can run beside leave their idle cores idle under any schedule
        # (among the esorex jobs, whose CPU time the busy fraction counts).
        shortest, serial = wall_lower_bound(timing["jobs"], timing["cpu"], cores)
        print(f"{mode}: {len(serial)} job(s) can run beside no other ("
              f"{', '.join(job.recipe for job in serial) or 'none'}: {sum(j.duration for j in serial):.0f} s wall, "
              f"{sum(j.cpu_seconds for j in serial):.0f} s CPU), so no schedule of these run times takes less than "
              f"{shortest:.0f} s: busy <= {100 * timing['cpu'] / shortest:.0f} %, "
              f"wall/(CPU/cores) >= {shortest / (timing['cpu'] / cores):.2f}")
    if len(cubes) == 2:
        first, second = (fits.getdata(cubes[mode], "DATA") for mode in modes)
        finite = np.isfinite(first)
        same_mask = np.array_equal(finite, np.isfinite(second))
        difference = float(np.max(np.abs(first[finite] - second[finite]))) if same_mask else float("nan")
        print(f"final cubes: same NaN mask {same_mask}, largest pixel difference {difference:.3g} "
              f"(median |pixel| {float(np.median(np.abs(first[finite]))):.3g})")
    print(report(compare_with_truth(pipes[modes[0]], run.truth)))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
