"""Measure reduced products of a simulated run against its truth (``truth.json``).

Point sources in a reconstructed image (IMAGE_FOV: ``DATA`` extension with a celestial WCS, values in
1e-20 erg/s/cm2/A per spaxel): each is fitted with a circular Gaussian (or a Moffat of the index the truth
gives) plus a constant background around its true position, which gives its position and total flux. Moffat
wings reach the neighbours in a crowded field: the stars are then fitted brightest first, each on the image minus
the others' fitted profiles, and fitted again twice so; and the Moffat's index is the image's own, measured on its
brightest stars (a cube's resampling steepens the seeing's profile). :func:`summarize_offsets` splits the position errors
into a common shift and the scatter about it (see ``docs/simulator.md``, "Measuring a reduction against the
truth", for why a one-IFU cube has a common shift of a few hundredths of an arcsec).

Emission lines in a cube: H-alpha and the [NII] doublet are fitted together (Gaussians of one velocity and
one width, plus a linear continuum) in apertures of a few spaxels, which gives the velocity field; the model
velocity of each aperture is the disc of the truth, seen through the barycentric correction muse_scipost
applies (predicted with astropy by :func:`barycentric_correction`).

Velocities follow the simulator's convention: ``v = c (lambda / lambda_rest - 1)``, all wavelengths in air.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage
from scipy.optimize import least_squares

__all__ = ["measure_point_sources", "summarize_offsets", "disc_velocity_model", "barycentric_correction",
           "predicted_rv_corrections", "applied_rv_corrections", "doppler_compose", "measure_velocity_field",
           "summarize_velocity_field", "measure_line_velocity", "sky_line_residuals", "SPEED_OF_LIGHT_KMS"]

SPEED_OF_LIGHT_KMS = 299792.458
#: Lines fitted together for the H-alpha velocity: H-alpha and the [NII] doublet (one velocity, one width).
HALPHA_COMPLEX = ("Halpha", "[NII]6548", "[NII]6583")


# -- point sources ----------------------------------------------------------------------------------------
#: Sub-pixel offsets on which a Moffat is averaged over each pixel: a Moffat seen through square pixels is no
#: longer a Moffat (sampled at pixel centres its fitted flux comes out ~1 % high at 4 pixels FWHM), whereas a
#: Gaussian stays one, only wider, so it is sampled at the centres.
_SUBPIXELS = (np.arange(3) - 1) / 3.0


def _pixel_moffat(dx, dy, width, beta):
    """Moffat ``(1 + r^2/width^2)^-beta`` of unit peak averaged over the pixels at offsets ``(dx, dy)``."""
    return np.mean([(1.0 + ((dx + sx) ** 2 + (dy + sy) ** 2) / width ** 2) ** -beta
                    for sx in _SUBPIXELS for sy in _SUBPIXELS], axis=0)


class _StarProfile:
    """The circular profile stars are fitted with: a Gaussian (``beta=None``) or a Moffat ``(1 + r^2/w^2)^-beta``
    of known index. Its free width ``w`` is the Gaussian's sigma or the Moffat's core radius."""

    def __init__(self, beta=None):
        self.beta = None if beta is None else float(beta)

    def shape(self, dx, dy, width):
        """Profile of unit peak, at pixel offsets ``(dx, dy)`` from its centre."""
        if self.beta is None:
            return np.exp(-0.5 * (dx ** 2 + dy ** 2) / width ** 2)
        return _pixel_moffat(dx, dy, width, self.beta)

    def area(self, width):
        """Integral of :meth:`shape` over the plane: total flux over peak."""
        return 2 * math.pi * width ** 2 if self.beta is None else math.pi * width ** 2 / (self.beta - 1)

    def fwhm_per_width(self):
        return 2.3548 if self.beta is None else 2 * math.sqrt(2 ** (1 / self.beta) - 1)

    def subtract(self, image, fit, radius):
        """Subtract a fitted star from ``image`` (in place) out to ``radius`` pixels from its centre."""
        ny, nx = image.shape
        x0, x1 = max(int(fit.x) - radius, 0), min(int(fit.x) + radius + 1, nx)
        y0, y1 = max(int(fit.y) - radius, 0), min(int(fit.y) + radius + 1, ny)
        if x0 < x1 and y0 < y1:
            yy, xx = np.mgrid[y0:y1, x0:x1]
            image[y0:y1, x0:x1] -= fit.amplitude * self.shape(xx - fit.x, yy - fit.y, fit.width)


@dataclass(frozen=True)
class _StarFit:
    x: float
    y: float
    width: float
    amplitude: float
    flux: float
    flux_error: float


def _fit_star(data, x_guess, y_guess, sigma_guess, half_size, profile):
    ny, nx = data.shape
    x0, x1 = int(round(x_guess)) - half_size, int(round(x_guess)) + half_size + 1
    y0, y1 = int(round(y_guess)) - half_size, int(round(y_guess)) + half_size + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, nx), min(y1, ny)
    if x1 - x0 < half_size or y1 - y0 < half_size:
        return None
    if not (x0 <= x_guess <= x1 - 1 and y0 <= y_guess <= y1 - 1):
        return None  # centred off the image (e.g. just beyond a one-IFU strip's edge): not fully inside
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
    # the width's start and bounds: the Gaussian sigma's, as the same FWHM
    to_width = 2.3548 / profile.fwhm_per_width()
    start = [max(peak, 1e-3), x_guess, y_guess, sigma_guess * to_width, background]
    fit = least_squares(lambda p: p[0] * profile.shape(xs - p[1], ys - p[2], p[3]) + p[4] - values,
                        start, bounds=([0, x0, y0, 0.3 * to_width, -np.inf],
                                       [np.inf, x1, y1, 3 * half_size * to_width, np.inf]))
    amplitude, x_fit, y_fit, width, _ = fit.x
    flux = amplitude * profile.area(width)
    # Uncertainty of the flux from the fit: the covariance from the Jacobian scaled by the residual variance
    # (noise and any mismatch of the model), propagated through flux = amplitude x area(width), area ~ width^2.
    dof = max(values.size - fit.x.size, 1)
    try:
        covariance = np.linalg.inv(fit.jac.T @ fit.jac) * float(np.sum(fit.fun ** 2)) / dof
        gradient = np.array([profile.area(width), 0.0, 0.0, 2 * flux / width, 0.0])
        flux_error = float(math.sqrt(max(gradient @ covariance @ gradient, 0.0)))
    except np.linalg.LinAlgError:
        flux_error = float("nan")
    return _StarFit(x_fit, y_fit, width, amplitude, flux, flux_error)


def measure_point_sources(image_path, truth, filter_name, *, seeing_arcsec=0.8, min_flux_fraction=0.0,
                          transparency=1.0, exposure_images=(), psf_beta=None, subtract_neighbours=None):
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
    transparency : float
        Flux scale the image should have with respect to the truth: the (exposure-time weighted) mean
        transparency of the combined exposures when the OFFSET_LIST carries no FLUX_SCALE, 1 otherwise.
    exposure_images : sequence of str or Path
        Images of the single exposures combined into ``image_path`` (any grid, with their WCS). The edge
        distance is then also measured to the edge of each of them: a star near the end of one dithered
        exposure has its profile cut in that exposure even where the combined image holds data.
    psf_beta : float, optional
        Fit a Moffat profile instead of a Gaussian: the index of the seeing PSF the exposures were drawn with
        (``psf_beta`` of each exposure in the truth), a first guess. The image's own index is measured on its
        :data:`INDEX_STARS` brightest stars, each fitted with a free index, and every star is fitted with it
        (``meta["psf_beta"]`` of the table): the resampling of a cube steepens the profile (2.8 became 3.0 on a
        simulated full field, and a fit at 2.8 put its stars 3 % high). A Gaussian fitted to a Moffat star
        misses the flux in its wings.
    subtract_neighbours : bool, optional
        Fit the stars brightest first, each on the image minus the fitted profiles of the others (out to
        :data:`NEIGHBOUR_RADIUS_FWHM` times the FWHM), then fit each again so :data:`NEIGHBOUR_PASSES` times.
        Default: with a Moffat profile, whose wings reach the neighbours in a crowded field (a full simulated
        field, 312 stars per arcmin2: the faintest sixth of the stars came out 7 % low without it, 1 % high
        with it); not with a Gaussian, whose light is gone within 2 FWHM.

    Returns
    -------
    astropy.table.Table
        One row per measured source: true and measured RA/Dec [deg], offsets [arcsec] (``d_ra`` is along
        the sky, i.e. multiplied by cos(dec), positive eastwards; ``d_dec`` positive northwards), their
        modulus ``offset``, the fitted FWHM [arcsec], the true flux, the expected flux (true flux times
        ``transparency``), the measured flux and its uncertainty from the fit (``flux_error``), ``flux_ratio``
        = measured / expected and its uncertainty ``ratio_error``, and ``edge_distance``, the distance
        [arcsec] from the star to the nearest edge of the data, of the combined image and of each exposure's
        image (a star closer than about one FWHM has part of its profile cut off: its flux rests on the fitted
        profile's wings, and where exposures overlap only in part, on how their edges were combined).
    """
    with fits.open(image_path) as hdul:
        hdu = hdul["DATA"] if "DATA" in hdul else hdul[0]
        data = np.asarray(hdu.data, dtype=float)
        wcs = WCS(hdu.header).celestial
    scale = float(np.mean(np.abs(proj_plane_pixel_scales(wcs))) * 3600.0)  # arcsec per pixel
    # Distance of each pixel to the nearest one without data or beyond the image (a field edge).
    edge_distance = ndimage.distance_transform_edt(np.pad(np.isfinite(data), 1))[1:-1, 1:-1] - 0.5
    footprints = [_Footprint(path) for path in exposure_images]
    sigma_guess = seeing_arcsec / 2.3548 / scale
    half_size = max(4, int(math.ceil(3 * sigma_guess)))
    profile = _StarProfile(psf_beta)
    sources = truth["point_sources"]
    brightest = max(source["flux"][filter_name] for source in sources)
    guesses = {index: tuple(float(v) for v in wcs.world_to_pixel_values(source["ra"], source["dec"]))
               for index, source in enumerate(sources)
               if source["flux"][filter_name] >= min_flux_fraction * brightest}
    crowded = (psf_beta is not None) if subtract_neighbours is None else subtract_neighbours
    if crowded:
        # brightest first, each subtracted once fitted: a faint star beside a bright one is not fitted on its core
        radius = int(math.ceil(NEIGHBOUR_RADIUS_FWHM * seeing_arcsec / scale))
        order = sorted(guesses, key=lambda index: -sources[index]["flux"][filter_name])
        fits_by_source, others = _fit_crowded(data, guesses, order, sigma_guess, half_size, profile, radius)
        # the image's own index, from its brightest stars: the cube's resampling steepens the seeing's Moffat;
        # measured again once the neighbours are subtracted with it
        for _ in range(INDEX_ROUNDS if profile.beta is not None else 0):
            beta = _image_moffat_index(others, fits_by_source, order, half_size, profile, radius)
            if beta is None:
                break
            profile = _StarProfile(beta)
            fits_by_source, others = _fit_crowded(data, guesses, order, sigma_guess, half_size, profile, radius)
    else:
        fits_by_source = _fit_stars(data, guesses, sigma_guess, half_size, profile)
    rows = []
    for index, result in sorted(fits_by_source.items()):
        source = sources[index]
        true_flux = source["flux"][filter_name]
        x_fit, y_fit, flux, flux_error = result.x, result.y, result.flux, result.flux_error
        fwhm = result.width * profile.fwhm_per_width()
        ra, dec = wcs.pixel_to_world_values(x_fit, y_fit)
        d_ra = (float(ra) - source["ra"]) * 3600.0 * math.cos(math.radians(source["dec"]))
        d_dec = (float(dec) - source["dec"]) * 3600.0
        expected = true_flux * transparency
        edge = float(edge_distance[min(max(int(round(y_fit)), 0), data.shape[0] - 1),
                                   min(max(int(round(x_fit)), 0), data.shape[1] - 1)]) * scale
        fwhm = fwhm * scale
        for footprint in footprints:
            edge = min(edge, footprint.edge_distance(float(ra), float(dec), reach=fwhm))
        rows.append((index, source["ra"], source["dec"], float(ra), float(dec), d_ra, d_dec,
                     math.hypot(d_ra, d_dec), fwhm, true_flux, expected, flux, flux_error,
                     flux / expected, flux_error / expected, edge))
    table = Table(rows=rows or None,
                  names=("source", "ra_true", "dec_true", "ra", "dec", "d_ra", "d_dec", "offset", "fwhm",
                         "flux_true", "flux_expected", "flux", "flux_error", "flux_ratio", "ratio_error",
                         "edge_distance"),
                  dtype=(int, float, float, float, float, float, float, float, float, float, float, float,
                         float, float, float, float))
    table.meta["psf_beta"] = profile.beta
    return table


#: Neighbour subtraction (:func:`measure_point_sources`): how far each fitted star is subtracted, in FWHM (a
#: beta = 2.8 Moffat keeps 0.1 % of its light beyond 6 FWHM), and how many times the stars are fitted again.
NEIGHBOUR_RADIUS_FWHM = 6.0
NEIGHBOUR_PASSES = 2

#: How many of the brightest stars measure a Moffat image's own index (:func:`measure_point_sources`), and how
#: many times (each after subtracting the neighbours with the index measured before).
INDEX_STARS = 30
INDEX_ROUNDS = 2


def _fit_stars(image, guesses, sigma_guess, half_size, profile, *, radius=0, previous=None):
    """Fit every star of ``guesses`` (index -> pixel position), in their order. With a ``radius``, ``image`` is
    the data minus every fit so far: each star's ``previous`` fit is put back before it is fitted again, and its
    new fit subtracted (out to ``radius`` pixels); ``image`` is updated in place."""
    fits_by_source = {}
    for index, (x_guess, y_guess) in guesses.items():
        own = previous.get(index) if previous else None
        if own is not None:
            profile.subtract(image, dataclasses.replace(own, amplitude=-own.amplitude), radius)
        result = _fit_star(image, x_guess, y_guess, sigma_guess, half_size, profile)
        if result is not None:
            fits_by_source[index] = result
            if radius:
                profile.subtract(image, result, radius)
    return fits_by_source


def _fit_crowded(data, guesses, order, sigma_guess, half_size, profile, radius):
    """Fits of every star, brightest (``order``) first, each on the data minus the others' fits, then
    :data:`NEIGHBOUR_PASSES` times again; and the data minus all of them."""
    others = data.copy()
    fits_by_source = _fit_stars(others, {index: guesses[index] for index in order}, sigma_guess, half_size, profile,
                                radius=radius)
    for _ in range(NEIGHBOUR_PASSES):
        fits_by_source = _fit_stars(others, guesses, sigma_guess, half_size, profile, radius=radius,
                                    previous=fits_by_source)
    return fits_by_source, others


def _image_moffat_index(others, fits_by_source, order, half_size, profile, radius):
    """Median Moffat index of the :data:`INDEX_STARS` brightest fitted stars, each fitted with a free index in a
    box twice as wide, on the image minus the other stars; None if none could be fitted."""
    box = 2 * half_size
    ny, nx = others.shape
    indices = []
    for index in [index for index in order if index in fits_by_source][:INDEX_STARS]:
        fit = fits_by_source[index]
        x0, y0 = int(round(fit.x)), int(round(fit.y))
        ya, yb, xa, xb = max(y0 - box, 0), min(y0 + box + 1, ny), max(x0 - box, 0), min(x0 + box + 1, nx)
        # the image minus the other stars: this star's fit put back, as :func:`_fit_stars` does
        own = others.copy()
        profile.subtract(own, dataclasses.replace(fit, amplitude=-fit.amplitude), radius)
        own = own[ya:yb, xa:xb]
        yy, xx = np.mgrid[ya:yb, xa:xb]
        good = np.isfinite(own)
        if good.sum() < 0.9 * good.size:
            continue                                     # cut by an edge: the wings are not all there
        values, ys, xs = own[good], yy[good], xx[good]

        def residuals(p):
            return p[0] * _pixel_moffat(xs - p[1], ys - p[2], p[3], p[5]) + p[4] - values

        result = least_squares(residuals, [fit.amplitude, fit.x, fit.y, fit.width, 0.0, profile.beta],
                               bounds=([0, fit.x - 2, fit.y - 2, 0.3, -np.inf, 1.5],
                                       [np.inf, fit.x + 2, fit.y + 2, 3 * box, np.inf, 10.0]))
        if result.success:
            indices.append(float(result.x[5]))
    return float(np.median(indices)) if indices else None


class _Footprint:
    """Where one exposure's image holds data, to tell how far a star is from its edges."""

    def __init__(self, image_path):
        with fits.open(image_path) as hdul:
            hdu = hdul["DATA"] if "DATA" in hdul else hdul[0]
            finite = np.isfinite(np.asarray(hdu.data, dtype=float))
            self.wcs = WCS(hdu.header).celestial
        self.scale = float(np.mean(np.abs(proj_plane_pixel_scales(self.wcs))) * 3600.0)
        self.inside = ndimage.distance_transform_edt(np.pad(finite, 1))[1:-1, 1:-1] - 0.5  # to the nearest gap
        self.outside = ndimage.distance_transform_edt(~finite) if finite.any() else np.full(finite.shape, np.inf)

    def edge_distance(self, ra, dec, reach):
        """Distance (arcsec) from (ra, dec) to this exposure's nearest edge when the star lies inside it; 0 when it
        lies outside but within ``reach`` (arcsec) of its data (the exposure holds part of its profile); inf when
        the exposure does not reach it (it does not bear on the star)."""
        x, y = self.wcs.world_to_pixel_values(ra, dec)
        ny, nx = self.inside.shape
        ix, iy = int(round(float(x))), int(round(float(y)))
        cx, cy = min(max(ix, 0), nx - 1), min(max(iy, 0), ny - 1)
        overshoot = math.hypot(ix - cx, iy - cy)   # pixels beyond the image array
        if overshoot == 0 and self.inside[cy, cx] > 0:
            return float(self.inside[cy, cx]) * self.scale
        gap = (overshoot + float(self.outside[cy, cx])) * self.scale
        return 0.0 if gap < reach else math.inf


def summarize_offsets(stars) -> dict:
    """Split the position errors of :func:`measure_point_sources` into a common shift and a scatter.

    Parameters
    ----------
    stars : astropy.table.Table
        Output of :func:`measure_point_sources` (at least one row).

    Returns
    -------
    dict
        ``n``; ``median_offset`` and ``max_offset`` [arcsec] (distance to the truth); ``shift_ra``,
        ``shift_dec`` [arcsec] (medians of ``d_ra`` and ``d_dec``: the common shift), ``shift`` (its
        modulus) and ``shift_pa`` [deg] (its direction, east of north); ``scatter_median`` and
        ``scatter_max`` [arcsec]: median and largest distance of the stars from the truth moved by the
        common shift.
    """
    d_ra = np.asarray(stars["d_ra"], dtype=float)
    d_dec = np.asarray(stars["d_dec"], dtype=float)
    if d_ra.size == 0:
        raise ValueError("no measured point source to summarize")
    shift_ra, shift_dec = float(np.median(d_ra)), float(np.median(d_dec))
    about = np.hypot(d_ra - shift_ra, d_dec - shift_dec)
    offsets = np.hypot(d_ra, d_dec)
    return {"n": int(d_ra.size), "median_offset": float(np.median(offsets)), "max_offset": float(offsets.max()),
            "shift_ra": shift_ra, "shift_dec": shift_dec, "shift": float(math.hypot(shift_ra, shift_dec)),
            "shift_pa": float(math.degrees(math.atan2(shift_ra, shift_dec)) % 360.0),
            "scatter_median": float(np.median(about)), "scatter_max": float(about.max())}


# -- the disc's model -------------------------------------------------------------------------------------
def disc_velocity_model(disc, east, north):
    """Surface brightness (1 at the centre) and line-of-sight velocity of the truth's disc.

    The conventions are those ``truth.json`` documents: the major axis lies at ``position_angle`` east of
    north and its half at that angle recedes; the disc is inclined by ``inclination`` (0 = face on); the
    rotation curve is ``rotation_kms * tanh(R / turnover_arcsec)``, ``R`` the radius in the disc plane; the
    surface brightness falls as ``exp(-R / scale_length_arcsec)``. Written independently of the simulator
    (tests check both agree), so a convention slip in either shows.

    Parameters
    ----------
    disc : dict
        ``truth["disc"]``.
    east, north : array-like
        Sky offsets from the disc centre [arcsec].

    Returns
    -------
    (ndarray, ndarray)
        Relative surface brightness and topocentric line-of-sight velocity [km/s] (the simulated frame).
    """
    east = np.asarray(east, dtype=float)
    north = np.asarray(north, dtype=float)
    pa = math.radians(disc["position_angle"])
    inclination = math.radians(disc["inclination"])
    along = north * math.cos(pa) + east * math.sin(pa)        # towards the receding half of the major axis
    across = (north * math.sin(pa) - east * math.cos(pa)) / math.cos(inclination)
    radius = np.hypot(along, across)
    # cos of the azimuth in the disc plane; 0 at the very centre, where the velocity is the systemic one
    cos_azimuth = np.divide(along, radius, out=np.zeros_like(radius), where=radius > 0)
    circular = disc["rotation_kms"] * np.tanh(radius / disc["turnover_arcsec"])
    velocity = disc["velocity_kms"] + circular * math.sin(inclination) * cos_azimuth
    return np.exp(-radius / disc["scale_length_arcsec"]), velocity


# -- the barycentric correction ---------------------------------------------------------------------------
def barycentric_correction(ra, dec, mjd_start, exptime, *, longitude, latitude, height, kind="barycentric"):
    """Velocity correction [km/s] to the solar-system barycentre (or the Sun) at mid-exposure, with astropy.

    No network access: IERS tables are never downloaded (the bundled ones, or none, are used; the Earth
    rotation angle only enters the diurnal term, ~0.4 km/s at most, so the result does not depend on them at
    the m/s level).

    Parameters
    ----------
    ra, dec : float
        Target (ICRS/FK5 J2000) [deg].
    mjd_start : float
        MJD-OBS (UTC) of the exposure start.
    exptime : float
        [s]; the correction is computed at ``mjd_start + exptime / 2``, as muse_scipost does.
    longitude, latitude : float
        Geodetic site coordinates [deg], longitude positive EAST (the ESO ``TEL GEOLON`` convention).
    height : float
        Site elevation [m].
    kind : {"barycentric", "heliocentric"}

    Returns
    -------
    float
        The correction to add to a measured (topocentric) velocity.
    """
    import astropy.units as u
    from astropy.coordinates import EarthLocation, SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    location = EarthLocation.from_geodetic(lon=longitude * u.deg, lat=latitude * u.deg, height=height * u.m)
    obstime = Time(mjd_start + exptime / 2.0 / 86400.0, format="mjd", scale="utc")
    target = SkyCoord(ra * u.deg, dec * u.deg, frame="fk5", equinox="J2000")
    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("iers_degraded_accuracy", "warn"):
        correction = target.radial_velocity_correction(kind, obstime=obstime, location=location)
    return float(correction.to_value(u.km / u.s))


def predicted_rv_corrections(truth, header, *, as_pipeline=False):
    """Barycentric correction of every OBJECT exposure of the truth, at the site of ``header``.

    Parameters
    ----------
    truth : dict
        Content of ``truth.json`` (exposures: header RA/DEC, MJD-OBS, EXPTIME).
    header : astropy.io.fits.Header
        A primary header with ``ESO TEL GEOLON`` (east positive), ``ESO TEL GEOLAT`` and
        ``ESO TEL GEOELEV`` (any raw or reduced MUSE file).
    as_pipeline : bool
        Reproduce what MUSE 2.8.7 computes rather than the physical correction: its ``muse_astro.c``
        (``muse_rvcorrection_compute``, taken from the GIRAFFE pipeline) expects a longitude positive
        WEST but is given ``ESO TEL GEOLON``, positive east, so it works for the site mirrored to the
        other side of Greenwich. Only the diurnal term changes (by up to ~0.8 km/s).

    Returns
    -------
    dict
        DATE-OBS -> correction [km/s].
    """
    longitude = float(header["ESO TEL GEOLON"])
    site = {"longitude": -longitude if as_pipeline else longitude, "latitude": float(header["ESO TEL GEOLAT"]),
            "height": float(header["ESO TEL GEOELEV"])}
    return {exposure["date_obs"]: barycentric_correction(exposure["ra_header"], exposure["dec_header"],
                                                         exposure["mjd_obs"], exposure["exptime"], **site)
            for exposure in truth["exposures"] if exposure["kind"] == "OBJECT"}


def applied_rv_corrections(paths) -> dict:
    """The radial-velocity corrections muse_scipost applied, from its reduced pixel tables.

    Parameters
    ----------
    paths : iterable of str or Path
        PIXTABLE_REDUCED files (muse_scipost ``--save=individual``).

    Returns
    -------
    dict
        DATE-OBS -> ``ESO DRS MUSE PIXTABLE RVCORR`` [km/s]; files without the keyword are left out.
    """
    applied = {}
    for path in paths:
        header = fits.getheader(path)
        if "ESO DRS MUSE PIXTABLE RVCORR" in header:
            applied[str(header["DATE-OBS"])] = float(header["ESO DRS MUSE PIXTABLE RVCORR"])
    return applied


def doppler_compose(velocity_kms, correction_kms):
    """Velocity [km/s, ``c (lambda / lambda_rest - 1)``] after muse_scipost's radial-velocity correction.

    muse_rvcorrect multiplies every wavelength by the relativistic factor
    ``sqrt((1 + v_corr / c) / (1 - v_corr / c))``; a line at ``lambda_rest (1 + v / c)`` then sits at
    ``c (lambda / lambda_rest - 1) = (c + v) factor - c``.
    """
    beta = np.asarray(correction_kms, dtype=float) / SPEED_OF_LIGHT_KMS
    factor = np.sqrt((1.0 + beta) / (1.0 - beta))
    return (SPEED_OF_LIGHT_KMS + np.asarray(velocity_kms, dtype=float)) * factor - SPEED_OF_LIGHT_KMS


# -- emission lines ---------------------------------------------------------------------------------------
def _cube_wavelengths(wcs, nz):
    spectral = wcs.spectral
    wavelength = np.asarray(spectral.pixel_to_world_values(np.arange(nz)), dtype=float)
    return wavelength * (1e10 if str(spectral.world_axis_units[0]) == "m" else 1.0)


def _fit_line_complex(wavelength, flux, variance, rest, guess_kms, half_window=12.0):
    """Fit Gaussians of one velocity and one width (plus a linear continuum) to the lines ``rest``.

    Returns (velocity, its error, sigma [A], first line's flux, its error) or None.
    """
    rest = np.asarray(rest, dtype=float)
    shift = 1.0 + guess_kms / SPEED_OF_LIGHT_KMS
    low, high = rest.min() * shift - half_window, rest.max() * shift + half_window
    use = (wavelength >= low) & (wavelength <= high) & np.isfinite(flux) & np.isfinite(variance) & (variance > 0)
    if use.sum() < 3 * rest.size + 6:
        return None
    lam, y, weight = wavelength[use], flux[use], 1.0 / np.sqrt(variance[use])
    centre = 0.5 * (low + high)
    # parameters: velocity, sigma [A], one area per line, continuum level and slope
    def model(p):
        centres = rest * (1.0 + p[0] / SPEED_OF_LIGHT_KMS)
        profile = np.exp(-0.5 * ((lam[:, None] - centres[None, :]) / p[1]) ** 2) / (math.sqrt(2 * math.pi) * p[1])
        return profile @ p[2:2 + rest.size] + p[2 + rest.size] + p[3 + rest.size] * (lam - centre)
    level = float(np.median(y))
    near = np.abs(lam - rest[0] * shift) < 3.0
    area = max(float(np.sum(y[near] - level)) * float(np.median(np.diff(lam))), 0.0)
    start = np.r_[guess_kms, 1.6, [area] * rest.size, level, 0.0]
    lower = np.r_[guess_kms - 500.0, 0.5, [-np.inf] * rest.size, -np.inf, -np.inf]
    upper = np.r_[guess_kms + 500.0, 6.0, [np.inf] * rest.size, np.inf, np.inf]
    fit = least_squares(lambda p: (model(p) - y) * weight, start, bounds=(lower, upper), x_scale="jac")
    if not fit.success:
        return None
    dof = max(use.sum() - fit.x.size, 1)
    chi2 = float(np.sum(fit.fun ** 2)) / dof
    try:
        covariance = np.linalg.inv(fit.jac.T @ fit.jac) * max(chi2, 1.0)
    except np.linalg.LinAlgError:
        return None
    errors = np.sqrt(np.clip(np.diag(covariance), 0, None))
    return float(fit.x[0]), float(errors[0]), float(fit.x[1]), float(fit.x[2]), float(errors[2])


def measure_velocity_field(cube_path, truth, *, rv_correction_kms=0.0, bin_spaxels=3, min_snr=20.0,
                           lines=HALPHA_COMPLEX, subsample=5):
    """H-alpha velocity field of the truth's disc in a cube, aperture by aperture, with its model.

    The cube is cut into apertures of ``bin_spaxels`` spaxels (a grid anchored on the spaxel nearest the
    disc centre); each aperture's summed spectrum is fitted with Gaussians of one
    velocity and one width at ``lines`` plus a linear continuum. Apertures whose first line is detected
    below ``min_snr`` are left out.

    The model velocity of an aperture is the disc of the truth (:func:`disc_velocity_model`), averaged over
    the aperture's spaxels weighted by the surface brightness (``subsample`` x ``subsample`` points per
    spaxel), then moved into the cube's frame with :func:`doppler_compose` and ``rv_correction_kms``.

    Parameters
    ----------
    cube_path : str or Path
        DATACUBE (``DATA`` and ``STAT`` extensions, celestial and spectral WCS).
    truth : dict
        Content of ``truth.json``.
    rv_correction_kms : float
        The correction the pipeline applied (0 for a cube reduced with ``--rvcorr=none``); for a combined
        cube, the exposure-time weighted mean over its exposures.
    bin_spaxels : int or (int, int)
        Aperture side, or (width in x, height in y) [spaxels]; e.g. ``(3, 13)`` for 0.6" wide apertures
        through a whole one-IFU strip.
    min_snr : float
        Minimum signal-to-noise ratio of the first line's flux.
    lines : sequence of str
        Keys of ``truth["disc"]["line_rest_wavelength"]``, fitted together; the first one gives the flux.
    subsample : int
        Model points per spaxel side.

    Returns
    -------
    astropy.table.Table
        One row per aperture: ``x``, ``y`` (its centre, 0-based cube pixels), ``ra``, ``dec`` [deg],
        ``east``, ``north`` [arcsec from the disc centre], ``n_spaxels``, ``flux`` [cube unit x A] and
        ``snr`` of the first line, ``v`` and ``v_err`` (measured) [km/s], ``sigma`` (fitted Gaussian sigma,
        LSF included) [A], ``v_model_topo`` (the truth), ``v_model`` (the truth after the correction) and
        ``residual`` = ``v - v_model``.
    """
    disc = truth["disc"]
    rest = [disc["line_rest_wavelength"][name] for name in lines]
    with fits.open(cube_path) as hdul:
        data = np.asarray(hdul["DATA"].data, dtype=float)
        variance = np.asarray(hdul["STAT"].data, dtype=float)
        wcs = WCS(hdul["DATA"].header)
    celestial = wcs.celestial
    wavelength = _cube_wavelengths(wcs, data.shape[0])
    ny, nx = data.shape[1:]
    x_centre, y_centre = (float(v) for v in celestial.world_to_pixel_values(disc["ra"], disc["dec"]))
    # the wavelengths the lines can reach (rotation, correction, 20 A of continuum either side)
    reach = (abs(disc["rotation_kms"]) + abs(rv_correction_kms) + 300.0) / SPEED_OF_LIGHT_KMS
    shift = 1.0 + disc["velocity_kms"] / SPEED_OF_LIGHT_KMS
    window = ((wavelength > min(rest) * shift * (1 - reach) - 20.0)
              & (wavelength < max(rest) * shift * (1 + reach) + 20.0))
    bin_x, bin_y = (bin_spaxels, bin_spaxels) if np.ndim(bin_spaxels) == 0 else bin_spaxels
    bin_x, bin_y = int(bin_x), int(bin_y)
    half_x, half_y = bin_x // 2, bin_y // 2
    # aperture centres on round(centre) + k bin, from one aperture before the first spaxel
    first_x = int(round(x_centre)) % bin_x - bin_x
    first_y = int(round(y_centre)) % bin_y - bin_y
    offsets = (np.arange(subsample) + 0.5) / subsample - 0.5
    rows = []
    for yc in range(first_y, ny + bin_y, bin_y):
        for xc in range(first_x, nx + bin_x, bin_x):
            xs = np.arange(xc - half_x, xc - half_x + bin_x)
            ys = np.arange(yc - half_y, yc - half_y + bin_y)
            xs, ys = xs[(xs >= 0) & (xs < nx)], ys[(ys >= 0) & (ys < ny)]
            if xs.size == 0 or ys.size == 0:
                continue
            block = data[:, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1].reshape(data.shape[0], -1)
            block_var = variance[:, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1].reshape(data.shape[0], -1)
            covered = np.isfinite(block[window]).mean(axis=0) > 0.9   # spaxels with data around the lines
            if covered.sum() < 0.5 * bin_x * min(bin_y, ny):
                continue
            spectrum = np.sum(block[:, covered], axis=1)
            spectrum_var = np.sum(block_var[:, covered], axis=1)
            # the model over the covered spaxels: sub-sampled, weighted by the surface brightness
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            px = (xx.ravel()[covered][:, None, None] + offsets[None, :, None]).ravel()
            py = (yy.ravel()[covered][:, None, None] + offsets[None, None, :]).ravel()
            ra, dec = celestial.pixel_to_world_values(px, py)
            east, north = _tangent_offsets(ra, dec, disc["ra"], disc["dec"])
            surface, velocity = disc_velocity_model(disc, east, north)
            v_topo = float(np.sum(surface * velocity) / np.sum(surface))
            v_model = float(doppler_compose(v_topo, rv_correction_kms))
            result = _fit_line_complex(wavelength, spectrum, spectrum_var, rest, v_model)
            if result is None:
                continue
            v, v_err, sigma, flux, flux_err = result
            snr = flux / flux_err if flux_err > 0 else 0.0
            if snr < min_snr:
                continue
            x_mid, y_mid = float(np.mean(xs)), float(np.mean(ys))
            ra_mid, dec_mid = (float(v) for v in celestial.pixel_to_world_values(x_mid, y_mid))
            e_mid, n_mid = _tangent_offsets(ra_mid, dec_mid, disc["ra"], disc["dec"])
            rows.append((x_mid, y_mid, ra_mid, dec_mid, float(e_mid), float(n_mid), int(covered.sum()), flux,
                         snr, v, v_err, sigma, v_topo, v_model, v - v_model))
    names = ("x", "y", "ra", "dec", "east", "north", "n_spaxels", "flux", "snr", "v", "v_err", "sigma",
             "v_model_topo", "v_model", "residual")
    return Table(rows=rows or None, names=names, dtype=[float] * 6 + [int] + [float] * 8)


def summarize_velocity_field(field) -> dict:
    """Median and spread of the residuals of :func:`measure_velocity_field`.

    Returns
    -------
    dict
        ``n`` apertures, ``median_abs_error`` (median of ``|v - v_model|``), ``median_error`` (median of
        ``v - v_model``: a common offset), ``max_abs_error``, ``median_v_err`` (median formal error) [km/s],
        and the model's velocity range ``model_min``, ``model_max`` [km/s] over the measured apertures.
    """
    residual = np.asarray(field["residual"], dtype=float)
    if residual.size == 0:
        raise ValueError("no aperture of the velocity field was measured")
    return {"n": int(residual.size), "median_abs_error": float(np.median(np.abs(residual))),
            "median_error": float(np.median(residual)), "max_abs_error": float(np.max(np.abs(residual))),
            "median_v_err": float(np.median(field["v_err"])), "model_min": float(np.min(field["v_model"])),
            "model_max": float(np.max(field["v_model"]))}


def _tangent_offsets(ra, dec, ra0, dec0):
    """Gnomonic (TAN) standard coordinates [arcsec] of (ra, dec) about (ra0, dec0): (east, north)."""
    tangent = WCS(naxis=2)
    tangent.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    tangent.wcs.crval = [ra0, dec0]
    tangent.wcs.crpix = [1.0, 1.0]  # FITS pixel 1 = 0-based pixel 0: the tangent point
    tangent.wcs.cdelt = [1.0 / 3600.0, 1.0 / 3600.0]  # 1 arcsec per "pixel", east towards +x
    east, north = tangent.wcs_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
    return east.reshape(np.shape(ra)), north.reshape(np.shape(dec))


def measure_line_velocity(cube_path, ra, dec, rest_wavelength, guess_kms, *, radius_arcsec=1.0,
                          companions=()):
    """Velocity [km/s] of an emission line in a circular aperture of a cube, from a Gaussian fit.

    Parameters
    ----------
    cube_path : str or Path
        DATACUBE with ``DATA`` and ``STAT``.
    ra, dec : float
        Aperture centre [deg].
    rest_wavelength : float
        [A], in the cube's wavelength scale (air for MUSE).
    guess_kms : float
        Starting velocity.
    radius_arcsec : float
    companions : sequence of float
        Rest wavelengths of neighbouring lines fitted with the same velocity and width (e.g. the [NII]
        doublet next to H-alpha), so that they do not pull the fit.

    Returns
    -------
    float
        ``c * (lambda / rest_wavelength - 1)`` in the frame of the cube's wavelengths (barycentric when
        muse_scipost applied ``--rvcorr=bary``); NaN when the aperture falls outside the data or the fit
        fails.
    """
    with fits.open(cube_path) as hdul:
        data = np.asarray(hdul["DATA"].data, dtype=float)
        variance = np.asarray(hdul["STAT"].data, dtype=float)
        wcs = WCS(hdul["DATA"].header)
    x, y = wcs.celestial.world_to_pixel_values(ra, dec)
    scale = float(np.mean(np.abs(proj_plane_pixel_scales(wcs.celestial))) * 3600.0)
    ny, nx = data.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    inside = ((xx - x) ** 2 + (yy - y) ** 2 <= (radius_arcsec / scale) ** 2) & (np.isfinite(data).mean(axis=0) > 0.9)
    if not inside.any():
        return float("nan")
    result = _fit_line_complex(_cube_wavelengths(wcs, data.shape[0]), data[:, inside].sum(axis=1),
                               variance[:, inside].sum(axis=1), [rest_wavelength, *companions], guess_kms)
    return float("nan") if result is None else result[0]


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
