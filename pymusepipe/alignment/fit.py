"""Offset, flux scale and background of one MUSE image against a reference image.

Model (on the MUSE pixels p that are valid in both images, after PSF matching)::

    MUSE(p) = a * R(q(p)) + b
    q(p)    = q0(p) + M . (s + (Rot(theta) - 1) . (p - c))

``R`` is the reference (MUSE flux units per MUSE pixel) interpolated by a cubic spline on its own pixel grid,
``q0(p)`` the reference pixel that the MUSE header WCS assigns to p, ``M`` the local Jacobian d(ref pixel) /
d(MUSE pixel), ``s`` the shift in MUSE pixels (true sky of pixel p = header sky of pixel p + s), ``theta`` an
optional small rotation about the image centre ``c``. The fit is a non-linear least-squares fit
(``scipy.optimize.least_squares``, analytic Jacobian) started from an FFT cross-correlation peak; the PSF
difference is then measured (:mod:`pymusepipe.alignment.psf`) and matched, outliers are clipped once, and
the fit is polished on all pixels. The reference is sampled directly from its native pixels (no
intermediate reprojection, so no double interpolation). Finally a free matching kernel of unit integral
(a linear combination of Gaussians) is fitted linearly, and offset, scale and background are refitted
against the kernel-matched reference: the scale is then the ratio of total fluxes whatever the shapes of
the two PSFs (a single Gaussian blur leaves 1-4 % scale errors when their wings differ).

The OFFSET_LIST quantities follow: ``offset = W(c) - W(c + s)`` (measured minus true, see
:mod:`pymusepipe.alignment.offset_list`), ``FLUX_SCALE = 1 / a`` and ``BACKGROUND = -b / a`` so that
``reference = FLUX_SCALE * MUSE + BACKGROUND``.
"""
import enum
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import interpolate, ndimage, optimize

from .psf import FWHM_TO_SIGMA, fit_relative_blur, gaussian_blur

logger = logging.getLogger(__name__)


class Quality(enum.IntFlag):
    """Bits of the quality flag (0 = good). Doubtful solutions are flagged, never raised."""

    GOOD = 0
    FEW_PIXELS = 1           #: fewer usable pixels than ``min_pixels``
    NO_SIGNAL = 2            #: the reference structure is not detected in the MUSE image (scale S/N too low)
    LARGE_ERROR = 4          #: offset uncertainty above ``max_offset_error``
    OUTSIDE_SEARCH = 8       #: solution beyond ``max_shift``
    NOT_CONVERGED = 16       #: the least-squares fit failed or did not converge
    GUESS_DISAGREES = 32     #: fit and cross-correlation differ by more than 2 PSF FWHM
    BAD_SCALE = 64           #: non-positive or non-finite flux scale

    @classmethod
    def describe(cls, value):
        """Comma-separated names of the bits set in ``value`` ('GOOD' for 0)."""
        value = int(value)
        if value == 0:
            return "GOOD"
        return ",".join(flag.name for flag in cls if flag.value and value & flag.value)


@dataclass
class AlignmentResult:
    """Result of :func:`fit_alignment` for one MUSE image (all offsets: measured - true)."""

    ra_offset: float = np.nan          #: deg, RA difference (no cos dec)
    dec_offset: float = np.nan         #: deg
    ra_offset_err: float = np.nan
    dec_offset_err: float = np.nan
    x_offset_pix: float = np.nan       #: MUSE pixels along the image x axis
    y_offset_pix: float = np.nan
    x_offset_pix_err: float = np.nan
    y_offset_pix_err: float = np.nan
    flux_scale: float = np.nan         #: reference = flux_scale * MUSE + background
    flux_scale_err: float = np.nan
    background: float = np.nan         #: MUSE units per MUSE pixel
    background_err: float = np.nan
    rotation: float = 0.0              #: deg, rotation of the MUSE pixel grid w.r.t. its header WCS
    rotation_err: float = np.nan
    guess_x_offset_pix: float = np.nan  #: cross-correlation first guess (MUSE pixels)
    guess_y_offset_pix: float = np.nan
    n_pixels: int = 0
    reduced_chi2: float = np.nan
    noise_correlation: float = np.nan  #: factor applied to the errors for correlated residuals
    quality: int = int(Quality.GOOD)
    message: str = ""
    fit_seconds: float = np.nan
    images: dict = field(default_factory=dict, repr=False)  #: arrays for the diagnostics figure


def _valid_pixel_grid(mask):
    rows, cols = np.nonzero(mask)
    return cols.astype(float), rows.astype(float)


def _local_jacobian(muse_wcs, reference_wcs, centre):
    """d(reference pixel)/d(MUSE pixel) at ``centre`` (x, y), by central differences through both WCSs."""
    step = 1.0
    points = np.array([[centre[0] - step, centre[1]], [centre[0] + step, centre[1]],
                       [centre[0], centre[1] - step], [centre[0], centre[1] + step]])
    world = muse_wcs.pixel_to_world_values(points[:, 0], points[:, 1])
    ref_x, ref_y = reference_wcs.world_to_pixel_values(*world)
    return np.array([[(ref_x[1] - ref_x[0]) / (2 * step), (ref_x[3] - ref_x[2]) / (2 * step)],
                     [(ref_y[1] - ref_y[0]) / (2 * step), (ref_y[3] - ref_y[2]) / (2 * step)]])


def _pixel_mapping(muse_wcs, reference_wcs, shape, step=8, margin=0):
    """Reference pixel coordinates of every MUSE pixel (and of ``margin`` more pixels on every side).

    The WCS transforms run on a regular grid of about one pixel in ``step``, reaching ``step`` pixels beyond
    the image on every side (both maps are smooth over a MUSE field, even with distortion terms), and are
    interpolated by bicubic splines in pixel coordinates (``RectBivariateSpline``, not-a-knot ends, so a
    linear or quadratic map is reproduced exactly): ~50x fewer WCS calls, errors < 1e-8 pixel.

    The splines must be built on the grid's pixel coordinates. An earlier version spline-interpolated the
    grid values against their *index* (``map_coordinates`` on an irregular grid, with constant extension
    at its ends): that bent the map by up to 0.4 reference pixel within a few pixels of the image edges,
    one-sided in y on a one-IFU strip (13 rows, all near an edge), which put the offsets of such strips
    ~0.06" north.
    """
    ny, nx = shape
    axes = []
    for n in (ny, nx):
        # >= 4 nodes (a cubic spline needs them) from -step to n - 1 + step, at most step pixels apart
        first, last = -margin - step, n - 1 + margin + step
        nodes = max(int(np.ceil((last - first) / step)), 3) + 1
        axes.append(np.linspace(first, last, nodes))
    grid_y, grid_x = axes
    mesh_x, mesh_y = np.meshgrid(grid_x, grid_y)
    coarse_x, coarse_y = reference_wcs.world_to_pixel_values(*muse_wcs.pixel_to_world_values(mesh_x, mesh_y))
    rows, cols = np.arange(-margin, ny + margin, dtype=float), np.arange(-margin, nx + margin, dtype=float)
    return tuple(interpolate.RectBivariateSpline(grid_y, grid_x, np.asarray(coarse, float), kx=3, ky=3)(rows, cols)
                 for coarse in (coarse_x, coarse_y))


def _cross_correlation_shift(muse_image, reference_image, valid, max_shift_pix):
    """First guess of s (MUSE pixels) from the FFT cross-correlation peak on the MUSE grid."""
    muse = np.where(valid, muse_image - np.nanmedian(muse_image[valid]), 0.0)
    ref = np.where(valid, reference_image - np.nanmedian(reference_image[valid]), 0.0)
    shape = [n + int(2 * max_shift_pix) + 2 for n in muse.shape]  # zero padding: no wrap-around
    correlation = np.fft.irfft2(np.fft.rfft2(ref, shape) * np.conj(np.fft.rfft2(muse, shape)), shape)
    correlation = np.fft.fftshift(correlation)
    centre = np.array(shape) // 2
    lag_y, lag_x = np.indices(shape) - centre[:, None, None]
    correlation[np.hypot(lag_x, lag_y) > max_shift_pix] = -np.inf
    peak = np.unravel_index(np.argmax(correlation), shape)
    refined = []
    for axis in (0, 1):
        # parabola through the peak and its neighbours along this axis
        index = list(peak)
        values = []
        for delta in (-1, 0, 1):
            index[axis] = peak[axis] + delta
            values.append(correlation[tuple(index)] if 0 <= index[axis] < shape[axis] else -np.inf)
        left, middle, right = values
        denominator = left - 2 * middle + right
        fraction = 0.5 * (left - right) / denominator if np.all(np.isfinite(values)) and denominator < 0 else 0.0
        refined.append(peak[axis] - centre[axis] + fraction)
    # the peak is at the lag L with muse(p) ~ ref(p + L), i.e. the model's shift s = L
    return refined[1], refined[0]


def _scale_significance(fitted):
    """Signal-to-noise ratio of the scale parameter of a least_squares result (0 if undefined)."""
    try:
        dof = max(fitted.fun.size - fitted.x.size, 1)
        covariance = np.linalg.inv(fitted.jac.T @ fitted.jac) * np.sum(fitted.fun ** 2) / dof
        significance = fitted.x[2] / np.sqrt(covariance[2, 2])
    except (np.linalg.LinAlgError, FloatingPointError, ValueError):
        return 0.0
    return float(significance) if np.isfinite(significance) else 0.0


def _robust_sigma(values):
    median = np.median(values)
    return 1.4826 * np.median(np.abs(values - median))


def _clip_outliers(residual, signal, clip_sigma, n_bins=20):
    """Pixels to keep: residuals within ``clip_sigma`` of a scatter that grows with the signal.

    On bright fields the residuals are dominated by what no model of two images captures exactly (PSF
    wings, sampling): they grow in proportion to the signal and are far above the noise. A single robust
    sigma, set by the many faint pixels, would clip every bright star core or galaxy centre, leaving the
    flux scale to faint wings where PSF differences weigh most. The scatter is therefore modelled as
    ``sigma**2 = noise**2 + (epsilon * signal)**2``, fitted (non-negative least squares) to robust sigmas in
    quantile bins of the signal; cosmic rays and moving sources still stand out at their own level.

    Parameters
    ----------
    residual, signal : numpy.ndarray
        Residual (data - model) and model signal above the background, per pixel.
    clip_sigma : float
        Threshold in units of the modelled scatter.
    n_bins : int, optional
        Quantile bins of the signal.

    Returns
    -------
    numpy.ndarray of bool
    """
    centred = residual - np.median(residual)
    order = np.argsort(signal)
    levels, sigmas = [], []
    for chunk in np.array_split(order, min(n_bins, max(order.size // 50, 1))):
        if chunk.size >= 10:
            levels.append(np.median(np.abs(signal[chunk])))
            sigmas.append(_robust_sigma(centred[chunk]))
    levels, sigmas = np.asarray(levels), np.asarray(sigmas)
    noise = np.min(sigmas) if sigmas.size else _robust_sigma(centred)
    if sigmas.size >= 3:
        design = np.column_stack([np.ones_like(levels), levels ** 2])
        (noise2, epsilon2), _ = optimize.nnls(design, sigmas ** 2)
        noise = np.sqrt(max(noise2, np.min(sigmas) ** 2))
    else:
        epsilon2 = 0.0
    scatter = np.sqrt(noise ** 2 + epsilon2 * signal ** 2)
    return np.abs(centred) < clip_sigma * scatter


def _residual_correlation_factor(residual_image, valid, max_lag=4):
    """Variance inflation for spatially correlated residuals: sum of the normalised autocorrelation."""
    field_values = np.where(valid, residual_image, 0.0)
    shape = [n + max_lag + 1 for n in field_values.shape]
    spectrum = np.fft.rfft2(field_values, shape)
    autocorrelation = np.fft.irfft2(spectrum * np.conj(spectrum), shape)
    mask_spectrum = np.fft.rfft2(valid.astype(float), shape)
    pair_counts = np.fft.irfft2(mask_spectrum * np.conj(mask_spectrum), shape)
    lags = np.r_[0:max_lag + 1, -max_lag:0]
    window = autocorrelation[np.ix_(lags % shape[0], lags % shape[1])]
    counts = np.maximum(pair_counts[np.ix_(lags % shape[0], lags % shape[1])], 1.0)
    normalised = (window / counts) / (autocorrelation[0, 0] / counts[0, 0])
    return float(max(1.0, np.sum(normalised)))


class _MatchedPair:
    """The MUSE image and the reference, PSF-matched, with the geometry linking their pixels.

    Rebuilt (``match``) whenever the PSF matching changes; the geometry is computed once.
    """

    def __init__(self, muse, reference, max_shift, fit_rotation):
        self.muse = muse
        self.reference = reference
        self.fit_rotation = fit_rotation
        self.n_params = 5 if fit_rotation else 4
        self.muse_scale = float(np.sqrt(abs(np.linalg.det(muse.wcs.pixel_scale_matrix)))) * 3600.0
        ny, nx = muse.data.shape
        self.shape = (ny, nx)
        self.centre = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
        self.jacobian = _local_jacobian(muse.wcs, reference.wcs, self.centre)
        ref_x, ref_y = _pixel_mapping(muse.wcs, reference.wcs, (ny, nx))
        ref_ny, ref_nx = reference.data.shape
        inside = (ref_x > -0.5) & (ref_x < ref_nx - 0.5) & (ref_y > -0.5) & (ref_y < ref_ny - 0.5)
        self.overlaps = bool(np.any(inside & np.isfinite(muse.data)))
        if not self.overlaps:
            return
        # work on the part of the reference that the MUSE field can reach, plus blur margins
        # (the widest flux-kernel Gaussian, FLUX_KERNEL_SIGMAS[-1], reaches ~3 sigma = 9")
        margin = int(np.ceil((max_shift + 10.0) / reference.pixel_scale + 6))
        x0 = max(int(np.floor(ref_x[inside].min())) - margin, 0)
        x1 = min(int(np.ceil(ref_x[inside].max())) + margin + 1, ref_nx)
        y0 = max(int(np.floor(ref_y[inside].min())) - margin, 0)
        y1 = min(int(np.ceil(ref_y[inside].max())) + margin + 1, ref_ny)
        # flux per reference pixel -> flux per MUSE pixel
        self.ref_crop = reference.data[y0:y1, x0:x1] * (self.muse_scale ** 2 / reference.pixel_area)
        self.qx0, self.qy0 = ref_x - x0, ref_y - y0
        self.crop_origin = (x0, y0)
        self._padded_mappings = {}

    def match(self, muse_sigma_arcsec, ref_sigma_arcsec, params=None):
        """Blur each image by a Gaussian of the given sigma (arcsec; 0 = none) and prepare the splines.

        Blurring the MUSE image needs its sky beyond its edges. Without ``params`` the pixels within 2.5
        sigma of an edge are dropped; on a one-IFU strip (13 rows) that leaves 3-5 central rows, cuts every
        star profile and measures the pipeline's row-dependent resampling shift of those rows only. With
        ``params`` (a fit of the model so far) the missing sky is filled with the model, ``scale *
        reference + background``, the reference sharpened to the MUSE resolution, before the blur
        (:meth:`_edge_fill`): every pixel stays usable, and the fill only enters edge pixels through the
        kernel's tail.
        """
        self.muse_sigma = muse_sigma_arcsec
        self.ref_sigma = ref_sigma_arcsec
        muse_sigma = muse_sigma_arcsec / self.muse_scale
        ref_sigma = ref_sigma_arcsec / self.reference.pixel_scale
        ref_image = gaussian_blur(self.ref_crop, ref_sigma)
        ref_valid = np.isfinite(self.ref_crop) & np.isfinite(ref_image)
        if ref_sigma > 0.05:
            ref_valid = ndimage.binary_erosion(ref_valid, iterations=int(np.ceil(2.5 * ref_sigma)), border_value=0)
        fill = np.nanmedian(ref_image[ref_valid]) if ref_valid.any() else 0.0
        filled = np.where(ref_valid, ref_image, fill)
        self.use_reference_image(filled)
        self.ref_valid = ref_valid
        self.ref_filled = filled
        # pixels whose reference position stays >= ~1" inside the valid reference during the fit
        pad = int(np.ceil(1.0 / self.reference.pixel_scale)) + 2
        self.ref_valid_padded = ndimage.binary_erosion(ref_valid, iterations=pad, border_value=0).astype(np.uint8)

        valid = np.isfinite(self.muse.data)
        if muse_sigma <= 0.05:
            self.muse_data = self.muse.data.copy()
        elif params is None or not np.all(np.isfinite(params)):
            self.muse_data = gaussian_blur(self.muse.data, muse_sigma)
            # pixels near a NaN edge saw only part of the kernel
            valid = ndimage.binary_erosion(valid, iterations=int(np.ceil(2.5 * muse_sigma)), border_value=0)
        else:
            margin = int(np.ceil(4.0 * muse_sigma)) + 1  # gaussian_blur truncates at 4 sigma
            extended = self._edge_fill(margin, params)
            blurred = gaussian_blur(extended, muse_sigma)
            # only where neither data nor fill exist (no reference there) are pixels dropped
            known = ndimage.binary_erosion(np.isfinite(extended), iterations=int(np.ceil(2.5 * muse_sigma)),
                                           border_value=0)
            inner = (slice(margin, margin + self.shape[0]), slice(margin, margin + self.shape[1]))
            self.muse_data = np.where(valid, blurred[inner], np.nan)
            valid = valid & known[inner]
        self.valid = valid & np.isfinite(self.muse_data)

    def _edge_fill(self, margin, params):
        """The MUSE image extended by ``margin`` pixels on every side, its NaNs filled with the model.

        The model is ``scale * S + background`` at the fitted position, ``S`` the matched reference
        sharpened to the MUSE resolution (``S = R - v/2 lap R + v**2/8 lap**2 R``, the inverse of a Gaussian
        blur of variance ``v`` to second order; the blur about to be applied smooths the noise this
        amplifies). NaN where the reference has no valid data either.
        """
        if margin not in self._padded_mappings:
            ref_x, ref_y = _pixel_mapping(self.muse.wcs, self.reference.wcs, self.shape, margin=margin)
            self._padded_mappings[margin] = (ref_x - self.crop_origin[0], ref_y - self.crop_origin[1])
        qx0, qy0 = self._padded_mappings[margin]
        ny, nx = self.shape
        extended = np.full((ny + 2 * margin, nx + 2 * margin), np.nan)
        extended[margin:margin + ny, margin:margin + nx] = self.muse.data
        missing = ~np.isfinite(extended)
        rows, cols = np.nonzero(missing)
        qx, qy = self._moved(cols - margin, rows - margin, qx0[missing], qy0[missing], params)
        variance = (self.muse_sigma / self.reference.pixel_scale) ** 2  # reference pixels**2
        laplacian = ndimage.laplace(self.ref_filled)
        sharpened = self.ref_filled - 0.5 * variance * laplacian + variance ** 2 / 8.0 * ndimage.laplace(laplacian)
        values = params[2] * ndimage.map_coordinates(sharpened, [qy, qx], order=3, mode="nearest") + params[3]
        known = ndimage.map_coordinates(self.ref_valid.astype(np.uint8), [qy, qx], order=0, mode="constant",
                                        cval=0).astype(bool)
        extended[missing] = np.where(known, values, np.nan)
        return extended

    def use_reference_image(self, image):
        """Model the MUSE image with ``image`` (reference pixel grid, no NaN): cubic splines of it and its gradient."""
        self.spline = ndimage.spline_filter(image, order=3)
        grad_y, grad_x = np.gradient(image)
        self.spline_gx = ndimage.spline_filter(grad_x, order=3)
        self.spline_gy = ndimage.spline_filter(grad_y, order=3)

    def residual_blur(self, used, params):
        """Gaussian variance (arcsec**2) still separating the two PSFs, measured in real space.

        To first order in ``tau``, blurring the (matched) reference by a Gaussian of variance ``tau`` adds
        ``tau / 2`` times its Laplacian, so ``MUSE = a R + a (tau / 2) lap(R) + b`` is solved linearly on
        the pixels of ``used``: ``tau > 0`` means the reference is still sharper than the MUSE image,
        ``tau < 0`` the MUSE image. Unlike the Fourier estimate of
        :func:`~pymusepipe.alignment.psf.fit_relative_blur`, this does not assume the convolution relation
        to hold for the images cut by the field's edges, which fails on narrow fields (a one-IFU strip of
        13 rows: the Fourier estimate there finds 0.03-0.05 arcsec**2 for a true 0.05-0.09).

        Returns
        -------
        tau, tau_err : float
            NaN if the system is degenerate.
        """
        laplacian = ndimage.laplace(self.ref_filled) / self.reference.pixel_scale ** 2
        qx, qy = self.coordinates(used, params)
        value = ndimage.map_coordinates(self.spline, [qy, qx], order=3, prefilter=False, mode="nearest")
        curvature = ndimage.map_coordinates(laplacian, [qy, qx], order=3, mode="nearest")
        data = self.muse_data[used]
        design = np.column_stack([value, 0.5 * curvature, np.ones_like(value)])
        if data.size < 10 * design.shape[1]:
            return np.nan, np.nan
        coefficients, _, rank, _ = np.linalg.lstsq(design, data, rcond=None)
        if rank < design.shape[1] or not coefficients[0] > 0:
            return np.nan, np.nan
        residual = data - design @ coefficients
        try:
            covariance = np.linalg.inv(design.T @ design) * np.sum(residual ** 2) / (data.size - design.shape[1])
        except np.linalg.LinAlgError:
            return np.nan, np.nan
        tau = coefficients[1] / coefficients[0]
        tau_err = np.sqrt(max(covariance[1, 1], 0.0)) / coefficients[0]
        return float(tau), float(tau_err)

    def blurred_reference(self, sigma_arcsec):
        """The Gaussian-matched reference (its own grid) blurred further by ``sigma_arcsec``."""
        if sigma_arcsec <= 0:
            return self.ref_filled
        return ndimage.gaussian_filter(self.ref_filled, sigma_arcsec / self.reference.pixel_scale, mode="nearest",
                                       truncate=4.0)

    def shifted_coordinates(self, shift):
        jac = self.jacobian
        return (self.qx0 + jac[0, 0] * shift[0] + jac[0, 1] * shift[1],
                self.qy0 + jac[1, 0] * shift[0] + jac[1, 1] * shift[1])

    def reference_on_muse_grid(self, shift=(0.0, 0.0)):
        qx, qy = self.shifted_coordinates(shift)
        return ndimage.map_coordinates(self.spline, [qy, qx], order=3, prefilter=False, mode="nearest")

    def pixel_set(self, shift, padded=True):
        qx, qy = self.shifted_coordinates(shift)
        lookup = self.ref_valid_padded if padded else self.ref_valid.astype(np.uint8)
        inside = ndimage.map_coordinates(lookup, [qy, qx], order=0, mode="constant", cval=0).astype(bool)
        return self.valid & inside

    def coordinates(self, used, params):
        """Reference pixel coordinates (x, y) of the MUSE pixels of ``used`` for the model parameters."""
        px, py = _valid_pixel_grid(used)
        return self._moved(px, py, self.qx0[used], self.qy0[used], params)

    def _moved(self, px, py, qx0, qy0, params):
        """Reference coordinates of MUSE pixels (px, py), header position (qx0, qy0), moved by the model."""
        dx, dy = px - self.centre[0], py - self.centre[1]
        jac = self.jacobian
        theta = params[4] if self.fit_rotation else 0.0
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        move_x = params[0] + (cos_t - 1) * dx - sin_t * dy
        move_y = params[1] + sin_t * dx + (cos_t - 1) * dy
        return (qx0 + jac[0, 0] * move_x + jac[0, 1] * move_y,
                qy0 + jac[1, 0] * move_x + jac[1, 1] * move_y)

    def blurred_reference_values(self, used, params, sigma_arcsec):
        """The matched reference blurred further by a Gaussian of ``sigma_arcsec``, at the pixels of ``used``."""
        blurred = self.blurred_reference(sigma_arcsec)
        qx, qy = self.coordinates(used, params)
        return ndimage.map_coordinates(blurred, [qy, qx], order=3, mode="nearest")

    def problem(self, used):
        """Residual and Jacobian functions of the model on the pixels of ``used``."""
        px, py = _valid_pixel_grid(used)
        dx, dy = px - self.centre[0], py - self.centre[1]
        data = self.muse_data[used]
        jac = self.jacobian
        fit_rotation = self.fit_rotation
        cache = {}

        def coordinates(params):
            return self.coordinates(used, params)

        def sample(params, with_gradient):
            # least_squares asks for residuals and Jacobian at the same point: sample the spline once
            key = params.tobytes()
            if cache.get("key") != key:
                qx, qy = coordinates(params)
                cache.clear()
                cache.update(key=key, points=[qy, qx], value=ndimage.map_coordinates(
                    self.spline, [qy, qx], order=3, prefilter=False, mode="nearest"))
            if with_gradient and "gx" not in cache:
                for name, spline in (("gx", self.spline_gx), ("gy", self.spline_gy)):
                    cache[name] = ndimage.map_coordinates(spline, cache["points"], order=3, prefilter=False,
                                                          mode="nearest")
            return cache

        def residuals(params):
            return params[2] * sample(params, False)["value"] + params[3] - data

        def jacobian_matrix(params):
            sampled = sample(params, True)
            value, gx, gy = sampled["value"], sampled["gx"], sampled["gy"]
            scale = params[2]
            columns = [scale * (gx * jac[0, 0] + gy * jac[1, 0]), scale * (gx * jac[0, 1] + gy * jac[1, 1]),
                       value, np.ones_like(value)]
            if fit_rotation:
                theta = params[4]
                d_move_x = -np.sin(theta) * dx - np.cos(theta) * dy
                d_move_y = np.cos(theta) * dx - np.sin(theta) * dy
                columns.append(scale * (gx * (jac[0, 0] * d_move_x + jac[0, 1] * d_move_y)
                                        + gy * (jac[1, 0] * d_move_x + jac[1, 1] * d_move_y)))
            return np.column_stack(columns)

        def reference_values(params):
            return sample(params, False)["value"]

        return residuals, jacobian_matrix, data, reference_values

    def solve(self, used, start):
        """Levenberg-Marquardt fit of (shift_x, shift_y, scale, background[, theta]) from ``start``."""
        residuals, jacobian_matrix, data, _ = self.problem(used)
        start = np.asarray(start, dtype=float)
        if start.size < self.n_params:
            # linear start for scale and background at the given shift
            qx, qy = self.shifted_coordinates(start[:2])
            model = ndimage.map_coordinates(self.spline, [qy[used], qx[used]], order=3, prefilter=False,
                                            mode="nearest")
            design = np.column_stack([model, np.ones_like(model)])
            (scale0, background0), *_ = np.linalg.lstsq(design, data, rcond=None)
            start = np.r_[start[:2], scale0, background0, 0.0][:self.n_params]
        fitted = optimize.least_squares(residuals, start, jac=jacobian_matrix, method="lm", x_scale="jac",
                                        xtol=1e-6, ftol=1e-7, max_nfev=60)
        logger.debug("least_squares: %d residual and %d Jacobian evaluations on %d pixels", fitted.nfev,
                     fitted.njev or 0, data.size)
        return fitted


def _blur_from_fwhms(muse_fwhm, reference_fwhm, muse_scale, reference_scale):
    """Gaussian sigmas (arcsec) for MUSE and reference that equalise two known PSF FWHMs (pixels included)."""
    if muse_fwhm is None or reference_fwhm is None:
        return 0.0, 0.0
    box = 1.0 / 12.0  # variance of a one-pixel box, in pixel**2
    muse_variance = (muse_fwhm * FWHM_TO_SIGMA) ** 2 + box * muse_scale ** 2
    ref_variance = (reference_fwhm * FWHM_TO_SIGMA) ** 2 + box * reference_scale ** 2
    difference = muse_variance - ref_variance
    return (0.0, float(np.sqrt(difference))) if difference > 0 else (float(np.sqrt(-difference)), 0.0)


def _smoothed_scale(pair, used, params, smoothing_fwhm, fallback):
    """Scale and background from both images smoothed to ``smoothing_fwhm`` (arcsec) at the fitted position.

    A least-squares amplitude is biased by any residual PSF mismatch (by ~ delta_variance / (2 sigma**2));
    smoothing both images with the same wide Gaussian divides that bias by (sigma**2 + s**2) / sigma**2 while
    keeping the total fluxes. The two images are smoothed with the same weights (normalised convolution over
    the same pixel set), so ``MUSE = a * reference + b`` still holds pixel by pixel, up to the edges.
    """
    reference_values = np.full(pair.shape, np.nan)
    reference_values[used] = pair.problem(used)[3](params)
    muse_values = np.where(used, pair.muse_data, np.nan)
    sigma_pixels = smoothing_fwhm * FWHM_TO_SIGMA / pair.muse_scale
    smooth_muse = gaussian_blur(muse_values, sigma_pixels)[used]
    smooth_reference = gaussian_blur(reference_values, sigma_pixels)[used]
    design = np.column_stack([smooth_reference, np.ones_like(smooth_reference)])
    if design.shape[0] < 10 or not np.all(np.isfinite(design)):
        return fallback
    (scale, background), *_ = np.linalg.lstsq(design, smooth_muse, rcond=None)
    return float(scale), float(background)


#: Real-space refinements of the PSF matching after the Fourier estimate, and the residual Gaussian
#: variance (arcsec**2) below which the PSFs count as matched.
MAX_BLUR_REFINEMENTS = 3
BLUR_TOLERANCE = 0.002

#: Extra Gaussian blurs (sigma, arcsec) of the matched reference whose free linear combination models what
#: a single Gaussian blur cannot match (PSF wings, pixel and interpolation kernels); 0 = the matched image.
FLUX_KERNEL_SIGMAS = (0.0, 0.25, 0.6, 1.2, 2.4)


def _constrained_kernel_sigmas(used, pixel_scale, sigmas=FLUX_KERNEL_SIGMAS):
    """The matching-kernel Gaussians that a field of this shape can tell from a constant background.

    A Gaussian of sigma well above the field's half-width is nearly flat across it: its coefficient then
    trades against the background and the kernel's sum (the flux scale) wanders. On a one-IFU strip (13
    rows, 2.6") the 2.4" Gaussian alone moved the scales of real-recipe images by -5 to +1 %. Kept: the
    sigmas up to half the field's inradius (the largest distance from a used pixel to the nearest unused
    one or the image edge), and always the first.
    """
    depth = ndimage.distance_transform_edt(np.pad(np.asarray(used, bool), 1))
    inradius = float(depth.max()) * pixel_scale
    return tuple(sigma for index, sigma in enumerate(sigmas) if index == 0 or sigma <= 0.5 * inradius)


def _kernel_coefficients(pair, used, params, sigmas=FLUX_KERNEL_SIGMAS):
    """Free matching kernel at the fitted offset: ``MUSE = sum_j c_j (G_j * R) + b``, solved linearly.

    Each ``G_j`` has unit integral, so the total flux ratio is ``a = sum_j c_j`` whatever the kernel's shape:
    the kernel absorbs the PSF differences a Gaussian blur leaves (Moffat wings of different indices give
    1-4 % scale errors after Gaussian matching), and the fit still uses every pixel at full resolution
    (Alard & Lupton 1998 fit an image-subtraction kernel the same way).

    Returns
    -------
    numpy.ndarray or None
        ``(c_0, ..., c_J, b)``; None if the system is degenerate.
    """
    data = pair.muse_data[used]
    # always from the Gaussian-matched reference (the model's own spline may already be kernel-matched)
    columns = [pair.blurred_reference_values(used, params, sigma) for sigma in sigmas]
    design = np.column_stack(columns + [np.ones(data.size)])
    if design.shape[0] < 10 * design.shape[1] or not np.all(np.isfinite(design)):
        return None
    coefficients, _, rank, _ = np.linalg.lstsq(design, data, rcond=None)
    if rank < design.shape[1] or not np.sum(coefficients[:-1]) > 0:
        return None
    return coefficients


def fit_alignment(muse, reference, *, muse_fwhm=None, psf_matching="fit", max_shift=6.0, fit_rotation=False,
                  min_pixels=500, max_offset_error=0.05, min_scale_snr=10.0, clip_sigma=5.0, flux_smoothing=4.0,
                  sampling_blur=0.8, flux_method="kernel", keep_images=False):
    """Fit offset, flux scale, background (and optionally a small rotation) of one MUSE image.

    Parameters
    ----------
    muse : pymusepipe.alignment.museimage.MuseImage
        Image to align (MUSE flux units per spaxel, NaN outside the field).
    reference : pymusepipe.alignment.reference.ReferenceImage
        Reference in MUSE flux units per reference pixel (see ``read_reference``).
    muse_fwhm : float, optional
        PSF FWHM of the MUSE image (arcsec), used with ``reference.fwhm`` when ``psf_matching='fwhm'``
        (and as a starting point otherwise).
    psf_matching : {"fit", "fwhm", "none"}, optional
        "fit" (default): measure the Gaussian blur that matches the two PSFs from the images themselves
        (:func:`~pymusepipe.alignment.psf.fit_relative_blur`); "fwhm": convolve the sharper image using the
        given FWHMs; "none": no matching (flux scales are then biased if the PSFs differ).
    max_shift : float, optional
        Search radius (arcsec) of the first guess; solutions beyond it are flagged.
    fit_rotation : bool, optional
        Also fit a small rotation (the OFFSET_LIST cannot apply it; see
        :func:`~pymusepipe.alignment.rotation.rotate_pixtable`).
    min_pixels : int, optional
        Fewer common valid pixels -> flag FEW_PIXELS.
    max_offset_error : float, optional
        Offset uncertainty (arcsec) above which LARGE_ERROR is set.
    min_scale_snr : float, optional
        Scale-factor signal-to-noise below which NO_SIGNAL is set.
    clip_sigma : float, optional
        Pixels with |residual| above this many robust sigmas are dropped after a first fit (cosmic rays,
        saturated or moving stars); 0 disables.
    flux_smoothing : float, optional
        FWHM (arcsec) of the Gaussian applied to both aligned images for ``flux_method='smoothed'``.
    sampling_blur : float, optional
        Gaussian sigma, in reference pixels, added to both images after PSF matching (``psf_matching='fit'``)
        so that the reference is well sampled before it is interpolated.
    flux_method : {"kernel", "smoothed", "none"}, optional
        "kernel" (default): fit a free matching kernel (a linear combination of Gaussians of unit integral,
        :data:`FLUX_KERNEL_SIGMAS`) on top of the Gaussian matching, then refit offset, scale and background
        against the kernel-matched reference: the scale is the total flux ratio whatever the two PSFs'
        shapes. "smoothed": scale and background from both images smoothed by ``flux_smoothing`` (biased
        by differing PSF wings). "none": the amplitude of the Gaussian-matched fit.
    keep_images : bool, optional
        Keep the matched images in ``result.images`` (for diagnostics).

    Returns
    -------
    AlignmentResult
        Never raises on poor data: problems are reported in ``quality`` and ``message``.
    """
    if psf_matching not in ("fit", "fwhm", "none"):
        raise ValueError(f"psf_matching={psf_matching!r}: expected 'fit', 'fwhm' or 'none'")
    if flux_method not in ("kernel", "smoothed", "none"):
        raise ValueError(f"flux_method={flux_method!r}: expected 'kernel', 'smoothed' or 'none'")
    started = time.perf_counter()
    result = AlignmentResult()

    def flagged(flag, message, n_pixels=0):
        result.quality = int(flag)
        result.message = message
        result.n_pixels = int(n_pixels)
        result.fit_seconds = time.perf_counter() - started
        return result

    pair = _MatchedPair(muse, reference, max_shift, fit_rotation)
    if not pair.overlaps:
        return flagged(Quality.FEW_PIXELS, "the MUSE image does not overlap the reference")
    muse_scale = pair.muse_scale
    n_params = pair.n_params
    if psf_matching == "fwhm" and (muse_fwhm is None or reference.fwhm is None):
        logger.warning("%s: psf_matching='fwhm' needs both FWHMs; no PSF matching", muse.filename)
    blur_muse, blur_ref = _blur_from_fwhms(muse_fwhm, reference.fwhm, muse_scale, reference.pixel_scale) \
        if psf_matching != "none" else (0.0, 0.0)
    pair.match(blur_muse, blur_ref)

    # --- first guess: cross-correlation on the MUSE grid ----------------------------------------------
    overlap = pair.pixel_set((0.0, 0.0), padded=False)
    max_shift_pix = max_shift / muse_scale
    if overlap.sum() < 10:
        return flagged(Quality.FEW_PIXELS, "no common valid pixels", overlap.sum())
    guess = np.array(_cross_correlation_shift(pair.muse_data, pair.reference_on_muse_grid(), overlap,
                                              max_shift_pix))
    result.guess_x_offset_pix, result.guess_y_offset_pix = float(-guess[0]), float(-guess[1])

    used = pair.pixel_set(guess)
    if used.sum() < max(min_pixels, 2 * n_params):
        return flagged(Quality.FEW_PIXELS, f"only {int(used.sum())} usable pixels", used.sum())
    # converging on a subset of pixels is cheap; only the last fit uses them all
    sparse = np.zeros_like(used)
    sparse[::2, ::2] = True
    sparser = np.zeros_like(used)
    sparser[::3, ::3] = True
    try:
        fitted = pair.solve(used & (sparser if psf_matching == "fit" else sparse), guess)
        if _scale_significance(fitted) < 2.0:
            # nothing of the reference is seen: refining further would only chase noise
            result.guess_x_offset_pix, result.guess_y_offset_pix = float(-guess[0]), float(-guess[1])
            return flagged(Quality.NO_SIGNAL, "the reference structure is not detected in the MUSE image "
                           f"(scale S/N {_scale_significance(fitted):.1f})", used.sum())
        if psf_matching == "fwhm" and pair.muse_sigma > 0 and np.all(np.isfinite(fitted.x)):
            # the MUSE image was blurred before any fit, its edges dropped: blur it again with the edges
            # filled by the model just fitted (see _MatchedPair.match)
            pair.match(pair.muse_sigma, pair.ref_sigma, fitted.x)
            fitted = pair.solve(pair.pixel_set(fitted.x[:2]) & sparse, fitted.x)
        if psf_matching == "fit" and np.all(np.isfinite(fitted.x)):
            # measure the PSF difference at the fitted shift, on top of the current matching
            shift = fitted.x[:2]
            near = pair.pixel_set(shift, padded=False)
            aligned_reference = np.full(pair.shape, np.nan)
            aligned_reference[near] = pair.problem(near)[3](fitted.x)  # with the rotation, if fitted
            relative = fit_relative_blur(pair.muse_data, aligned_reference, near, muse_scale)
            for _ in range(MAX_BLUR_REFINEMENTS + 1):
                muse_variance = pair.muse_sigma ** 2 + max(-relative, 0.0)
                ref_variance = pair.ref_sigma ** 2 + max(relative, 0.0)
                # blur only as much as needed, plus a common blur of sampling_blur reference pixels that tames
                # the interpolation errors of an undersampled reference (it keeps the PSFs equal)
                common = min(muse_variance, ref_variance) - (sampling_blur * reference.pixel_scale) ** 2
                pair.match(np.sqrt(muse_variance - common), np.sqrt(ref_variance - common), fitted.x)
                logger.debug("PSF matching: blur MUSE by sigma %.3f\", reference by %.3f\"", pair.muse_sigma,
                             pair.ref_sigma)
                fitted = pair.solve(pair.pixel_set(shift) & sparse, fitted.x)
                shift = fitted.x[:2]
                # the Fourier estimate is a first guess (biased on narrow fields): refine it in real space
                relative, relative_err = pair.residual_blur(pair.pixel_set(shift), fitted.x)
                if not (np.isfinite(relative) and abs(relative) > max(BLUR_TOLERANCE, 2.0 * relative_err)):
                    break
                relative = float(np.clip(relative, -1.0, 1.0))
        used = pair.pixel_set(fitted.x[:2])

        # from the field's shape before clipping (scattered clipped pixels do not narrow the field)
        kernel_sigmas = _constrained_kernel_sigmas(used, muse_scale)

        def kernel_matched(pixels, params):
            # fit the free kernel, then model MUSE with the reference convolved by the normalised kernel:
            # its scale is the total flux ratio, and the offset no longer feels the PSF mismatch
            coefficients = _kernel_coefficients(pair, pixels, params, kernel_sigmas)
            if coefficients is None:
                return params
            total = float(np.sum(coefficients[:-1]))
            pair.use_reference_image(sum(c * pair.blurred_reference(sigma) for c, sigma in
                                         zip(coefficients[:-1], kernel_sigmas)) / total)
            return np.r_[params[:2], total, coefficients[-1], params[4:]]

        if flux_method == "kernel":
            # before clipping: residuals of a Gaussian-matched model on bright fields are PSF-shape mismatch,
            # which would be clipped as if they were outliers
            fitted = pair.solve(used & sparse, kernel_matched(used, fitted.x))
        if clip_sigma and clip_sigma > 0:
            residuals_of, _, _, reference_of = pair.problem(used)
            residual = residuals_of(fitted.x)  # residuals on all pixels
            keep = _clip_outliers(residual, fitted.x[2] * reference_of(fitted.x), clip_sigma)
            if keep.sum() >= max(min_pixels, 2 * n_params):
                clipped = np.zeros_like(used)
                clipped[used] = keep
                used = clipped
        start = kernel_matched(used, fitted.x) if flux_method == "kernel" else fitted.x
        fitted = pair.solve(used, start)
    except (ValueError, np.linalg.LinAlgError) as exc:
        return flagged(Quality.NOT_CONVERGED, f"least-squares fit failed: {exc}", used.sum())

    ny, nx = pair.shape
    centre = pair.centre
    muse_data = pair.muse_data
    params = fitted.x
    n_used = int(used.sum())
    dof = max(n_used - n_params, 1)
    residual = fitted.fun
    reduced_chi2 = float(np.sum(residual ** 2) / dof)
    residual_image = np.zeros((ny, nx))
    residual_image[used] = residual
    correlation = _residual_correlation_factor(residual_image, used)
    try:
        covariance = np.linalg.inv(fitted.jac.T @ fitted.jac) * reduced_chi2 * correlation
        errors = np.sqrt(np.clip(np.diag(covariance), 0, None))
    except np.linalg.LinAlgError:
        covariance = np.full((n_params, n_params), np.nan)
        errors = np.full(n_params, np.nan)

    shift = params[:2]
    scale, background = params[2], params[3]
    if flux_method == "smoothed" and flux_smoothing and flux_smoothing > 0 and np.isfinite(scale) and scale != 0:
        scale, background = _smoothed_scale(pair, used, params, flux_smoothing, (scale, background))
    # offsets in the sky: measured (header) position minus true position of the central pixel
    header_world = np.array(muse.wcs.pixel_to_world_values(centre[0], centre[1]), dtype=float)
    true_world = np.array(muse.wcs.pixel_to_world_values(centre[0] + shift[0], centre[1] + shift[1]),
                          dtype=float)
    ra_offset, dec_offset = header_world - true_world
    ra_offset = (ra_offset + 180.0) % 360.0 - 180.0
    # error propagation through the (linear) pixel -> world map
    world_per_pixel = np.array(muse.wcs.pixel_scale_matrix)
    cos_dec = np.cos(np.deg2rad(header_world[1]))
    sky_covariance = world_per_pixel @ covariance[:2, :2] @ world_per_pixel.T
    result.ra_offset, result.dec_offset = float(ra_offset), float(dec_offset)
    result.ra_offset_err = float(np.sqrt(sky_covariance[0, 0]) / cos_dec)
    result.dec_offset_err = float(np.sqrt(sky_covariance[1, 1]))
    result.x_offset_pix, result.y_offset_pix = float(-shift[0]), float(-shift[1])
    result.x_offset_pix_err, result.y_offset_pix_err = float(errors[0]), float(errors[1])
    result.flux_scale = float(1.0 / scale) if scale != 0 else np.nan
    result.flux_scale_err = float(errors[2] / scale ** 2) if scale != 0 else np.nan
    result.background = float(-background / scale) if scale != 0 else np.nan
    result.background_err = float(np.hypot(errors[3] / scale, background * errors[2] / scale ** 2)) \
        if scale != 0 else np.nan
    if fit_rotation:
        result.rotation = float(np.rad2deg(params[4]))
        result.rotation_err = float(np.rad2deg(errors[4]))
    result.n_pixels = n_used
    result.reduced_chi2 = reduced_chi2
    result.noise_correlation = correlation

    # --- quality --------------------------------------------------------------------------------------
    quality = Quality.GOOD
    notes = []
    if n_used < min_pixels:
        quality |= Quality.FEW_PIXELS
    if not fitted.success:
        quality |= Quality.NOT_CONVERGED
        notes.append(fitted.message)
    if not (np.isfinite(scale) and scale > 0):
        quality |= Quality.BAD_SCALE
    scale_snr = scale / errors[2] if errors[2] > 0 else np.inf
    if not np.isfinite(scale_snr) or scale_snr < min_scale_snr:
        quality |= Quality.NO_SIGNAL
        notes.append(f"scale S/N {scale_snr:.1f}")
    offset_error = float(np.hypot(*errors[:2])) * muse_scale
    if not np.isfinite(offset_error) or offset_error > max_offset_error:
        quality |= Quality.LARGE_ERROR
        notes.append(f"offset error {offset_error:.3f}\"")
    if np.hypot(*shift) > max_shift_pix:
        quality |= Quality.OUTSIDE_SEARCH
    # the correlation peak may legitimately be off by a fraction of the PSF, not by more than ~1"
    psf_pixels = max(muse_fwhm or 0.0, reference.fwhm or 0.0, 0.6) / muse_scale
    if np.hypot(*(shift - guess)) > 2 * psf_pixels:
        quality |= Quality.GUESS_DISAGREES
        notes.append(f"fit moved {np.hypot(*(shift - guess)) * muse_scale:.2f}\" from the correlation peak")
    result.quality = int(quality)
    result.message = "; ".join(notes)
    if keep_images:
        overlap = pair.pixel_set(shift, padded=False)
        aligned = np.full(pair.shape, np.nan)
        aligned[overlap] = pair.problem(overlap)[3](params)  # with the rotation, if fitted
        result.images = dict(muse=np.where(overlap, muse_data, np.nan), used=used,
                             reference=np.where(overlap, aligned, np.nan),
                             muse_scaled=np.where(overlap, result.flux_scale * muse_data + result.background, np.nan))
    result.fit_seconds = time.perf_counter() - started
    logger.debug("fit %s: offset (%.4f, %.4f)\" scale %.4f quality %s in %.2f s", muse.filename,
                 result.ra_offset * 3600, result.dec_offset * 3600, result.flux_scale,
                 Quality.describe(result.quality), result.fit_seconds)
    return result
