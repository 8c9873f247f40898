"""Synthetic MUSE / reference image pairs with known offsets, scales and backgrounds (tests, benchmarks).

The sky is a list of circular Gaussian components (point sources have zero width; galaxies are sums of
Gaussians), so convolution with a Gaussian PSF is exact. Each image samples the convolved sky at its pixel
centres, with the pixel box approximated by an extra variance of pixel**2 / 12. The MUSE image's header
WCS is wrong by a known pointing error; the OFFSET_LIST truth is that error (measured - true).
"""
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from .psf import FWHM_TO_SIGMA
from .reference import MUSE_BUNIT

MUSE_PIXEL = 0.2  # arcsec


@dataclass
class SkyComponent:
    """One Gaussian component: position (deg), total flux (MUSE units) and intrinsic sigma (arcsec)."""

    ra: float
    dec: float
    flux: float
    sigma: float = 0.0


def tan_wcs(centre_ra, centre_dec, shape, pixel_scale, rotation_deg=0.0):
    """A TAN WCS with the reference pixel at the image centre, North up, East left (MUSE convention)."""
    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    wcs.wcs.crval = [centre_ra, centre_dec]
    scale = pixel_scale / 3600.0
    angle = np.deg2rad(rotation_deg)
    wcs.wcs.cd = [[-scale * np.cos(angle), scale * np.sin(angle)],
                  [scale * np.sin(angle), scale * np.cos(angle)]]
    return wcs


def cd_header(wcs):
    """FITS header of a celestial WCS written with a CD matrix, as MUSE products have (the recipes need CDi_j)."""
    header = fits.Header()
    header["WCSAXES"] = 2
    for axis in (1, 2):
        header[f"CTYPE{axis}"] = wcs.wcs.ctype[axis - 1]
        header[f"CUNIT{axis}"] = "deg"
        header[f"CRPIX{axis}"] = float(wcs.wcs.crpix[axis - 1])
        header[f"CRVAL{axis}"] = float(wcs.wcs.crval[axis - 1])
    cd = wcs.wcs.cd if wcs.wcs.has_cd() else wcs.pixel_scale_matrix
    for i in (1, 2):
        for j in (1, 2):
            header[f"CD{i}_{j}"] = float(cd[i - 1][j - 1])
    return header


def moffat_psf(fwhm, beta):
    """A circular Moffat PSF as a sum of concentric Gaussians, for exact convolution with the sky components.

    The weights of eight Gaussians (FWHM 0.3-6 x ``fwhm``) are fitted by non-negative least squares to the
    Moffat profile weighted by the area of each annulus out to 8 FWHM, then normalised to unit total flux
    (the few per cent of a Moffat's flux beyond ~6 FWHM end up in the fitted core and wings).

    Parameters
    ----------
    fwhm : float
        Arcsec.
    beta : float
        Moffat index (2.5-4.5 for ground-based seeing; large = Gaussian-like).

    Returns
    -------
    list of (float, float)
        ``(weight, fwhm)`` pairs, weights summing to 1.
    """
    from scipy.optimize import nnls

    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    radius = np.linspace(0.0, 8.0 * fwhm, 400)
    profile = (beta - 1.0) / (np.pi * alpha ** 2) * (1.0 + (radius / alpha) ** 2) ** (-beta)
    widths = fwhm * np.geomspace(0.3, 6.0, 8)
    sigmas = widths * FWHM_TO_SIGMA
    basis = np.exp(-0.5 * (radius[:, None] / sigmas) ** 2) / (2 * np.pi * sigmas ** 2)
    area = np.sqrt(np.maximum(radius, radius[1] / 2))  # sqrt(r dr): least squares on the flux per annulus
    weights, _ = nnls(basis * area[:, None], profile * area)
    weights /= weights.sum()
    return [(float(w), float(width)) for w, width in zip(weights, widths) if w > 1e-4]


def _psf_terms(psf):
    """``psf`` as (weight, fwhm) pairs: a float is a single Gaussian of that FWHM."""
    if np.isscalar(psf):
        return [(1.0, float(psf))]
    return [(float(weight), float(width)) for weight, width in psf]


def render(components, wcs, shape, psf, pixel_scale):
    """Image of ``components`` convolved with the PSF, flux per pixel.

    Parameters
    ----------
    psf : float or list of (float, float)
        Gaussian FWHM (arcsec), or ``(weight, fwhm)`` Gaussians (e.g. from :func:`moffat_psf`).
    """
    ny, nx = shape
    image = np.zeros(shape)
    if not components:
        return image
    ra = np.array([c.ra for c in components])
    dec = np.array([c.dec for c in components])
    x, y = wcs.world_to_pixel_values(ra, dec)
    for weight, fwhm in _psf_terms(psf):
        psf_sigma = fwhm * FWHM_TO_SIGMA
        for xc, yc, component in zip(x, y, components):
            sigma = np.sqrt(psf_sigma ** 2 + component.sigma ** 2 + pixel_scale ** 2 / 12.0) / pixel_scale
            half = int(np.ceil(5 * sigma))
            x0, x1 = max(int(xc) - half, 0), min(int(xc) + half + 2, nx)
            y0, y1 = max(int(yc) - half, 0), min(int(yc) + half + 2, ny)
            if x0 >= x1 or y0 >= y1:
                continue
            gx = np.exp(-0.5 * ((np.arange(x0, x1) - xc) / sigma) ** 2)
            gy = np.exp(-0.5 * ((np.arange(y0, y1) - yc) / sigma) ** 2)
            image[y0:y1, x0:x1] += weight * component.flux / (2 * np.pi * sigma ** 2) * np.outer(gy, gx)
    return image


def star_field(centre_ra, centre_dec, n_stars, *, radius=40.0, flux_range=(1e3, 3e4), rng=None):
    """Point sources uniformly spread over a square of +-radius arcsec, log-uniform fluxes."""
    rng = rng or np.random.default_rng()
    cos_dec = np.cos(np.deg2rad(centre_dec))
    return [SkyComponent(centre_ra + rng.uniform(-radius, radius) / 3600.0 / cos_dec,
                         centre_dec + rng.uniform(-radius, radius) / 3600.0,
                         10 ** rng.uniform(*np.log10(flux_range)))
            for _ in range(n_stars)]


def galaxy(centre_ra, centre_dec, *, total_flux=3e6, scale_length=12.0, n_clumps=150, rng=None):
    """A disc galaxy without point sources: smooth exponential-like disc + resolved clumps and arms."""
    rng = rng or np.random.default_rng()
    cos_dec = np.cos(np.deg2rad(centre_dec))
    components = []
    # an exponential profile approximated by a few concentric Gaussians
    for weight, width in ((0.25, 0.35), (0.45, 0.9), (0.30, 1.8)):
        components.append(SkyComponent(centre_ra, centre_dec, 0.6 * total_flux * weight, width * scale_length))
    # two logarithmic arms of clumps (HII-region-like), 0.3-1.5" wide
    for _ in range(n_clumps):
        arm = rng.integers(2)
        radius = scale_length * rng.uniform(0.2, 2.5)
        angle = np.log(radius / 2.0) / np.tan(np.deg2rad(20.0)) + np.pi * arm + rng.normal(0, 0.25)
        east, north = radius * np.cos(angle), radius * np.sin(angle)
        components.append(SkyComponent(centre_ra + east / 3600.0 / cos_dec, centre_dec + north / 3600.0,
                                       0.4 * total_flux / n_clumps * rng.uniform(0.3, 1.7),
                                       rng.uniform(0.3, 1.5)))
    return components


def write_muse_image(path, components, *, centre_ra, centre_dec, pointing_error=(0.0, 0.0), shape=(320, 320),
                     fwhm=0.7, transparency=1.0, sky=10.0, noise=0.5, nan_border=8, mjd=60000.1,
                     rotation_error=0.0, psf=None, rng=None):
    """Write a MUSE IMAGE_FOV-like file whose header WCS is off by ``pointing_error`` (arcsec East, North).

    ``rotation_error`` (deg) rotates the true sky orientation of the pixel grid w.r.t. the header's.
    ``psf`` (``(weight, fwhm)`` Gaussians, e.g. :func:`moffat_psf`) replaces the Gaussian of ``fwhm``.

    Returns
    -------
    dict
        Truth: ``ra_offset``/``dec_offset`` (deg, measured - true), ``flux_scale``, ``background``
        (MUSE units per MUSE pixel, excluding the reference's own background), ``date_obs``.
    """
    rng = rng or np.random.default_rng()
    cos_dec = np.cos(np.deg2rad(centre_dec))
    true_wcs = tan_wcs(centre_ra, centre_dec, shape, MUSE_PIXEL, rotation_error)
    header_ra = centre_ra + pointing_error[0] / 3600.0 / cos_dec
    header_dec = centre_dec + pointing_error[1] / 3600.0
    header_wcs = tan_wcs(header_ra, header_dec, shape, MUSE_PIXEL)
    image = transparency * render(components, true_wcs, shape, fwhm if psf is None else psf, MUSE_PIXEL) + sky
    image += rng.normal(0.0, noise, shape)
    if nan_border:
        image[:nan_border] = image[-nan_border:] = np.nan
        image[:, :nan_border] = image[:, -nan_border:] = np.nan
    date_obs = Time(mjd, format="mjd").isot[:23]
    primary = fits.Header()
    primary["INSTRUME"] = "MUSE"
    primary["DATE-OBS"] = date_obs
    primary["MJD-OBS"] = mjd
    primary["RA"] = header_ra
    primary["DEC"] = header_dec
    primary["HIERARCH ESO PRO CATG"] = "IMAGE_FOV"
    data_header = cd_header(header_wcs)
    data_header["EXTNAME"] = "DATA"
    data_header["BUNIT"] = MUSE_BUNIT
    hdul = fits.HDUList([fits.PrimaryHDU(header=primary),
                         fits.ImageHDU(image.astype(np.float32), header=data_header, name="DATA")])
    hdul.writeto(path, overwrite=True)
    return dict(filename=str(path), date_obs=date_obs, mjd_obs=mjd, ra_offset=header_ra - centre_ra,
                dec_offset=header_dec - centre_dec, flux_scale=1.0 / transparency,
                background=-sky / transparency)


def write_reference_image(path, components, *, centre_ra, centre_dec, size=90.0, pixel_scale=0.3, fwhm=1.0,
                          background=0.0, noise=0.0, pivot=6414.0, filter_name="Cousins_R", unit="uJy",
                          rotation_deg=0.0, psf=None, rng=None):
    """Write a reference image of ``components`` in ``unit`` per pixel ('uJy' or MUSE units).

    ``background`` and ``noise`` are in MUSE units per MUSE pixel (converted like the data); ``psf``
    (``(weight, fwhm)`` Gaussians, e.g. :func:`moffat_psf`) replaces the Gaussian of ``fwhm``.

    Returns
    -------
    float
        The background in MUSE units per MUSE pixel (what the fit should find on top of the MUSE sky term).
    """
    rng = rng or np.random.default_rng()
    n_pixels = int(round(size / pixel_scale))
    shape = (n_pixels, n_pixels)
    wcs = tan_wcs(centre_ra, centre_dec, shape, pixel_scale, rotation_deg)
    area_ratio = (pixel_scale / MUSE_PIXEL) ** 2
    image = render(components, wcs, shape, fwhm if psf is None else psf, pixel_scale) + background * area_ratio
    if noise:
        image += rng.normal(0.0, noise * np.sqrt(area_ratio), shape)
    header = cd_header(wcs)
    if unit == "uJy":
        # f_nu = f_lambda * lambda**2 / c, per pixel
        to_ujy = 1e-20 * pivot ** 2 / 2.99792458e18 / 1e-29
        image = image * to_ujy
        header["BUNIT"] = "uJy"
    else:
        header["BUNIT"] = MUSE_BUNIT
    header["FILTER"] = filter_name
    fits.PrimaryHDU(image.astype(np.float32), header=header).writeto(path, overwrite=True)
    return background
