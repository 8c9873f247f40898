"""PSF matching: NaN-aware Gaussian blurs, and the relative PSF width of two aligned images measured from
their Fourier spectra.

A flux scale fitted by least squares is biased when the two PSFs differ (by ~2 sigma_R**2 / (sigma_M**2 +
sigma_R**2): 10 % in FWHM gives ~10 % in scale), and PSF FWHMs are rarely known that well. This module
finds the Gaussian blur that best matches the two images: ``t`` (arcsec**2) is the extra Gaussian
variance to give the reference (t > 0) or the MUSE image (t < 0). Working on the Fourier transforms of
the two images, already sampled on the same grid, makes each trial a few array operations.
"""
import logging

import numpy as np
from scipy import ndimage, optimize

logger = logging.getLogger(__name__)

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def gaussian_blur(image, sigma_pixels):
    """Convolve with a circular Gaussian, ignoring (and keeping) NaN pixels.

    Normalised convolution (blur of the valid data divided by blur of the validity mask), so pixels near a
    NaN edge are averages of their valid neighbours rather than dragged towards zero.

    Parameters
    ----------
    image : numpy.ndarray
    sigma_pixels : float
        Gaussian sigma in pixels of ``image``; <= 0.05 returns a copy.

    Returns
    -------
    numpy.ndarray
    """
    image = np.asarray(image, dtype=float)
    if sigma_pixels <= 0.05:
        return image.copy()
    valid = np.isfinite(image)
    # scipy's separable filter: ~10x faster than a 2-D FFT convolution for these small kernels
    blurred = ndimage.gaussian_filter(np.where(valid, image, 0.0), sigma_pixels, mode="constant", truncate=4.0)
    weight = ndimage.gaussian_filter(valid.astype(float), sigma_pixels, mode="constant", truncate=4.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, blurred / weight, np.nan)


def _gaussian_transfer(frequency2, variance_pixels):
    """Fourier transform of a unit-flux Gaussian of the given variance (pixels**2)."""
    return np.exp(-2.0 * np.pi ** 2 * variance_pixels * frequency2)


def fit_relative_blur(muse_image, reference_image, mask, pixel_scale, *, max_variance=2.0):
    """Extra Gaussian variance (arcsec**2) that makes the two images' PSFs equal.

    Parameters
    ----------
    muse_image, reference_image : numpy.ndarray
        Images on the same pixel grid (the reference already interpolated to the MUSE pixels).
    mask : numpy.ndarray of bool
        Pixels valid in both.
    pixel_scale : float
        arcsec per pixel of the grid.
    max_variance : float, optional
        Search range (arcsec**2) on either side of zero.

    Returns
    -------
    float
        ``t``: blur the reference by a Gaussian of variance ``t`` if t > 0, the MUSE image by ``-t`` if t < 0.
    """
    # both images cut by the same mask: the cut affects both spectra alike (M = a R + b holds inside it)
    muse = np.where(mask, muse_image - np.median(muse_image[mask]), 0.0)
    reference = np.where(mask, reference_image - np.median(reference_image[mask]), 0.0)
    muse_spectrum = np.fft.rfft2(muse)
    reference_spectrum = np.fft.rfft2(reference)
    frequency_y = np.fft.fftfreq(muse.shape[0])[:, None]
    frequency_x = np.fft.rfftfreq(muse.shape[1])[None, :]
    frequency2 = frequency_x ** 2 + frequency_y ** 2
    # white-noise power of the MUSE image, from the frequencies where the PSF has killed the signal
    high = frequency2 > 0.4 ** 2
    noise_power = float(np.median(np.abs(muse_spectrum[high]) ** 2)) / np.log(2) if high.any() else 1.0
    variance_scale = 1.0 / pixel_scale ** 2

    # the misfit only needs power sums weighted by functions of |k|**2: bin them once in |k|**2 so that each
    # trial costs a few hundred operations instead of a full-size array
    edges = np.linspace(0.0, frequency2.max() * (1 + 1e-9), 513)
    bin_index = np.digitize(frequency2.ravel(), edges) - 1

    def binned(values):
        return np.bincount(bin_index, weights=values.ravel(), minlength=edges.size - 1)[:edges.size - 1]

    counts = binned(np.ones_like(frequency2))
    bin_frequency2 = binned(frequency2) / np.maximum(counts, 1.0)
    muse_power = binned(np.abs(muse_spectrum) ** 2)
    reference_power = binned(np.abs(reference_spectrum) ** 2)
    cross_power = binned((muse_spectrum * np.conj(reference_spectrum)).real)
    frequency2 = bin_frequency2

    def normalised_misfit(t):
        transfer_muse = _gaussian_transfer(frequency2, max(-t, 0.0) * variance_scale)
        transfer_ref = _gaussian_transfer(frequency2, max(t, 0.0) * variance_scale)
        muse_muse = np.sum(transfer_muse ** 2 * muse_power)
        ref_ref = max(np.sum(transfer_ref ** 2 * reference_power), 1e-300)
        muse_ref = np.sum(transfer_muse * transfer_ref * cross_power)
        # residual power of the best scaled match: |M|^2 - (M.R)^2 / |R|^2
        residual_power = muse_muse - muse_ref ** 2 / ref_ref
        # minus what pure MUSE noise leaves after the same blur: what remains is the signal mismatch, zero
        # at the right blur (dividing by the noise instead would penalise blurring the MUSE image)
        return (residual_power - noise_power * np.sum(counts * transfer_muse ** 2)) / noise_power

    # the misfit has a kink at t = 0 (which image is blurred changes): scan a grid, then refine locally
    grid = np.linspace(-max_variance, max_variance, 81)
    best = grid[int(np.argmin([normalised_misfit(t) for t in grid]))]
    step = grid[1] - grid[0]
    solution = optimize.minimize_scalar(normalised_misfit, bounds=(best - step, best + step), method="bounded",
                                        options={"xatol": 2e-4})
    logger.debug("relative PSF blur t = %.4f arcsec^2 (misfit %.3g)", solution.x, solution.fun)
    return float(solution.x)
