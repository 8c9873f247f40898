"""``MuseSample``: many targets reduced as one graph, on this machine or on a cluster.

The calibrations of every night are planned once for the whole sample (whichever target's ``Raw/`` holds the
raw calibration frames), then every target's pointings, alignment and mosaic
(:class:`~pymusepipe.target.MuseTarget`); the jobs run as one dependency graph through one executor: the local
pool, or a Dask cluster (``executor='dask'`` with a ``distributed.Client``, e.g. on a dask-jobqueue
SLURMCluster; see ``docs/cluster.rst``). Everything is recorded in each area's tables, so a sample resumes after
any stop: run it again.

The sample is a mapping ``target -> pointings`` (None: every pointing found), a list of target names, or an
astropy Table with columns ``target`` and optionally ``pointings`` (comma-separated) and ``reference``.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from pathlib import Path

from . import instrument
from .engine import StepReport
from .musepipe import MusePipe, _show_messages, make_engine, raise_for_failures, unique_jobs
from .steps import StepContext
from .target import MuseTarget, plan_night_steps, union_raw_table

__all__ = ["MuseSample", "read_sample"]

logger = logging.getLogger(__name__)


def read_sample(sample, references=None) -> OrderedDict:
    """``target -> (pointings or None, reference or None)`` from a dict, a list, or a Table."""
    references = dict(references or {})
    out = OrderedDict()
    if hasattr(sample, "colnames"):
        if "target" not in sample.colnames:
            raise ValueError(f"sample table: a 'target' column is needed (columns: {', '.join(sample.colnames)})")
        for row in sample:
            pointings = None
            if "pointings" in sample.colnames and str(row["pointings"]).strip() not in ("", "--", "None"):
                pointings = [int(item) for item in str(row["pointings"]).split(",") if item.strip()]
            reference = str(row["reference"]).strip() if "reference" in sample.colnames else ""
            out[str(row["target"])] = (pointings, reference or references.get(str(row["target"])))
        return out
    if isinstance(sample, dict):
        for target, pointings in sample.items():
            out[str(target)] = (list(pointings) if pointings is not None else None, references.get(str(target)))
        return out
    for target in sample:
        out[str(target)] = (None, references.get(str(target)))
    return out


class MuseSample:
    """Reduce a sample of targets as one graph.

    Parameters
    ----------
    sample : dict, list or astropy.table.Table
        The targets and their pointings (see the module documentation).
    rc_filename, cal_filename : optional
        As for :class:`~pymusepipe.musepipe.MusePipe` (or ``config=``, or ``musecalib=``/``root=``).
    references : dict, optional
        target -> reference image (a Table's ``reference`` column wins).
    logfile : str
        Replay log, in ``<root>/Calibrations/Log/`` (the sample's shared area).
    executor, client, scheduler, pinning, cpus, memory_gb, fakemode, musemode, ... :
        As for :class:`~pymusepipe.target.MuseTarget`, for every target.
    """

    def __init__(self, sample, rc_filename=None, cal_filename=None, *, config=None, references=None,
                 logfile="Sample.log", reset_log=False, fakemode=False, musemode=instrument.DEFAULT_MODE,
                 time_astrometry=False, executor="local", client=None, scheduler=None, pinning=None, cpus=None,
                 memory_gb=None, overwrite=False, esorex="esorex", prefer_archive_masters=False, verbose=True,
                 **target_options):
        if verbose:
            _show_messages()
        settings = {key: target_options.pop(key) for key in ("musecalib", "root", "musecalib_time", "calib_tables",
                                                             "str_pointing", "ndigits", "folders")
                    if key in target_options}
        self.config = config or MusePipe._make_config(None, rc_filename, cal_filename, settings.pop("folders", None),
                                                       settings)
        self.fakemode = bool(fakemode)
        self.musemode = instrument.check_mode(musemode)
        entries = read_sample(sample, references)
        if not entries:
            raise ValueError("the sample holds no target")
        log_folder = Path(self.config.root) / self.config.folders.get("calibrations", "Calibrations") / "Log"
        if not self.fakemode:
            log_folder.mkdir(parents=True, exist_ok=True)
        log_path = Path(logfile) if Path(logfile).is_absolute() else log_folder / logfile
        self.engine = make_engine(self.config, musemode=self.musemode, time_astrometry=time_astrometry,
                                  fakemode=self.fakemode, executor=executor, pinning=pinning, cpus=cpus,
                                  memory_gb=memory_gb, client=client, scheduler=scheduler, overwrite=overwrite,
                                  esorex=esorex, prefer_archive=prefer_archive_masters, log_path=log_path,
                                  reset_log=reset_log)
        #: The sample's overview page, refreshed at the end of the last run_all_recipes.
        self.report_page = None
        self.targets = OrderedDict()
        for name, (pointings, reference) in entries.items():
            self.targets[name] = MuseTarget(name, pointings, config=self.config, reference=reference,
                                            fakemode=self.fakemode, musemode=self.musemode,
                                            time_astrometry=time_astrometry, engine=self.engine, verbose=False,
                                            **target_options)
        self.raw_table = union_raw_table([target.raw_table for target in self.targets.values()
                                          if target.raw_table is not None])
        self.engine.set_raw_table(self.raw_table)

    def union_context(self) -> StepContext:
        first = next(iter(self.targets.values()))
        context = first.union_context()
        context.raw_table = self.raw_table
        return context

    def run_all_recipes(self, illum=True, fraction=0.8, parameters=None, mosaic=True, report=True):
        """Reduce the whole sample as one graph: each night's calibrations once, then every target; then (unless
        ``report=False``) refresh every report page, the sample's overview last (its path in
        :attr:`report_page`).

        Raises
        ------
        StepFailedError
            When jobs failed (after every job that did not depend on them ran).
        """
        for target in self.targets.values():
            target.update_parameters(parameters)
        night = plan_night_steps(self.union_context(), illum=illum)
        plans = OrderedDict()
        for name, target in self.targets.items():
            plans[name] = OrderedDict(night=night)
            plans[name].update(target.plan_science(illum=illum, fraction=fraction, mosaic=mosaic))
        jobs = unique_jobs(plan for target_plans in plans.values() for owner_plans in target_plans.values()
                           for plan in owner_plans)
        start = time.monotonic()
        with contextlib.ExitStack() as locks:
            for target in self.targets.values():
                locks.enter_context(target.lock())
            outcome = self.engine.run(jobs, label="sample") if jobs else StepReport([])
        for name, target in self.targets.items():
            target.record(plans[name], outcome)
        logger.info("sample: %d target(s), %d job(s) in %.0f s: %s", len(self.targets), len(jobs),
                    time.monotonic() - start, outcome.summary())
        if report and not self.fakemode:
            self.refresh_report()
        raise_for_failures(outcome)
        return outcome

    def refresh_report(self):
        """Every pointing's, night's and target's report page, then the sample's overview (returned, and kept in
        :attr:`report_page`)."""
        from .qc.report import refresh_after_runs
        from .qc.target import sample_page_path

        layouts = [pipe.layout for target in self.targets.values() for pipe in target.pipes.values()]
        pages = refresh_after_runs(layouts)
        first = next(iter(self.targets.values())).layout
        page = sample_page_path(first.root, first.names)
        self.report_page = page if pages and page.is_file() else None
        if self.report_page is not None:
            logger.info("QC report of the sample: %s", self.report_page)
        return self.report_page

    def status(self) -> str:
        """One block per target (its pointings' steps, then its own)."""
        return "\n".join(target.status() for target in self.targets.values())
