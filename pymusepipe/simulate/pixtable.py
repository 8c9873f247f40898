"""Fast synthetic merged PIXTABLE_OBJECT files (all IFUs in one table) and a flat STD_RESPONSE.

This bypasses the CCD level entirely: the sky (point sources with flat spectra + a constant sky) is sampled
directly on the focal-plane geometry of :class:`~pymusepipe.simulate.model.InstrumentModel` (the same
geometry its GEOMETRY_TABLE describes), over a short wavelength range so that muse_scipost runs in seconds.
Used to test, with the real muse_scipost / muse_exp_combine, how OFFSET_LIST offsets and flux scales are
applied (synthetic-science.md sections 2-3 list the format and keywords the recipes need).

Each exposure has a *true* pointing (where the field really is) and a *header* pointing (RA/DEC keywords,
what the pipeline uses): their difference is the pointing error an OFFSET_LIST must correct
(``RA_OFFSET = RA_header - RA_true``, see :mod:`pymusepipe.alignment.offset_list`).
"""
import logging
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.time import Time

from .model import InstrumentModel

logger = logging.getLogger(__name__)

#: Keywords muse_scipost reads from a merged pixel table (values of a plausible Paranal exposure).
_OBSERVATORY_KEYWORDS = {
    "TELESCOP": "ESO-VLT-U4", "INSTRUME": "MUSE", "EQUINOX": 2000.0,
    "HIERARCH ESO INS MODE": "WFM-NOAO-N", "HIERARCH ESO INS DROT POSANG": 0.0,
    "HIERARCH ESO INS DROT MODE": "SKY",
    "HIERARCH ESO TEL AIRM START": 1.1, "HIERARCH ESO TEL AIRM END": 1.1,
    "HIERARCH ESO TEL PARANG START": 0.0, "HIERARCH ESO TEL PARANG END": 0.0, "HIERARCH ESO TEL ALT": 65.0,
    "HIERARCH ESO TEL AMBI PRES START": 744.0, "HIERARCH ESO TEL AMBI PRES END": 744.0,
    "HIERARCH ESO TEL AMBI TEMP": 10.0, "HIERARCH ESO TEL AMBI RHUM": 10.0,
    "HIERARCH ESO TEL GEOLAT": -24.627, "HIERARCH ESO TEL GEOLON": -70.404, "HIERARCH ESO TEL GEOELEV": 2648.0,
    "LST": 36000.0, "UTC": 8640.0,
}


@dataclass
class PointSource:
    """A point source with a flat spectrum: position (deg) and flux (counts per wavelength sample)."""

    ra: float
    dec: float
    flux: float


def spaxel_sky_offsets(model=None):
    """Focal-plane centres of every spaxel of the merged table, as sky offsets from the pointing.

    Returns
    -------
    dict of numpy.ndarray
        ``x``, ``y`` (focal plane, spaxels), ``east``, ``north`` (arcsec; East = -x as for MUSE's CD1_1 < 0),
        ``ifu``, ``slice`` (CCD slice number 1..48), ``column`` (1..slice length).
    """
    model = model or InstrumentModel()
    geometry = model.geometry_columns()
    length = int(round(model.slice_length))
    along = np.arange(length) - (length - 1) / 2.0
    n_slices = geometry["x"].size
    x = (geometry["x"][:, None] + along[None, :]).ravel()
    y = np.repeat(geometry["y"], length)
    scale = model.spaxel_scale
    return dict(x=x, y=y, east=-x * scale, north=y * scale, ifu=np.repeat(geometry["SubField"], length),
                slice=np.repeat(geometry["SliceCCD"], length),
                column=np.tile(np.arange(1, length + 1), n_slices))


def write_pixtable_object(path, sources, *, header_ra, header_dec, true_ra, true_dec, mjd_obs, fwhm=0.8,
                          transparency=1.0, sky=5.0, noise=0.3, wavelengths=None, exptime=600.0, model=None,
                          seed=0):
    """Write one exposure as a merged PIXTABLE_OBJECT that muse_scipost accepts.

    Parameters
    ----------
    path : str or path-like
        Output FITS file.
    sources : iterable of PointSource
        Sky model; Gaussian PSF of ``fwhm`` (arcsec), flat spectra.
    header_ra, header_dec : float
        Pointing written in the header (deg): what the pipeline believes.
    true_ra, true_dec : float
        Where the field really is (deg).
    mjd_obs : float
        MJD-OBS; DATE-OBS is derived from it (23 characters, the OFFSET_LIST match key).
    fwhm, transparency, sky, noise : float, optional
        Seeing (arcsec), factor on the source fluxes, sky level and Gaussian noise (counts per pixel).
    wavelengths : array-like, optional
        Wavelength samples (Angstrom); default 10 samples from 6500 A at 1.25 A (keeps scipost at seconds).
    exptime : float, optional
    model : InstrumentModel, optional
        Source of the focal-plane geometry (default ``InstrumentModel()``).
    seed : int, optional
        Noise seed.

    Returns
    -------
    str
        DATE-OBS written in the header.
    """
    rng = np.random.default_rng(seed)
    wavelengths = np.asarray(wavelengths if wavelengths is not None else 6500.0 + 1.25 * np.arange(10), float)
    spaxels = spaxel_sky_offsets(model)
    cos_dec = np.cos(np.deg2rad(true_dec))
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    spaxel_area = (model or InstrumentModel()).spaxel_scale ** 2
    image = np.full(spaxels["east"].size, float(sky))
    for source in sources:
        east = (source.ra - true_ra) * cos_dec * 3600.0
        north = (source.dec - true_dec) * 3600.0
        distance2 = (spaxels["east"] - east) ** 2 + (spaxels["north"] - north) ** 2
        near = distance2 < (6 * sigma) ** 2
        image[near] += transparency * source.flux * spaxel_area / (2 * np.pi * sigma ** 2) \
            * np.exp(-0.5 * distance2[near] / sigma ** 2)
    n_lambda = wavelengths.size
    n_rows = image.size * n_lambda
    data = np.repeat(image, n_lambda) + rng.normal(0.0, noise, n_rows)
    # origin = x-in-slice << 24 | CCD row << 11 | IFU << 6 | slice (muse_pixtable_origin_encode_fast)
    ccd_row = np.tile(2000 + np.arange(n_lambda), image.size)
    origin = ((np.repeat(spaxels["column"], n_lambda) << 24) | (ccd_row << 11)
              | (np.repeat(spaxels["ifu"], n_lambda) << 6) | np.repeat(spaxels["slice"], n_lambda))
    columns = [
        fits.Column(name="xpos", format="E", unit="pix", array=np.repeat(spaxels["x"], n_lambda)),
        fits.Column(name="ypos", format="E", unit="pix", array=np.repeat(spaxels["y"], n_lambda)),
        fits.Column(name="lambda", format="E", unit="Angstrom", array=np.tile(wavelengths, image.size)),
        fits.Column(name="data", format="E", unit="count", array=data),
        fits.Column(name="dq", format="J", array=np.zeros(n_rows, np.int32)),
        fits.Column(name="stat", format="E", unit="count**2", array=np.full(n_rows, noise ** 2)),
        fits.Column(name="origin", format="J", array=origin.astype(np.int32)),
    ]
    date_obs = Time(mjd_obs, format="mjd").isot[:23]
    header = fits.Header()
    for key, value in _OBSERVATORY_KEYWORDS.items():
        header[key] = value
    header["OBJECT"] = "SYNTH_ALIGN"
    header["RA"] = (header_ra, "[deg] pointing as recorded")
    header["DEC"] = (header_dec, "[deg] pointing as recorded")
    header["EXPTIME"] = exptime
    header["MJD-OBS"] = mjd_obs
    header["DATE-OBS"] = date_obs
    limits = {"X": (spaxels["x"].min(), spaxels["x"].max()), "Y": (spaxels["y"].min(), spaxels["y"].max()),
              "LAMBDA": (wavelengths.min(), wavelengths.max()),
              "IFU": (int(spaxels["ifu"].min()), int(spaxels["ifu"].max())),
              "SLICE": (int(spaxels["slice"].min()), int(spaxels["slice"].max()))}
    header["HIERARCH ESO DRS MUSE PIXTABLE TYPE"] = "GEOFULL"
    for axis, (low, high) in limits.items():
        header[f"HIERARCH ESO DRS MUSE PIXTABLE LIMITS {axis} LOW"] = low if axis in ("IFU", "SLICE") \
            else float(low)
        header[f"HIERARCH ESO DRS MUSE PIXTABLE LIMITS {axis} HIGH"] = high if axis in ("IFU", "SLICE") \
            else float(high)
    header["HIERARCH ESO DRS MUSE PIXTABLE MERGED"] = int(np.unique(spaxels["ifu"]).size)
    header["HIERARCH ESO PRO CATG"] = "PIXTABLE_OBJECT"
    fits.HDUList([fits.PrimaryHDU(header=header), fits.BinTableHDU.from_columns(columns)]).writeto(
        path, overwrite=True)
    logger.debug("wrote %s (%d rows, DATE-OBS %s)", path, n_rows, date_obs)
    return date_obs


def write_std_response(path, response_mag=45.0, wavelength_range=(4000.0, 10000.0)):
    """Write a flat STD_RESPONSE (muse_scipost requires one): ``response_mag`` at every wavelength.

    Parameters
    ----------
    path : str or path-like
    response_mag : float, optional
        2.5 log10((count/s/Angstrom) / (erg/s/cm**2/Angstrom)).
    wavelength_range : tuple of float, optional
        Angstrom.
    """
    wavelength = np.arange(wavelength_range[0], wavelength_range[1] + 0.01, 5.0)
    unit = "2.5*log10((count/s/Angstrom)/(erg/s/cm**2/Angstrom))"
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="lambda", format="D", unit="Angstrom", array=wavelength),
        fits.Column(name="response", format="D", unit=unit, array=np.full(wavelength.size, response_mag)),
        fits.Column(name="resperr", format="D", unit=unit, array=np.full(wavelength.size, 0.01))])
    header = fits.Header()
    header["INSTRUME"] = "MUSE"
    header["HIERARCH ESO PRO CATG"] = "STD_RESPONSE"
    fits.HDUList([fits.PrimaryHDU(header=header), table]).writeto(path, overwrite=True)
