"""The simulator without esorex: instrument model, calibration kit, detector read-out, option checks,
headers, truth and determinism."""
import argparse
import json
import shutil

import numpy as np
import pytest
from astropy.io import fits

from pymusepipe.simulate import (InstrumentModel, SimulationError, calibkit, command, data_checksums,
                                 detector, render, simulate_run, spectra)
from pymusepipe.simulate.model import (RAW_NX, RAW_NY, SLICES_PER_CCD, TRIMMED_NX, TRIMMED_NY,
                                       DetectorModel)
from simulate_fixtures import frames_by_kind, simulated_run  # noqa: F401 (fixtures)


# -- instrument model --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return InstrumentModel(ifus=(1,))


def test_slice_layout_meets_muse_flat_constraints(model):
    layout = model.layout(1)
    rows = np.arange(0, TRIMMED_NY, 64.0)
    centres = np.array([layout.trace_centre(k, rows) for k in range(SLICES_PER_CCD)]) + 1   # 1-based
    assert centres.min() > 56 and centres.max() < TRIMMED_NX - 55       # +/-55 px trace windows on the CCD
    assert 72.2 < layout.width[0] < 82.2                                # first-slice width test
    assert np.diff(layout.centre).min() > 72.2 and layout.width.max() < 100
    assert layout.centre[0] - layout.width[0] / 2 < 200                  # first edge in the search region


def test_wavelength_solution_increasing_with_muse_dispersion(model):
    layout = model.layout(1)
    for k in (0, 23, 47):
        for dx in (-35.0, 0.0, 35.0):
            rows = layout.row_of_wavelength(k, np.array([4650.0, 9350.0]), dx)
            assert 0 <= rows[0] < rows[1] < TRIMMED_NY
            wavelength = np.arange(4650.0, 9351.0, 10.0)
            dispersion = layout.dispersion(k, wavelength)
            assert dispersion.min() > 1.19 and dispersion.max() < 1.31
            back = layout.wavelength_of_row(k, layout.row_of_wavelength(k, wavelength, dx), dx)
            np.testing.assert_allclose(back, wavelength, atol=1e-6)


def test_arc_line_lands_on_the_model_row(model):
    """The rendered arc line's centroid in a column is where the wavelength model puts it."""
    image = render.arc(model, 1, "Ne")
    layout = model.layout(1)
    k, wavelength = 20, 6402.246
    maps = model.slice_maps(1, k)
    column = maps.columns[len(maps.columns) // 2]
    dx = column - layout.trace_centre(k, layout.row_of_wavelength(k, wavelength, 0.0))
    row = layout.row_of_wavelength(k, wavelength, dx)
    rows = np.arange(int(row) - 6, int(row) + 7)
    profile = image[rows, column] - 5.0                              # minus the lamp floor
    assert abs(np.sum(rows * profile) / np.sum(profile) - row) < 0.02
    area = dict((w, a) for w, a, _, _ in spectra.arc_lines("Ne"))[wavelength]
    assert abs(np.sum(profile) / area - 1) < 0.02                     # = LINE_CATALOG flux units


def test_model_rejects_bad_ifus():
    with pytest.raises(ValueError, match="1-24"):
        InstrumentModel(ifus=(0,))
    with pytest.raises(ValueError, match="unique"):
        InstrumentModel(ifus=(2, 2))
    with pytest.raises(ValueError, match="4 positive"):
        DetectorModel(gain=(1.0, 1.0))


# -- detector ------------------------------------------------------------------------------------------
def test_readout_ports_bias_noise_and_gain():
    det = DetectorModel()
    electrons = np.full((TRIMMED_NY, TRIMMED_NX), 1000.0, dtype=np.float32)
    raw = detector.electrons_to_raw(electrons, det, np.random.default_rng(5))
    assert raw.shape == (RAW_NY, RAW_NX) and raw.dtype == np.uint16
    for port, (region, _, data) in enumerate(detector.PORT_REGIONS):
        everything = raw[region].astype(float)
        mask = np.ones(everything.shape, bool)
        rows, cols = data
        local_rows = slice(rows.start - region[0].start, rows.stop - region[0].start)
        local_cols = slice(cols.start - region[1].start, cols.stop - region[1].start)
        mask[local_rows, local_cols] = False
        overscan = everything[mask]
        assert abs(overscan.mean() - det.bias_level[port]) < 0.1
        assert abs(overscan.std() * det.gain[port] / det.read_noise[port] - 1) < 0.03
        signal = raw[data].astype(float) - det.bias_level[port]
        assert abs(signal.mean() * det.gain[port] / 1000.0 - 1) < 0.002
        expected_var = (1000.0 + det.read_noise[port] ** 2) / det.gain[port] ** 2
        assert abs(signal.var() / expected_var - 1) < 0.05


# -- calibration kit -----------------------------------------------------------------------------------
def test_calibration_kit_tables(tmp_path, model):
    paths = calibkit.write_calibration_kit(tmp_path / "cal", tmp_path / "cal_time", model,
                                           stars={"STAR1": {"ra": 10.0, "dec": -20.0, "temperature": 30000.0,
                                                            "vmag": 12.0}})
    geometry = fits.getdata(paths["GEOMETRY_TABLE"], 1)
    assert len(geometry) == 24 * 48
    assert np.all(np.bincount(geometry["SubField"])[1:] == 48)
    cols = model.geometry_columns()
    np.testing.assert_array_equal(geometry["y"], cols["y"])
    with fits.open(paths["LINE_CATALOG"]) as hdul:
        assert hdul[0].header["VERSION"] == 3
        lines = hdul[1].data
    assert np.all(np.diff(lines["lambda"]) > 0)
    injected = sorted(w for lamp in spectra.ARC_LAMP_NUMBER for w, _, _, _ in spectra.arc_lines(lamp))
    np.testing.assert_allclose(lines["lambda"], injected, atol=1e-3)
    for lamp, ions in (("Ne", ("NeI",)), ("Xe", ("XeI",)), ("HgCd", ("HgI", "CdI"))):
        assert np.any(np.isin(lines["ion"], ions) & (lines["quality"] == 5)), lamp
    sky = fits.getdata(paths["SKY_LINES"], "LINES")
    np.testing.assert_allclose(sky["lambda"], [line[2] for line in spectra.SKY_LINES])
    with fits.open(paths["FILTER_LIST"]) as hdul:
        names = {hdu.name for hdu in hdul[1:]}
    assert {"JOHNSON_V", "COUSINS_R", "COUSINS_I", "SDSS_R"} <= {n.upper() for n in names}
    with fits.open(paths["STD_FLUX_TABLE"]) as hdul:
        assert hdul["STAR1"].header["RA"] == 10.0
        assert hdul["STAR1"].columns["flux"].unit == "erg/s/cm**2/Angstrom"
    assert fits.getheader(paths["ASTROMETRY_WCS"])["CTYPE1"] == "RA---TAN"
    validity = [line.split() for line in paths["VALIDITY_TABLE"].read_text().splitlines()
                if line and not line.startswith("#")]
    assert [row[2] for row in validity] == ["wfm", "nfm"]
    for row in validity:
        assert (tmp_path / "cal_time" / row[3]).is_file() and (tmp_path / "cal_time" / row[4]).is_file()
    # the NFM astrometry has the measured narrow-field spaxels (muse_instrument.h)
    nfm = fits.getheader(paths["ASTROMETRY_WCS_NFM"])
    assert -nfm["CD1_1"] * 3600 == pytest.approx(0.02519) and nfm["CD2_2"] * 3600 == pytest.approx(0.02542)
    raman = fits.getdata(paths["RAMAN_LINES"], "LINES")
    np.testing.assert_allclose(raman["lambda"], [line[2] for line in spectra.raman_lines()])
    assert set(raman["group"]) == {0, 1}


# -- options -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"ifus": (0,)}, "1-24"), ({"ifus": (25,)}, "1-24"), ({"ifus": (1, 1)}, "unique"),
    ({"exposures": 1}, "at least 2"), ({"pointings": 0}, "pointings"), ({"target": "a b"}, "target"),
])
def test_bad_options_fail_before_writing(tmp_path, kwargs, message):
    out = tmp_path / "out"
    with pytest.raises(SimulationError, match=message):
        simulate_run(out, **kwargs)
    assert not out.exists()


def test_non_empty_outdir_needs_overwrite(tmp_path):
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(SimulationError, match="overwrite"):
        simulate_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["something.txt"]


def test_too_little_disk_fails_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**8, 10**8))
    with pytest.raises(SimulationError, match="disk space"):
        simulate_run(tmp_path / "out", ifus=(1, 2, 3, 4))
    assert not (tmp_path / "out").exists()


def test_command_reports_bad_options(tmp_path):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "out"), "--ifus", "1,30"])
    assert args.ifus == (1, 30)
    assert command.run(args) == 2
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        parser.parse_args([str(tmp_path), "--ifus", "one"])


# -- the written run -----------------------------------------------------------------------------------
def test_layout_and_config_files(simulated_run):
    root = simulated_run.root
    assert simulated_run.rc_file == root / "Config" / "rc.dic"
    rc = dict(line.split(None, 1) for line in simulated_run.rc_file.read_text().splitlines()
              if line and not line.startswith("#"))
    assert rc["musecalib"].strip().rstrip("/") == str(simulated_run.musecalib)
    assert rc["root"].strip().rstrip("/") == str(root)
    cal = dict(line.split() for line in simulated_run.cal_file.read_text().splitlines()
               if line and not line.startswith("#"))
    assert set(cal) == set(calibkit.CALIB_KEYS.values())
    for name in cal.values():
        assert (simulated_run.musecalib / name).is_file()
    assert simulated_run.truth_file == root / "SIMGAL" / "truth.json"
    assert json.loads(simulated_run.truth_file.read_text()) == simulated_run.truth
    assert all(p.parent == root / "SIMGAL" / "P01" / "Raw" for p in simulated_run.raw_files)


def test_raw_frames_and_headers(simulated_run, frames_by_kind):
    counts = {kind: len(frames) for kind, frames in frames_by_kind.items()}
    assert counts == {"BIAS": 3, "FLAT": 3, "ARC": 3, "SKYFLAT": 3, "ILLUM": 1, "STD": 1, "SKY": 1, "OBJECT": 2}
    dates = set()
    for kind, frames in frames_by_kind.items():
        for path, truth in frames:
            with fits.open(path) as hdul:
                header = hdul[0].header
                assert [hdu.name for hdu in hdul[1:]] == ["CHAN01"]
                assert hdul[1].data.dtype.kind in "ui" and hdul[1].data.shape == (RAW_NY, RAW_NX)
            assert path.name == f"MUSE.{header['DATE-OBS']}.fits" == header["ARCFILE"]
            assert header["INSTRUME"] == "MUSE" and header["EQUINOX"] == 2000
            assert header["ESO DPR TECH"] == "IFU" and header["ESO INS MODE"] == "WFM-NOAO-N"
            assert 1 <= header["ESO TPL EXPNO"] <= header["ESO TPL NEXP"]
            for key in ("MJD-OBS", "EXPTIME", "LST", "UTC", "ESO TEL AIRM START", "ESO TEL PARANG START",
                        "ESO TEL GEOLAT", "ESO DET READ CURNAME", "ESO INS DROT POSANG", "ESO OBS ID"):
                assert key in header, (path.name, key)
            dates.add(header["DATE-OBS"])
            lamps = [i for i in range(1, 7) if header[f"ESO INS LAMP{i} ST"] and header[f"ESO INS SHUT{i} ST"]]
            if kind == "ARC":
                assert lamps == [spectra.ARC_LAMP_NUMBER[truth["lamp"]]]
            elif kind in ("FLAT", "ILLUM"):
                assert lamps == [1, 2]
            else:
                assert lamps == []
    assert len(dates) == 17
    arcs = sorted(truth["lamp"] for _, truth in frames_by_kind["ARC"])
    assert arcs == ["HgCd", "Ne", "Xe"]


def test_object_headers_carry_pointing_errors_along_the_strip(frames_by_kind):
    errors = []
    for path, truth in frames_by_kind["OBJECT"]:
        header = fits.getheader(path)
        assert header["RA"] == pytest.approx(truth["ra_true"] + truth["pointing_error_deg"]["ra"], abs=1e-9)
        assert header["DEC"] == pytest.approx(truth["dec_true"] + truth["pointing_error_deg"]["dec"], abs=1e-9)
        errors.append(truth["pointing_error_arcsec"])
        assert 0.5 <= truth["seeing_fwhm_arcsec"] <= 1.2 and 0.75 <= truth["transparency"] <= 1.0
    assert errors[0] == {"east": 0.0, "north": 0.0}                 # the alignment reference
    # the other errors are along the strip and ten times what muse_exp_align resolves (0.02")
    assert all(abs(e["north"]) <= 0.1 for e in errors) and all(abs(e["east"]) >= 0.2 for e in errors[1:])


def test_enough_bright_stars_in_every_overlap(simulated_run):
    """>= 10 point sources in the part of the strip every OBJECT exposure sees."""
    truth = simulated_run.truth
    objects = [e for e in truth["exposures"] if e["kind"] == "OBJECT"]
    dec0 = truth["field_centre"]["dec"]
    cos_dec = np.cos(np.radians(dec0))
    east = lambda ra: (ra - truth["field_centre"]["ra"]) * 3600 * cos_dec   # noqa: E731
    lo = max(east(e["ra_true"]) for e in objects) - 30.0
    hi = min(east(e["ra_true"]) for e in objects) + 30.0
    inside = [s for s in truth["point_sources"]
              if lo + 1 < east(s["ra"]) < hi - 1 and abs(s["dec"] - objects[0]["dec_true"]) * 3600 < 1.25]
    assert len(inside) >= 10
    # peak in the reduced image (1e-20 erg/s/cm2/A per 0.2" spaxel) well above exp_align's threshold 15
    sigma = 1.0 / 2.3548 / 0.2
    assert min(s["flux"]["Johnson_V"] for s in inside) / (2 * np.pi * sigma ** 2) > 3 * 15


def test_same_seed_same_files(simulated_run, tmp_path):
    """A second run with the same seed writes identical data arrays (and truth)."""
    again = simulate_run(tmp_path / "again", seed=1)
    try:
        first = data_checksums(simulated_run.raw_files)
        second = data_checksums(again.raw_files)
        assert first == second
        assert again.truth["point_sources"] == simulated_run.truth["point_sources"]
    finally:
        shutil.rmtree(tmp_path / "again")
