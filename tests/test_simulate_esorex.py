"""The real MUSE recipes on the simulated run recover the simulated instrument: bias levels and read
noise, slice traces, the wavelength solution, and the CCD -> focal-plane mapping of muse_scibasic."""
import shutil

import numpy as np
import pytest
from astropy.io import fits

from pymusepipe import instrument
from pymusepipe.simulate import InstrumentModel, verify
from simulate_fixtures import ccd_products, frames_by_kind, run_esorex, simulated_run  # noqa: F401 (fixtures)

pytestmark = pytest.mark.esorex


def test_master_bias_levels_and_read_noise_within_2_percent(ccd_products, simulated_run):
    qc = verify.bias_qc(ccd_products["master_bias"])
    detector = simulated_run.truth["instrument"]["detector"]
    np.testing.assert_allclose(qc["level"], detector["bias_level_adu"], rtol=0.02)
    np.testing.assert_allclose(qc["ron"], detector["read_noise_e"], rtol=0.02)


def test_trace_table_centres_within_005_pix(ccd_products, simulated_run):
    residuals = verify.trace_residuals(ccd_products["trace_table"], simulated_run.truth, 1)
    assert residuals["nslices"] == 48
    assert residuals["centre"].max() < 0.05, residuals["centre"]
    # the edges are where muse_flat puts them too (half maximum), so the widths match
    assert max(residuals["left"].max(), residuals["right"].max()) < 0.1
    assert np.abs(residuals["width"]).max() < 0.1


def test_wavelength_solution_within_001_angstrom_rms(ccd_products, simulated_run):
    residuals = verify.wavecal_residuals(ccd_products["wavecal_table"], simulated_run.truth, 1)
    assert residuals["nslices"] == 48
    assert residuals["rms"] < 0.01, residuals
    assert residuals["rms_per_slice"].max() < 0.02


def _decode_pixtable(path, nsample=200_000):
    """Sampled rows of a per-IFU pixel table: CCD column/row (0-based), slice, xpos, ypos, lambda."""
    with fits.open(path, memmap=True) as hdul:
        header = hdul[0].header
        origin = np.asarray(hdul["origin"].data).ravel()
        rows = np.random.default_rng(0).choice(origin.size, nsample, replace=False)
        rows.sort()
        origin = origin[rows].astype(np.int64)
        columns = {name: np.asarray(hdul[name].data).ravel()[rows].astype(float)
                   for name in ("xpos", "ypos", "lambda")}
    slices = origin & 0x3F
    offsets = {s: header[f"ESO DRS MUSE PIXTABLE EXP0 IFU01 SLICE{s:02d} XOFFSET"] for s in np.unique(slices)}
    x_ccd = (origin >> 24) + np.array([offsets[s] for s in slices]) - 1
    y_ccd = ((origin >> 11) & 0x1FFF) - 1
    return x_ccd, y_ccd, slices, columns


def test_scibasic_puts_pixels_where_the_model_does(ccd_products, simulated_run):
    """The pipeline's pixel table (from TRACE/WAVECAL/GEOMETRY) agrees with the forward model used to
    place the sky on the CCD: along-slice position, slice position and wavelength."""
    model = InstrumentModel(ifus=(1,))
    x_ccd, y_ccd, slices, table = _decode_pixtable(ccd_products["pixtable"])
    dx_err, y_err, lam_err = [], [], []
    for s in np.unique(slices):
        select = slices == s
        maps = model.slice_maps(1, s - 1)
        rows, cols = y_ccd[select], x_ccd[select] - maps.columns[0]
        dx_err.append(table["xpos"][select] - maps.xpos[rows, cols])
        y_err.append(table["ypos"][select] - maps.ypos)
        lam_err.append(table["lambda"][select] - maps.wavelength[rows, cols])
    dx_err, y_err, lam_err = map(np.concatenate, (dx_err, y_err, lam_err))
    assert np.abs(y_err).max() < 1e-3                        # slice positions: the same GEOMETRY_TABLE
    assert np.abs(np.median(dx_err)) < 0.02 and np.percentile(np.abs(dx_err), 99) < 0.05   # [spaxel]
    assert np.abs(np.median(lam_err)) < 0.01 and np.std(lam_err) < 0.01                    # [Angstrom]


def test_scibasic_sky_line_check_finds_no_shift(ccd_products):
    """muse_scibasic measures 5577/6300 in the OBJECT frame: the injected night sky is at the right
    wavelengths (the probes saw a 3 A shift with an inconsistent sky)."""
    log = ccd_products["scibasic_log"].read_text()
    line = next(l for l in log.splitlines() if "Skyline correction" in l)
    shift = float(line.split(" by ")[1].split()[0])
    assert abs(shift) < 0.02, line


def test_twilight_cube_flat_because_lamp_and_sky_light_the_slices_alike(ccd_products):
    """SKYFLAT and FLAT illuminate the slices identically in the model, so muse_twilight's correction is
    unity (a wrong geometry table or illumination mismatch would show as structure); the vignetting mask
    of the kit is accepted."""
    with fits.open(ccd_products["twilight_cube"]) as hdul:
        cube = hdul["DATA"].data
    assert np.isfinite(cube).mean() > 0.9
    assert np.nanpercentile(np.abs(cube - 1.0), 99) < 0.005
    assert "[ ERROR ]" not in ccd_products["twilight_log"].read_text()


# -- compressed raw frames, archive masters, adaptive optics ------------------------------------------------
def test_muse_bias_reads_tile_compressed_raw_frames(tmp_path):
    """Archive downloads hold .fits.fz files (RICE, one compressed HDU per CHANnn): muse_bias reads them as
    they are and recovers the simulated bias levels and read noise."""
    from pymusepipe.simulate import detector
    from pymusepipe.simulate.observing import Exposure, primary_header
    model = InstrumentModel(ifus=(1,))
    frames = []
    for number in range(3):
        exposure = Exposure("BIAS", 61113.8 + number / 1440, 0.0, 0.0, -24.627, "BIAS", "2026-03-14T19:12:00", 3,
                            number + 1, 1)
        ccd = detector.electrons_to_raw(None, model.detector, np.random.default_rng([5, number]))
        path = tmp_path / f"{exposure.file_name}.fz"
        detector.write_raw_file(path, primary_header(exposure, number + 1), {1: ccd}, model.detector,
                                compress=True)
        frames.append((path, "BIAS"))
    out = run_esorex("muse_bias", tmp_path / "bias", frames, "--nifu=1")
    log = (out / "muse_bias.out").read_text()
    assert log.count('.fits.fz[CHAN01]" (extension 1)') == 3
    qc = verify.bias_qc(out / "MASTER_BIAS-01.fits")
    np.testing.assert_allclose(qc["level"], model.detector.bias_level, rtol=0.02)
    np.testing.assert_allclose(qc["ron"], model.detector.read_noise, rtol=0.02)
    (out / "MASTER_BIAS-01.fits").unlink()


@pytest.fixture(scope="module")
def archive_bias(ccd_products, tmp_path_factory):
    """The run's MASTER_BIAS as the ESO archive delivers it: M.MUSE.<timestamp>.fits, CHAN01.DATA/DQ/STAT."""
    from pymusepipe.simulate import write_archive_masters
    raw = tmp_path_factory.mktemp("archive") / "Raw"
    path, = write_archive_masters(raw, [ccd_products["master_bias"]])
    yield path
    path.unlink()


def test_archive_master_bias_is_accepted_by_muse_flat(archive_bias, frames_by_kind, simulated_run, tmp_path):
    with fits.open(archive_bias) as hdul:
        assert [hdu.name for hdu in hdul[1:]] == ["CHAN01.DATA", "CHAN01.DQ", "CHAN01.STAT"]
        assert "EXTNAME" not in hdul[0].header and hdul[0].header["ESO PRO CATG"] == "MASTER_BIAS"
    out = run_esorex("muse_flat", tmp_path / "flat", [(p, "FLAT") for p, _ in frames_by_kind["FLAT"]]
                     + [(archive_bias, "MASTER_BIAS")], "--nifu=1")
    log = (out / "muse_flat.out").read_text()
    assert f'Bias correction in IFU 1 using "{archive_bias}[CHAN01.DATA]"' in log
    assert "[ ERROR ]" not in log                 # the IFU's QC keywords are found in CHAN01.DATA
    residuals = verify.trace_residuals(out / "TRACE_TABLE-01.fits", simulated_run.truth, 1)
    assert residuals["nslices"] == 48 and residuals["centre"].max() < 0.05
    (out / "MASTER_FLAT-01.fits").unlink()


@pytest.fixture(scope="module")
def ao_scibasic(archive_bias, ccd_products, tmp_path_factory):
    """An AO night's lamp flats and OBJECT (WFM-AO-N), reduced to a pixel table with AO calibrations: the
    AO MASTER_FLAT and TRACE_TABLE (from those flats, via the archive format), the run's WAVECAL_TABLE."""
    from pymusepipe.simulate import (NightPlan, ObservingBlock, Programme, TargetPlan, simulate_programme,
                                     write_archive_masters)
    work = tmp_path_factory.mktemp("ao")
    programme = Programme([NightPlan("2026-04-02", mode="WFM-AO-N", standard=False)],
                          [TargetPlan("AOGAL", blocks=[ObservingBlock(night=0, offset_sky=False)])], seed=3)
    result = simulate_programme(work / "data", programme, only=("FLAT", "OBJECT"))
    truth = result.targets["AOGAL"]
    files = {kind: [result.root / e["file"] for e in truth["exposures"] if e["kind"] == kind and e["written"]]
             for kind in ("FLAT", "OBJECT")}
    flat = run_esorex("muse_flat", work / "flat", [(p, "FLAT") for p in files["FLAT"]]
                      + [(archive_bias, "MASTER_BIAS")], "--nifu=1")
    master_flat, trace = write_archive_masters(work / "archive", [flat / "MASTER_FLAT-01.fits",
                                                                  flat / "TRACE_TABLE-01.fits"])
    (flat / "MASTER_FLAT-01.fits").unlink()
    sci = run_esorex("muse_scibasic", work / "scibasic",
                     [(files["OBJECT"][0], "OBJECT"), (archive_bias, "MASTER_BIAS"), (master_flat, "MASTER_FLAT"),
                      (trace, "TRACE_TABLE"), (ccd_products["wavecal_table"], "WAVECAL_TABLE"),
                      (result.musecalib / "geometry_table_wfm.fits", "GEOMETRY_TABLE")],
                     "--nifu=1", "--saveimage=false")
    yield {"pixtable": sci / "PIXTABLE_OBJECT_0001-01.fits", "log": sci / "muse_scibasic.out", "truth": truth}
    shutil.rmtree(work, ignore_errors=True)


def _columns(path, names):
    with fits.open(path, memmap=True) as hdul:
        return {name: np.asarray(hdul[name].data).ravel() for name in names}


def test_ao_scibasic_flags_the_notch_where_the_frames_have_no_light(ao_scibasic):
    log = ao_scibasic["log"].read_text()
    assert "WFM-AO-N mode: marking NaD region (5805.0..5966.0 Angstrom) of IFU 1 as 0x08000000" in log
    table = _columns(ao_scibasic["pixtable"], ("lambda", "dq"))
    inside = (table["lambda"] > 5805.0) & (table["lambda"] < 5966.0)
    assert inside.sum() > 100_000
    notch_flag = 1 << 27                                   # EURO3D_NOTCH_NAD
    assert np.all(table["dq"][inside] & notch_flag) and not np.any(table["dq"][~inside] & notch_flag)


def _band_excess(path, centre):
    """Median data within 1 A of ``centre`` minus the median of the line-free 6740-6800 A, and its error."""
    table = _columns(path, ("lambda", "data", "dq"))
    good = table["dq"] == 0
    line = good & (np.abs(table["lambda"] - centre) < 1.0)
    side = good & (table["lambda"] > 6740.0) & (table["lambda"] < 6800.0)
    spread = 1.4826 * np.median(np.abs(table["data"][side] - np.median(table["data"][side])))
    error = 1.2533 * spread * np.sqrt(1 / line.sum() + 1 / side.sum())
    return np.median(table["data"][line]) - np.median(table["data"][side]), error


def test_ao_object_shows_the_raman_bands_a_noao_object_does_not(ao_scibasic, ccd_products):
    for centre in instrument.RAMAN_BANDS.values():
        ao, ao_error = _band_excess(ao_scibasic["pixtable"], centre)
        noao, noao_error = _band_excess(ccd_products["pixtable"], centre)
        assert ao > 10 * ao_error, (centre, ao, ao_error)
        assert abs(noao) < max(4 * noao_error, 0.1 * ao), (centre, noao, noao_error)
