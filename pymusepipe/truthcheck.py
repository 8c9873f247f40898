"""Measure reduced products of a simulated run against its truth (``truth.json``).

Point sources in a reconstructed image (IMAGE_FOV: ``DATA`` extension with a celestial WCS, values in
1e-20 erg/s/cm2/A per spaxel): each is fitted with a circular Gaussian plus a constant background around its
true position, which gives its position and total flux. Emission lines in a cube: the flux-weighted centroid
of a line in a small aperture gives its velocity.
"""
from __future__ import annotations

import math

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy.optimize import least_squares

__all__ = ["measure_point_sources", "measure_line_velocity", "sky_line_residuals", "SPEED_OF_LIGHT_KMS"]

SPEED_OF_LIGHT_KMS = 299792.458


def _gaussian_model(params, y, x):
    amplitude, x0, y0, sigma, background = params
    return amplitude * np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / sigma ** 2) + background


def _fit_star(data, x_guess, y_guess, sigma_guess, half_size):
    ny, nx = data.shape
    x0, x1 = int(round(x_guess)) - half_size, int(round(x_guess)) + half_size + 1
    y0, y1 = int(round(y_guess)) - half_size, int(round(y_guess)) + half_size + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, nx), min(y1, ny)
    if x1 - x0 < half_size or y1 - y0 < half_size:
        return None
    cutout = data[y0:y1, x0:x1]
    yy, xx = np.mgrid[y0:y1, x0:x1]
    good = np.isfinite(cutout)
    # The star must be well covered: no fit with NaN holes near its centre.
    near = (xx - x_guess) ** 2 + (yy - y_guess) ** 2 <= (2 * sigma_guess) ** 2
    if not good[near].all() or good.sum() < 0.6 * good.size:
        return None
    values, ys, xs = cutout[good], yy[good], xx[good]
    background = float(np.median(values))
    peak = float(np.nanmax(values) - background)
    start = [max(peak, 1e-3), x_guess, y_guess, sigma_guess, background]
    fit = least_squares(lambda p: _gaussian_model(p, ys, xs) - values, start,
                        bounds=([0, x0, y0, 0.3, -np.inf], [np.inf, x1, y1, 3 * half_size, np.inf]))
    amplitude, x_fit, y_fit, sigma, _ = fit.x
    return x_fit, y_fit, sigma, 2 * math.pi * amplitude * sigma ** 2


def measure_point_sources(image_path, truth, filter_name, *, seeing_arcsec=0.8, min_flux_fraction=0.0):
    """Fit every true point source that lies fully inside the image.

    Parameters
    ----------
    image_path : str or Path
        IMAGE_FOV file.
    truth : dict
        Content of ``truth.json``.
    filter_name : str
        Filter of the image (key of each source's ``flux``).
    seeing_arcsec : float
        First guess of the PSF FWHM.
    min_flux_fraction : float
        Skip sources fainter than this fraction of the brightest (they are noise-dominated).

    Returns
    -------
    astropy.table.Table
        One row per measured source: true and measured RA/Dec, offsets in arcsec (``d_ra`` is along the
        sky, i.e. multiplied by cos(dec)), true and measured flux and their ratio.
    """
    with fits.open(image_path) as hdul:
        hdu = hdul["DATA"] if "DATA" in hdul else hdul[0]
        data = np.asarray(hdu.data, dtype=float)
        wcs = WCS(hdu.header).celestial
    scale = float(np.mean(np.abs(proj_plane_pixel_scales(wcs))) * 3600.0)  # arcsec per pixel
    sigma_guess = seeing_arcsec / 2.3548 / scale
    half_size = max(4, int(math.ceil(3 * sigma_guess)))
    sources = truth["point_sources"]
    brightest = max(source["flux"][filter_name] for source in sources)
    rows = []
    for index, source in enumerate(sources):
        true_flux = source["flux"][filter_name]
        if true_flux < min_flux_fraction * brightest:
            continue
        x_guess, y_guess = wcs.world_to_pixel_values(source["ra"], source["dec"])
        result = _fit_star(data, float(x_guess), float(y_guess), sigma_guess, half_size)
        if result is None:
            continue
        x_fit, y_fit, sigma, flux = result
        ra, dec = wcs.pixel_to_world_values(x_fit, y_fit)
        d_ra = (float(ra) - source["ra"]) * 3600.0 * math.cos(math.radians(source["dec"]))
        d_dec = (float(dec) - source["dec"]) * 3600.0
        rows.append((index, source["ra"], source["dec"], float(ra), float(dec), d_ra, d_dec,
                     math.hypot(d_ra, d_dec), sigma * 2.3548 * scale, true_flux, flux, flux / true_flux))
    return Table(rows=rows or None,
                 names=("source", "ra_true", "dec_true", "ra", "dec", "d_ra", "d_dec", "offset", "fwhm",
                        "flux_true", "flux", "flux_ratio"),
                 dtype=(int, float, float, float, float, float, float, float, float, float, float, float))


def measure_line_velocity(cube_path, ra, dec, rest_wavelength, guess_kms, *, radius_arcsec=1.0,
                          window_kms=600.0):
    """Velocity [km/s] of an emission line in an aperture of a cube, from its continuum-subtracted centroid.

    Returns
    -------
    float
        ``c * (lambda_centroid / rest_wavelength - 1)`` in the frame of the cube's wavelengths (barycentric
        when muse_scipost applied ``--rvcorr=bary``); NaN when the aperture falls outside the data.
    """
    with fits.open(cube_path) as hdul:
        hdu = hdul["DATA"]
        wcs = WCS(hdu.header)
        cube = hdu.data
        x, y = wcs.celestial.world_to_pixel_values(ra, dec)
        scale = float(np.mean(np.abs(proj_plane_pixel_scales(wcs.celestial))) * 3600.0)
        radius = radius_arcsec / scale
        ny, nx = cube.shape[1:]
        yy, xx = np.mgrid[0:ny, 0:nx]
        inside = (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
        if not inside.any():
            return float("nan")
        spectrum = np.nanmean(cube[:, inside], axis=1)
        spectral = wcs.spectral
        wavelength = spectral.pixel_to_world_values(np.arange(cube.shape[0]))
        unit = str(spectral.world_axis_units[0])
    wavelength = np.asarray(wavelength, dtype=float) * (1e10 if unit == "m" else 1.0)
    centre = rest_wavelength * (1 + guess_kms / SPEED_OF_LIGHT_KMS)
    half = rest_wavelength * window_kms / SPEED_OF_LIGHT_KMS
    line = np.abs(wavelength - centre) <= half
    sides = (np.abs(wavelength - centre) > 1.5 * half) & (np.abs(wavelength - centre) <= 3 * half)
    if not line.any() or not np.isfinite(spectrum[line]).any():
        return float("nan")
    continuum = np.nanmedian(spectrum[sides])
    signal = np.clip(spectrum[line] - continuum, 0, None)
    centroid = float(np.nansum(signal * wavelength[line]) / np.nansum(signal))
    return SPEED_OF_LIGHT_KMS * (centroid / rest_wavelength - 1)


def sky_line_residuals(cube_path, truth, *, star_radius_arcsec=2.0, disc_radius_scale=4.0, half_width=6.0,
                       min_coverage=0.9):
    """Sky left at the night-sky lines in the star-free spaxels of a sky-subtracted cube, against what was
    injected.

    The spectrum is the mean over spaxels farther than ``star_radius_arcsec`` (or three seeing FWHM) from every
    true point source and outside ``disc_radius_scale`` scale lengths of the disc, that have data in at least
    ``min_coverage`` of the planes. For every line (lines closer than ``2 half_width`` are measured together) the
    residual is the integral over ``+-half_width`` Angstrom of the spectrum minus a linear continuum through the
    side bands, against the injected flux per spaxel (``sky_line_flux_cube`` of the truth, averaged over the
    OBJECT exposures: the cube combines them).

    Returns
    -------
    astropy.table.Table
        ``name`` (the lines measured together), ``wavelength``, ``injected`` and ``residual`` [1e-20 erg/s/cm2 per
        spaxel], ``spaxels`` used.
    """
    exposures = [entry for entry in truth["exposures"] if entry["kind"] == "OBJECT"]
    seeing = max(entry.get("seeing_fwhm_arcsec") or 0.8 for entry in exposures)
    radius = max(star_radius_arcsec, 3.0 * seeing)
    with fits.open(cube_path) as hdul:
        hdu = hdul["DATA"]
        wcs = WCS(hdu.header)
        cube = np.asarray(hdu.data, dtype=float)
        spectral = wcs.spectral
        wavelength = np.asarray(spectral.pixel_to_world_values(np.arange(cube.shape[0])), dtype=float)
        if str(spectral.world_axis_units[0]) == "m":
            wavelength = wavelength * 1e10
    celestial = wcs.celestial
    ny, nx = cube.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = celestial.pixel_to_world_values(xx, yy)
    cos_dec = math.cos(math.radians(float(np.nanmean(dec))))
    free = np.isfinite(cube).mean(axis=0) >= min_coverage
    for source in truth["point_sources"]:
        distance = np.hypot((ra - source["ra"]) * cos_dec, dec - source["dec"]) * 3600.0
        free &= distance > radius
    disc = truth.get("disc")
    if disc:
        distance = np.hypot((ra - disc["ra"]) * cos_dec, dec - disc["dec"]) * 3600.0
        free &= distance > disc_radius_scale * disc["scale_length_arcsec"]
    if not free.any():
        raise ValueError(f"{cube_path}: no star-free spaxel with data")
    spectrum = np.nanmean(cube[:, free], axis=1)
    step = float(np.median(np.diff(wavelength)))
    lines = sorted(truth["sky_lines"], key=lambda line: line["lambda"])
    clusters = []
    for line in lines:
        if clusters and line["lambda"] - clusters[-1][-1]["lambda"] < 2 * half_width:
            clusters[-1].append(line)
        else:
            clusters.append([line])
    rows = []
    for cluster in clusters:
        low, high = cluster[0]["lambda"] - half_width, cluster[-1]["lambda"] + half_width
        inside = (wavelength >= low) & (wavelength <= high)
        sides = ((wavelength >= low - half_width) & (wavelength < low)) | \
                ((wavelength > high) & (wavelength <= high + half_width))
        good_sides = sides & np.isfinite(spectrum)
        if not inside.any() or good_sides.sum() < 3 or not np.isfinite(spectrum[inside]).all():
            continue
        slope, intercept = np.polyfit(wavelength[good_sides], spectrum[good_sides], 1)
        residual = float(np.sum(spectrum[inside] - (slope * wavelength[inside] + intercept)) * step)
        injected = float(sum(np.mean([entry["sky_line_flux_cube"][line["name"]] for entry in exposures])
                             for line in cluster))
        rows.append(("+".join(line["name"] for line in cluster), float(np.mean([l["lambda"] for l in cluster])),
                     injected, residual, int(free.sum())))
    return Table(rows=rows or None, names=("name", "wavelength", "injected", "residual", "spaxels"),
                 dtype=(str, float, float, float, int))
