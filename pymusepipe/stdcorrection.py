"""Aperture correction of a standard-star response measured on a narrow field.

On fields of one or two IFUs (a 2.5"-5" strip) muse_standard 2.8.7 fails with its default Moffat profile
and, with ``--profile=circle``, integrates the star within about one spaxel whatever the seeing: its
extracted spectrum (STD_FLUXES) is ~1/12 of the star's flux on one IFU (measured on simulated data whose
truth is known), so the response is too low by that factor and every calibrated flux too high. Real MUSE
standards are observed on the full field, where this does not happen; a reduction of a subset of IFUs does.

:func:`correct_response` measures the ratio of the star's total flux in DATACUBE_STD (an aperture of a few
arcsec, background from the spaxels around) to STD_FLUXES, and raises the response by ``2.5 log10(ratio)``.
The corrected file is marked (``HIERARCH PYMUSEPIPE APERCORR``) so the correction is never applied twice,
and the command line ``python -m pymusepipe.stdcorrection ...`` is what the replay log records.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

from .atomic import write_atomically

__all__ = ["aperture_ratio", "correct_response", "MARK_KEYWORD"]

logger = logging.getLogger(__name__)

MARK_KEYWORD = "HIERARCH PYMUSEPIPE APERCORR"
SPAXEL_ARCSEC = 0.2


def aperture_ratio(datacube_std, std_fluxes, radius_arcsec=2.0, smooth_angstrom=100.0):
    """Ratio, per wavelength, of the standard's total flux in DATACUBE_STD to its extracted spectrum.

    Returns
    -------
    wavelength, ratio : ndarray
        On the cube's wavelength grid; the ratio is median-smoothed over ``smooth_angstrom``.
    """
    with fits.open(datacube_std) as hdul:
        cube = np.asarray(hdul["DATA"].data, dtype=np.float64)
        header = hdul["DATA"].header
    # STD_FLUXES: a 1 x N image (extension DATA) on the cube's wavelength grid.
    extracted = np.asarray(fits.getdata(std_fluxes, "DATA"), dtype=np.float64).ravel()
    step = header.get("CD3_3", header.get("CDELT3"))
    wavelength = header["CRVAL3"] + step * (np.arange(cube.shape[0]) + 1 - header["CRPIX3"])
    if extracted.size != wavelength.size:
        raise ValueError(f"{std_fluxes}: {extracted.size} flux values for the {wavelength.size} planes of "
                         f"{datacube_std}; expected the STD_FLUXES of that cube")
    white = np.nanmedian(cube, axis=0)
    y0, x0 = np.unravel_index(np.nanargmax(white), white.shape)
    scale = abs(header["CD2_2"]) * 3600.0 if str(header.get("CUNIT2", "")).strip() == "deg" else SPAXEL_ARCSEC
    yy, xx = np.mgrid[:white.shape[0], :white.shape[1]]
    distance = np.hypot(yy - y0, xx - x0) * scale
    inside, outside = distance <= radius_arcsec, distance > 2 * radius_arcsec
    background = np.nanmedian(cube[:, outside], axis=1) if outside.any() else np.zeros(cube.shape[0])
    total = np.nansum(cube[:, inside], axis=1) - background * inside.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = total / extracted
    half = max(int(smooth_angstrom / step / 2), 1)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(ratio, half, mode="edge"), 2 * half + 1)
    return wavelength, np.nanmedian(windows, axis=1)


def correct_response(std_response, datacube_std, std_fluxes, output=None, **kwargs) -> float:
    """Raise the response of ``std_response`` by the aperture ratio; write ``output`` (default: in place).

    Returns
    -------
    float
        The median correction in magnitudes (0 when the file was corrected already).
    """
    output = Path(output or std_response)
    with fits.open(std_response) as hdul:
        if hdul[0].header.get(MARK_KEYWORD.removeprefix("HIERARCH ")) is not None:
            logger.info("%s: aperture correction already applied", std_response)
            return 0.0
        wavelength, ratio = aperture_ratio(datacube_std, std_fluxes, **kwargs)
        good = np.isfinite(ratio) & (ratio > 0)
        if good.sum() < 10:
            raise ValueError(f"{datacube_std}: the standard star's aperture flux could not be measured")
        table = hdul[1].data
        correction = 2.5 * np.log10(np.interp(table["lambda"], wavelength[good], ratio[good]))
        for column in ("response", "response_unsmoothed"):
            if column in table.columns.names:
                table[column] = table[column] + correction
        median = float(np.median(correction))
        hdul[0].header[MARK_KEYWORD] = (round(median, 4), "[mag] narrow-field aperture correction")
        write_atomically(output, lambda temporary: hdul.writeto(temporary, overwrite=True))  # never half a response
    logger.info("%s: response raised by %.3f mag (narrow-field aperture correction)", output, median)
    return median


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pymusepipe.stdcorrection", description=__doc__.split("\n")[0])
    parser.add_argument("std_response")
    parser.add_argument("datacube_std")
    parser.add_argument("std_fluxes")
    parser.add_argument("--output", help="corrected response (default: in place)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    correct_response(args.std_response, args.datacube_std, args.std_fluxes, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
