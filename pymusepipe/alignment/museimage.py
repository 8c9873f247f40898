"""MUSE images to align: IMAGE_FOV files, or images reconstructed from a cube through a filter curve."""
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

logger = logging.getLogger(__name__)


class MuseImageError(ValueError):
    """A MUSE image that cannot be aligned as given (file, extension or keyword at fault)."""


@dataclass
class MuseImage:
    """A 2-D MUSE image with what the OFFSET_LIST needs.

    Attributes
    ----------
    data : numpy.ndarray
        Flux per spaxel (MUSE units), NaN outside the field.
    wcs : astropy.wcs.WCS
        Celestial TAN WCS of ``data`` (as delivered, i.e. with the pointing error to be measured).
    date_obs : str
        DATE-OBS of the exposure (the OFFSET_LIST match key); '' if absent.
    mjd_obs : float
        MJD-OBS; NaN if absent.
    filename : str or None
    unit : str or None
        BUNIT of the data.
    """

    data: np.ndarray
    wcs: WCS
    date_obs: str = ""
    mjd_obs: float = np.nan
    filename: str = None
    unit: str = None
    header: fits.Header = field(default=None, repr=False)


def _celestial_wcs(header, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    if not wcs.has_celestial:
        raise MuseImageError(f"{path}: no celestial WCS in the image header")
    return wcs


def read_muse_image(path, *, extension="DATA"):
    """Read a MUSE IMAGE_FOV (or any 2-D image with a celestial WCS).

    Parameters
    ----------
    path : str or path-like
        FITS file, e.g. ``IMAGE_FOV_0001.fits`` from muse_scipost.
    extension : str or int, optional
        Extension holding the image; if it is absent the first 2-D image HDU is used.

    Returns
    -------
    MuseImage

    Raises
    ------
    MuseImageError
        No 2-D image or no WCS.
    """
    path = str(path)
    try:
        hdul = fits.open(path)
    except OSError as exc:
        raise MuseImageError(f"{path}: cannot be opened as FITS ({exc})") from exc
    with hdul:
        primary = hdul[0].header.copy()
        try:
            image_hdu = hdul[extension]
        except (KeyError, IndexError):
            image_hdu = next((hdu for hdu in hdul if hdu.is_image and hdu.data is not None
                              and hdu.data.ndim == 2), None)
        if image_hdu is None or image_hdu.data is None or image_hdu.data.ndim != 2:
            raise MuseImageError(f"{path}: no 2-D image in extension {extension!r} nor elsewhere")
        header = image_hdu.header.copy()
        data = np.asarray(image_hdu.data, dtype=np.float64)
    wcs = _celestial_wcs(header, path).celestial
    date_obs = str(primary.get("DATE-OBS", header.get("DATE-OBS", ""))).strip()
    mjd_obs = float(primary.get("MJD-OBS", header.get("MJD-OBS", np.nan)))
    if not date_obs:
        logger.warning("%s: no DATE-OBS; its OFFSET_LIST row cannot be matched to an exposure", path)
    return MuseImage(data=data, wcs=wcs, date_obs=date_obs, mjd_obs=mjd_obs, filename=path,
                     unit=header.get("BUNIT"), header=primary)


def read_filter_curve(filter_name, *, filter_list=None, curve_file=None):
    """Throughput curve of a filter from a MUSE FILTER_LIST extension or a two-column text file.

    Parameters
    ----------
    filter_name : str
        EXTNAME in the FILTER_LIST (ignored for ``curve_file``).
    filter_list : str or path-like, optional
        MUSE FILTER_LIST (one BINTABLE per filter: ``lambda`` [Angstrom], ``throughput``).
    curve_file : str or path-like, optional
        Text file with wavelength (Angstrom) and throughput columns.

    Returns
    -------
    wavelength, throughput : numpy.ndarray
    """
    if curve_file is not None:
        wavelength, throughput = np.loadtxt(curve_file, usecols=(0, 1), unpack=True)
        return wavelength, throughput
    if filter_list is None:
        raise MuseImageError("a filter_list (MUSE FILTER_LIST file) or a curve_file is needed")
    with fits.open(filter_list) as hdul:
        for hdu in hdul[1:]:
            if hdu.name.lower() == str(filter_name).lower():
                return (np.asarray(hdu.data["lambda"], dtype=float),
                        np.asarray(hdu.data["throughput"], dtype=float))
        names = [hdu.name for hdu in hdul[1:]]
    raise MuseImageError(f"{filter_list}: no filter {filter_name!r} (has {names})")


def image_from_cube(cube_path, filter_name=None, *, filter_list=None, curve_file=None):
    """Reconstruct an image from a MUSE cube through a filter curve, like muse_scipost's IMAGE_FOV.

    The image is the throughput-weighted mean of the cube over wavelength (flux density per spaxel), so
    it compares with a reference image converted at the filter's pivot wavelength.

    Parameters
    ----------
    cube_path : str or path-like
        DATACUBE_FINAL-like file (DATA extension, 3-D, spectral axis with a linear or tabulated WCS).
    filter_name : str, optional
        Filter (EXTNAME) in ``filter_list``.
    filter_list, curve_file : str or path-like, optional
        See :func:`read_filter_curve`.

    Returns
    -------
    MuseImage
    """
    cube_path = str(cube_path)
    wavelength_curve, throughput_curve = read_filter_curve(filter_name, filter_list=filter_list,
                                                           curve_file=curve_file)
    with fits.open(cube_path) as hdul:
        primary = hdul[0].header.copy()
        try:
            cube_hdu = hdul["DATA"]
        except KeyError as exc:
            raise MuseImageError(f"{cube_path}: no DATA extension") from exc
        header = cube_hdu.header.copy()
        cube = cube_hdu.data
        if cube is None or cube.ndim != 3:
            raise MuseImageError(f"{cube_path}: DATA is not a 3-D cube")
        wcs = _celestial_wcs(header, cube_path)
        spectral = wcs.spectral
        planes = np.arange(cube.shape[0])
        wavelength = spectral.pixel_to_world_values(planes)
        wavelength = np.asarray(wavelength, dtype=float) * (1e10 if spectral.wcs.cunit[0] == "m" else 1.0)
        weights = np.interp(wavelength, wavelength_curve, throughput_curve, left=0.0, right=0.0)
        used = np.flatnonzero(weights > 0)
        if used.size == 0:
            raise MuseImageError(f"{cube_path}: filter {filter_name!r} does not overlap the cube's wavelengths")
        weighted_sum = np.zeros(cube.shape[1:])
        weight_total = np.zeros(cube.shape[1:])
        for plane in used:  # plane by plane keeps memory low on full-size cubes
            values = np.asarray(cube[plane], dtype=float)
            good = np.isfinite(values)
            weighted_sum[good] += weights[plane] * values[good]
            weight_total[good] += weights[plane]
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(weight_total > 0.5 * weights[used].sum(), weighted_sum / weight_total, np.nan)
    date_obs = str(primary.get("DATE-OBS", "")).strip()
    return MuseImage(data=image, wcs=wcs.celestial, date_obs=date_obs,
                     mjd_obs=float(primary.get("MJD-OBS", np.nan)), filename=cube_path,
                     unit=header.get("BUNIT"), header=primary)
