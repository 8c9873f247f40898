"""``pymusepipe align``: align MUSE images to a reference image and write an OFFSET_LIST."""
import argparse
import logging

import numpy as np

from .align import align_images, write_alignment_offset_list
from .diagnostics import write_summary
from .museimage import MuseImageError
from .offset_list import OffsetListError
from .reference import ReferenceImageError

logger = logging.getLogger(__name__)


def add_arguments(parser):
    """Add the ``align`` options to an argparse (sub)parser."""
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="MUSE images (IMAGE_FOV files: DATA extension with a WCS, DATE-OBS/MJD-OBS)")
    parser.add_argument("--reference", required=True, metavar="REF.fits", help="reference image with a WCS")
    parser.add_argument("--output", required=True, metavar="OFFSET_LIST.fits", help="OFFSET_LIST to write")
    parser.add_argument("--filter", dest="filter_name", help="band of the reference (overrides FILTER)")
    parser.add_argument("--pivot", type=float, dest="pivot_wavelength",
                        help="pivot wavelength of the reference band [Angstrom]")
    parser.add_argument("--reference-unit", help="unit of the reference data (overrides BUNIT), e.g. uJy")
    parser.add_argument("--reference-hdu", help="HDU (number or name) of the reference image")
    parser.add_argument("--reference-fwhm", type=float, help="PSF FWHM of the reference [arcsec]")
    parser.add_argument("--muse-fwhm", type=float, help="PSF FWHM of the MUSE images [arcsec]")
    parser.add_argument("--psf-matching", choices=("fit", "fwhm", "none"), default="fit",
                        help="measure the PSF difference (fit, default), use the given FWHMs, or none")
    parser.add_argument("--max-shift", type=float, default=6.0, help="largest offset searched [arcsec]")
    parser.add_argument("--rotation", action="store_true", help="also fit a small rotation (reported only)")
    parser.add_argument("--figures", metavar="DIR", help="write one diagnostic PNG per image into DIR")
    parser.add_argument("--summary", metavar="TABLE.ecsv", help="write the full result table")
    parser.add_argument("--keep-flagged", action="store_true",
                        help="write offsets of flagged (doubtful) images too; by default they get NaN "
                             "offsets and scale, which the pipeline ignores")
    return parser


def run(args):
    """Run ``pymusepipe align``; returns the process exit code (0 ok, 1 some images flagged, 2 bad input)."""
    reference_hdu = args.reference_hdu
    if reference_hdu is not None and str(reference_hdu).isdigit():
        reference_hdu = int(reference_hdu)
    try:
        table = align_images(args.images, args.reference, filter_name=args.filter_name,
                             pivot_wavelength=args.pivot_wavelength, reference_unit=args.reference_unit,
                             reference_hdu=reference_hdu, reference_fwhm=args.reference_fwhm,
                             muse_fwhm=args.muse_fwhm, psf_matching=args.psf_matching, max_shift=args.max_shift,
                             fit_rotation=args.rotation, figure_folder=args.figures)
    except (ReferenceImageError, MuseImageError) as exc:
        logger.error("%s", exc)
        return 2
    if args.summary:
        write_summary(table, args.summary)
    try:
        write_alignment_offset_list(table, args.output, keep_flagged=args.keep_flagged)
    except OffsetListError as exc:
        logger.error("%s", exc)
        return 2
    for row in table:
        logger.info("%s %s: RA %+.3f\" DEC %+.3f\" scale %.4f %s", row["filename"], row["date_obs"],
                    row["ra_offset_arcsec"], row["dec_offset_arcsec"], row["flux_scale"], row["quality_flags"])
    return 1 if np.any(np.asarray(table["quality"]) != 0) else 0


def main(argv=None):
    """Stand-alone entry point (the ``pymusepipe`` console script wires ``add_arguments``/``run`` itself)."""
    parser = add_arguments(argparse.ArgumentParser(prog="pymusepipe align", description=__doc__))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))
