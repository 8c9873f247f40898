"""``pymusepipe align``: align MUSE images to a reference image and write an OFFSET_LIST."""
import argparse
import logging
import sys


from .align import align_images, write_alignment_offset_list
from .diagnostics import write_summary
from .museimage import MuseImageError
from .offset_list import OffsetListError
from .reference import ReferenceImageError

logger = logging.getLogger(__name__)

#: Exit status of ``pymusepipe align``.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FLAGGED = 0, 1, 2, 3

EXIT_STATUS_HELP = """exit status:
  0  every image aligned; OFFSET_LIST written
  3  OFFSET_LIST written, but some images could not be aligned: their rows have RA/DEC_OFFSET 0 and
     FLUX_SCALE NaN (the pipeline leaves them unmoved and unscaled) and a non-zero QUALITY; a warning
     names each of them
  1  error: an input cannot be read (reference, image, unit or filter) or the OFFSET_LIST cannot be written
  2  usage error (bad options)
"""


def add_arguments(parser):
    """Add the ``align`` options to an argparse (sub)parser (its help ends with the exit status)."""
    parser.epilog = EXIT_STATUS_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
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
    parser.add_argument("--rotation", action="store_true",
                        help="also fit a small rotation (ROTANGLE column; apply it to the pixel tables with "
                             "pymusepipe.alignment.rotate_pixtable)")
    parser.add_argument("--figures", metavar="DIR", help="write one diagnostic PNG per image into DIR")
    parser.add_argument("--summary", metavar="TABLE.ecsv", help="write the full result table")
    parser.add_argument("--keep-flagged", action="store_true",
                        help="write the measured offsets of flagged (doubtful) images too; by default they "
                             "get offsets 0 and FLUX_SCALE NaN (left unmoved and unscaled)")
    return parser


def run(args):
    """Run ``pymusepipe align``.

    Returns
    -------
    int
        Exit status: 0 all aligned, 3 written with flagged images, 1 error (see :data:`EXIT_STATUS_HELP`).
    """
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
        return EXIT_ERROR
    if args.summary:
        write_summary(table, args.summary)
    try:
        write_alignment_offset_list(table, args.output, keep_flagged=args.keep_flagged)
    except (OffsetListError, OSError) as exc:
        logger.error("%s", exc)
        return EXIT_ERROR
    for row in table:
        logger.info("%s %s: RA %+.3f\" DEC %+.3f\" scale %.4f %s", row["filename"], row["date_obs"],
                    row["ra_offset_arcsec"], row["dec_offset_arcsec"], row["flux_scale"], row["quality_flags"])
    flagged = [str(name) for name, quality in zip(table["filename"], table["quality"]) if quality]
    if flagged:
        logger.warning("%d of %d image(s) not aligned, written unmoved: %s", len(flagged), len(table),
                       ", ".join(flagged))
        return EXIT_FLAGGED
    return EXIT_OK


def main(argv=None):
    """Stand-alone entry point (the ``pymusepipe`` console script wires ``add_arguments``/``run`` itself)."""
    parser = add_arguments(argparse.ArgumentParser(prog="pymusepipe align", description=__doc__))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
