"""PSF matching: NaN-aware Gaussian blurs, and the relative PSF width of two aligned images measured from
their Fourier spectra.

A flux scale fitted by least squares is biased when the two PSFs differ (by ~2 sigma_R**2 / (sigma_M**2 +
sigma_R**2): 10 % in FWHM gives ~10 % in scale), and PSF FWHMs are rarely known that well. This module
finds the Gaussian blur that best matches the cores of the two PSFs: ``t`` (arcsec**2) is the extra
Gaussian variance to give the reference (t > 0) or the MUSE image (t < 0), from the ratio of cross power
to reference power in rings of spatial frequency (``log ratio = log a - 2 pi**2 t k**2``). What a Gaussian
cannot match (wings) is left to the matching kernel of :mod:`pymusepipe.alignment.fit`.
"""
import logging

import numpy as np
from scipy import ndimage

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
        Largest |t| returned (arcsec**2).

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

    # power sums in rings of |k|**2: every statistic below is a sum over modes of similar frequency
    edges = np.linspace(0.0, frequency2.max() * (1 + 1e-9), 257)
    bin_index = np.digitize(frequency2.ravel(), edges) - 1

    def binned(values):
        return np.bincount(bin_index, weights=values.ravel(), minlength=edges.size - 1)[:edges.size - 1]

    counts = binned(np.ones_like(frequency2))
    bin_frequency2 = binned(frequency2) / np.maximum(counts, 1.0)
    reference_power = binned(np.abs(reference_spectrum) ** 2)
    cross_power = binned((muse_spectrum * np.conj(reference_spectrum)).real)
    reference_noise = float(np.median(np.abs(reference_spectrum[high]) ** 2)) / np.log(2) if high.any() else 0.0
    # Per ring, cross / reference power = a * T_muse(k) / T_ref(k): MUSE noise averages out of the cross
    # power instead of having to be subtracted (an error of 1 % in a subtracted noise power outweighs the
    # whole signal mismatch of a faint image and drove earlier estimates to the edge of the search range).
    signal_power = reference_power - reference_noise * counts
    # variance of the ring's cross power: MUSE noise x reference power (+ reference noise x MUSE signal)
    cross_variance = noise_power * np.maximum(reference_power, 1e-300)
    snr = cross_power / np.sqrt(cross_variance)
    usable = (counts > 0) & (bin_frequency2 > 0) & (signal_power > 0) & (cross_power > 0) & (snr > 5.0)
    if usable.sum() < 3:
        logger.debug("relative PSF blur: too little signal (%d usable rings); no matching", usable.sum())
        return 0.0
    log_ratio = np.log(cross_power[usable] / signal_power[usable])
    # d log ratio / d k**2 = -2 pi**2 t (Gaussian blurs); weights = S/N**2 of each ring's log ratio
    weights = snr[usable] ** 2
    design = np.column_stack([np.ones(usable.sum()), -2.0 * np.pi ** 2 * bin_frequency2[usable]])
    sqrt_w = np.sqrt(weights)
    (_, t_pixels), *_ = np.linalg.lstsq(design * sqrt_w[:, None], log_ratio * sqrt_w, rcond=None)
    t = float(np.clip(t_pixels / variance_scale, -max_variance, max_variance))
    logger.debug("relative PSF blur t = %.4f arcsec^2 from %d rings", t, usable.sum())
    return t
