"""Narrow-field aperture correction of STD_RESPONSE, on small files in the pipeline's formats."""
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from pymusepipe.stdcorrection import MARK_KEYWORD, correct_response, main


def _write_products(folder, fraction_extracted=0.1, nlambda=200):
    yy, xx = np.mgrid[:13, :60]
    star = np.exp(-0.5 * ((xx - 30) ** 2 + (yy - 6) ** 2) / 1.3 ** 2)
    star /= star.sum()
    total = np.linspace(1000.0, 2000.0, nlambda)
    cube = total[:, None, None] * star[None] + 5.0
    header = fits.Header({"CRVAL3": 4750.0, "CRPIX3": 1.0, "CD3_3": 1.25, "CD2_2": 0.2 / 3600, "CUNIT2": "deg"})
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube.astype(np.float32), header, name="DATA")]).writeto(
        folder / "DATACUBE_STD.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU((fraction_extracted * total)[None].astype(np.float32),
                                                   name="DATA")]).writeto(folder / "STD_FLUXES.fits")
    response = Table({"lambda": 4750.0 + 1.25 * np.arange(nlambda), "response": np.full(nlambda, 40.0),
                      "resperr": np.full(nlambda, 0.01)})
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(response)]).writeto(folder / "STD_RESPONSE.fits")
    return [folder / name for name in ("STD_RESPONSE.fits", "DATACUBE_STD.fits", "STD_FLUXES.fits")]


def test_response_raised_by_the_missing_flux_once(tmp_path):
    response, cube, fluxes = _write_products(tmp_path, fraction_extracted=0.1)
    magnitude = correct_response(response, cube, fluxes)
    assert magnitude == pytest.approx(2.5, abs=0.01)          # 2.5 log10(1 / 0.1)
    corrected = fits.getdata(response, 1)["response"]
    assert np.allclose(corrected, 42.5, atol=0.01)
    assert fits.getheader(response)[MARK_KEYWORD.removeprefix("HIERARCH ")] == pytest.approx(2.5, abs=0.01)
    # Replaying the log runs it again: nothing changes.
    assert main([str(response), str(cube), str(fluxes)]) == 0
    assert np.allclose(fits.getdata(response, 1)["response"], corrected)


def test_mismatched_products_are_refused(tmp_path):
    response, cube, fluxes = _write_products(tmp_path)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((1, 7), np.float32), name="DATA")]).writeto(
        fluxes, overwrite=True)
    with pytest.raises(ValueError, match="expected the STD_FLUXES of that cube"):
        correct_response(response, cube, fluxes)
