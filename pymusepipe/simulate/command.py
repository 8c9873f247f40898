"""``pymusepipe simulate OUTDIR``: write a synthetic MUSE observing programme ready for reduction.

Shapes, from the simplest:

* no shape option: the one-night demo run (``--pointings``, ``--exposures``);
* ``--nights N --obs-per-night M [--no-offset-sky] [--mode MODE]``: one target observed in M blocks on each
  of N consecutive nights;
* ``--example``: the four-target, two-night programme (offset sky, no offset sky, two nights, a three-pointing
  mosaic with a reference image);
* ``--programme FILE.json``: any programme (the form of ``Programme.to_dict``; ``--print-programme`` prints
  the programme of the other options in that form, to start from).

``--ifus``, ``--seed``, ``--compress``, ``--calibration-raw`` and ``--header-only`` apply to every shape (with
``--programme`` they override the file's values when given).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from ..instrument import DEFAULT_MODE, MUSE_MODES
from .errors import SimulationError
from .programme import (CALIBRATION_RAW_CHOICES, demo_programme, example_programme, load_programme,
                        survey_programme)
from .run import simulate_programme

logger = logging.getLogger(__name__)


def _ifu_list(text: str):
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ifus {text!r}: expected comma-separated IFU numbers, "
                                         "e.g. 1,2 or 1-24") from None


def _ifus(text: str):
    if "-" in text and "," not in text:
        first, _, last = text.partition("-")
        try:
            return tuple(range(int(first), int(last) + 1))
        except ValueError:
            pass
    return _ifu_list(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    parser.add_argument("outdir", help="output folder (must be empty unless --overwrite)")
    shape = parser.add_argument_group("programme shape")
    shape.add_argument("--target", default="SIMGAL", help="target name (default SIMGAL)")
    shape.add_argument("--pointings", type=int, default=1, help="demo shape: number of pointings (default 1)")
    shape.add_argument("--exposures", type=int, default=2, help="OBJECT exposures per block (default 2)")
    shape.add_argument("--nights", type=int, default=1, help="consecutive nights, each with its calibrations "
                       "and standard star (default 1)")
    shape.add_argument("--obs-per-night", type=int, default=1, dest="obs_per_night",
                       help="observing blocks of the target per night (default 1)")
    shape.add_argument("--no-offset-sky", action="store_true", dest="no_offset_sky",
                       help="blocks without a SKY exposure (the sky is measured on the object field)")
    shape.add_argument("--mode", default=DEFAULT_MODE, type=str.upper,
                       help=f"ESO INS MODE of every night: {', '.join(MUSE_MODES)} (default {DEFAULT_MODE}; "
                            "NFM-AO-N needs --header-only)")
    shape.add_argument("--first-date", default="2026-03-14", dest="first_date",
                       help="date (YYYY-MM-DD) of the first night (default 2026-03-14)")
    shape.add_argument("--example", action="store_true",
                       help="the four-target two-night example programme (DEMO, NOSKY, TWONIGHTS, MOSAIC)")
    shape.add_argument("--programme", metavar="FILE.json", help="a programme as JSON (Programme.to_dict form)")
    files = parser.add_argument_group("files")
    files.add_argument("--ifus", type=_ifus, default=None,
                       help="IFUs to simulate, 1-24: e.g. 1 or 1,2 or 1-24 (default 1; each adds 36 MB per frame)")
    files.add_argument("--seed", type=int, default=None, help="random seed (same seed, same files; default 1)")
    files.add_argument("--compress", action="store_true", default=None,
                       help="write raw files as RICE tile-compressed .fits.fz")
    files.add_argument("--calibration-raw", choices=CALIBRATION_RAW_CHOICES, default=None, dest="calibration_raw",
                       help="calibrations with each pointing observed that night (pointing, the default) or "
                            "once in <outdir>/Calibrations/Raw (shared)")
    files.add_argument("--header-only", action="store_true", default=None, dest="header_only",
                       help="full headers, 1x1-pixel CHANnn images (fast fake-mode tests, e.g. of 24 IFUs)")
    files.add_argument("--psf-beta", type=float, default=None, dest="psf_beta", metavar="BETA",
                       help="draw stars with a Moffat seeing PSF of this index (real seeing: 2.5-4); default: "
                            "Gaussian")
    parser.add_argument("--print-programme", action="store_true", dest="print_programme",
                        help="print the programme as JSON and write nothing")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")


def build_programme(args: argparse.Namespace):
    """The :class:`~pymusepipe.simulate.programme.Programme` the parsed options describe."""
    files = {"ifus": args.ifus, "seed": args.seed, "compress": args.compress,
             "calibration_raw": args.calibration_raw, "header_only": args.header_only}
    given = {key: value for key, value in files.items() if value is not None}
    psf = {"psf_beta": args.psf_beta} if getattr(args, "psf_beta", None) is not None else {}
    defaults = {"ifus": (1,), "seed": 1, "compress": False, "calibration_raw": "pointing", "header_only": False}
    if args.programme:
        return dataclasses.replace(load_programme(args.programme), **given, **psf)
    options = {**defaults, **given}
    if args.example:
        return dataclasses.replace(example_programme(**options), **psf)
    if args.nights > 1 or args.obs_per_night > 1 or args.no_offset_sky or options["calibration_raw"] != "pointing":
        return dataclasses.replace(
            survey_programme(nights=args.nights, obs_per_night=args.obs_per_night, exposures=args.exposures,
                             offset_sky=not args.no_offset_sky, mode=args.mode, target=args.target,
                             first_date=args.first_date, **options), **psf)
    if args.exposures < 2:
        raise SimulationError(f"--exposures={args.exposures}: muse_exp_align needs at least 2 per pointing")
    if not 1 <= args.pointings <= 9:
        raise SimulationError(f"--pointings={args.pointings}: expected 1 to 9")
    options.pop("calibration_raw")
    return dataclasses.replace(demo_programme(target=args.target, pointings=args.pointings, exposures=args.exposures,
                                              date=args.first_date, mode=args.mode, **options), **psf)


def run(args: argparse.Namespace) -> int:
    """Run ``simulate`` with parsed ``args``; return the exit code (2 on bad options)."""
    try:
        programme = build_programme(args)
        if args.print_programme:
            print(json.dumps(programme.check().to_dict(), indent=1))
            return 0
        result = simulate_programme(args.outdir, programme, overwrite=args.overwrite)
    except SimulationError as exc:
        logger.error("%s", exc)
        return 2
    for name, truth_file in result.truth_files.items():
        logger.info("target %s: %s", name, truth_file)
    logger.info("raw data: %d files under %s", len(result.raw_files), result.root)
    logger.info("configuration: rc=%s calib=%s", result.rc_file, result.cal_file)
    return 0
