"""The ``pymusepipe`` console script.

Subcommands: ``init-config`` and ``scan`` live here; the others are provided by their area, each through
``add_arguments(parser)`` and ``run(args) -> int`` in a ``command`` module imported only when used (so that
``pymusepipe --version`` stays instant).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from .version import __version__

logger = logging.getLogger(__name__)

#: Subcommands provided by other areas: name -> (module with add_arguments/run, one-line help).
AREA_COMMANDS = {
    "simulate": ("pymusepipe.simulate.command", "write a synthetic MUSE observing run and its calibration kit"),
    "run": ("pymusepipe.run_command", "reduce a target/pointing through the real MUSE recipes"),
    "demo": ("pymusepipe.demo", "simulate a run, reduce it with the real recipes and compare with the truth"),
    "align": ("pymusepipe.alignment.command", "align MUSE images to a reference image -> OFFSET_LIST"),
    "report": ("pymusepipe.qc.command", "QC figures and an HTML report of a reduced pointing"),
    "status": ("pymusepipe.status", "per step done / stale / failed / not run, read from the tables"),
}


def add_config_arguments(parser):
    """The options naming the configuration and the target/pointing (shared by scan, run, report)."""
    parser.add_argument("--rc", required=True, help="rc.dic file (musecalib, musecalib_time, root)")
    parser.add_argument("--cal", required=True, help="calib_tables.dic file (static calibration file names)")
    parser.add_argument("--target", required=True, help="target name (folder under root)")
    parser.add_argument("--musemode", default="WFM-NOAO-N", help="observing mode (default WFM-NOAO-N)")


def _pointings_of(config, target, spec):
    from .layout import PointingLayout

    if spec:
        try:
            return [int(part) for part in str(spec).split(",") if part.strip()]
        except ValueError:
            raise SystemExit(f"--pointing {spec!r}: expected integers separated by commas, e.g. 1,2") from None
    found = []
    target_dir = Path(config.root) / target
    prefix = config.str_pointing
    for child in sorted(target_dir.glob(f"{prefix}*")):
        number = child.name[len(prefix):]
        if child.is_dir() and number.isdigit() and len(number) == config.ndigits:
            found.append(int(number))
    if not found:
        raise SystemExit(f"no pointing folder {prefix}{'N' * config.ndigits} under {target_dir}; "
                         "create <root>/<target>/P01/Raw and put the raw files there")
    return found


def _cmd_scan(args) -> int:
    from .config import PipelineConfig
    from .layout import PointingLayout
    from .rawdata import RawFolderError, scan_pointing

    config = PipelineConfig.from_files(args.rc, args.cal)
    status = 0
    for pointing in _pointings_of(config, args.target, args.pointing):
        layout = PointingLayout(config.root, args.target, pointing, str_pointing=config.str_pointing,
                                ndigits=config.ndigits, folders=config.folders)
        try:
            scan = scan_pointing(layout, args.musemode, checkmode=not args.no_checkmode,
                                 overwrite_tables=not args.keep_tables)
        except RawFolderError as exc:
            print(f"Pointing {pointing}: {exc}")
            status = 1
            continue
        print(f"== {args.target} pointing {pointing} ({layout.pointing_name})")
        print(scan.summary())
    return status


def _cmd_init_config(args) -> int:
    from .config import render_calib_template, render_rc_template

    folder = Path(args.directory)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("rc.dic", render_rc_template()), ("calib_tables.dic", render_calib_template())):
        path = folder / name
        if path.exists() and not args.force:
            print(f"{path} exists; not overwritten (use --force)")
            continue
        path.write_text(text + "\n")
        print(f"wrote {path}")
    return 0


def build_parser(selected=None) -> argparse.ArgumentParser:
    """The argument parser; only the ``selected`` area command's module is imported."""
    parser = argparse.ArgumentParser(prog="pymusepipe", description="Reduce VLT/MUSE data with the ESO pipeline.")
    parser.add_argument("--version", action="version", version=f"pymusepipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    init = commands.add_parser("init-config", help="write commented rc.dic and calib_tables.dic templates")
    init.add_argument("directory", help="folder to write the templates into")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(handler=_cmd_init_config)

    scan = commands.add_parser("scan", help="scan and classify the raw files of a target")
    add_config_arguments(scan)
    scan.add_argument("--pointing", help="pointing number(s), e.g. 1 or 1,2 (default: every pointing folder)")
    scan.add_argument("--no-checkmode", action="store_true", help="do not filter frames on the observing mode")
    scan.add_argument("--keep-tables", action="store_true",
                      help="do not overwrite existing tables in Astro_Tables (overwrite_astropy_table=False)")
    scan.set_defaults(handler=_cmd_scan)

    for name, (module_name, help_text) in AREA_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        if name != selected:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            sub.set_defaults(handler=_unavailable(name, exc))
            continue
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def _unavailable(name, exc):
    def handler(args):
        print(f"pymusepipe {name} is not available in this installation: {exc}", file=sys.stderr)
        return 2
    return handler


def _selected_command(argv):
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_selected_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    from .config import ConfigError

    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
