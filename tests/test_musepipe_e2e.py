"""End to end: the simulated run reduced by MusePipe through the real ESO recipes.

One simulated dataset (1 IFU, 2 dithered OBJECT exposures with pointing errors, SKY, STD) is reduced once by
``run_all_recipes`` (module fixture); the tests then check the products against the truth, replay the shell
log from a fresh copy of the raw data, and compare with a fakemode run. A second, small run checks that a
failing recipe stops the chain and that a rerun resumes.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from astropy.io import fits

from pymusepipe.config import read_calib_file
from pymusepipe.demo import DEMO_FILTER, compare_with_truth, final_products
from pymusepipe.musepipe import STEPS, MusePipe, StepFailedError
from pymusepipe.truthcheck import predicted_rv_corrections

pytestmark = pytest.mark.esorex

FILTERS = f"white,{DEMO_FILTER}"


def _pipe(run, **kwargs):
    return MusePipe(run.target, 1, run.rc_file, run.cal_file, filter_list=FILTERS,
                    filter_for_alignment=DEMO_FILTER, **kwargs)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from pymusepipe.simulate import simulate_run

    return simulate_run(tmp_path_factory.mktemp("e2e") / "sim", seed=3)


@pytest.fixture(scope="module")
def fake_pipe(simulated):
    """A fakemode run on the pristine data, before the real one."""
    pipe = _pipe(simulated, fakemode=True, logfile="fake.log", reset_log=True)
    pipe.run_all_recipes()
    return pipe


@pytest.fixture(scope="module")
def reduced(simulated, fake_pipe):
    pipe = _pipe(simulated, logfile="real.log", reset_log=True)
    pipe.run_all_recipes()
    return pipe


@pytest.fixture(scope="module")
def comparison(reduced, simulated):
    return compare_with_truth(reduced, simulated.truth)


def _esorex_commands(log_path, root):
    commands = []
    for line in open(log_path):
        line = line.removeprefix("# [fakemode] ").strip()
        match = re.search(r"(esorex .*)\)?$", line)
        if match and not line.startswith("#"):
            commands.append(match.group(1).rstrip(")").replace(str(root), "ROOT"))
    return commands


def test_fakemode_writes_commands_and_creates_no_product(fake_pipe, simulated):
    object_folder = fake_pipe.layout.folder("object")
    assert not any(object_folder.glob("*.fits"))
    assert not any(fake_pipe.layout.folder("master").rglob("*.fits"))
    assert all(step.status in ("planned", "skipped") for step in fake_pipe.steps.values())
    assert len(_esorex_commands(fake_pipe.engine.log.path, simulated.root)) >= 14


def test_every_step_ran_and_registered_its_products(reduced):
    statuses = {name: step.status for name, step in reduced.steps.items()}
    assert list(statuses) == list(STEPS)
    assert all(status in ("done", "skipped") for status in statuses.values()), statuses
    for name in ("bias", "flat", "wave", "lsf", "twilight", "scibasic_all", "standard", "sky", "prep_align",
                 "align_bypointing", "scipost", "scipost_sky", "combine_pointing"):
        assert statuses[name] == "done", name
    registered = {record.path for record in reduced.engine.catalogue.records if record.status == "done"}
    for step in reduced.steps.values():
        if step.report is None:
            continue
        for path in step.report.products():
            assert os.path.isfile(path), path
            assert str(path) in registered
    tables = reduced.layout.folder("astro_tables")
    assert (tables / "RAW_rawfiles_list_table.fits").is_file()
    assert any(tables.glob("muse_scipost*"))


def test_exp_align_offsets_accepted_and_match_pointing_errors(reduced, simulated):
    assert reduced.offset_list is not None, "muse_exp_align's OFFSET_LIST was rejected by its QC"
    table = fits.getdata(reduced.offset_list, 1)
    exposures = {e["date_obs"][:23]: e for e in simulated.truth["exposures"] if e["kind"] == "OBJECT"}
    first = exposures[min(exposures)]
    for row in table:
        truth = exposures[row["DATE_OBS"][:23]]
        # Relative to the first exposure, offset = pointing error difference (RA without cos dec).
        expected_ra = truth["pointing_error_deg"]["ra"] - first["pointing_error_deg"]["ra"]
        expected_dec = truth["pointing_error_deg"]["dec"] - first["pointing_error_deg"]["dec"]
        cos_dec = np.cos(np.radians(truth["dec_true"]))
        assert abs(row["RA_OFFSET"] - expected_ra) * 3600 * cos_dec < 0.05
        assert abs(row["DEC_OFFSET"] - expected_dec) * 3600 < 0.05


def test_combined_cube_sources_at_true_positions_and_fluxes(comparison):
    result = comparison
    stars, offsets = result["stars"], result["offsets"]
    assert len(stars) >= 5, f"only {len(stars)} point sources measurable in {result['image']}"
    # Positions: muse_scipost / muse_exp_combine resample the one-IFU strip (slices 1+1/24 spaxel apart) onto
    # a 0.2" grid anchored on its lowest slice, which moves every star south by a few hundredths of an arcsec;
    # float32 RA limits anchor the columns to within 0.025" (docs/simulator.md). About that common shift
    # the stars sit within 0.02" of the truth.
    assert offsets["scatter_max"] < 0.02, stars
    assert -0.05 < offsets["shift_dec"] < 0.005 and abs(offsets["shift_ra"]) < 0.026, offsets
    # No FLUX_SCALE in muse_exp_align's OFFSET_LIST: the combined flux is the truth times the mean transparency.
    assert np.all(np.abs(stars["flux_ratio"] - 1) < 0.05), stars["flux_ratio"]


def test_barycentric_correction_and_velocity_field(comparison, simulated):
    result = comparison
    predicted, applied = result["rv_predicted"], result["rv_applied"]
    assert set(applied) == set(predicted)
    as_pipeline = predicted_rv_corrections(simulated.truth, fits.getheader(result["cube"]), as_pipeline=True)
    for date_obs, value in applied.items():
        # MUSE 2.8.7 mirrors the site longitude (truthcheck.predicted_rv_corrections): exact to 10 m/s that
        # way, and within the diurnal term (< 0.85 km/s) of the physical correction
        assert value == pytest.approx(as_pipeline[date_obs], abs=0.01)
        assert abs(value - predicted[date_obs]) < 0.85
    velocity = result["velocity"]
    assert velocity is not None and velocity["n"] >= 20, result["velocity_field"]
    assert velocity["model_max"] - velocity["model_min"] > 50          # the field spans the rotation
    assert velocity["median_abs_error"] <= 3.0, result["velocity_field"]


def test_replaying_the_log_from_fresh_raw_data_reproduces_the_cube(reduced, simulated, tmp_path):
    pointing = reduced.layout.pointing_dir
    _, cube = final_products(reduced)
    first = pointing.parent / "first_reduction"
    pointing.rename(first)
    try:
        (pointing / "Raw").parent.mkdir()
        shutil.copytree(first / "Raw", pointing / "Raw")
        log = first / "Log" / "real.log"
        result = subprocess.run(["bash", str(log)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        replayed = fits.getdata(cube, "DATA")
        original = fits.getdata(first / cube.relative_to(pointing), "DATA")
        assert replayed.shape == original.shape
        finite = np.isfinite(original)
        assert np.array_equal(finite, np.isfinite(replayed))
        np.testing.assert_allclose(replayed[finite], original[finite], rtol=1e-5, atol=1e-3)
    finally:
        shutil.rmtree(pointing, ignore_errors=True)
        first.rename(pointing)


def test_fakemode_commands_are_the_real_ones(reduced, fake_pipe, simulated):
    real = _esorex_commands(reduced.engine.log.path, simulated.root)
    fake = _esorex_commands(fake_pipe.engine.log.path, simulated.root)
    assert real == fake


def test_failing_recipe_stops_the_chain_and_rerun_resumes(simulated, tmp_path):
    """A broken LINE_CATALOG makes muse_wavecal fail; fixing it and rerunning redoes only what is needed."""
    root = tmp_path / "data"
    raw = root / simulated.target / "P01" / "Raw"
    shutil.copytree(simulated.root / simulated.target / "P01" / "Raw", raw, copy_function=os.link)
    calib = tmp_path / "calib"
    shutil.copytree(simulated.musecalib, calib)
    catalog = calib / read_calib_file(simulated.cal_file)["line_catalog"]
    good = catalog.read_bytes()
    with fits.open(catalog, mode="update") as hdul:
        hdul[0].header["VERSION"] = 1          # the recipe requires VERSION = 3
    pipe = MusePipe(simulated.target, 1, musecalib=calib, root=root, logfile="fail.log",
                    calib_tables={"line_catalog": catalog.name})
    with pytest.raises(StepFailedError) as info:
        pipe.run_all_recipes(last="wave")
    message = str(info.value)
    assert "muse_wavecal" in message
    assert "tail of the esorex log" in message and "[ ERROR ]" in message
    assert pipe.steps["bias"].status == "done" and pipe.steps["flat"].status == "done"
    assert "lsf" not in pipe.steps
    catalog.write_bytes(good)
    again = MusePipe(simulated.target, 1, musecalib=calib, root=root, logfile="fail.log",
                     calib_tables={"line_catalog": catalog.name})
    again.run_all_recipes(last="wave")
    assert again.steps["bias"].report.with_status("uptodate")
    assert again.steps["flat"].report.with_status("uptodate")
    assert again.steps["wave"].report.with_status("done")


def test_html_report_of_the_reduced_run_links_real_figures(reduced):
    import urllib.parse

    page = reduced.make_report()
    text = page.read_text()
    images = re.findall(r"<img src='([^']+)'", text)
    assert len(images) >= 8, images
    for link in images:
        path = page.parent / urllib.parse.unquote(link)
        assert path.is_file(), path
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path
