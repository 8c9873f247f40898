"""``pymusepipe demo``: simulate a MUSE run, reduce it through the real ESO recipes, compare with the truth.

What it prints at the end: the point sources of the final combined image against their true positions and
fluxes, the H-alpha velocity of the disc against the simulated one, and where the products are.
"""
from __future__ import annotations

import datetime
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEMO_FILTER = "Cousins_R"


def add_arguments(parser):
    parser.add_argument("--workdir", help="folder for the simulated data and the reduction "
                                          "(default: ./pymusepipe_demo_<date>)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the simulation (default 1)")
    parser.add_argument("--ifus", default="1", help="IFUs to simulate, e.g. 1 or 1,2,3,4 (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="reuse a non-empty --workdir")


def ensure_pipeline(esorex="esorex"):
    """Check that esorex and the MUSE recipes are installed; install them with apt-get when root."""
    def available():
        if shutil.which(esorex) is None:
            return False
        with tempfile.TemporaryDirectory() as scratch:  # esorex leaves esorex.log in its working folder
            listing = subprocess.run([esorex, "--recipes"], capture_output=True, text=True, cwd=scratch).stdout
        return "muse_bias" in listing

    if available():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        logger.info("installing the ESO MUSE pipeline with apt-get (esorex cpl-plugin-muse likwid)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "esorex", "cpl-plugin-muse", "likwid"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if available():
            return
    raise RuntimeError("the ESO MUSE pipeline is not installed: run, as root, "
                       "'apt-get update && apt-get install -y esorex cpl-plugin-muse likwid' "
                       "(or install ESO's MUSE pipeline kit) and try again")


def final_products(pipe):
    """(combined image through DEMO_FILTER, combined cube) of a reduced pointing."""
    label = f"{pipe.targetname}_{pipe.layout.pointing_name}"
    folder = pipe.layout.folder("object")
    return folder / f"IMAGE_FOV_{DEMO_FILTER}_{label}.fits", folder / f"DATACUBE_FINAL_{label}.fits"


def compare_with_truth(pipe, truth) -> dict:
    """Measure the final image and cube of a reduced simulated pointing against the truth."""
    from .truthcheck import measure_line_velocity, measure_point_sources

    image, cube = final_products(pipe)
    seeing = np.median([e["seeing_fwhm_arcsec"] for e in truth["exposures"] if e["kind"] == "OBJECT"])
    stars = measure_point_sources(image, truth, DEMO_FILTER, seeing_arcsec=float(seeing))
    disc = truth["disc"]
    velocity = measure_line_velocity(cube, disc["ra"], disc["dec"], disc["line_rest_wavelength"]["Halpha"],
                                     disc["velocity_kms"])
    # Without FLUX_SCALE in the OFFSET_LIST the combined flux is the truth times the mean transparency.
    transparency = float(np.mean([e["transparency"] for e in truth["exposures"] if e["kind"] == "OBJECT"]))
    return {"image": image, "cube": cube, "stars": stars, "velocity": velocity,
            "velocity_true": disc["velocity_kms"], "transparency": transparency}


def report(result) -> str:
    stars = result["stars"]
    lines = [f"Final cube:  {result['cube']}", f"Final image: {result['image']}"]
    if len(stars):
        offsets = np.asarray(stars["offset"])
        ratios = np.asarray(stars["flux_ratio"]) / result["transparency"]
        lines.append(f"Point sources measured in the {DEMO_FILTER} image: {len(stars)}")
        lines.append(f"  position error vs truth: median {np.median(offsets):.3f}\", max {offsets.max():.3f}\" "
                     "(spaxel 0.2\")")
        lines.append(f"  flux / (true flux x mean transparency {result['transparency']:.3f}): median "
                     f"{np.median(ratios):.3f}, range {ratios.min():.3f}-{ratios.max():.3f}")
    else:
        lines.append("No point source could be measured in the final image.")
    lines.append(f"H-alpha velocity of the disc centre: {result['velocity']:.1f} km/s "
                 f"(simulated {result['velocity_true']:.1f} km/s topocentric; the pipeline's barycentric "
                 "correction shifts it by up to +-30 km/s)")
    return "\n".join(lines)


def run_demo(workdir=None, *, seed=1, ifus=(1,), overwrite=False):
    """Simulate, reduce and compare. Returns (MusePipe, comparison dict)."""
    from .musepipe import MusePipe
    from .simulate import simulate_run

    ensure_pipeline()
    workdir = Path(workdir or f"pymusepipe_demo_{datetime.datetime.now():%Y%m%d_%H%M%S}").absolute()
    start = time.monotonic()
    logger.info("simulating a MUSE observing run (IFUs %s) in %s", ",".join(map(str, ifus)), workdir)
    run = simulate_run(workdir, ifus=tuple(ifus), seed=seed, overwrite=overwrite)
    simulated = time.monotonic() - start
    pipe = MusePipe(run.target, 1, run.rc_file, run.cal_file, logfile="demo.log", reset_log=True,
                    filter_list=f"white,{DEMO_FILTER}", filter_for_alignment=DEMO_FILTER)
    pipe.run_all_recipes()   # ends by refreshing the HTML report (pipe.report_page)
    result = compare_with_truth(pipe, run.truth)
    result["seconds_simulation"] = simulated
    result["seconds_total"] = time.monotonic() - start
    return pipe, result


def run(args) -> int:
    from .musepipe import StepFailedError, StepInputError

    try:
        ifus = tuple(int(part) for part in str(args.ifus).split(",") if part.strip())
    except ValueError:
        print(f"--ifus {args.ifus!r}: expected IFU numbers separated by commas", file=sys.stderr)
        return 2
    try:
        pipe, result = run_demo(args.workdir, seed=args.seed, ifus=ifus, overwrite=args.overwrite)
    except (StepFailedError, StepInputError, RuntimeError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    print()
    print(pipe.status())
    print()
    print(report(result))
    print(f"Replay log:  {pipe.engine.log.path}")
    if pipe.report_page is not None:
        print(f"Report:      {pipe.report_page}")
    print(f"Tables:      {pipe.layout.folder('astro_tables')}")
    print(f"Total time:  {result['seconds_total']:.0f} s (simulation {result['seconds_simulation']:.0f} s)")
    return 0
