"""``pymusepipe report``: draw the QC figures and write the HTML pages of a reduced pointing, of the nights it
uses, of its target and of the sample (see :func:`.report.refresh_report`)."""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)


def add_arguments(parser):
    """The options of ``pymusepipe report``: the configuration of ``pymusepipe run`` plus report options."""
    from ..cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--pointing", type=int, default=1, help="pointing number (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="redraw figures even when newer than their products")
    parser.add_argument("--output", help="folder of the report (default: the pointing's Figures folder)")


def run(args) -> int:
    """Build the report of ``--target`` / ``--pointing``; prints the page's path. Returns the exit status."""
    from ..config import PipelineConfig
    from ..layout import PointingLayout
    from .report import build_report, refresh_report

    config = PipelineConfig.from_files(args.rc, args.cal)
    layout = PointingLayout(config.root, args.target, args.pointing, str_pointing=config.str_pointing,
                            ndigits=config.ndigits, folders=config.folders)
    if not layout.pointing_dir.is_dir():
        print(f"no pointing folder {layout.pointing_dir}: check --target and --pointing (root is {config.root})",
              file=sys.stderr)
        return 1
    if args.output:  # the pointing's page alone, elsewhere
        page = build_report(layout, figures_dir=args.output, overwrite=args.overwrite)
    else:  # the pointing's page, its nights', its target's and the sample's
        page = refresh_report(layout, overwrite=args.overwrite)
    print(f"QC report: {page}")
    return 0
