"""A reference image of a target's sky, as a ground-based survey or HST would provide one.

Its own pixel scale, PSF, background, noise and photometric calibration: pixel values are in ``BUNIT``
(nanomaggies, microjanskys or MUSE units) in band ``FILTER``, converted from the simulator's filter-averaged
flux densities at the band's pivot wavelength, the one :func:`pymusepipe.alignment.reference.read_reference`
uses for that ``FILTER``. So an aperture sum over a star, read back by ``read_reference`` (without a
FILTER_LIST, or with ``pivot_wavelength=`` the truth's value), gives the star's ``flux[filter]`` of the truth,
up to noise and aperture losses; no atmosphere: the reference is calibrated above it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from scipy.special import erf

from . import spectra
from .model import InstrumentModel
from .programme import REFERENCE_UNITS, ReferenceImagePlan
from .scene import DISC_LINES, SkyScene

logger = logging.getLogger(__name__)

#: Unit of MUSE cubes and images: 1e-20 erg/s/cm2/A.
MUSE_UNIT = u.Unit(1e-20 * u.erg / u.s / u.cm ** 2 / u.Angstrom)
#: Sub-sampling of each reference pixel for the smooth disc.
DISC_SUBSAMPLING = 3


def reference_pivot(filter_name: str) -> float:
    """Pivot wavelength [A] the alignment module uses for ``filter_name`` (its PIVOT_WAVELENGTHS table)."""
    from ..alignment.reference import pivot_wavelength
    return float(pivot_wavelength(filter_name))


def muse_to_bunit(bunit: str, pivot: float) -> float:
    """Factor turning a flux density in MUSE units (1e-20 erg/s/cm2/A) into ``bunit`` at ``pivot`` [A]."""
    if bunit == "10**(-20)*erg/s/cm**2/Angstrom":
        return 1.0
    microjansky = float((1.0 * MUSE_UNIT).to_value(u.uJy, equivalencies=u.spectral_density(pivot * u.AA)))
    if bunit == "uJy":
        return microjansky
    if bunit == "nanomaggy":   # 1 nanomaggy = 3.631 microjansky (AB zero point 22.5)
        return microjansky / 3.631
    raise ValueError(f"bunit={bunit!r}: expected one of {', '.join(REFERENCE_UNITS)}")


def _disc_band_surface_brightness(disc, filter_name):
    """Band-averaged surface brightness of the disc centre [MUSE units per spaxel]: continuum plus the lines
    that fall in the band, weighted the way muse_scipost averages a cube through a filter."""
    wavelength = np.arange(4750.0, 9350.0, 0.5)
    weights = spectra.filter_curve(filter_name, wavelength)
    norm = np.sum(weights) * 0.5
    total = disc.continuum
    for name, (rest, ratio) in DISC_LINES.items():
        centre = rest * (1.0 + disc.velocity / 299792.458)
        total += disc.halpha * ratio * float(np.interp(centre, wavelength, weights)) / norm
    return total


def write_reference_image(path, design, plan: ReferenceImagePlan, *, seed: int = 1,
                          model: InstrumentModel | None = None) -> dict:
    """Write the reference image of a target and return its truth.

    Parameters
    ----------
    path : path-like
        Output FITS file (primary HDU image).
    design : pymusepipe.simulate.schedule.TargetDesign
        The target's sky (stars, disc, pointings).
    plan : ReferenceImagePlan
        Band, pixel scale, PSF, unit, background, noise and margin.
    seed : int
        Seed of the noise (with the target's index).
    model : InstrumentModel, optional
        The instrument whose strips the image must cover (default: one IFU).

    Returns
    -------
    dict
        File-independent truth: filter, pivot, unit, zero point, scale, PSF, background, noise, WCS centre,
        shape, factor from MUSE units, and per star its flux in ``bunit``.
    """
    model = model or InstrumentModel()
    scale = float(plan.pixel_scale)
    pivot = reference_pivot(plan.filter)
    factor = muse_to_bunit(plan.bunit, pivot)
    cos_dec = np.cos(np.radians(design.field_dec))
    easts = [(ra - design.field_ra) * 3600.0 * cos_dec for ra, _ in design.pointing_centres.values()]
    half_length = model.slice_length * 2 * model.spaxel_scale
    # the strips of the simulated IFUs, north of each pointing centre
    ys = [model.ifu_focal_extent(ifu)[2:] for ifu in model.ifus]
    north_lo = (min(y[0] for y in ys) - model.focal_centre[1]) * model.spaxel_scale
    north_hi = (max(y[1] for y in ys) - model.focal_centre[1]) * model.spaxel_scale
    east_lo, east_hi = min(easts) - half_length - plan.margin, max(easts) + half_length + plan.margin
    north_lo, north_hi = north_lo - plan.margin, north_hi + plan.margin
    nx = int(np.ceil((east_hi - east_lo) / scale))
    ny = int(np.ceil((north_hi - north_lo) / scale))
    # FITS pixel p (1-based): east = -scale (p1 - crpix1), north = scale (p2 - crpix2), TAN around the field
    crpix1 = 1.0 + east_hi / scale
    crpix2 = 1.0 - north_lo / scale
    image = np.zeros((ny, nx))
    sigma = plan.fwhm / 2.3548 / scale                                  # [pix]
    x_edges = np.arange(nx + 1) + 0.5                                   # 1-based pixel boundaries
    y_edges = np.arange(ny + 1) + 0.5
    stars = []
    wavelength = np.arange(4600.0, 9400.0, 1.0)
    for star in design.stars:
        flux_muse = spectra.filter_average(plan.filter, wavelength, star.spectrum(wavelength))
        flux = flux_muse * factor
        xi, eta = SkyScene.tangent_offsets(star.ra, star.dec, design.field_ra, design.field_dec)
        p1, p2 = crpix1 - xi / scale, crpix2 + eta / scale
        fx = 0.5 * np.diff(erf((x_edges - p1) / (np.sqrt(2) * sigma)))
        fy = 0.5 * np.diff(erf((y_edges - p2) / (np.sqrt(2) * sigma)))
        image += flux * np.outer(fy, fx)
        stars.append({"ra": star.ra, "dec": star.dec, "x": float(p1), "y": float(p2),
                      "flux_muse": float(flux_muse), "flux_bunit": float(flux)})
    disc = design.disc
    disc_truth = None
    if disc is not None:
        central = _disc_band_surface_brightness(disc, plan.filter)      # per 0.2" spaxel
        per_pixel = central / model.spaxel_scale ** 2 * scale ** 2 * factor
        sub = (np.arange(DISC_SUBSAMPLING) + 0.5) / DISC_SUBSAMPLING - 0.5
        d_xi, d_eta = SkyScene.tangent_offsets(disc.ra, disc.dec, design.field_ra, design.field_dec)
        accumulated = np.zeros((ny, nx))
        for dy in sub:
            for dx in sub:
                east = -scale * (np.arange(1, nx + 1)[None, :] + dx - crpix1) - d_xi
                north = scale * (np.arange(1, ny + 1)[:, None] + dy - crpix2) - d_eta
                profile, _ = disc.surface_and_velocity(np.broadcast_to(east, (ny, nx)),
                                                       np.broadcast_to(north, (ny, nx)))
                accumulated += profile
        image += per_pixel * accumulated / DISC_SUBSAMPLING ** 2
        disc_truth = {"central_surface_brightness_bunit_per_pixel": float(per_pixel),
                      "central_surface_brightness_muse_per_spaxel": float(central)}
    rng = np.random.default_rng([int(seed), 200 + design.index])
    image += plan.background + plan.noise * rng.standard_normal(image.shape)

    header = fits.Header()
    header["OBJECT"] = design.name
    header["TELESCOP"] = "SIMULATED"
    header["INSTRUME"] = "pymusepipe.simulate"
    header["FILTER"] = (plan.filter, "band of the image")
    header["BUNIT"] = plan.bunit
    zero_point = REFERENCE_UNITS[plan.bunit]
    if zero_point is not None:
        header["MAGZP"] = (zero_point, "[mag] AB zero point of BUNIT")
    header["PSF_FWHM"] = (plan.fwhm, "[arcsec] Gaussian PSF")
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = design.field_ra, design.field_dec
    header["CRPIX1"], header["CRPIX2"] = crpix1, crpix2
    header["CD1_1"], header["CD1_2"] = -scale / 3600.0, 0.0
    header["CD2_1"], header["CD2_2"] = 0.0, scale / 3600.0
    header["RADESYS"], header["EQUINOX"] = "ICRS", 2000.0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data=image.astype(np.float32), header=header).writeto(path, overwrite=True)
    logger.info("reference image %s: %d x %d px of %.3f\", %s in %s", path, nx, ny, scale, plan.filter,
                plan.bunit)
    return {"filter": plan.filter, "pivot_wavelength": pivot, "bunit": plan.bunit, "ab_zero_point": zero_point,
            "muse_to_bunit": factor, "pixel_scale_arcsec": scale, "psf_fwhm_arcsec": plan.fwhm,
            "background_bunit": plan.background, "noise_bunit": plan.noise, "shape": [ny, nx],
            "crval": [design.field_ra, design.field_dec], "crpix": [crpix1, crpix2],
            "stars": stars, "disc": disc_truth,
            "note": ("flux_bunit = flux_muse x muse_to_bunit; read_reference converts back with the same pivot "
                     "when FILTER is looked up in its table (not a FILTER_LIST curve)")}
