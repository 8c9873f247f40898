"""``pymusepipe run``: the reduction of a pointing (``--pointing N``), or of a whole target and its mosaic (no
``--pointing``: every pointing, aligned to ``--reference`` when given), from the shell (same options as
MusePipe and MuseTarget)."""
from __future__ import annotations

import json
import sys


def add_arguments(parser):
    from .cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--pointing", type=int,
                        help="pointing number; without it, every pointing of the target and its mosaic")
    parser.add_argument("--reference", help="reference image for the target's alignment and flux scale "
                                            "(target runs only)")
    parser.add_argument("--pointing-cubes", action="store_true",
                        help="target runs: also each pointing's cube on the mosaic's grid")
    parser.add_argument("--exclude", action="append", default=[], metavar="FILE_OR_DATE_OBS",
                        help="a raw file or exposure (DATE-OBS) never to use; kept in Config/excluded_exposures.txt "
                             "(repeat the option for several)")
    parser.add_argument("--first", help="first step to run (e.g. bias, scibasic_all)")
    parser.add_argument("--last", help="last step to run (e.g. combine_pointing)")
    parser.add_argument("--fake", action="store_true", help="fakemode: plan and log the commands, run nothing")
    parser.add_argument("--logfile", help="replay log name in Log/ (default MusePipe.log, Target.log for a target)")
    parser.add_argument("--reset-log", action="store_true", help="start the replay log afresh")
    parser.add_argument("--filter-list", default="white", help="filters of the final images (default white)")
    parser.add_argument("--filter-for-alignment",
                        help="band of the alignment images (default: the reference image's band when the FILTER_LIST "
                             "has it, else Cousins_R)")
    parser.add_argument("--no-illum", action="store_true", help="do not use the ILLUM flats")
    parser.add_argument("--fraction", type=float, default=0.8, help="muse_create_sky --fraction (default 0.8)")
    parser.add_argument("--time-astrometry", action="store_true",
                        help="choose geometry/astrometry tables by date (musecalib_time/validity_table.txt)")
    parser.add_argument("--pinning", choices=("likwid", "taskset", "none"), help="CPU pinning of esorex")
    parser.add_argument("--cpus", help="CPU ids to use, e.g. 0-7 or 0,2,4")
    parser.add_argument("--ifu-mode", choices=("auto", "fanout", "merged"), default="auto",
                        help="one esorex per IFU (fanout) or ESO's --nifu=-1 --merge (merged); auto picks")
    parser.add_argument("--overwrite", action="store_true", help="re-run jobs whose products are up to date")
    parser.add_argument("--executor", choices=("local", "dask"), default="local",
                        help="run esorex jobs locally or on a Dask cluster")
    parser.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://head:8786 (with --executor dask)")
    parser.add_argument("--no-report", action="store_true", help="do not refresh the HTML report at the end")
    parser.add_argument("--clean", action="store_true",
                        help="once the final cube is made, delete the pixel tables and pre-alignment cubes")
    parser.add_argument("--parameters", help='recipe parameter overrides as JSON, e.g. \'{"scipost": {"pixfrac": 0.6}}\'')


def parse_cpus(text):
    """CPU ids from ``0-3,6``."""
    if not text:
        return None
    cpus = []
    for part in text.split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            cpus.extend(range(int(low), int(high) + 1))
        elif part.strip():
            cpus.append(int(part))
    return cpus


def run(args) -> int:
    from .errors import UsageError
    from .esorex import check_cpus
    from .musepipe import MusePipe
    from .target import MuseTarget

    try:
        parameters = json.loads(args.parameters) if args.parameters else None
    except json.JSONDecodeError as error:
        raise UsageError(f"--parameters is not valid JSON: {error}",
                         'give e.g. \'{"scipost": {"pixfrac": 0.6}}\'') from None
    if args.executor == "dask" and not args.scheduler:
        raise UsageError("--executor dask needs --scheduler ADDRESS", "e.g. --scheduler tcp://head-node:8786")
    cpus = parse_cpus(args.cpus)
    if cpus:
        try:
            check_cpus(cpus)
        except ValueError as error:
            raise UsageError(f"--cpus {args.cpus}: {error}", "give CPU ids of this machine, e.g. 0-3") from None
    options = dict(reset_log=args.reset_log, fakemode=args.fake, filter_list=args.filter_list,
                   filter_for_alignment=args.filter_for_alignment, musemode=args.musemode,
                   time_astrometry=args.time_astrometry, pinning=args.pinning, cpus=cpus,
                   ifu_mode=args.ifu_mode, overwrite=args.overwrite, executor=args.executor,
                   scheduler=args.scheduler, exclude=args.exclude or None)
    chain = dict(illum=not args.no_illum, fraction=args.fraction, parameters=parameters, report=not args.no_report)
    if args.pointing is None:
        # A whole target: every pointing, the alignment to the reference, the mosaic.
        if args.first or args.last:
            raise UsageError("--first/--last select steps of one pointing", "give --pointing N")
        reduction = MuseTarget(args.target, None, args.rc, args.cal, reference=args.reference,
                               logfile=args.logfile or "Target.log", pointing_cubes=args.pointing_cubes, **options)
        run_chain = lambda: reduction.run_all_recipes(**chain)  # noqa: E731
    else:
        if args.reference:
            raise UsageError("--reference aligns a whole target", "leave out --pointing")
        reduction = MusePipe(args.target, args.pointing, args.rc, args.cal,
                             logfile=args.logfile or "MusePipe.log", **options)
        run_chain = lambda: reduction.run_all_recipes(first=args.first, last=args.last,  # noqa: E731
                                                      clean=args.clean, **chain)
    try:
        run_chain()
    except Exception as error:
        # What each step did, then the error (one line, printed by the command line, with its log tails).
        print(reduction.status())
        details = getattr(error, "details", "")
        if details:
            print(details, file=sys.stderr)
        raise
    print(reduction.status())
    print(f"replay log: {reduction.engine.log.path}")
    if reduction.report_page is not None:
        print(f"report:     {reduction.report_page}")
    return 0
