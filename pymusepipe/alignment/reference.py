"""Reference images: reading, flux units and pivot wavelengths.

A reference image (ground-based or HST, in a band similar to the MUSE image) comes with its own WCS, pixel
scale, PSF, background and units. :func:`read_reference` converts its data to MUSE units
(``10**(-20)*erg/s/cm**2/Angstrom``) **per reference pixel**, using ``BUNIT`` and the filter's pivot
wavelength; the fit later rescales by the ratio of pixel areas when it samples the reference on the MUSE
grid, so flux per pixel is conserved.
"""
import logging
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import astropy.units as u
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

logger = logging.getLogger(__name__)

#: Unit of MUSE cubes and IMAGE_FOVs (per spaxel).
MUSE_FLUX_UNIT = u.Unit(1e-20 * u.erg / u.s / u.cm ** 2 / u.Angstrom)
MUSE_BUNIT = "10**(-20)*erg/s/cm**2/Angstrom"

#: Approximate pivot wavelengths (Angstrom) of common broad bands, from the published filter curves (SVO
#: Filter Profile Service, instrument handbooks). Good to ~0.3 %; pass ``pivot_wavelength=`` (or a
#: FILTER_LIST holding the curve) for anything more precise. Keys are compared case-insensitively after
#: removing blanks, dots, dashes and underscores.
PIVOT_WAVELENGTHS = {
    # Johnson / Cousins (Bessell 1990 curves)
    "johnson_b": 4361.0, "johnson_v": 5448.0, "johnson_r": 6855.0, "johnson_i": 8635.0,
    "cousins_r": 6414.0, "cousins_i": 7980.0,
    # SDSS (Doi et al. 2010)
    "sdss_g": 4702.0, "sdss_r": 6176.0, "sdss_i": 7490.0, "sdss_z": 8947.0,
    # Pan-STARRS1 (Tonry et al. 2012)
    "ps1_g": 4849.0, "ps1_r": 6201.0, "ps1_i": 7535.0, "ps1_z": 8674.0, "ps1_y": 9628.0,
    # Legacy Surveys (DECam)
    "decam_g": 4827.0, "decam_r": 6432.0, "decam_i": 7826.0, "decam_z": 9179.0,
    # ESO/MPG 2.2m WFI
    "wfi_b": 4563.0, "wfi_v": 5396.0, "wfi_rc": 6517.0, "wfi_r": 6517.0, "wfi_ic": 8621.0, "wfi_halpha": 6588.0,
    # du Pont 2.5m (Las Campanas) direct CCD, Johnson-Cousins-like set
    "dupont_b": 4391.0, "dupont_v": 5423.0, "dupont_r": 6453.0, "dupont_i": 8000.0,
    # HST ACS/WFC
    "acs_f435w": 4329.0, "acs_f475w": 4747.0, "acs_f555w": 5361.0, "acs_f606w": 5922.0, "acs_f625w": 6312.0,
    "acs_f658n": 6584.0, "acs_f775w": 7693.0, "acs_f814w": 8046.0, "acs_f850lp": 9031.0,
    # HST WFC3/UVIS
    "wfc3_f438w": 4326.0, "wfc3_f475w": 4773.0, "wfc3_f555w": 5308.0, "wfc3_f606w": 5889.0,
    "wfc3_f625w": 6242.0, "wfc3_f657n": 6567.0, "wfc3_f658n": 6586.0, "wfc3_f775w": 7651.0,
    "wfc3_f814w": 8039.0, "wfc3_f850lp": 9176.0,
}
# common spellings that map onto the table above
_FILTER_ALIASES = {
    "b": "johnson_b", "v": "johnson_v", "r": "cousins_r", "i": "cousins_i", "rc": "cousins_r", "ic": "cousins_i",
    "g": "sdss_g", "sdssg": "sdss_g", "sdssr": "sdss_r", "sdssi": "sdss_i", "sdssz": "sdss_z",
    "f435w": "acs_f435w", "f475w": "acs_f475w", "f555w": "acs_f555w", "f606w": "acs_f606w",
    "f625w": "acs_f625w", "f775w": "acs_f775w", "f814w": "acs_f814w", "f850lp": "acs_f850lp",
    "f438w": "wfc3_f438w", "f657n": "wfc3_f657n",
}


class ReferenceImageError(ValueError):
    """A reference image that cannot be used as given (file, HDU, unit or filter at fault)."""


def _normalise_filter_name(name):
    return re.sub(r"[\s.\-_/]", "", str(name).lower())


def pivot_wavelength(filter_name, *, filter_list=None):
    """Pivot wavelength of a filter, in Angstrom.

    Parameters
    ----------
    filter_name : str
        Filter name (e.g. ``Cousins_R``, ``SDSS_r``, ``ACS_F814W``, ``WFI_Rc``, ``PS1_r``, ``DECam_r``).
    filter_list : str or path-like, optional
        A MUSE FILTER_LIST file; if it has an extension of that name, the pivot is computed from its curve,
        ``sqrt(int T lambda dlambda / int T / lambda dlambda)``.

    Returns
    -------
    float
        Pivot wavelength (Angstrom).

    Raises
    ------
    ReferenceImageError
        Unknown filter (the message lists the known names).
    """
    if filter_list is not None:
        with fits.open(filter_list) as hdul:
            for hdu in hdul[1:]:
                if hdu.name.lower() == str(filter_name).lower():
                    wavelength = np.asarray(hdu.data["lambda"], dtype=float)
                    throughput = np.asarray(hdu.data["throughput"], dtype=float)
                    return float(np.sqrt(np.trapezoid(throughput * wavelength, wavelength)
                                         / np.trapezoid(throughput / wavelength, wavelength)))
    wanted = _normalise_filter_name(filter_name)
    table = {_normalise_filter_name(key): value for key, value in PIVOT_WAVELENGTHS.items()}
    aliases = {_normalise_filter_name(key): _normalise_filter_name(value) for key, value in _FILTER_ALIASES.items()}
    wanted = aliases.get(wanted, wanted)
    if wanted in table:
        return table[wanted]
    raise ReferenceImageError(f"unknown filter {filter_name!r}: give pivot_wavelength= (Angstrom) or a FILTER_LIST "
                              f"holding it; known names: {', '.join(sorted(PIVOT_WAVELENGTHS))}")


# read_reference has a keyword of the same name
_lookup_pivot = pivot_wavelength


def parse_flux_unit(unit_text):
    """Parse a BUNIT string into an astropy unit and tell whether it is per pixel or per solid angle.

    Parameters
    ----------
    unit_text : str
        E.g. ``uJy``, ``nanomaggy``, ``10**(-20)*erg/s/cm**2/Angstrom``, ``erg/s/cm2/A/arcsec2``, ``MJy/sr``.
        A trailing ``/pixel`` is accepted and ignored (per pixel is the default).

    Returns
    -------
    unit : astropy.units.Unit
        Spectral flux density unit (per pixel) or surface brightness unit (per solid angle).
    per_solid_angle : bool
        True when the unit is per steradian / arcsec**2.

    Raises
    ------
    ReferenceImageError
        For units that are not a flux density (counts, electrons/s without calibration...).
    """
    text = str(unit_text).strip()
    cleaned = re.sub(r"\s*/\s*(pixel|pix|px)\b", "", text, flags=re.IGNORECASE)
    cleaned = re.sub(r"(?<![A-Za-z])(A|AA|Angstroem|angstrom)(?![A-Za-z])", "Angstrom", cleaned)
    cleaned = re.sub(r"(?i)nanomaggies|nanomaggy", "nmgy", cleaned)
    cleaned = cleaned.replace("cm2", "cm**2").replace("arcsec2", "arcsec**2")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", u.UnitsWarning)
            unit = u.Unit(cleaned, parse_strict="raise")
    except ValueError as exc:
        raise ReferenceImageError(f"cannot parse flux unit {unit_text!r} ({exc}); pass unit= explicitly") from exc
    # maggies are AB flux ratios: 1 maggy = 3631 Jy
    if unit.is_equivalent(u.nmgy):
        unit = u.Unit(unit.to(u.nmgy) * 3.631e-6 * u.Jy)
    per_pixel_types = (u.Jy, u.erg / u.s / u.cm ** 2 / u.Angstrom)
    if any(unit.is_equivalent(reference) for reference in per_pixel_types):
        return unit, False
    if any(unit.is_equivalent(reference / u.sr) for reference in per_pixel_types):
        return unit, True
    raise ReferenceImageError(f"unit {unit_text!r} is not a flux density (per pixel) or surface brightness; "
                              "calibrate the image or pass unit= (e.g. 'uJy')")


def flux_to_muse_factor(unit, per_solid_angle, pivot_angstrom, pixel_area_arcsec2):
    """Factor turning reference pixel values into MUSE units (1e-20 erg/s/cm2/A) per reference pixel.

    Parameters
    ----------
    unit : astropy.units.Unit
        As returned by :func:`parse_flux_unit`.
    per_solid_angle : bool
        Whether ``unit`` is a surface brightness (then multiplied by the pixel's solid angle).
    pivot_angstrom : float or None
        Pivot wavelength for f_nu -> f_lambda; not needed when the unit is already f_lambda.
    pixel_area_arcsec2 : float
        Solid angle of one reference pixel.

    Returns
    -------
    float
    """
    quantity = 1.0 * unit
    if per_solid_angle:
        # surface brightness x pixel solid angle = flux density per pixel
        quantity = (quantity * pixel_area_arcsec2 * u.arcsec ** 2).decompose()
    if quantity.unit.is_equivalent(MUSE_FLUX_UNIT):
        return float(quantity.to_value(MUSE_FLUX_UNIT))
    if pivot_angstrom is None or not np.isfinite(pivot_angstrom):
        raise ReferenceImageError(f"unit {unit} is per frequency: a pivot wavelength (filter) is needed to "
                                  "convert it to MUSE's per-Angstrom units")
    return float(quantity.to_value(MUSE_FLUX_UNIT, equivalencies=u.spectral_density(pivot_angstrom * u.Angstrom)))


@dataclass
class ReferenceImage:
    """A reference image converted to MUSE flux units.

    Attributes
    ----------
    data : numpy.ndarray
        Image in MUSE units (1e-20 erg/s/cm2/A) per reference pixel; NaN where undefined.
    wcs : astropy.wcs.WCS
        Celestial WCS of ``data``.
    pixel_scale : float
        Mean pixel size (arcsec).
    pixel_area : float
        Pixel solid angle (arcsec**2).
    fwhm : float or None
        PSF FWHM (arcsec) if known.
    pivot_wavelength : float or None
        Angstrom.
    filter_name : str or None
    filename : str or None
    """

    data: np.ndarray
    wcs: WCS
    pixel_scale: float
    pixel_area: float
    fwhm: float = None
    pivot_wavelength: float = None
    filter_name: str = None
    filename: str = None
    header: fits.Header = field(default=None, repr=False)


def _first_image_hdu(hdul, path, hdu):
    if hdu is not None:
        try:
            selected = hdul[hdu]
        except (KeyError, IndexError) as exc:
            raise ReferenceImageError(f"{path}: no HDU {hdu!r}") from exc
        if selected.data is None or selected.data.ndim != 2:
            raise ReferenceImageError(f"{path}: HDU {hdu!r} is not a 2-D image")
        return selected
    for candidate in hdul:
        if candidate.is_image and candidate.data is not None and candidate.data.ndim == 2:
            return candidate
    raise ReferenceImageError(f"{path}: no 2-D image HDU found (give hdu=)")


def _header_filter(header, primary_header):
    for card in ("FILTER", "FILTER1", "FILTER2", "FILTNAM1", "HIERARCH ESO INS FILT1 NAME"):
        for source in (header, primary_header):
            value = source.get(card)
            if value and not str(value).upper().startswith("CLEAR"):
                return str(value).strip()
    return None


def reference_band(path, hdu=None):
    """The band of a reference image as its header names it (FILTER, FILTER1/2, FILTNAM1, ESO INS FILT1 NAME),
    or None."""
    with fits.open(str(path)) as hdul:
        image_hdu = _first_image_hdu(hdul, str(path), hdu)
        return _header_filter(image_hdu.header, hdul[0].header)


def match_filter_name(filter_name, candidates):
    """The name among ``candidates`` (e.g. the extensions of a MUSE FILTER_LIST) that means the same band as
    ``filter_name`` (spelling, case and the usual aliases ignored: ``r`` / ``Rc`` -> ``Cousins_R``,
    ``sdssr`` -> ``SDSS_r``), or None."""
    if not filter_name:
        return None
    aliases = {_normalise_filter_name(key): _normalise_filter_name(value) for key, value in _FILTER_ALIASES.items()}
    wanted = _normalise_filter_name(filter_name)
    wanted = aliases.get(wanted, wanted)
    for candidate in candidates:
        name = _normalise_filter_name(candidate)
        if aliases.get(name, name) == wanted:
            return str(candidate)
    return None


def read_reference(path, *, hdu=None, filter_name=None, pivot_wavelength=None, unit=None, fwhm=None,
                   filter_list=None):
    """Read a reference image and convert it to MUSE flux units per reference pixel.

    Parameters
    ----------
    path : str or path-like
        FITS file.
    hdu : int or str, optional
        HDU holding the image; default: the first 2-D image HDU.
    filter_name : str, optional
        Overrides the FILTER keyword; used to find the pivot wavelength.
    pivot_wavelength : float, optional
        Angstrom; overrides the filter look-up and HST's PHOTPLAM.
    unit : str, optional
        Overrides BUNIT (e.g. ``'uJy'``).
    fwhm : float, optional
        PSF FWHM of the reference (arcsec), for PSF matching.
    filter_list : str or path-like, optional
        MUSE FILTER_LIST in which to look for the filter curve first.

    Returns
    -------
    ReferenceImage

    Raises
    ------
    ReferenceImageError
        Missing WCS, unknown unit or filter.
    """
    path = str(path)
    try:
        hdul = fits.open(path)
    except OSError as exc:
        raise ReferenceImageError(f"{path}: cannot be opened as FITS ({exc})") from exc
    with hdul:
        image_hdu = _first_image_hdu(hdul, path, hdu)
        header = image_hdu.header.copy()
        primary_header = hdul[0].header.copy()
        data = np.asarray(image_hdu.data, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header).celestial
    if not wcs.has_celestial or wcs.naxis != 2:
        raise ReferenceImageError(f"{path}: no celestial WCS in the image header")
    scales = proj_plane_pixel_scales(wcs) * 3600.0
    pixel_area = float(abs(np.linalg.det(wcs.pixel_scale_matrix)) * 3600.0 ** 2)

    filter_name = filter_name or _header_filter(header, primary_header)
    if pivot_wavelength is None:
        photplam = header.get("PHOTPLAM", primary_header.get("PHOTPLAM"))
        if photplam:
            pivot_wavelength = float(photplam)
        elif filter_name:
            pivot_wavelength = _lookup_pivot(filter_name, filter_list=filter_list)

    unit_text = unit or header.get("BUNIT") or primary_header.get("BUNIT")
    photflam = header.get("PHOTFLAM", primary_header.get("PHOTFLAM"))
    if unit is None and photflam and (not unit_text or "ELECTRON" in str(unit_text).upper()
                                      or "COUNT" in str(unit_text).upper()):
        # HST: count rate x PHOTFLAM = erg/s/cm2/A (per pixel)
        factor = float(photflam) * 1e20
        if unit_text and "/S" not in str(unit_text).upper():
            exptime = float(header.get("EXPTIME", primary_header.get("EXPTIME", 1.0)))
            factor /= exptime
        logger.info("%s: using PHOTFLAM=%g to convert %s", path, photflam, unit_text)
    else:
        if not unit_text:
            raise ReferenceImageError(f"{path}: no BUNIT keyword; pass unit= (e.g. 'uJy' or "
                                      f"'{MUSE_BUNIT}')")
        try:
            parsed, per_solid_angle = parse_flux_unit(unit_text)
            factor = flux_to_muse_factor(parsed, per_solid_angle, pivot_wavelength, pixel_area)
        except ReferenceImageError as exc:
            raise ReferenceImageError(f"{path}: {exc}") from exc
    logger.info("%s: %s -> MUSE units x %.6g (pivot %s A, %.3f\"/px)", path, unit_text, factor,
                pivot_wavelength, float(np.mean(scales)))
    return ReferenceImage(data=data * factor, wcs=wcs, pixel_scale=float(np.mean(scales)),
                          pixel_area=pixel_area, fwhm=fwhm, pivot_wavelength=pivot_wavelength,
                          filter_name=filter_name, filename=path, header=header)
