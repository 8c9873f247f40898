"""Align a set of MUSE images to one reference image: the table behind an OFFSET_LIST."""
import logging
import os
from dataclasses import asdict, replace

import numpy as np
from astropy.table import Table

from .fit import AlignmentResult, Quality, fit_alignment
from .museimage import MuseImage, read_muse_image
from .reference import ReferenceImage, read_reference

logger = logging.getLogger(__name__)

#: Columns of the align_images table, in order (units in the column meta).
TABLE_COLUMNS = (
    ("filename", ""), ("date_obs", ""), ("mjd_obs", "d"),
    ("ra_offset", "deg"), ("dec_offset", "deg"), ("ra_offset_err", "deg"), ("dec_offset_err", "deg"),
    ("ra_offset_arcsec", "arcsec"), ("dec_offset_arcsec", "arcsec"),
    ("ra_offset_arcsec_err", "arcsec"), ("dec_offset_arcsec_err", "arcsec"),
    ("x_offset_pix", "pix"), ("y_offset_pix", "pix"), ("x_offset_pix_err", "pix"), ("y_offset_pix_err", "pix"),
    ("flux_scale", ""), ("flux_scale_err", ""), ("background", "MUSE flux per MUSE pixel"),
    ("background_err", "MUSE flux per MUSE pixel"), ("rotation", "deg"), ("rotation_err", "deg"),
    ("guess_x_offset_pix", "pix"), ("guess_y_offset_pix", "pix"),
    ("n_pixels", ""), ("reduced_chi2", ""), ("noise_correlation", ""), ("quality", ""), ("quality_flags", ""),
    ("message", ""), ("fit_seconds", "s"),
)


def _result_row(image, result):
    values = asdict(result)
    values.pop("images")
    cos_dec = np.cos(np.deg2rad(image.wcs.wcs.crval[1]))
    row = dict(filename=os.path.basename(image.filename or ""), date_obs=image.date_obs,
               mjd_obs=image.mjd_obs, **values)
    # arcsec on the sky (RA multiplied by cos dec here, unlike the OFFSET_LIST degrees)
    row["ra_offset_arcsec"] = result.ra_offset * 3600.0 * cos_dec
    row["dec_offset_arcsec"] = result.dec_offset * 3600.0
    row["ra_offset_arcsec_err"] = result.ra_offset_err * 3600.0 * cos_dec
    row["dec_offset_arcsec_err"] = result.dec_offset_err * 3600.0
    row["quality_flags"] = Quality.describe(result.quality)
    return row


def align_images(images, reference, *, filter_name=None, pivot_wavelength=None, reference_unit=None,
                 reference_fwhm=None, reference_hdu=None, muse_fwhm=None, psf_matching="fit", max_shift=6.0,
                 fit_rotation=False, min_pixels=500, max_offset_error=0.05, min_scale_snr=10.0,
                 figure_folder=None, filter_list=None):
    """Measure offset, flux scale and background of MUSE images against a reference image.

    Parameters
    ----------
    images : iterable of (str or path-like or MuseImage)
        MUSE images (IMAGE_FOV files: ``DATA`` extension with a TAN WCS; DATE-OBS/MJD-OBS in the primary
        header), or :class:`~pymusepipe.alignment.museimage.MuseImage` objects (e.g. from ``image_from_cube``).
    reference : str or path-like or ReferenceImage
        Reference image file, or one already read with :func:`~pymusepipe.alignment.reference.read_reference`.
    filter_name : str, optional
        Band of the reference (overrides its FILTER keyword) for the pivot-wavelength look-up.
    pivot_wavelength : float, optional
        Pivot wavelength of the reference band (Angstrom); overrides ``filter_name``.
    reference_unit : str, optional
        Overrides the reference's BUNIT.
    reference_fwhm : float, optional
        PSF FWHM (arcsec) of the reference.
    muse_fwhm : float or sequence of float, optional
        PSF FWHM (arcsec) of the MUSE images (one value, or one per image); the
        sharper image of each pair is convolved to the other's PSF. Only needed with
        ``psf_matching='fwhm'``; with 'fit' they are a starting point.
    psf_matching : {"fit", "fwhm", "none"}, optional
        How the PSFs are matched, see :func:`~pymusepipe.alignment.fit.fit_alignment`.
    reference_hdu : int or str, optional
        HDU of the reference image.
    max_shift : float, optional
        Largest offset searched (arcsec).
    fit_rotation : bool, optional
        Also fit a small rotation (``rotation`` column, written as ROTANGLE; the OFFSET_LIST cannot apply
        it: see :func:`~pymusepipe.alignment.rotation.rotate_pixtable`).
    min_pixels, max_offset_error, min_scale_snr : optional
        Quality thresholds, see :func:`~pymusepipe.alignment.fit.fit_alignment`.
    figure_folder : str or path-like, optional
        Write one diagnostic PNG per image there.
    filter_list : str or path-like, optional
        MUSE FILTER_LIST to look up the reference filter's curve.

    Returns
    -------
    astropy.table.Table
        One row per image: ``filename, date_obs, mjd_obs, ra_offset, dec_offset`` (deg, measured - true,
        no cos dec: the OFFSET_LIST convention), their errors, the same in arcsec on the sky and in MUSE
        pixels, ``flux_scale, background`` (reference = flux_scale * MUSE + background) with errors,
        ``rotation``, ``n_pixels``, ``quality`` (0 = good, bits of :class:`~pymusepipe.alignment.fit.Quality`),
        ``quality_flags``, ``message``. Pass it to :func:`~pymusepipe.alignment.offset_list.write_offset_list`.
    """
    if not isinstance(reference, ReferenceImage):
        reference = read_reference(reference, hdu=reference_hdu, filter_name=filter_name,
                                   pivot_wavelength=pivot_wavelength, unit=reference_unit, fwhm=reference_fwhm,
                                   filter_list=filter_list)
    elif reference_fwhm is not None:
        reference = replace(reference, fwhm=reference_fwhm)  # the caller's object stays as it was
    images = list(images)
    muse_fwhms = np.broadcast_to(np.asarray(muse_fwhm if muse_fwhm is not None else np.nan, dtype=float),
                                 (len(images),))
    rows = []
    for index, image in enumerate(images):
        if not isinstance(image, MuseImage):
            image = read_muse_image(image)
        fwhm = float(muse_fwhms[index]) if np.isfinite(muse_fwhms[index]) else None
        result = fit_alignment(image, reference, muse_fwhm=fwhm, psf_matching=psf_matching, max_shift=max_shift,
                               fit_rotation=fit_rotation, min_pixels=min_pixels, max_offset_error=max_offset_error,
                               min_scale_snr=min_scale_snr, keep_images=figure_folder is not None)
        row = _result_row(image, result)
        if result.quality:
            logger.warning("%s: doubtful alignment (%s) %s", image.filename, row["quality_flags"], result.message)
        else:
            logger.info("%s: offset %+.3f\" E, %+.3f\" N (measured - true, on the sky), flux scale %.4f",
                        image.filename, row["ra_offset_arcsec"], row["dec_offset_arcsec"], result.flux_scale)
        if figure_folder is not None:
            from .diagnostics import plot_alignment  # matplotlib only when figures are asked for
            os.makedirs(figure_folder, exist_ok=True)
            stem = os.path.splitext(os.path.basename(image.filename or f"image_{index:03d}"))[0]
            plot_alignment(result, os.path.join(figure_folder, f"{stem}_alignment.png"), title=stem)
        rows.append(row)
    table = Table(rows=rows, names=[name for name, _ in TABLE_COLUMNS]) if rows else \
        Table(names=[name for name, _ in TABLE_COLUMNS])
    for name, unit in TABLE_COLUMNS:
        if unit and unit not in ("MUSE flux per MUSE pixel",):
            table[name].unit = unit
    table.meta["reference"] = os.path.basename(reference.filename or "")
    table.meta["pivot"] = reference.pivot_wavelength
    return table


#: Quality bits that make an offset unusable: such an exposure is written unmoved (offsets 0).
OFFSET_UNUSABLE = (Quality.FEW_PIXELS | Quality.NO_SIGNAL | Quality.LARGE_ERROR | Quality.OUTSIDE_SEARCH
                   | Quality.NOT_CONVERGED | Quality.GUESS_DISAGREES)
#: Quality bits that make a flux scale unusable: written as NaN (the pipeline then does not scale).
SCALE_UNUSABLE = OFFSET_UNUSABLE | Quality.BAD_SCALE


def write_alignment_offset_list(table, path, *, keep_flagged=False, **write_options):
    """Write the OFFSET_LIST of an :func:`align_images` table; flagged images are written unmoved.

    Every image gets a row, so the recipes read the table and apply the other images' offsets. A flagged
    image (``quality`` != 0) keeps its ``QUALITY`` bits (a column the recipes ignore) and gets
    ``RA_OFFSET = DEC_OFFSET = 0`` (finite, so every reader takes the row, and the pipeline leaves the
    exposure where its header puts it) and ``FLUX_SCALE = NaN`` (the pipeline does not scale it, as for
    muse_exp_align's tables). Only a ``BAD_SCALE`` flag keeps the offsets.

    Parameters
    ----------
    table : astropy.table.Table
        From :func:`align_images`.
    path : str or path-like
        OFFSET_LIST to write.
    keep_flagged : bool, optional
        Write the measured offsets and scales of flagged images too (their ``QUALITY`` is still written).
    **write_options
        Passed to :func:`~pymusepipe.alignment.offset_list.write_offset_list` (e.g. ``expected_date_obs``).

    Returns
    -------
    astropy.table.Table
        The table as written.
    """
    from .offset_list import write_offset_list

    offsets = table.copy()
    quality = np.asarray(offsets["quality"], dtype=int)
    flagged = quality != 0
    if flagged.any() and not keep_flagged:
        unmoved = (quality & int(OFFSET_UNUSABLE)) != 0
        unscaled = (quality & int(SCALE_UNUSABLE)) != 0
        for name in ("ra_offset", "dec_offset", "ra_offset_err", "dec_offset_err"):
            if name in offsets.colnames:
                offsets[name][unmoved] = 0.0 if not name.endswith("_err") else np.nan
        offsets["flux_scale"][unscaled] = np.nan
        for index in np.flatnonzero(flagged):
            row = offsets[index]
            flags = Quality.describe(row["quality"])
            logger.warning("%s (DATE-OBS %s) could not be aligned (%s): written %s", row["filename"],
                           row["date_obs"], flags, "unmoved and unscaled" if unmoved[index] else "unscaled")
    return write_offset_list(offsets, path, **write_options)


__all__ = ["align_images", "write_alignment_offset_list", "AlignmentResult", "OFFSET_UNUSABLE", "SCALE_UNUSABLE"]
