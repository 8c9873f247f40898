"""End-to-end sign test: an OFFSET_LIST from align_images, applied by the real muse_scipost.

Two synthetic exposures of one star field (merged pixel tables): A has a correct header pointing and full
transparency and serves, through muse_scipost, as the reference image (resampled to 0.3"/pixel, blurred
to 1" and written in uJy); B is dithered, has a header pointing error and 80 % transparency. B's IMAGE_FOV
is aligned to the reference, the OFFSET_LIST is written, and muse_scipost is run again on B with it: the
stars must then sit at their true sky positions and have A's fluxes.
"""
import shutil
import subprocess

import numpy as np
import pytest
from astropy.io import fits
from reproject import reproject_adaptive

from pymusepipe.alignment import align_images, read_muse_image, write_offset_list
from pymusepipe.alignment.psf import gaussian_blur
from pymusepipe.alignment.synthetic import tan_wcs
from pymusepipe.simulate import calibkit
from pymusepipe.simulate.model import InstrumentModel
from pymusepipe.simulate.pixtable import PointSource, write_pixtable_object, write_std_response

pytestmark = pytest.mark.esorex

RA, DEC = 150.0, -30.0
COS_DEC = np.cos(np.deg2rad(DEC))
WAVELENGTHS = 6500.0 + 1.25 * np.arange(10)
PIVOT = float(WAVELENGTHS.mean())  # flat spectra over 11 A: the white image is monochromatic
POINTING_ERROR = (1.6, -2.2)       # arcsec East, North: the header is wrong by this much
DITHER = (1.0, 0.5)


def _scipost(workdir, name, pixtable, calibrations, offset_list=None):
    output = workdir / name
    output.mkdir()
    lines = [f"{pixtable} PIXTABLE_OBJECT"] + [f"{path} {tag}" for tag, path in calibrations.items()]
    if offset_list is not None:
        lines.append(f"{offset_list} OFFSET_LIST")
    sof = workdir / f"{name}.sof"
    sof.write_text("\n".join(lines) + "\n")
    completed = subprocess.run(["esorex", f"--log-dir={workdir}", f"--log-file={name}.log",
                                f"--output-dir={output}", "muse_scipost", "--skymethod=none", "--filter=white",
                                "--save=cube", str(sof)], capture_output=True, text=True, timeout=300)
    log_path = workdir / f"{name}.log"
    log = log_path.read_text() if log_path.exists() else ""
    assert completed.returncode == 0, f"rc {completed.returncode}\n{log[-2000:]}\n{completed.stdout[-2000:]}" \
                                      f"\n{completed.stderr[-2000:]}"
    return output / "IMAGE_FOV_0001.fits", log


def _star_positions_error(image_path, stars):
    """Median (x, y) pixel offset of the brightest stars from where their TRUE coordinates fall."""
    from photutils.centroids import centroid_com
    image = read_muse_image(image_path)
    errors = []
    for star in sorted(stars, key=lambda s: -s.flux)[:12]:
        x, y = (float(v) for v in image.wcs.world_to_pixel_values(star.ra, star.dec))
        xi, yi = int(round(x)), int(round(y))
        # find the star within +-16 pixels (3"), then centroid around its peak
        search = image.data[yi - 16:yi + 17, xi - 16:xi + 17]
        if search.shape != (33, 33) or not np.all(np.isfinite(search)):
            continue
        peak_y, peak_x = np.unravel_index(np.argmax(search), search.shape)
        xi, yi = xi - 16 + peak_x, yi - 16 + peak_y
        cutout = image.data[yi - 7:yi + 8, xi - 7:xi + 8]
        if cutout.shape != (15, 15) or not np.all(np.isfinite(cutout)):
            continue
        cx, cy = centroid_com(cutout - np.median(search))
        errors.append((xi - 7 + cx - x, yi - 7 + cy - y))
    assert len(errors) >= 5
    return np.median(np.array(errors), axis=0)


def _aperture_flux(image_path, stars, radius=8):
    image = read_muse_image(image_path)
    fluxes = []
    for star in sorted(stars, key=lambda s: -s.flux)[:12]:
        x, y = (float(v) for v in image.wcs.world_to_pixel_values(star.ra, star.dec))
        xi, yi = int(round(x)), int(round(y))
        cutout = image.data[yi - radius:yi + radius + 1, xi - radius:xi + radius + 1]
        fluxes.append(np.sum(cutout - np.median(image.data[np.isfinite(image.data)]))
                      if cutout.shape == (2 * radius + 1,) * 2 and np.all(np.isfinite(cutout)) else np.nan)
    return np.array(fluxes)


@pytest.mark.skipif(shutil.which("esorex") is None, reason="esorex not installed")
def test_offset_list_moves_and_scales_the_exposure_to_the_truth(tmp_path):
    rng = np.random.default_rng(7)
    stars = [PointSource(RA + rng.uniform(-27, 27) / 3600 / COS_DEC, DEC + rng.uniform(-27, 27) / 3600,
                         10 ** rng.uniform(3, 4)) for _ in range(40)]
    calibrations = {"EXTINCT_TABLE": tmp_path / "extinct_table.fits", "STD_RESPONSE": tmp_path / "std_response.fits",
                    "ASTROMETRY_WCS": tmp_path / "astrometry_wcs.fits", "FILTER_LIST": tmp_path / "filter_list.fits"}
    calibkit.write_extinct_table(calibrations["EXTINCT_TABLE"])
    calibkit.write_filter_list(calibrations["FILTER_LIST"])
    calibkit.write_astrometry_wcs(calibrations["ASTROMETRY_WCS"], InstrumentModel())
    write_std_response(calibrations["STD_RESPONSE"])

    write_pixtable_object(tmp_path / "pixtable_a.fits", stars, header_ra=RA, header_dec=DEC, true_ra=RA,
                          true_dec=DEC, mjd_obs=60000.10, wavelengths=WAVELENGTHS, seed=1)
    true_ra, true_dec = RA + DITHER[0] / 3600 / COS_DEC, DEC + DITHER[1] / 3600
    date_obs_b = write_pixtable_object(
        tmp_path / "pixtable_b.fits", stars, header_ra=true_ra + POINTING_ERROR[0] / 3600 / COS_DEC,
        header_dec=true_dec + POINTING_ERROR[1] / 3600, true_ra=true_ra, true_dec=true_dec, mjd_obs=60000.12,
        transparency=0.8, wavelengths=WAVELENGTHS, seed=2)
    image_a, _ = _scipost(tmp_path, "scipost_a", tmp_path / "pixtable_a.fits", calibrations)
    image_b, _ = _scipost(tmp_path, "scipost_b", tmp_path / "pixtable_b.fits", calibrations)

    # the reference: exposure A at 0.3"/pixel, PSF 1", in uJy per pixel
    exposure_a = read_muse_image(image_a)
    reference_wcs = tan_wcs(RA, DEC, (240, 240), 0.3)
    resampled, _ = reproject_adaptive((exposure_a.data, exposure_a.wcs), reference_wcs, shape_out=(240, 240),
                                      conserve_flux=True)
    resampled = gaussian_blur(resampled, np.sqrt(1.0 ** 2 - 0.8 ** 2) / 2.3548 / 0.3)
    to_microjansky = 1e-20 * PIVOT ** 2 / 2.99792458e18 / 1e-29
    header = reference_wcs.to_header()
    header["BUNIT"] = "uJy"
    fits.PrimaryHDU((resampled * to_microjansky).astype(np.float32), header=header).writeto(
        tmp_path / "reference.fits")

    table = align_images([image_b], tmp_path / "reference.fits", pivot_wavelength=PIVOT)
    row = table[0]
    assert row["quality"] == 0, row["message"]
    assert row["date_obs"] == date_obs_b
    # measured - true: the header error (the pipeline's own resampling adds ~0.1 pixel, hence 0.05")
    assert row["ra_offset_arcsec"] == pytest.approx(POINTING_ERROR[0], abs=0.05)
    assert row["dec_offset_arcsec"] == pytest.approx(POINTING_ERROR[1], abs=0.05)
    assert row["flux_scale"] == pytest.approx(1.25, rel=0.01)
    offset_list = tmp_path / "OFFSET_LIST.fits"
    write_offset_list(table, offset_list, expected_date_obs=[date_obs_b])

    corrected, log = _scipost(tmp_path, "scipost_b_corrected", tmp_path / "pixtable_b.fits", calibrations,
                              offset_list)
    assert "without offset and flux scales" not in log  # the recipe accepted the table
    with fits.open(corrected) as hdul:
        assert hdul[0].header["ESO DRS MUSE FLUX SCALE1"] == pytest.approx(row["flux_scale"])
        assert hdul[0].header["ESO DRS MUSE OFFSET1 DRA"] == pytest.approx(row["ra_offset"])

    # positions: before correction the stars are off by the pointing error, after it they are where they belong
    before = _star_positions_error(image_b, stars) * 0.2
    after = _star_positions_error(corrected, stars) * 0.2
    # a source seen too far East (+RA) lies at smaller x (x grows westwards), too far North at larger y
    assert np.hypot(before[0] + POINTING_ERROR[0], before[1] - POINTING_ERROR[1]) < 0.1
    assert np.hypot(*after) < 0.05
    # fluxes: the corrected exposure has exposure A's fluxes (B was observed through 80 % transparency)
    ratio = _aperture_flux(corrected, stars) / _aperture_flux(image_a, stars)
    assert np.nanmedian(ratio) == pytest.approx(1.0, abs=0.01)
    # and aligning the corrected image again finds nothing left to correct
    again = align_images([corrected], tmp_path / "reference.fits", pivot_wavelength=PIVOT)[0]
    assert abs(again["ra_offset_arcsec"]) < 0.02 and abs(again["dec_offset_arcsec"]) < 0.02
    assert again["flux_scale"] == pytest.approx(1.0, rel=0.005)


@pytest.mark.skipif(shutil.which("esorex") is None, reason="esorex not installed")
def test_merge_with_a_real_muse_exp_align_table(tmp_path):
    """muse_exp_align's relative OFFSET_LIST is read and anchored on absolute offsets."""
    from pymusepipe.alignment import (exp_align_is_reliable, merge_offset_lists, read_offset_list,
                                      validate_offset_list)
    from pymusepipe.alignment.synthetic import star_field, write_muse_image, write_reference_image

    rng = np.random.default_rng(11)
    sky = star_field(RA, DEC, 40, radius=30, flux_range=(3e3, 3e4), rng=rng)
    errors = [(0.4, -0.3), (1.9, 1.2)]
    truths = [write_muse_image(tmp_path / f"fov_{k}.fits", sky, centre_ra=RA, centre_dec=DEC,
                               pointing_error=error, mjd=60000.1 + 0.02 * k, rng=rng)
              for k, error in enumerate(errors)]
    write_reference_image(tmp_path / "reference.fits", sky, centre_ra=RA, centre_dec=DEC, rng=rng)
    (tmp_path / "align.sof").write_text("".join(f"{t['filename']} IMAGE_FOV\n" for t in truths))
    (tmp_path / "out").mkdir()
    completed = subprocess.run(["esorex", f"--log-dir={tmp_path}", "--log-file=exp_align.log",
                                f"--output-dir={tmp_path / 'out'}", "muse_exp_align", str(tmp_path / "align.sof")],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout[-2000:]
    relative = read_offset_list(tmp_path / "out" / "OFFSET_LIST.fits")
    reliable, reason = exp_align_is_reliable(relative)
    assert reliable, reason
    assert relative["RA_OFFSET"][0] == 0.0  # relative to the first exposure
    absolute = align_images([t["filename"] for t in truths[1:]], tmp_path / "reference.fits")
    merged = merge_offset_lists(relative, absolute, prefer="relative")
    validate_offset_list(merged, expected_date_obs=[t["date_obs"] for t in truths])
    for row, truth in zip(merged, truths):
        assert row["DATE_OBS"] == truth["date_obs"]
        assert (row["RA_OFFSET"] - truth["ra_offset"]) * 3600 * COS_DEC == pytest.approx(0, abs=0.01)
        assert (row["DEC_OFFSET"] - truth["dec_offset"]) * 3600 == pytest.approx(0, abs=0.01)
    assert list(merged["SOURCE"]) == ["relative+anchor", "relative+anchor"]


@pytest.mark.skipif(shutil.which("esorex") is None, reason="esorex not installed")
def test_rotation_applied_through_posang_lands_the_exposure_right(tmp_path):
    """A rotated exposure, measured by align_images and corrected by rotate_pixtable, lands on the truth."""
    from pymusepipe.alignment import rotate_pixtable, write_alignment_offset_list
    from pymusepipe.alignment.rotation import ORIGINAL_POSANG_KEYWORD, POSANG_KEYWORD, PixtableRotationError
    from pymusepipe.alignment.synthetic import SkyComponent, write_reference_image

    rotation_deg = 0.6   # the instrument is turned by this much more than its header says
    rng = np.random.default_rng(5)
    stars = [PointSource(RA + rng.uniform(-27, 27) / 3600 / COS_DEC, DEC + rng.uniform(-27, 27) / 3600,
                         10 ** rng.uniform(3, 4)) for _ in range(40)]
    # spaxel v sees the sky at R(rotation) v, so a star at sky offset u falls on spaxel R(-rotation) u
    angle = np.deg2rad(-rotation_deg)
    seen = []
    for star in stars:
        east, north = (star.ra - RA) * COS_DEC * 3600, (star.dec - DEC) * 3600
        east, north = east * np.cos(angle) - north * np.sin(angle), east * np.sin(angle) + north * np.cos(angle)
        seen.append(PointSource(RA + east / 3600 / COS_DEC, DEC + north / 3600, star.flux))
    calibrations = {"EXTINCT_TABLE": tmp_path / "extinct_table.fits", "STD_RESPONSE": tmp_path / "std_response.fits",
                    "ASTROMETRY_WCS": tmp_path / "astrometry_wcs.fits", "FILTER_LIST": tmp_path / "filter_list.fits"}
    calibkit.write_extinct_table(calibrations["EXTINCT_TABLE"])
    calibkit.write_filter_list(calibrations["FILTER_LIST"])
    calibkit.write_astrometry_wcs(calibrations["ASTROMETRY_WCS"], InstrumentModel())
    write_std_response(calibrations["STD_RESPONSE"])
    pixtable = tmp_path / "pixtable_rotated.fits"
    date_obs = write_pixtable_object(pixtable, seen, header_ra=RA, header_dec=DEC, true_ra=RA, true_dec=DEC,
                                     mjd_obs=60000.2, wavelengths=WAVELENGTHS, seed=3)
    image, _ = _scipost(tmp_path, "scipost_rotated", pixtable, calibrations)
    write_reference_image(tmp_path / "reference.fits", [SkyComponent(s.ra, s.dec, s.flux) for s in stars],
                          centre_ra=RA, centre_dec=DEC, pixel_scale=0.3, fwhm=0.8, unit="muse", noise=0.05,
                          rng=rng)

    table = align_images([image], tmp_path / "reference.fits", pivot_wavelength=PIVOT, fit_rotation=True)
    measured = float(table["rotation"][0])
    assert table["quality"][0] == 0, table["message"][0]
    # 40 stars over 54": the angle is known to ~0.005 deg; the pipeline's resampling adds ~0.1 pixel
    assert abs(measured) == pytest.approx(rotation_deg, abs=0.02)
    before = _star_positions_error(image, stars)  # median offset: rotation about the centre averages out

    # the OFFSET_LIST with a ROTANGLE column is still accepted by the recipe
    offset_list = tmp_path / "OFFSET_LIST.fits"
    written = write_alignment_offset_list(table, offset_list, expected_date_obs=[date_obs])
    assert written["ROTANGLE"][0] == pytest.approx(measured)
    # idempotent: applying the same rotation twice gives the same header; the original is kept
    first = rotate_pixtable(pixtable, measured)
    second = rotate_pixtable(pixtable, measured)
    assert first == second
    with fits.open(pixtable) as hdul:
        assert hdul[0].header[ORIGINAL_POSANG_KEYWORD] == 0.0
        assert hdul[0].header[POSANG_KEYWORD] == pytest.approx(second)
    corrected, log = _scipost(tmp_path, "scipost_rotation_corrected", pixtable, calibrations, offset_list)
    assert "without offset and flux scales" not in log
    again = align_images([corrected], tmp_path / "reference.fits", pivot_wavelength=PIVOT, fit_rotation=True)[0]
    # the rotation is gone (a wrong sign would leave twice the angle) and the stars sit on their true places
    assert abs(again["rotation"]) < 0.05 * rotation_deg
    assert abs(again["ra_offset_arcsec"]) < 0.03 and abs(again["dec_offset_arcsec"]) < 0.03
    outer = [s for s in stars if np.hypot((s.ra - RA) * COS_DEC, s.dec - DEC) * 3600 > 15]
    assert np.hypot(*_star_positions_error(corrected, outer)) * 0.2 < 0.05
    assert np.hypot(*before) * 0.2 < 0.1
    # never a raw file, never a table already projected on the sky
    with pytest.raises(PixtableRotationError, match="not a MUSE pixel table"):
        rotate_pixtable(tmp_path / "reference.fits", 0.1)
