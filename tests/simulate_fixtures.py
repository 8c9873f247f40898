"""Shared, session-scoped fixtures of the simulator tests: one default simulated run, and the CCD-level
recipes (bias, flat, wavecal, scibasic) run once on it with the real esorex.

Import the fixtures into a test module with ``from simulate_fixtures import *``.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["simulated_run", "frames_by_kind", "ccd_products", "run_esorex"]


def run_esorex(recipe, outdir: Path, inputs, *params, timeout=900) -> Path:
    """Run ``recipe`` on ``inputs`` (list of (path, tag)) with its products in ``outdir``; fail the test
    with the end of the log when esorex fails."""
    outdir.mkdir(parents=True, exist_ok=True)
    sof = outdir / f"{recipe}.sof"
    sof.write_text("".join(f"{path} {tag}\n" for path, tag in inputs))
    cmd = ["esorex", f"--log-dir={outdir}", f"--log-file={recipe}.log", f"--output-dir={outdir}", recipe,
           *params, str(sof)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    # esorex's terminal output holds the INFO messages its --log-file may leave out
    (outdir / f"{recipe}.out").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed (rc={result.returncode}):\n{result.stdout[-4000:]}")
    return outdir


@pytest.fixture(scope="session")
def simulated_run(tmp_path_factory):
    """The default run (1 IFU, 1 pointing, 2 OBJECT exposures, seed 1); its 0.6 GB are removed at the end."""
    from pymusepipe.simulate import simulate_run
    run = simulate_run(tmp_path_factory.mktemp("simulate") / "run")
    yield run
    shutil.rmtree(run.root, ignore_errors=True)


@pytest.fixture(scope="session")
def frames_by_kind(simulated_run):
    """kind -> list of (absolute path, truth entry) in observing order."""
    out = {}
    for entry in simulated_run.truth["exposures"]:
        out.setdefault(entry["kind"], []).append((simulated_run.root / entry["file"], entry))
    return out


@pytest.fixture(scope="session")
def ccd_products(simulated_run, frames_by_kind, tmp_path_factory):
    """MASTER_BIAS, TRACE_TABLE, WAVECAL_TABLE, TWILIGHT_CUBE and an OBJECT pixel table of IFU 1 from the
    real recipes.

    The big intermediate images are deleted as soon as they are no longer needed.
    """
    work = tmp_path_factory.mktemp("simulate_recipes")
    calib = simulated_run.musecalib
    bias = run_esorex("muse_bias", work / "bias", [(p, "BIAS") for p, _ in frames_by_kind["BIAS"]], "--nifu=1")
    master_bias = (bias / "MASTER_BIAS-01.fits", "MASTER_BIAS")
    flat = run_esorex("muse_flat", work / "flat", [(p, "FLAT") for p, _ in frames_by_kind["FLAT"]]
                      + [master_bias], "--nifu=1")
    trace = (flat / "TRACE_TABLE-01.fits", "TRACE_TABLE")
    wave = run_esorex("muse_wavecal", work / "wavecal", [(p, "ARC") for p, _ in frames_by_kind["ARC"]]
                      + [master_bias, trace, (calib / "line_catalog.fits", "LINE_CATALOG")], "--nifu=1")
    wavecal = (wave / "WAVECAL_TABLE-01.fits", "WAVECAL_TABLE")
    obj_path, obj_truth = frames_by_kind["OBJECT"][0]
    sci = run_esorex("muse_scibasic", work / "scibasic",
                     [(obj_path, "OBJECT"), master_bias, (flat / "MASTER_FLAT-01.fits", "MASTER_FLAT"), trace,
                      wavecal, (calib / "geometry_table_wfm.fits", "GEOMETRY_TABLE")],
                     "--nifu=1", "--saveimage=false")
    twilight = run_esorex("muse_twilight", work / "twilight",
                          [(p, "SKYFLAT") for p, _ in frames_by_kind["SKYFLAT"]]
                          + [(frames_by_kind["ILLUM"][0][0], "ILLUM"), master_bias,
                             (flat / "MASTER_FLAT-01.fits", "MASTER_FLAT"), trace, wavecal,
                             (calib / "geometry_table_wfm.fits", "GEOMETRY_TABLE"),
                             (calib / "vignetting_mask.fits", "VIGNETTING_MASK")])
    (flat / "MASTER_FLAT-01.fits").unlink()
    products = {"twilight_cube": twilight / "TWILIGHT_CUBE.fits", "twilight_log": twilight / "muse_twilight.out","master_bias": bias / "MASTER_BIAS-01.fits", "trace_table": trace[0],
                "wavecal_table": wavecal[0], "pixtable": sci / "PIXTABLE_OBJECT_0001-01.fits",
                "scibasic_log": sci / "muse_scibasic.out", "object_truth": obj_truth}
    yield products
    for key in ("master_bias", "pixtable"):
        products[key].unlink(missing_ok=True)
