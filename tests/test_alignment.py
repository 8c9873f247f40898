"""Alignment of synthetic MUSE images against synthetic reference images with known offsets and scales."""
import argparse

import numpy as np
import pytest
from astropy.io import fits

from pymusepipe.alignment import (Quality, ReferenceImageError, align_images, fit_alignment, image_from_cube,
                                  pivot_wavelength, read_muse_image, read_offset_list, read_reference)
from pymusepipe.alignment import command, synthetic
from pymusepipe.alignment.reference import flux_to_muse_factor, parse_flux_unit

RA, DEC = 150.0, -30.0
COS_DEC = np.cos(np.deg2rad(DEC))


def _pair(tmp_path, *, kind="stars", pointing_error=(2.3, -3.1), transparency=0.8, noise=0.5, muse_fwhm=0.7,
          reference_scale=0.3, reference_fwhm=1.0, reference_rotation=0.0, unit="uJy", seed=3, name="muse",
          mjd=60000.1):
    rng = np.random.default_rng(seed)
    sky = synthetic.star_field(RA, DEC, 40, rng=rng) if kind == "stars" else synthetic.galaxy(RA, DEC, rng=rng)
    muse_path = tmp_path / f"{name}.fits"
    reference_path = tmp_path / "reference.fits"
    truth = synthetic.write_muse_image(muse_path, sky, centre_ra=RA, centre_dec=DEC, pointing_error=pointing_error,
                                       transparency=transparency, fwhm=muse_fwhm, noise=noise, mjd=mjd,
                                       rng=rng)
    reference_background = synthetic.write_reference_image(
        reference_path, sky, centre_ra=RA, centre_dec=DEC, pixel_scale=reference_scale, fwhm=reference_fwhm,
        background=3.0, noise=0.1, unit=unit, rotation_deg=reference_rotation, rng=rng)
    truth["background"] += reference_background
    return muse_path, reference_path, truth


def _assert_close_to_truth(row, truth, offset_tolerance, scale_tolerance):
    assert (row["ra_offset"] - truth["ra_offset"]) * 3600 * COS_DEC == pytest.approx(0, abs=offset_tolerance)
    assert (row["dec_offset"] - truth["dec_offset"]) * 3600 == pytest.approx(0, abs=offset_tolerance)
    assert row["flux_scale"] == pytest.approx(truth["flux_scale"], rel=scale_tolerance)


def test_star_field_offset_scale_and_background_with_unknown_psfs(tmp_path):
    muse_path, reference_path, truth = _pair(tmp_path)
    table = align_images([muse_path], reference_path)  # FILTER=Cousins_R and BUNIT=uJy read from the header
    row = table[0]
    assert row["quality"] == 0, row["message"]
    _assert_close_to_truth(row, truth, 0.002, 0.003)
    assert row["background"] == pytest.approx(truth["background"], abs=0.05)
    # sign convention: the header puts the field 2.3" East / 3.1" South of the truth -> positive RA, negative DEC
    assert row["ra_offset_arcsec"] == pytest.approx(2.3, abs=0.002)
    assert row["dec_offset_arcsec"] == pytest.approx(-3.1, abs=0.002)
    # MUSE x grows to the West: a source seen 2.3" too far East sits 11.5 pixels too far left
    assert row["x_offset_pix"] == pytest.approx(-11.5, abs=0.01)
    assert row["y_offset_pix"] == pytest.approx(-15.5, abs=0.01)
    assert row["date_obs"] == truth["date_obs"]
    assert 0 < row["ra_offset_err"] * 3600 < 0.002


def test_galaxy_without_point_sources(tmp_path):
    muse_path, reference_path, truth = _pair(tmp_path, kind="galaxy", noise=5.0, reference_scale=0.4,
                                             pointing_error=(-4.0, 2.5))
    row = align_images([muse_path], reference_path, reference_fwhm=1.0, muse_fwhm=0.7)[0]
    assert row["quality"] == 0, row["message"]
    _assert_close_to_truth(row, truth, 0.005, 0.005)


def test_psf_matching_from_fwhms_and_reference_in_muse_units(tmp_path):
    muse_path, reference_path, truth = _pair(tmp_path, unit="muse", muse_fwhm=0.9, reference_fwhm=0.6)
    muse = read_muse_image(muse_path)
    reference = read_reference(reference_path, fwhm=0.6)
    fitted = fit_alignment(muse, reference, muse_fwhm=0.9, psf_matching="fwhm")
    assert fitted.quality == 0
    assert fitted.flux_scale == pytest.approx(truth["flux_scale"], rel=0.003)
    # without PSF matching a plain least-squares amplitude is badly biased (PSF FWHM 0.9" vs 0.6": ~ -40 %)
    unmatched = fit_alignment(muse, reference, psf_matching="none", flux_method="none")
    assert abs(unmatched.flux_scale / truth["flux_scale"] - 1) > 0.1
    # the free matching kernel of the flux fit absorbs most of the PSF difference by itself: 40 stars at
    # S/N ~ 100 each leave ~0.1 % of noise; the rest is the basis (sigma 0, 0.25, 0.6") approximating the
    # missing 0.29" Gaussian on its own (measured 0.6 %; with the Gaussian matching it is 0.3 %, above)
    kernel_only = fit_alignment(muse, reference, psf_matching="none")
    assert kernel_only.flux_scale == pytest.approx(truth["flux_scale"], rel=0.01)


def test_bright_galaxy_filling_the_field_with_psfs_of_different_wings(tmp_path):
    """Issue 14: high-S/N extended field, Moffat PSFs of index 2.5 (MUSE) and 3.5 (reference), same FWHM."""
    rng = np.random.default_rng(3)
    sky = synthetic.galaxy(RA + 20 / 3600 / COS_DEC, DEC - 30 / 3600, total_flux=3e8, scale_length=30,
                           n_clumps=300, rng=rng)
    truth = synthetic.write_muse_image(tmp_path / "muse.fits", sky, centre_ra=RA, centre_dec=DEC,
                                       pointing_error=(-4.3, 2.0), transparency=0.85, noise=1.0,
                                       psf=synthetic.moffat_psf(0.8, 2.5), rng=rng)
    synthetic.write_reference_image(tmp_path / "reference.fits", sky, centre_ra=RA, centre_dec=DEC,
                                    pixel_scale=0.3, psf=synthetic.moffat_psf(0.8, 3.5), background=2.0,
                                    noise=0.2, rng=rng)
    muse, reference = read_muse_image(tmp_path / "muse.fits"), read_reference(tmp_path / "reference.fits")
    fitted = fit_alignment(muse, reference)
    assert fitted.quality == 0, fitted.message
    # noise leaves < 0.01 % on the scale and < 0.001" on the offset here: what remains is the model's
    assert fitted.flux_scale == pytest.approx(truth["flux_scale"], rel=0.003)
    assert (fitted.ra_offset - truth["ra_offset"]) * 3600 * COS_DEC == pytest.approx(0, abs=0.005)
    assert (fitted.dec_offset - truth["dec_offset"]) * 3600 == pytest.approx(0, abs=0.005)
    # the bright core is not clipped away: a noise-only clip removed 10-15 % of the pixels of such images;
    # there are no outliers here, so hardly any pixel should go
    unclipped = fit_alignment(muse, reference, clip_sigma=0)
    assert fitted.n_pixels > 0.98 * unclipped.n_pixels
    # a Gaussian blur alone cannot match these wings (its amplitude is off by ~0.7 %): the free kernel does better
    direct = fit_alignment(muse, reference, flux_method="none")
    assert abs(direct.flux_scale / truth["flux_scale"] - 1) > 2 * abs(fitted.flux_scale / truth["flux_scale"] - 1)


@pytest.mark.parametrize("noise", [0.5, 20.0])
def test_relative_psf_blur_from_the_cross_power(noise):
    """The Gaussian that matches the PSF cores, on bright and on faint images (noise power not subtracted)."""
    from pymusepipe.alignment.psf import fit_relative_blur
    rng = np.random.default_rng(4)
    shape = (256, 256)
    wcs = synthetic.tan_wcs(RA, DEC, shape, 0.2)
    sky = synthetic.star_field(RA, DEC, 60, radius=24, flux_range=(3e3, 3e4), rng=rng)
    muse = synthetic.render(sky, wcs, shape, 0.9, 0.2) + rng.normal(0, noise, shape)
    reference = 0.8 * synthetic.render(sky, wcs, shape, 0.6, 0.2) + rng.normal(0, 0.05, shape)
    expected = ((0.9 ** 2 - 0.6 ** 2) * synthetic.FWHM_TO_SIGMA ** 2)  # 0.081 arcsec**2 to give the reference
    # 60 stars of S/N >= 25 (faint case) measure a width to a few per cent: 10 % of t is ~0.5 % of the FWHM
    assert fit_relative_blur(muse, reference, np.ones(shape, bool), 0.2) == pytest.approx(expected, rel=0.1)
    # swapped roles: the MUSE image must be blurred instead
    assert fit_relative_blur(reference / 0.8 + rng.normal(0, noise, shape), muse, np.ones(shape, bool),
                             0.2) == pytest.approx(-expected, rel=0.1)


def test_small_rotation_is_measured(tmp_path):
    rng = np.random.default_rng(3)
    sky = synthetic.star_field(RA, DEC, 40, rng=rng)
    truth = synthetic.write_muse_image(tmp_path / "rotated.fits", sky, centre_ra=RA, centre_dec=DEC,
                                       pointing_error=(1.0, 2.0), rotation_error=-0.3, rng=rng)
    synthetic.write_reference_image(tmp_path / "reference.fits", sky, centre_ra=RA, centre_dec=DEC,
                                    rotation_deg=0.5, rng=rng)  # the reference grid itself is rotated too
    row = align_images([tmp_path / "rotated.fits"], tmp_path / "reference.fits", fit_rotation=True)[0]
    assert row["quality"] == 0, row["message"]
    assert row["rotation"] == pytest.approx(-0.3, abs=0.005)
    _assert_close_to_truth(row, truth, 0.002, 0.003)


def test_hopeless_images_are_flagged_not_raised(tmp_path):
    muse_path, reference_path, _ = _pair(tmp_path, noise=1e4)
    row = align_images([muse_path], reference_path)[0]
    assert row["quality"] & (Quality.NO_SIGNAL | Quality.LARGE_ERROR)
    assert row["quality_flags"] != "GOOD"
    # an image far away from the reference
    far = synthetic.write_muse_image(tmp_path / "far.fits", [], centre_ra=RA + 1.0, centre_dec=DEC)
    row = align_images([far["filename"]], reference_path)[0]
    assert row["quality"] == Quality.FEW_PIXELS
    assert np.isnan(row["ra_offset"])


def test_reference_units_and_pivots():
    unit, per_area = parse_flux_unit("uJy")
    # 1 uJy at 6000 A = 8.3276e-19 erg/s/cm2/A
    assert flux_to_muse_factor(unit, per_area, 6000.0, 0.09) == pytest.approx(83.2757, rel=1e-4)
    unit, per_area = parse_flux_unit("MJy/sr")
    assert per_area
    assert flux_to_muse_factor(unit, per_area, 6000.0, 0.09) == pytest.approx(
        1e6 * 0.09 / (180 / np.pi * 3600) ** 2 * 1e6 * 83.2757, rel=1e-4)
    assert flux_to_muse_factor(*parse_flux_unit("10**(-20)*erg/s/cm**2/Angstrom"), None, 1.0) == 1.0
    assert flux_to_muse_factor(*parse_flux_unit("erg/s/cm2/A"), None, 1.0) == pytest.approx(1e20)
    assert flux_to_muse_factor(*parse_flux_unit("nanomaggy"), 6000.0, 1.0) == pytest.approx(3.631 * 83.2757,
                                                                                            rel=1e-4)
    assert pivot_wavelength("SDSS_r") == pivot_wavelength("sdss r") == pytest.approx(6176, abs=5)
    assert pivot_wavelength("F814W") == pytest.approx(8046, abs=5)
    with pytest.raises(ReferenceImageError, match="unknown filter 'XYZ'"):
        pivot_wavelength("XYZ")
    with pytest.raises(ReferenceImageError, match="not a flux density"):
        parse_flux_unit("count")


def test_reference_without_unit_is_refused_with_the_file_name(tmp_path):
    header = synthetic.tan_wcs(RA, DEC, (50, 50), 0.3).to_header()
    fits.PrimaryHDU(np.ones((50, 50), np.float32), header=header).writeto(tmp_path / "nounit.fits")
    with pytest.raises(ReferenceImageError, match="nounit.fits: no BUNIT"):
        read_reference(tmp_path / "nounit.fits")
    with pytest.raises(ReferenceImageError, match="pivot wavelength"):
        read_reference(tmp_path / "nounit.fits", unit="uJy")


def test_image_reconstructed_from_a_cube_through_a_filter_curve(tmp_path):
    header = fits.Header()
    header.update(NAXIS=3, WCSAXES=3, CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CTYPE3="AWAV", CUNIT1="deg",
                  CUNIT2="deg", CUNIT3="Angstrom", CRVAL1=RA, CRVAL2=DEC, CRVAL3=6000.0, CRPIX1=15.5, CRPIX2=10.5,
                  CRPIX3=1.0, CD1_1=-0.2 / 3600, CD1_2=0.0, CD2_1=0.0, CD2_2=0.2 / 3600, CD3_3=1.25)
    cube = np.ones((40, 20, 30), np.float32) * np.arange(40, dtype=np.float32)[:, None, None]
    primary = fits.PrimaryHDU()
    primary.header["DATE-OBS"] = "2023-02-25T02:24:00.000"
    fits.HDUList([primary, fits.ImageHDU(cube, header=header, name="DATA")]).writeto(tmp_path / "cube.fits")
    np.savetxt(tmp_path / "box.txt", [[6000.0, 0.0], [6009.0, 0.0], [6010.0, 1.0], [6020.0, 1.0], [6021.0, 0.0]])
    image = image_from_cube(tmp_path / "cube.fits", curve_file=tmp_path / "box.txt")
    assert image.data.shape == (20, 30)
    assert image.date_obs == "2023-02-25T02:24:00.000"
    # planes 8..16 (6010..6020 A) have throughput ~1: the weighted mean is their middle value
    assert np.nanmean(image.data) == pytest.approx(12.0, abs=0.3)


def test_command_writes_an_offset_list_figures_and_summary(tmp_path):
    muse_path, reference_path, truth = _pair(tmp_path)
    second_path, _, second_truth = _pair(tmp_path, pointing_error=(-1.0, 0.5), transparency=1.1, seed=3,
                                         name="muse2", mjd=60000.12)
    parser = command.add_arguments(argparse.ArgumentParser())
    output = tmp_path / "OFFSET_LIST.fits"
    args = parser.parse_args([str(muse_path), str(second_path), "--reference", str(reference_path),
                              "--output", str(output), "--figures", str(tmp_path / "figs"),
                              "--summary", str(tmp_path / "summary.ecsv")])
    assert command.run(args) == 0
    offsets = read_offset_list(output)
    assert len(offsets) == 2
    for row, expected in zip(offsets, (truth, second_truth)):
        assert row["RA_OFFSET"] == pytest.approx(expected["ra_offset"], abs=0.002 / 3600)
        assert row["FLUX_SCALE"] == pytest.approx(expected["flux_scale"], rel=0.003)
    assert (tmp_path / "figs" / "muse_alignment.png").stat().st_size > 10000
    assert (tmp_path / "summary.ecsv").exists()


def test_flagged_images_are_written_unmoved_and_unscaled(tmp_path):
    from astropy.table import Table
    from pymusepipe.alignment import write_alignment_offset_list
    table = Table(dict(filename=["good.fits", "bad.fits"],
                       date_obs=["2023-02-25T02:24:00.000", "2023-02-25T02:52:48.000"], mjd_obs=[60000.1, 60000.12],
                       ra_offset=[1e-4, 5e-4], dec_offset=[-1e-4, 5e-4], flux_scale=[1.1, 3.0],
                       quality=[0, int(Quality.NO_SIGNAL)]))
    write_alignment_offset_list(table, tmp_path / "o.fits")
    written = read_offset_list(tmp_path / "o.fits")  # validated again on reading
    assert written["RA_OFFSET"][0] == pytest.approx(1e-4) and written["FLUX_SCALE"][0] == pytest.approx(1.1)
    # the flagged exposure: finite zero offsets (left unmoved), no scaling, its flag kept for the record
    assert written["RA_OFFSET"][1] == 0.0 and written["DEC_OFFSET"][1] == 0.0
    assert np.isnan(written["FLUX_SCALE"][1])
    assert list(written["QUALITY"]) == [0, int(Quality.NO_SIGNAL)]
    with fits.open(tmp_path / "o.fits") as hdul:
        assert hdul[1].columns["RA_OFFSET"].format == "D" and hdul[1].columns["DATE_OBS"].format == "23A"
    kept = write_alignment_offset_list(table, tmp_path / "k.fits", keep_flagged=True)
    assert kept["FLUX_SCALE"][1] == pytest.approx(3.0)
    # a bad scale alone keeps the offsets
    table["quality"][1] = int(Quality.BAD_SCALE)
    scale_only = write_alignment_offset_list(table, tmp_path / "s.fits")
    assert scale_only["RA_OFFSET"][1] == pytest.approx(5e-4) and np.isnan(scale_only["FLUX_SCALE"][1])


def test_command_writes_every_row_and_exits_3_when_an_image_is_flagged(tmp_path, caplog):
    muse_path, reference_path, truth = _pair(tmp_path)
    hopeless_path, _, _ = _pair(tmp_path, noise=1e4, name="hopeless", mjd=60000.13)
    parser = command.add_arguments(argparse.ArgumentParser())
    output = tmp_path / "OFFSET_LIST.fits"
    args = parser.parse_args([str(muse_path), str(hopeless_path), "--reference", str(reference_path),
                              "--output", str(output)])
    assert command.run(args) == command.EXIT_FLAGGED == 3
    assert "hopeless.fits" in caplog.text  # the warning names the image
    offsets = read_offset_list(output)
    assert offsets["RA_OFFSET"][0] == pytest.approx(truth["ra_offset"], abs=0.002 / 3600)
    assert offsets["QUALITY"][0] == 0 and offsets["QUALITY"][1] != 0
    assert offsets["RA_OFFSET"][1] == 0.0 and np.isnan(offsets["FLUX_SCALE"][1])
    # usage errors are argparse's (2); an unreadable input is an error (1); the help lists the codes
    with pytest.raises(SystemExit) as usage:
        parser.parse_args(["--output", str(output)])
    assert usage.value.code == 2
    missing = parser.parse_args([str(muse_path), "--reference", str(tmp_path / "none.fits"), "--output",
                                 str(output)])
    assert command.run(missing) == 1
    assert "exit status" in parser.format_help() and "3  OFFSET_LIST written" in parser.format_help()


def test_hst_count_rates_are_calibrated_with_photflam(tmp_path):
    header = synthetic.cd_header(synthetic.tan_wcs(RA, DEC, (20, 20), 0.05))
    header.update(BUNIT="ELECTRONS/S", PHOTFLAM=1e-19, PHOTPLAM=8045.0, FILTER1="CLEAR1L", FILTER2="F814W")
    fits.PrimaryHDU(np.full((20, 20), 2.0, np.float32), header=header).writeto(tmp_path / "hst.fits")
    reference = read_reference(tmp_path / "hst.fits")
    assert reference.pivot_wavelength == 8045.0
    assert reference.filter_name == "F814W"
    assert np.allclose(reference.data, 2.0 * 1e-19 * 1e20)  # erg/s/cm2/A per pixel -> 1e-20 units
    assert reference.pixel_scale == pytest.approx(0.05)
