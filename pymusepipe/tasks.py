"""Python steps of the chain that sit between esorex runs, each also a command line for the replay log.

``python3 -m pymusepipe.tasks choose-offsets --output OFFSET_LIST.fits --exposure DATE-OBS MJD ...
[--exp-align OFFSET_LIST_of_muse_exp_align.fits]`` writes the pointing's OFFSET_LIST in force: muse_exp_align's
offsets when its QC says they can be trusted (:data:`EXPALIGN_MIN_MATCHES`), else zero offsets (the exposures
are combined as their headers place them) with the reason.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from astropy.io import fits

from .atomic import write_atomically

__all__ = ["choose_offsets", "align_to_reference", "output_wcs", "EXPALIGN_MIN_MATCHES", "main"]

logger = logging.getLogger(__name__)

#: muse_exp_align's OFFSET_LIST is trusted only with this many matched sources in every pair and no unmatched
#: exposure (exp-align-and-sky.md: 309/309 runs right with these cuts, wrong offsets of up to 25" below).
EXPALIGN_MIN_MATCHES = 5


def offset_list_is_trusted(path, min_matches: int = EXPALIGN_MIN_MATCHES) -> tuple:
    """(trusted, reason) from muse_exp_align's QC keywords."""
    header = fits.getheader(path)
    nomatch = header.get("ESO QC EXPALIGN NOMATCH")
    nmatch_min = header.get("ESO QC EXPALIGN NMATCH MIN")
    if nomatch is None or nmatch_min is None:
        return False, f"{Path(path).name} has no ESO QC EXPALIGN NOMATCH / NMATCH MIN keywords"
    if int(nomatch) != 0 or int(nmatch_min) < min_matches:
        return False, (f"muse_exp_align matched too few sources (QC EXPALIGN NMATCH MIN {int(nmatch_min)}, "
                       f"NOMATCH {int(nomatch)}; trusted only with NMATCH MIN >= {min_matches} and NOMATCH 0)")
    return True, f"muse_exp_align QC EXPALIGN NMATCH MIN {int(nmatch_min)}, NOMATCH 0"


def choose_offsets(output, exposures, exp_align=None, min_matches: int = EXPALIGN_MIN_MATCHES) -> str:
    """Write the pointing's OFFSET_LIST in force and say why.

    Parameters
    ----------
    output : path
        OFFSET_LIST to write (atomically).
    exposures : sequence of (date_obs, mjd)
        Every OBJECT exposure of the pointing: each gets a row.
    exp_align : path, optional
        muse_exp_align's OFFSET_LIST.
    min_matches : int
        Smallest ``ESO QC EXPALIGN NMATCH MIN`` accepted.

    Returns
    -------
    str
        What was chosen and why (recorded in the pointing's state and the replay log).
    """
    from .alignment.offset_list import date_obs_key, read_offset_list, write_offset_list

    rows = {date_obs_key(date): {"DATE_OBS": date_obs_key(date), "MJD_OBS": float(mjd), "RA_OFFSET": 0.0,
                                 "DEC_OFFSET": 0.0, "FLUX_SCALE": math.nan} for date, mjd in exposures}
    source = "none"
    if exp_align is not None:
        trusted, reason = offset_list_is_trusted(exp_align, min_matches)
        if trusted:
            measured = read_offset_list(exp_align)
            for row in measured:
                key = date_obs_key(row["DATE_OBS"])
                if key in rows:
                    rows[key]["RA_OFFSET"] = float(row["RA_OFFSET"])
                    rows[key]["DEC_OFFSET"] = float(row["DEC_OFFSET"])
            missing = [key for key in rows if key not in {date_obs_key(r["DATE_OBS"]) for r in measured}]
            source = "muse_exp_align"
            message = f"offsets of {Path(exp_align).name} ({reason})"
            if missing:
                message += f"; no offset measured for {', '.join(missing)} (left unmoved)"
        else:
            message = f"zero offsets: {reason}; the exposures are combined as their headers place them"
            logger.warning("%s", message)
    else:
        message = "zero offsets: no muse_exp_align result"
    write_atomically(output, lambda temporary: write_offset_list(
        list(rows.values()), temporary, header={"HIERARCH PYMUSEPIPE OFFSETS SOURCE": source}))
    return message


def align_to_reference(output, images, reference=None, filter_name=None, filter_list=None,
                       figure_folder=None) -> str:
    """Offsets and flux scales of MUSE images against one reference image, written as an OFFSET_LIST.

    Without a reference image the first image plays it: offsets are then relative to its exposure and the
    flux scales are rescaled so that the most transparent exposure (the highest flux) keeps 1.

    Returns
    -------
    str
        What was done, for the state and the log (how many images were aligned, which were flagged).
    """
    from .alignment import align_images, write_alignment_offset_list

    images = [str(path) for path in images]
    if reference is None:
        table = align_images(images, _image_as_reference(images[0], output), filter_list=filter_list,
                             figure_folder=figure_folder)
        good = table["quality"] == 0
        scales = table["flux_scale"][good]
        if len(scales):
            # reference = scale x image: the most transparent exposure has the smallest scale.
            table["flux_scale"] = table["flux_scale"] / float(min(scales))
        note = (f"no reference image: {len(images)} exposure(s) aligned to the first one, flux scaled to the "
                "most transparent exposure")
    else:
        # The reference band's pivot comes from its published curve (the alignment module's table), not from
        # MUSE's FILTER_LIST, whose curves are only close to the survey filters of the same name.
        table = align_images(images, reference, filter_name=filter_name, figure_folder=figure_folder)
        note = f"{len(images)} exposure(s) aligned to {Path(reference).name} (offsets and flux scales)"
    flagged = [Path(name).name for name, quality in zip(table["filename"], table["quality"]) if quality]
    write_atomically(output, lambda temporary: write_alignment_offset_list(table, temporary))
    if flagged:
        note += f"; flagged (left unmoved, unscaled): {', '.join(flagged)}"
    return note


def _image_as_reference(image, output) -> str:
    """An IMAGE_FOV rewritten as a reference image (primary HDU, MUSE units, its filter)."""
    from astropy.io import fits

    with fits.open(image) as hdul:
        data = hdul["DATA"].data
        header = hdul["DATA"].header.copy()
        band = hdul[0].header.get("ESO DRS MUSE FILTER NAME", "white")
    header["FILTER"] = band
    path = Path(output).with_name(f"reference_{Path(image).stem}.fits")
    fits.PrimaryHDU(data=data, header=header).writeto(path, overwrite=True)
    return str(path)


def output_wcs(output, images, offset_list=None, spaxel_arcsec=0.2, margin_arcsec=1.0) -> str:
    """A 2-D celestial WCS covering every image (positions corrected by the OFFSET_LIST), written as MUSE's
    OUTPUT_WCS (a CD matrix: the recipes refuse PCi_j keywords).

    The grid is the first image's own (north up, the mode's spaxel), moved with its exposure's offset and
    extended by whole spaxels to cover the others: its rows then fall where the pipeline would put them for
    that exposure, whose resampling of the slices onto the grid is therefore the pipeline's usual one.
    """
    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS

    from .alignment.offset_list import date_obs_key, read_offset_list

    offsets = {}
    if offset_list is not None:
        for row in read_offset_list(offset_list):
            offsets[date_obs_key(row["DATE_OBS"])] = (float(row["RA_OFFSET"]), float(row["DEC_OFFSET"]))
    footprints = []
    for image in images:
        with fits.open(image) as hdul:
            header = hdul["DATA"].header
            date_obs = hdul[0].header.get("DATE-OBS", "")
            shape = hdul["DATA"].data.shape
        wcs = WCS(header).celestial
        d_ra, d_dec = offsets.get(date_obs_key(date_obs), (0.0, 0.0))
        # The pipeline moves an exposure by pointing -= offset: so does its footprint.
        wcs.wcs.crval = [wcs.wcs.crval[0] - d_ra, wcs.wcs.crval[1] - d_dec]
        footprints.append((shape, wcs))
    grid = footprints[0][1].deepcopy()
    cd = grid.pixel_scale_matrix
    scale = float(np.sqrt(abs(np.linalg.det(cd)))) * 3600.0
    if abs(scale - spaxel_arcsec) > 0.01 * spaxel_arcsec:
        raise ValueError(f"{images[0]}: {scale:.4f}\" pixels, expected the mode's {spaxel_arcsec:g}\" spaxels")
    corners_x, corners_y = [], []
    for shape, wcs in footprints:
        ny, nx = shape
        xs = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
        ys = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
        world = wcs.pixel_to_world_values(xs, ys)
        x, y = grid.world_to_pixel_values(*world)
        corners_x.extend(x)
        corners_y.extend(y)
    margin = int(np.ceil(margin_arcsec / spaxel_arcsec))
    x_low, y_low = int(np.floor(min(corners_x) + 0.5)) - margin, int(np.floor(min(corners_y) + 0.5)) - margin
    x_high, y_high = int(np.ceil(max(corners_x) - 0.5)) + margin, int(np.ceil(max(corners_y) - 0.5)) + margin
    nx, ny = x_high - x_low + 1, y_high - y_low + 1
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    # Whole-pixel shifts of the first image's grid: its pixel centres are kept.
    header["CRPIX1"], header["CRPIX2"] = grid.wcs.crpix[0] - x_low, grid.wcs.crpix[1] - y_low
    header["CRVAL1"], header["CRVAL2"] = float(grid.wcs.crval[0]), float(grid.wcs.crval[1])
    header["CD1_1"], header["CD1_2"], header["CD2_1"], header["CD2_2"] = (float(cd[0, 0]), float(cd[0, 1]),
                                                                          float(cd[1, 0]), float(cd[1, 1]))
    header["HIERARCH ESO PRO CATG"] = "OUTPUT_WCS"
    grid_image = fits.PrimaryHDU(data=np.zeros((ny, nx), dtype=np.uint8), header=header)
    write_atomically(output, lambda temporary: grid_image.writeto(temporary, overwrite=True))
    return f"OUTPUT_WCS {nx} x {ny} spaxels of {spaxel_arcsec:g}\" covering {len(images)} exposure(s)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pymusepipe.tasks",
                                     description="Python steps of the pymusepipe chain (as the replay log runs them)")
    commands = parser.add_subparsers(dest="command", required=True)
    choose = commands.add_parser("choose-offsets", help="write the pointing's OFFSET_LIST in force")
    choose.add_argument("--output", required=True)
    choose.add_argument("--exp-align", help="muse_exp_align's OFFSET_LIST")
    choose.add_argument("--exposure", nargs=2, action="append", metavar=("DATE_OBS", "MJD"), required=True)
    choose.add_argument("--min-matches", type=int, default=EXPALIGN_MIN_MATCHES)
    align = commands.add_parser("align-to-reference", help="offsets and flux scales against a reference image")
    align.add_argument("--output", required=True)
    align.add_argument("--reference", help="reference image (default: the first image)")
    align.add_argument("--filter", help="band of the reference image")
    align.add_argument("--filter-list", help="MUSE FILTER_LIST")
    align.add_argument("images", nargs="+")
    grid = commands.add_parser("output-wcs", help="the OUTPUT_WCS covering every image")
    grid.add_argument("--output", required=True)
    grid.add_argument("--offset-list")
    grid.add_argument("--spaxel", type=float, default=0.2)
    grid.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "choose-offsets":
        print(choose_offsets(args.output, [(date, float(mjd)) for date, mjd in args.exposure], args.exp_align,
                             args.min_matches))
    elif args.command == "align-to-reference":
        print(align_to_reference(args.output, args.images, args.reference, args.filter, args.filter_list))
    elif args.command == "output-wcs":
        print(output_wcs(args.output, args.images, args.offset_list, args.spaxel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
