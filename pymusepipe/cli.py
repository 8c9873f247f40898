"""The ``pymusepipe`` console script.

Subcommands: ``init-config`` and ``scan`` live here; the others are provided by their area, each through
``add_arguments(parser)`` and ``run(args) -> int`` in a ``command`` module imported only when used (so that
``pymusepipe --version`` stays instant).

Errors people can fix (:class:`~pymusepipe.errors.PipelineError` and its kinds, missing files, permissions,
a full disk, a missing esorex, a held lock, a failed step) are printed as one line, ``pymusepipe: error:
<what and where>; <what to do>``, without a traceback; ``--debug`` (or ``PYMUSEPIPE_DEBUG=1``) shows it.
Exit status: 0 done, 1 error, 2 wrong command line, 130 Ctrl-C (143 SIGTERM, 129 SIGHUP): running esorex
jobs are stopped and the next run resumes.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from .errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, MissingPathError, UsageError
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
    if spec:
        try:
            return [int(part) for part in str(spec).split(",") if part.strip()]
        except ValueError:
            raise UsageError(f"--pointing {spec!r}: expected integers separated by commas, e.g. 1,2") from None
    found = []
    target_dir = Path(config.root) / target
    prefix = config.str_pointing
    for child in sorted(target_dir.glob(f"{prefix}*")):
        number = child.name[len(prefix):]
        if child.is_dir() and number.isdigit() and len(number) == config.ndigits:
            found.append(int(number))
    if not found:
        what = (f"folder {target_dir} does not exist" if not target_dir.is_dir() else
                f"{target_dir} has no pointing folder {prefix}{'N' * config.ndigits}")
        raise MissingPathError(f"target {target}: {what}",
                               f"check --target, or create {target_dir}/{prefix}{1:0{config.ndigits}d}/Raw and put "
                               "the raw files there")
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
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of errors")
    # Also accepted after the subcommand; SUPPRESS keeps a subcommand from resetting a --debug given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_subparser_class(common))

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


def _subparser_class(common):
    """An ArgumentParser class whose instances (the subcommands) all take the ``common`` options."""
    class SubcommandParser(argparse.ArgumentParser):
        def __init__(self, *args, **kwargs):
            kwargs["parents"] = list(kwargs.get("parents") or []) + [common]
            super().__init__(*args, **kwargs)
    return SubcommandParser


def _unavailable(name, exc):
    def handler(args):
        print(f"pymusepipe {name} is not available in this installation: {exc}", file=sys.stderr)
        return 2
    return handler


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a batch system's cancel, a closed terminal): stop like on Ctrl-C."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _install_signal_handlers() -> dict:
    """SIGTERM and SIGHUP stop the run like Ctrl-C (jobs stopped, locks released), where nobody else
    handles them already. Returns the handlers replaced (SIGINT's included: a second Ctrl-C changes it)."""
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            handler = signal.getsignal(signum)
            previous[signum] = handler
            if signum != signal.SIGINT and handler == signal.SIG_DFL:
                signal.signal(signum, _raise_terminated)
        except (ValueError, OSError):  # not the main thread, or not supported
            previous.pop(signum, None)
    return previous


def _stop_now(signum, frame):
    # A second Ctrl-C while cleaning up: leave at once; the process watchdog stops what still runs.
    print("\npymusepipe: interrupted again; stopping now", file=sys.stderr)
    os._exit(EXIT_INTERRUPTED)


def error_line(error: BaseException) -> str | None:
    """The one line saying what went wrong and what to do, or None for an unexpected error (a bug)."""
    from .config import ConfigError
    from .errors import PipelineError, from_os_error

    if isinstance(error, OSError) and not isinstance(error, PipelineError):
        error = from_os_error(error, action=None)
    if isinstance(error, ConfigError):
        text = f"configuration error: {error}"
    elif isinstance(error, (PipelineError, OSError)):
        text = str(error)
    elif isinstance(error, ModuleNotFoundError) and error.name:
        text = f"the Python package '{error.name}' is not installed; pip install {error.name.split('.')[0]}"
    elif isinstance(error, ValueError) or type(error).__name__ in _KNOWN_ERROR_NAMES:
        text = str(error)  # messages written for people (argument checks, steps of musepipe)
    else:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()] or [type(error).__name__]
    if len(lines) > 1:
        return f"{lines[0].rstrip(':')} (and {len(lines) - 1} more line(s): rerun with --debug to see them)"
    return lines[0]


# Errors of other modules whose messages are written for people but that are not PipelineErrors yet.
_KNOWN_ERROR_NAMES = {"StepFailedError", "StepInputError", "MissingCalibrationError", "ValidityError"}


def run_handler(handler, args, debug: bool = False) -> int:
    """Run a subcommand's handler and turn what goes wrong into one line and an exit status."""
    previous = _install_signal_handlers()
    try:
        return _run_handler(handler, args, debug)
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


def _run_handler(handler, args, debug: bool) -> int:
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt as interrupt:
        try:
            signal.signal(signal.SIGINT, _stop_now)
        except ValueError:
            pass
        if "pymusepipe.processes" in sys.modules:  # esorex jobs may still run (stopped by executors normally)
            sys.modules["pymusepipe.processes"].terminate_all()
        if debug:
            traceback.print_exc()
        if isinstance(interrupt, Terminated):
            print(f"pymusepipe: terminated by {interrupt}; rerun to resume", file=sys.stderr)
            return 128 + interrupt.signum
        print("\npymusepipe: interrupted; rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - known errors become one line, the others a traceback
        line = error_line(error)
        if line is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"pymusepipe: error: {line}", file=sys.stderr)
        return getattr(error, "exit_code", EXIT_ERROR)


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
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False) or os.environ.get("PYMUSEPIPE_DEBUG"))
    return run_handler(args.handler, args, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
