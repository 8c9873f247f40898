"""Real MUSE programme shapes reduced through the real ESO recipes, checked against the simulator's truth.

One two-night programme (``pymusepipe.simulate.example_programme``, 1 IFU) holds the shapes real data come in:

* ``DEMO``: one OB with an offset-sky exposure;
* ``NOSKY``: one OB without offset sky (the sky is measured on the object exposures);
* ``TWONIGHTS``: one pointing observed on both nights (its own calibrations, pointing errors, seeing and
  transparency each night; no offset sky the second night);
* ``MOSAIC``: three overlapping pointings over the two nights, aligned to a reference image.

It is reduced **once**, as one sample graph on a Dask LocalCluster (``MuseSample``): each night's calibrations
are made once and used by every target. The tests then read products and tables. Two smaller reductions build
on it: an archive download holding master calibrations instead of raw ones (the same science frames), and a
new session resuming the reduction.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from pymusepipe.demo import DEMO_FILTER
from pymusepipe.musepipe import MusePipe
from pymusepipe.truthcheck import measure_point_sources, sky_line_residuals, summarize_offsets

pytestmark = pytest.mark.esorex

FILTERS = f"white,{DEMO_FILTER}"


@pytest.fixture(scope="session")
def programme(tmp_path_factory):
    from pymusepipe.simulate import example_programme, simulate_programme

    root = tmp_path_factory.mktemp("programme") / "data"
    run = simulate_programme(root, example_programme(seed=5))
    yield run
    # A failing run is easier to study with its data: PYMUSEPIPE_KEEP_TEST_DATA=1 keeps it.
    if not os.environ.get("PYMUSEPIPE_KEEP_TEST_DATA"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def sample(programme):
    """Every target reduced as one graph through Dask (2 workers of 1 core: this machine's 2 cores)."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    from pymusepipe.dask_executor import local_cluster
    from pymusepipe.sample import MuseSample

    mosaic = programme.targets["MOSAIC"]["reference_image"]
    with local_cluster(n_workers=2, cpus_per_worker=1, memory_gb_per_worker=9.0) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(2)
        # No filter_for_alignment: MOSAIC is aligned in its reference's band (SDSS r), the others in Cousins R
        # (forcing Cousins R against the SDSS r reference put a 2-3.5 % colour term into the flux scales)
        reduction = MuseSample(["DEMO", "NOSKY", "TWONIGHTS", "MOSAIC"], programme.rc_file, programme.cal_file,
                               references={"MOSAIC": programme.root / mosaic["file"]}, executor="dask",
                               client=client, filter_list=FILTERS, pointing_cubes=True, logfile="sample.log",
                               reset_log=True)
        reduction.run_all_recipes()
    return reduction


def _truth(programme, target):
    return programme.targets[target]


def _exposures(truth, kind="OBJECT"):
    return [entry for entry in truth["exposures"] if entry["kind"] == kind]


def _pointing_image(pipe, label=None):
    label = label or f"{pipe.targetname}_{pipe.layout.pointing_name}"
    return pipe.layout.folder("object") / f"IMAGE_FOV_{DEMO_FILTER}_{label}.fits"


def _exposure_images(*pipes):
    """The single exposures' images (muse_scipost's IMAGE_FOV in the demo filter) of the pointings, from their
    product tables."""
    return [frame.path for pipe in pipes for frame in
            pipe.context().products("IMAGE_FOV", step="scipost", qualifier=DEMO_FILTER, area=pipe.layout)]


def _stars(image, truth, transparency=1.0, exposure_images=()):
    """The true stars measured in ``image``; their ``edge_distance`` also to the edges of ``exposure_images``."""
    seeing = float(np.median([e["seeing_fwhm_arcsec"] for e in _exposures(truth)]))
    return measure_point_sources(image, truth, DEMO_FILTER, seeing_arcsec=seeing, transparency=transparency,
                                 exposure_images=exposure_images)


#: Star-to-star flux scatter allowed on a one-IFU strip beyond the measurement noise, for stars at least one FWHM
#: inside every exposure: each row of a strip is a different slice, and real MUSE slices keep relative throughput
#: residuals of a few per cent after the flat, twilight and illumination corrections (what muse_scipost's
#: --autocalib is for, not used here). Measured on these strips: 0.966-1.034 (docs/simulator.md, "Star fluxes
#: across a one-IFU strip").
SLICE_FLUX_RESIDUAL = 0.05


def _check_stars(stars, *, tolerance_flux):
    """Positions: within 0.02" (median) of the truth about their common shift, none beyond a quarter spaxel, and
    that shift the one ESO's resampling of a one-IFU strip gives (south by a few hundredths of an arcsec: slices
    1+1/24 spaxel apart resampled onto a 0.2" grid; RA anchored on float32 limits, docs/simulator.md).
    Fluxes, of the stars whose profile lies inside the field of every exposure (at least one FWHM from its
    edges): their median within ``tolerance_flux`` of the expected flux (the calibration), and each within
    :data:`SLICE_FLUX_RESIDUAL` plus three times its own measurement noise (faint stars are noise-limited). A
    star closer to the edge of a 2.5"-high strip has part of its profile cut off in some exposure and its flux
    rests on the wings of the fitted Gaussian and on how the exposures' edges were combined: its position is
    checked, its flux is not."""
    assert len(stars) >= 5, f"only {len(stars)} stars measurable"
    offsets = summarize_offsets(stars)
    assert offsets["scatter_median"] <= 0.02 and offsets["scatter_max"] < 0.05, offsets
    assert -0.05 < offsets["shift_dec"] < 0.005 and abs(offsets["shift_ra"]) < 0.026, offsets
    ratios, errors = np.asarray(stars["flux_ratio"]), np.asarray(stars["ratio_error"])
    inside = np.asarray(stars["edge_distance"]) >= np.asarray(stars["fwhm"])
    assert inside.sum() >= 3, f"only {inside.sum()} stars at least one FWHM inside the field"
    # The calibration is judged on the stars whose profile lies inside every exposure: on a 2.5"-high strip
    # most stars are within a FWHM of some exposure's edge, and how many are depends on the draw (a
    # three-pointing mosaic of another draw: 0.970 over all its stars, 0.985 over the 17 inside ones).
    assert abs(np.median(ratios[inside]) - 1) < tolerance_flux, np.round([ratios, inside], 3)
    allowed = max(tolerance_flux, SLICE_FLUX_RESIDUAL) + 3 * errors[inside]
    assert np.all(np.abs(ratios - 1)[inside] < allowed), np.round([ratios[inside], errors[inside]], 3)


def _transparency(truth):
    """Exposure-time weighted mean transparency: without FLUX_SCALE the combined flux is the truth times it."""
    exposures = _exposures(truth)
    return float(np.average([e["transparency"] for e in exposures], weights=[e["exptime"] for e in exposures]))


# ------------------------------------------------------------------------------------------ calibrations
def test_each_night_is_calibrated_once_and_its_science_uses_its_own_masters(sample, programme):
    root = Path(programme.root)
    nights = sorted(path.name for path in (root / "Calibrations").iterdir() if path.name[:2] == "20")
    assert nights == ["2026-03-14", "2026-03-15"]
    for night in nights:
        jobs = Table.read(root / "Calibrations" / night / "Astro_Tables" / "muse_bias_jobs.fits")
        assert len(jobs) == 1 and jobs["status"][0] == "done", night   # once, whatever target holds the frames
    # Every science exposure's pixel table was made with the masters of its own night.
    for target in ("DEMO", "NOSKY", "TWONIGHTS", "MOSAIC"):
        truth = _truth(programme, target)
        nights_of = {entry["date_obs"]: entry["night_date"] for entry in _exposures(truth)}
        for pipe in sample.targets[target].pipes.values():
            jobs = Table.read(pipe.layout.folder("astro_tables") / "muse_scibasic_jobs.fits")
            for row in jobs:
                inputs = json.loads(row["inputs"])
                date_obs = fits.getheader(root / inputs[0])["DATE-OBS"]
                if date_obs not in nights_of:
                    continue
                calibrations = json.loads(row["calibrations"])
                for tag in ("MASTER_BIAS", "MASTER_FLAT", "WAVECAL_TABLE", "TWILIGHT_CUBE"):
                    (path,) = calibrations[tag]["paths"]
                    assert path.startswith(f"Calibrations/{nights_of[date_obs]}/"), (row["job"], tag, path)


# ------------------------------------------------------------------------------------------ DEMO: offset sky
def test_offset_sky_pointing_stars_at_true_positions_and_fluxes(sample, programme):
    truth = _truth(programme, "DEMO")
    pipe = sample.targets["DEMO"].pipes[1]
    assert pipe.steps["sky"].status == "done" and "offset-sky" in pipe.steps["sky"].summary
    # muse_exp_align measures no flux scale: the combined flux is the truth times the mean transparency.
    _check_stars(_stars(_pointing_image(pipe), truth, _transparency(truth), _exposure_images(pipe)),
                 tolerance_flux=0.03)


def test_velocity_field_of_the_disc_and_the_barycentric_correction(sample, programme):
    from pymusepipe.demo import compare_with_truth
    from pymusepipe.truthcheck import predicted_rv_corrections

    from pymusepipe.truthcheck import measure_velocity_field, summarize_velocity_field

    truth = _truth(programme, "DEMO")
    result = compare_with_truth(sample.targets["DEMO"].pipes[1], truth)
    predicted, applied = result["rv_predicted"], result["rv_applied"]
    assert set(applied) == set(predicted)
    as_pipeline = predicted_rv_corrections(truth, fits.getheader(result["cube"]), as_pipeline=True)
    for date_obs, value in applied.items():
        # MUSE 2.8.7 mirrors the site longitude (truthcheck.predicted_rv_corrections): exact to 10 m/s that
        # way, and within the diurnal term (< 0.85 km/s) of the physical correction.
        assert value == pytest.approx(as_pipeline[date_obs], abs=0.01)
        assert abs(value - predicted[date_obs]) < 0.85
    # The velocity field along the strip: apertures 0.6" wide through the whole one-IFU strip (13 spaxels). In
    # smaller apertures ESO's drizzle adds a row-to-row pattern of +-2-3 km/s (slices 1+1/24 spaxel apart on a
    # 0.2" grid; docs/simulator.md, "The velocity field"), which averages out over the strip.
    field = measure_velocity_field(result["cube"], truth, rv_correction_kms=result["rv_correction"],
                                   bin_spaxels=(3, 13))
    velocity = summarize_velocity_field(field)
    assert velocity["n"] >= 10, field
    assert velocity["model_max"] - velocity["model_min"] > 50          # the field spans the rotation
    assert velocity["median_abs_error"] <= 3.0, field


# ------------------------------------------------------------------------------------------ NOSKY
def test_sky_measured_on_the_object_leaves_small_residuals_at_the_bright_lines(sample, programme):
    truth = _truth(programme, "NOSKY")
    pipe = sample.targets["NOSKY"].pipes[1]
    assert "measured on 2 object exposure(s)" in pipe.steps["sky"].summary
    jobs = Table.read(pipe.layout.folder("astro_tables") / "muse_create_sky_jobs.fits")
    assert all("measured on the object exposure itself" in note for note in jobs["note"])
    cube = pipe.layout.folder("object") / f"DATACUBE_FINAL_NOSKY_{pipe.layout.pointing_name}.fits"
    residuals = sky_line_residuals(cube, truth)
    bright = residuals[residuals["injected"] >= 0.2 * residuals["injected"].max()]
    assert len(bright) >= 5
    assert np.all(np.abs(bright["residual"]) < 0.05 * bright["injected"]), bright
    _check_stars(_stars(_pointing_image(pipe), truth, _transparency(truth), _exposure_images(pipe)),
                 tolerance_flux=0.03)


# ------------------------------------------------------------------------------------------ TWONIGHTS
def test_two_nights_one_offset_list_covering_every_exposure(sample, programme):
    truth = _truth(programme, "TWONIGHTS")
    pipe = sample.targets["TWONIGHTS"].pipes[1]
    exposures = {entry["date_obs"][:23]: entry for entry in _exposures(truth)}
    assert len({entry["night_date"] for entry in exposures.values()}) == 2
    table = fits.getdata(pipe.offset_list, 1)
    assert {row["DATE_OBS"][:23] for row in table} == set(exposures)
    first = exposures[min(exposures)]
    for row in table:
        entry = exposures[row["DATE_OBS"][:23]]
        expected_ra = entry["pointing_error_deg"]["ra"] - first["pointing_error_deg"]["ra"]
        expected_dec = entry["pointing_error_deg"]["dec"] - first["pointing_error_deg"]["dec"]
        cos_dec = np.cos(np.radians(entry["dec_true"]))
        assert abs(row["RA_OFFSET"] - expected_ra) * 3600 * cos_dec < 0.05, row["DATE_OBS"]
        assert abs(row["DEC_OFFSET"] - expected_dec) * 3600 < 0.05, row["DATE_OBS"]
    # Combination reads every exposure of both nights.
    combine = Table.read(pipe.layout.folder("astro_tables") / "muse_exp_combine_jobs.fits")
    (row,) = combine
    assert len(json.loads(row["inputs"])) == len(exposures)
    _check_stars(_stars(_pointing_image(pipe), truth, _transparency(truth), _exposure_images(pipe)),
                 tolerance_flux=0.03)


# ------------------------------------------------------------------------------------------ MOSAIC
def test_mosaic_on_the_reference_photometric_scale(sample, programme):
    truth = _truth(programme, "MOSAIC")
    target = sample.targets["MOSAIC"]
    assert target.steps["align_target"].status == "done" and target.steps["mosaic"].status == "done"
    offsets = fits.getdata(target.offset_list, 1)
    assert len(offsets) == len(_exposures(truth)) and np.all(np.isfinite(offsets["FLUX_SCALE"]))
    images = target.mosaic_products()["IMAGE_FOV"]
    (image,) = [path for path in images if DEMO_FILTER in path.name]
    # Flux scales applied: fluxes on the reference's (photometric) scale, no transparency factor.
    _check_stars(_stars(image, truth, exposure_images=_exposure_images(*target.pipes.values())),
                 tolerance_flux=0.02)


def test_mosaic_pointings_agree_in_their_overlaps(sample, programme):
    """Each pointing's cube on the mosaic's grid, with the flux scales of the target OFFSET_LIST, agrees with the
    others where both have data:

    * the stars both hold (at least one FWHM inside each field) have the same flux within 3 sigma: their fit
      errors and the errors of the flux scales (``FLUX_SCALE_ERR``);
    * voxel by voxel away from the stars, 95% within 3 sigma of their noise (``STAT``), once each wavelength
      plane's median difference is taken out: the pointings' skies were measured differently (an offset sky
      field at another time, or the object exposures themselves), which leaves each its own additive sky
      residual (bounded for the on-object sky by the NOSKY test). A flux-scale error would show on the disc.
    """
    truth = _truth(programme, "MOSAIC")
    target = sample.targets["MOSAIC"]
    offsets = fits.getdata(target.offset_list, 1)
    relative_scale_error = float(np.max(offsets["FLUX_SCALE_ERR"] / offsets["FLUX_SCALE"]))
    seeing = float(np.median([e["seeing_fwhm_arcsec"] for e in _exposures(truth)]))
    cubes, stars = [], []
    for pipe in target.pipes.values():
        label = f"MOSAIC_{pipe.layout.pointing_name}"
        with fits.open(pipe.layout.folder("object") / f"DATACUBE_FINAL_{label}.fits") as hdul:
            header = hdul["DATA"].header
            cubes.append((header, hdul["DATA"].data[1500:2300].astype(float),
                          hdul["STAT"].data[1500:2300].astype(float)))
        measured = measure_point_sources(_pointing_image(pipe, label), truth, DEMO_FILTER, seeing_arcsec=seeing,
                                         exposure_images=_exposure_images(pipe))
        stars.append({int(row["source"]): row for row in measured if row["edge_distance"] >= row["fwhm"]})
    assert len({(h["NAXIS1"], h["NAXIS2"], h["CRVAL1"], h["CRPIX1"]) for h, _, _ in cubes}) == 1, \
        "pointing cubes are not on one grid"
    from astropy.wcs import WCS

    celestial = WCS(cubes[0][0]).celestial
    ny, nx = cubes[0][1].shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = celestial.pixel_to_world_values(xx, yy)
    away = np.ones((ny, nx), dtype=bool)
    for source in truth["point_sources"]:
        away &= np.hypot((ra - source["ra"]) * np.cos(np.radians(dec)), dec - source["dec"]) * 3600 > 2.5
    compared_stars = compared_voxels = 0
    for i in range(len(cubes)):
        for j in range(i + 1, len(cubes)):
            for source in set(stars[i]) & set(stars[j]):
                a, b = stars[i][source], stars[j][source]
                sigma = np.sqrt(a["flux_error"] ** 2 + b["flux_error"] ** 2
                                + 2 * (relative_scale_error * 0.5 * (a["flux"] + b["flux"])) ** 2)
                assert abs(a["flux"] - b["flux"]) < 3 * sigma, (i, j, source, a["flux"], b["flux"], sigma)
                compared_stars += 1
            (_, a, va), (_, b, vb) = cubes[i], cubes[j]
            both = np.isfinite(a) & np.isfinite(b) & np.isfinite(va) & np.isfinite(vb) & away[None]
            if both.sum() < 10000:
                continue
            difference = np.where(both, a - b, np.nan)
            sky_residual = np.nanmedian(difference, axis=(1, 2))
            deviation = ((difference - sky_residual[:, None, None]) / np.sqrt(va + vb))[both]
            within = float(np.mean(np.abs(deviation) < 3))
            assert within > 0.95, (i, j, within, "sky residual difference per plane (median)",
                                   float(np.nanmedian(sky_residual)))
            compared_voxels += 1
    assert compared_voxels >= 2 and compared_stars >= 3, (compared_voxels, compared_stars)


# ------------------------------------------------------------------------------------------ sessions
def test_a_new_session_resumes_without_running_any_recipe(sample, programme):
    pipe = MusePipe("DEMO", 1, programme.rc_file, programme.cal_file, filter_list=FILTERS,
                    filter_for_alignment=DEMO_FILTER, logfile="resume.log")
    cube = pipe.layout.folder("object") / "DATACUBE_FINAL_DEMO_P01.fits"
    before = fits.getdata(cube, "DATA")
    assert pipe.offset_list == sample.targets["DEMO"].pipes[1].offset_list   # the decision, from the tables
    pipe.run_all_recipes()
    statuses = {result.status for step in pipe.steps.values() if step.report is not None
                for result in step.report.results.values()}
    assert statuses == {"uptodate"}, statuses
    assert np.array_equal(fits.getdata(cube, "DATA"), before, equal_nan=True)


@pytest.fixture(scope="session")
def masters_only(sample, programme, tmp_path_factory):
    """An archive download of DEMO's science frames with the night's masters instead of raw calibrations."""
    from pymusepipe.simulate import write_archive_masters

    root = Path(programme.root)
    other = tmp_path_factory.mktemp("archive") / "data"
    raw = other / "DEMO" / "P01" / "Raw"
    raw.mkdir(parents=True)
    for entry in _truth(programme, "DEMO")["exposures"]:
        if entry["kind"] in ("OBJECT", "SKY", "ILLUM"):
            os.link(root / entry["file"], raw / Path(entry["file"]).name)
    night = root / "Calibrations" / "2026-03-14"
    masters = []
    for table in night.glob("Astro_Tables/*_products.fits"):
        for row in Table.read(table):
            if row["tag"] in ("MASTER_BIAS", "MASTER_FLAT", "TRACE_TABLE", "WAVECAL_TABLE", "LSF_PROFILE",
                              "TWILIGHT_CUBE", "STD_RESPONSE", "STD_TELLURIC"):
                masters.append(root / row["path"])
    write_archive_masters(raw, masters)
    rc = other / "rc.dic"
    rc.write_text(f"musecalib {programme.musecalib}/\nmusecalib_time {programme.musecalib_time}/\nroot {other}/\n")
    pipe = MusePipe("DEMO", 1, rc, programme.cal_file, filter_list=FILTERS, filter_for_alignment=DEMO_FILTER,
                    logfile="masters.log", reset_log=True)
    pipe.run_all_recipes()
    return pipe


def test_a_masters_only_download_gives_the_same_cube(masters_only, sample):
    for step in ("bias", "flat", "wave", "lsf", "twilight", "standard"):
        assert masters_only.steps[step].status == "skipped", step
        assert "archive master used" in masters_only.steps[step].summary, step
    jobs = Table.read(masters_only.layout.folder("astro_tables") / "muse_scibasic_jobs.fits")
    assert all("archive master" in entry["rule"] for row in jobs
               for tag, entry in json.loads(row["calibrations"]).items() if tag == "MASTER_BIAS")
    reference = fits.getdata(sample.targets["DEMO"].pipes[1].layout.folder("object") /
                             "DATACUBE_FINAL_DEMO_P01.fits", "DATA")
    cube = fits.open(masters_only.layout.folder("object") / "DATACUBE_FINAL_DEMO_P01.fits")
    data, stat = cube["DATA"].data, cube["STAT"].data
    both = np.isfinite(reference) & np.isfinite(data)
    assert both.mean() > 0.9 * np.isfinite(reference).mean()
    deviation = (data[both] - reference[both]) / np.sqrt(stat[both])
    assert np.percentile(np.abs(deviation), 99) < 0.5   # the same masters and frames: far within the noise


def test_the_replay_log_redoes_the_reduction_from_a_fresh_copy_of_raw(masters_only, tmp_path):
    pointing = masters_only.layout.pointing_dir
    cube = masters_only.layout.folder("object") / "DATACUBE_FINAL_DEMO_P01.fits"
    first = pointing.parent / "first_reduction"
    pointing.rename(first)
    try:
        (pointing / "Raw").parent.mkdir()
        shutil.copytree(first / "Raw", pointing / "Raw")
        result = subprocess.run(["bash", str(first / "Log" / "masters.log")], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        replayed = fits.getdata(cube, "DATA")
        original = fits.getdata(first / cube.relative_to(pointing), "DATA")
        finite = np.isfinite(original)
        assert np.array_equal(finite, np.isfinite(replayed))
        np.testing.assert_allclose(replayed[finite], original[finite], rtol=1e-5, atol=1e-3)
    finally:
        shutil.rmtree(pointing, ignore_errors=True)
        first.rename(pointing)


def test_fakemode_writes_the_same_esorex_commands_as_the_real_run(sample, programme):
    """A dry run on the reduced data plans every job again and writes, commented out, the very commands the
    real run wrote (threads aside); it creates nothing."""
    import re

    real_log = Path(sample.engine.log.path).read_text()
    fake = MusePipe("NOSKY", 1, programme.rc_file, programme.cal_file, filter_list=FILTERS,
                    filter_for_alignment=DEMO_FILTER, fakemode=True, logfile="fake.log", reset_log=True)
    before = sorted(str(path) for path in fake.layout.pointing_dir.rglob("*") if path.is_file())
    fake.run_all_recipes()
    fake_log = fake.engine.log.path.read_text()

    def commands(text, prefix=""):
        """The esorex command lines of a log (what follows the replay log's runner function)."""
        found = set()
        for line in text.splitlines():
            match = re.search(r"pymusepipe_run (esorex .*)\)$", line.removeprefix(prefix))
            if match:
                found.add(match.group(1))
        return found

    planned = commands(fake_log, "# [fakemode] ")
    assert len(planned) >= 10 and planned <= commands(real_log), planned - commands(real_log)
    after = sorted(str(path) for path in fake.layout.pointing_dir.rglob("*") if path.is_file())
    assert set(before) <= set(after) and set(after) - set(before) <= {str(fake.engine.log.path)}


def test_a_failing_recipe_stops_its_dependents_and_a_rerun_resumes(programme, tmp_path):
    """A broken LINE_CATALOG makes muse_wavecal fail; what depends on it is skipped, the rest ran; fixing it
    and rerunning redoes only what is needed."""
    from pymusepipe.config import read_calib_file
    from pymusepipe.musepipe import StepFailedError

    root = tmp_path / "data"
    raw = root / "DEMO" / "P01" / "Raw"
    shutil.copytree(Path(programme.root) / "DEMO" / "P01" / "Raw", raw, copy_function=os.link)
    calib = tmp_path / "calib"
    shutil.copytree(programme.musecalib, calib)
    catalog = calib / read_calib_file(programme.cal_file)["line_catalog"]
    good = catalog.read_bytes()
    with fits.open(catalog, mode="update") as hdul:
        hdul[0].header["VERSION"] = 1          # the recipe requires VERSION = 3
    pipe = MusePipe("DEMO", 1, musecalib=calib, root=root, logfile="fail.log",
                    calib_tables={"line_catalog": catalog.name})
    with pytest.raises(StepFailedError) as info:
        pipe.run_all_recipes(last="wave")
    # One line naming the job and the first real cause; every failed job's log tail in ``details``.
    message = str(info.value)
    assert "muse_wavecal" in message and "VERSION = 1 is wrong" in message and "\n" not in message, message
    assert "tail of the esorex log" in info.value.details and "[ ERROR ]" in info.value.details
    assert pipe.steps["bias"].status == "done" and pipe.steps["flat"].status == "done"
    assert pipe.steps["wave"].status == "failed"
    catalog.write_bytes(good)
    again = MusePipe("DEMO", 1, musecalib=calib, root=root, logfile="fail.log",
                     calib_tables={"line_catalog": catalog.name})
    again.run_all_recipes(last="wave")
    assert again.steps["bias"].report.with_status("uptodate")
    assert again.steps["flat"].report.with_status("uptodate")
    assert again.steps["wave"].report.with_status("done")


# ------------------------------------------------------------------------------------------ report
def test_the_report_of_the_whole_sample_loads_in_chromium(sample, programme, tmp_path):
    """The sample's run ends with its report: from the overview page every page of every pointing, night and
    target is reached by links, each image loaded and each link resolving (Issue 15). Screenshots go to
    ``$PYMUSEPIPE_SCREENSHOTS`` when set."""
    from test_report_browser import BROWSER_AVAILABLE, BROWSER_MISSING, _crawl, headless_chromium

    if not BROWSER_AVAILABLE:
        pytest.skip(BROWSER_MISSING)
    assert sample.report_page is not None and sample.report_page.is_file()
    screenshots = Path(os.environ.get("PYMUSEPIPE_SCREENSHOTS") or tmp_path)
    screenshots.mkdir(parents=True, exist_ok=True)
    with headless_chromium() as driver:
        pages = _crawl(driver, sample.report_page, screenshots, "programme")
    root = Path(programme.root).resolve()
    reached = {str(page.relative_to(root)) for page in pages}
    expected = {"Figures/index.html"}
    for name, target in sample.targets.items():
        expected |= {str(pipe.layout.folder("figures").resolve().relative_to(root) / "index.html")
                     for pipe in target.pipes.values()}
    expected |= {f"Calibrations/{night['date']}/Figures/index.html" for night in
                 json.loads(Path(programme.programme_file).read_text())["nights"]}
    expected.add("MOSAIC/Combined/Figures/index.html")
    assert expected <= reached, sorted(expected - reached)
    # every pointing page shows its figures (the final cube's white light, spectra, sky, offsets at least)
    for name, target in sample.targets.items():
        for pipe in target.pipes.values():
            assert pages[(pipe.layout.folder("figures") / "index.html").resolve()] >= 4, pipe.layout.name
