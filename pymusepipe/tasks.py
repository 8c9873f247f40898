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
import os
import sys
from pathlib import Path

from astropy.io import fits

__all__ = ["choose_offsets", "EXPALIGN_MIN_MATCHES", "main"]

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
    output = Path(output)
    partial = output.with_name(f".{output.name}.part")
    try:
        write_offset_list(list(rows.values()), partial, header={"HIERARCH PYMUSEPIPE OFFSETS SOURCE": source})
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return message


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pymusepipe.tasks",
                                     description="Python steps of the pymusepipe chain (as the replay log runs them)")
    commands = parser.add_subparsers(dest="command", required=True)
    choose = commands.add_parser("choose-offsets", help="write the pointing's OFFSET_LIST in force")
    choose.add_argument("--output", required=True)
    choose.add_argument("--exp-align", help="muse_exp_align's OFFSET_LIST")
    choose.add_argument("--exposure", nargs=2, action="append", metavar=("DATE_OBS", "MJD"), required=True)
    choose.add_argument("--min-matches", type=int, default=EXPALIGN_MIN_MATCHES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "choose-offsets":
        print(choose_offsets(args.output, [(date, float(mjd)) for date, mjd in args.exposure], args.exp_align,
                             args.min_matches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
