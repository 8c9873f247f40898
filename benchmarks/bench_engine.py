"""Benchmark of the recipe engine (prints figures; no assertion).

1. Planning in fakemode a target with 3 pointings x 10 exposures plus calibrations (bias, flat, wavecal, lsf,
   twilight, scibasic, standard, scipost, exp_align, exp_combine), all 24 IFUs, in ESO's in-process mode and
   with per-IFU fan-out (24 times more jobs for the CCD-level recipes). Target: < 2 s.
2. The engine's own overhead per job (plan + SOF + log + launch + checks + move + tables; not esorex), with
   a trivial shell esorex that only writes the expected product. Target: < 50 ms.

Usage: ``python benchmarks/bench_engine.py [--jobs N]``
"""
import argparse
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from pymusepipe.association import InputFrame
from pymusepipe.engine import RecipeEngine
from pymusepipe.executors import LocalExecutor
from pymusepipe.layout import PointingLayout

IFUS = tuple(range(1, 25))
STATIC_TAGS = ("BADPIX_TABLE", "LINE_CATALOG", "GEOMETRY_TABLE", "ASTROMETRY_WCS", "EXTINCT_TABLE",
               "STD_FLUX_TABLE", "FILTER_LIST", "SKY_LINES")

TRIVIAL_ESOREX = """#!/bin/sh
# Writes the one product muse_bias --nifu=k would write, nothing else.
for arg in "$@"; do
  case "$arg" in
    --output-dir=*) out="${arg#--output-dir=}" ;;
    --nifu=*) nifu="${arg#--nifu=}" ;;
  esac
done
printf 'x' > "$out/MASTER_BIAS-$(printf %02d "$nifu").fits"
"""


def _frames(tag, mjd, count, tpl, expno_start=1):
    return [InputFrame(f"/raw/{tag}_{mjd + i * 0.001:.5f}.fits", tag, mjd + i * 0.001,
                       f"2024-03-01T0{i % 10}:00:00.000", tpl, expno_start + i, "WFM-NOAO-N", "SCI1.0")
            for i in range(count)]


def plan_pointing(root: Path, pointing: int, ifu_mode: str) -> int:
    """Plan and fake-run every step of one pointing; returns the number of jobs."""
    layout = PointingLayout(root, "BENCH", pointing)
    engine = RecipeEngine(layout, fakemode=True, version="bench", logfile="bench.log", reset_log=True,
                          static_calibrations={tag: f"/cal/{tag.lower()}.fits" for tag in STATIC_TAGS})
    mjd = 60370.0 + pointing
    n_jobs = 0

    def step(recipe, groups, **kwargs):
        nonlocal n_jobs
        jobs = engine.plan(recipe, groups, ifus=kwargs.pop("ifus", IFUS), ifu_mode=ifu_mode, **kwargs)
        engine.run(jobs, step=recipe)
        n_jobs += len(jobs)
        return jobs

    step("muse_bias", [_frames("BIAS", mjd - 0.5, 5, "2024-03-01T10:00:00")])
    step("muse_flat", [_frames("FLAT", mjd - 0.45, 5, "2024-03-01T10:30:00")])
    step("muse_wavecal", [_frames("ARC", mjd - 0.4, 15, "2024-03-01T11:00:00")])
    step("muse_lsf", [_frames("ARC", mjd - 0.4, 15, "2024-03-01T11:00:00")])
    step("muse_twilight", [_frames("SKYFLAT", mjd - 0.05, 3, "2024-03-01T23:00:00")])
    objects = _frames("OBJECT", mjd + 0.1, 10, "2024-03-02T01:00:00")
    step("muse_scibasic", [[frame] for frame in objects])
    step("muse_scibasic", [_frames("STD", mjd + 0.05, 1, "2024-03-02T00:30:00")])
    std_tables = [r for r in engine.catalogue.records if r.tag == "PIXTABLE_STD"]
    step("muse_standard", [[InputFrame.from_product(r) for r in std_tables]], ifus=None)
    pixtables = [r for r in engine.catalogue.records if r.tag == "PIXTABLE_OBJECT"]
    by_exposure = {}
    for record in pixtables:
        by_exposure.setdefault(record.expno, []).append(InputFrame.from_product(record))
    step("muse_scipost", list(by_exposure.values()), ifus=None, parameters={"save": "cube,individual"})
    images = [InputFrame.from_product(r) for r in engine.catalogue.records if r.tag == "IMAGE_FOV"]
    step("muse_exp_align", [images], ifus=None, labels=["all"])
    reduced = [InputFrame.from_product(r) for r in engine.catalogue.records if r.tag == "PIXTABLE_REDUCED"]
    step("muse_exp_combine", [reduced], ifus=None, labels=["all"])
    return n_jobs


def bench_planning(ifu_mode: str, what: str):
    root = Path(tempfile.mkdtemp(prefix="bench_engine_plan_"))
    try:
        start, cpu_start = time.perf_counter(), time.process_time()
        n_jobs = sum(plan_pointing(root, pointing, ifu_mode) for pointing in (1, 2, 3))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        shutil.rmtree(root)
    # CPU time is printed too: on a shared machine the wall time mostly measures other people's disk traffic.
    print(f"fakemode planning, 3 pointings x 10 exposures + calibrations ({what}): {n_jobs} jobs in "
          f"{elapsed:.2f} s wall, {cpu:.2f} s CPU ({1000 * elapsed / n_jobs:.2f} ms/job; target < 2 s total)")


def bench_overhead(n_jobs: int):
    root = Path(tempfile.mkdtemp(prefix="bench_engine_run_"))
    try:
        esorex = root / "esorex"
        esorex.write_text(TRIVIAL_ESOREX)
        esorex.chmod(0o755)
        static = root / "badpix.fits"
        static.write_text("x")
        layout = PointingLayout(root, "BENCH", 1)
        raw = layout.folder("raw", create=True)
        groups, labels = [], []
        for index in range(n_jobs):
            frames = _frames("BIAS", 60000.0 + index, 3, f"2024-03-01T10:{index:02d}:00")
            frames = [InputFrame(str(raw / Path(f.path).name), f.tag, f.mjd, f.date_obs, f.tpl_start, f.expno,
                                 f.ins_mode, f.read_mode) for f in frames]
            for frame in frames:
                Path(frame.path).write_text("raw")
            groups.append(frames)
            labels.append(f"T{index:03d}")
        # One CPU: jobs run one after the other, so wall time = sum of per-job times. Each measurement is
        # repeated (overwrite=True) and the best kept, since the machine is shared.
        engine = RecipeEngine(layout, esorex=str(esorex), version="bench", logfile="bench.log", check_parameters=False,
                              executor=LocalExecutor(cpus=[0], pinning="none"),
                              static_calibrations={"BADPIX_TABLE": str(static)})
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            report = engine.run(engine.plan("muse_bias", groups, labels=labels, ifus=[1]), overwrite=True)
            walls.append(time.perf_counter() - start)
            assert report.ok, report.summary()
        # The same esorex stand-in alone, to subtract the process cost.
        out = root / "alone"
        out.mkdir()
        alones = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(n_jobs):
                subprocess.run([str(esorex), f"--output-dir={out}", "muse_bias", "--nifu=1", "x.sof"], check=True)
            alones.append(time.perf_counter() - start)
        start = time.perf_counter()
        again = engine.run(engine.plan("muse_bias", groups, labels=labels, ifus=[1]))
        resume = time.perf_counter() - start
        assert len(again.with_status("uptodate")) == n_jobs
    finally:
        shutil.rmtree(root)
    wall, alone = min(walls), min(alones)
    print(f"real-mode run of {n_jobs} trivial jobs (best of 3): {wall:.2f} s wall; the esorex stand-in alone: "
          f"{alone:.2f} s")
    print(f"engine overhead per job (not esorex): {1000 * (wall - alone) / n_jobs:.1f} ms; everything "
          f"including the stand-in: {1000 * wall / n_jobs:.1f} ms/job (target < 50 ms)")
    print(f"resume check (all {n_jobs} jobs up to date): {1000 * resume / n_jobs:.1f} ms/job")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs for the overhead measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bench_planning("merged", "24 IFUs, ESO in-process mode --nifu=-1 --merge")
    bench_planning("fanout", "24 IFUs, per-IFU fan-out: the most jobs")
    bench_overhead(args.jobs)


if __name__ == "__main__":
    main()
