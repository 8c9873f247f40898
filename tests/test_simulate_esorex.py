"""The real MUSE recipes on the simulated run recover the simulated instrument: bias levels and read
noise, slice traces, the wavelength solution, and the CCD -> focal-plane mapping of muse_scibasic."""
import numpy as np
import pytest
from astropy.io import fits

from pymusepipe.simulate import InstrumentModel, verify
from simulate_fixtures import ccd_products, frames_by_kind, simulated_run  # noqa: F401 (fixtures)

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
