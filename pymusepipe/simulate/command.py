"""``pymusepipe simulate OUTDIR``: write a synthetic MUSE observing run ready for reduction."""
from __future__ import annotations

import argparse
import logging

from .run import SimulationError, simulate_run

logger = logging.getLogger(__name__)


def _ifu_list(text: str):
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ifus {text!r}: expected comma-separated IFU numbers, "
                                         "e.g. 1,2") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    parser.add_argument("outdir", help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--target", default="SIMGAL", help="target name (default SIMGAL)")
    parser.add_argument("--ifus", type=_ifu_list, default=(1,),
                        help="comma-separated IFUs to simulate, 1-24 (default 1; each adds 36 MB per frame)")
    parser.add_argument("--pointings", type=int, default=1, help="number of pointings (default 1)")
    parser.add_argument("--exposures", type=int, default=2, help="OBJECT exposures per pointing (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (same seed, same files)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")


def run(args: argparse.Namespace) -> int:
    """Run ``simulate`` with parsed ``args``; return the exit code (2 on bad options)."""
    try:
        result = simulate_run(args.outdir, target=args.target, ifus=args.ifus, pointings=args.pointings,
                              exposures=args.exposures, seed=args.seed, overwrite=args.overwrite)
    except SimulationError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("raw data: %s/%s/P01/Raw (%d files)", result.root, result.target, len(result.raw_files))
    logger.info("configuration: rc=%s calib=%s", result.rc_file, result.cal_file)
    logger.info("truth: %s", result.truth_file)
    return 0
