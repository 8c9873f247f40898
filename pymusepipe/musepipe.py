"""``MusePipe``: the reduction of one target and pointing, step by step or in one call.

The class holds the state of a pointing (configuration, folder layout, raw table, products, decisions, step
status); everything it does is delegated to the plain modules under it: :mod:`~pymusepipe.rawdata` says what
the raw frames are, :mod:`~pymusepipe.steps` declares each step and plans its jobs, :mod:`~pymusepipe.engine`
and :mod:`~pymusepipe.scheduler` run them as one dependency graph and record them. Master calibrations and the
standard star go to the shared calibration area of their night (``<root>/Calibrations/<night>/``), where every
pointing and target observed that night finds them.

Example
-------
>>> from pymusepipe import musepipe
>>> mypipe = musepipe.MusePipe(targetname="NGC1000", pointing=1, rc_filename="rc.dic",
...                            cal_filename="calib_tables.dic", logfile="NGC1000_v01.log",
...                            filter_list="white,Cousins_R", filter_for_alignment="Cousins_R")
>>> mypipe.run_all_recipes()                                    # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from astropy.table import vstack

from . import instrument
from .association import ValidityTable
from .config import PipelineConfig
from .engine import IFU_AUTO, RecipeEngine, StepReport
from .exclusions import EXCLUSIONS_FILE, add_exclusions, apply_exclusions, read_exclusions
from .executors import Executor, FakeExecutor, LocalExecutor
from .layout import PointingLayout
from .rawdata import scan_pointing, scan_raw
from .recipes import default_recipe_table
from .replaylog import ReplayLog
from .state import PointingState, StepStatus
from .errors import MissingPathError, StepFailedError, StepInputError
from .steps import DEFAULT_ALIGNMENT_FILTER, STEPS, StepContext, StepPlan

__all__ = ["MusePipe", "STEPS", "StepInputError", "StepFailedError"]

logger = logging.getLogger(__name__)


class MusePipe:
    """Reduce the MUSE data of one target and pointing with the ESO pipeline.

    Parameters
    ----------
    targetname : str
        Target folder under ``root``.
    pointing : int
        Pointing number (folder ``P01`` for 1 with the default ``str_pointing``/``ndigits``).
    rc_filename, cal_filename : str or Path, optional
        ``rc.dic`` and ``calib_tables.dic``; or give ``config`` (a :class:`PipelineConfig`) or the settings
        ``musecalib``, ``root`` (and optionally ``musecalib_time``, ``calib_tables``) as keyword arguments.
    logfile : str
        Name of the replay log in ``Log/`` (a shell script of every command run).
    reset_log : bool
        Start the replay log afresh instead of appending.
    fakemode : bool
        Plan everything, print the commands and write them (commented out) in the log, run nothing, and write
        nothing a real run reads.
    overwrite_astropy_table : bool
        Rewrite the raw-file tables of ``Astro_Tables/`` from a new scan (else keep existing ones).
    filter_list : str
        Filters of the images reconstructed from the final cubes (comma separated, in FILTER_LIST).
    filter_for_alignment : str
        Filter of the images used for the alignment.
    musemode : str
        Observing mode; frames of other modes are left out (see :func:`~pymusepipe.rawdata.scan_raw`).
    time_astrometry : bool
        Take GEOMETRY_TABLE and ASTROMETRY_WCS by date from ``musecalib_time/validity_table.txt`` instead of
        the ``geo_table`` / ``astro_table`` of ``calib_tables.dic``.
    pinning : str
        ``likwid`` (default when installed), ``taskset`` or ``none``.
    cpus : sequence of int, optional
        CPUs to use (default: all this process may use).
    memory_gb : float, optional
        Memory budget of concurrent jobs (default: 80% of the available memory).
    executor : str or Executor
        ``'local'`` (default), ``'dask'`` (jobs sent to a Dask cluster: give ``client`` or ``scheduler``) or an
        :class:`~pymusepipe.executors.Executor` instance.
    client, scheduler : optional
        With ``executor='dask'``: a ``dask.distributed.Client`` (e.g. on a dask-jobqueue SLURMCluster), or the
        scheduler address.
    ifu_mode : str
        ``'auto'`` (ESO's ``--nifu=-1 --merge`` with all 24 IFUs, else one job per IFU), ``'fanout'`` or
        ``'merged'``.
    overwrite : bool
        Re-run jobs whose products are up to date.
    folders : dict, optional
        Folder renamings (see :mod:`pymusepipe.layout`).
    exclude : sequence of str, optional
        Raw files (names) or exposures (DATE-OBS) never to use; added to ``Config/excluded_exposures.txt`` so
        later sessions exclude them too.
    parameters : dict, optional
        Recipe parameter overrides by step or recipe (``{'scipost': {'pixfrac': 0.6}}``), for every step run.
    prefer_archive_masters : bool
        Where a night has both raw calibration frames and master calibrations delivered with the data (an ESO
        archive download), use the delivered masters (default: the masters made here from the raw frames).
    verbose : bool
        Show pymusepipe's messages on the terminal when logging is not configured.
    engine : RecipeEngine, optional
        Share another object's engine (executor, replay log, catalogues): a target or a sample plans its
        pointings into one graph this way.
    """

    def __init__(self, targetname, pointing=1, rc_filename=None, cal_filename=None, *, config=None,
                 logfile="MusePipe.log", reset_log=False, fakemode=False, overwrite_astropy_table=True,
                 filter_list="white", filter_for_alignment=DEFAULT_ALIGNMENT_FILTER,
                 musemode=instrument.DEFAULT_MODE,
                 time_astrometry=False, pinning=None, cpus=None, memory_gb=None, executor="local",
                 ifu_mode=IFU_AUTO, overwrite=False, folders=None, verbose=True, esorex="esorex", client=None,
                 scheduler=None, exclude=None, parameters=None, prefer_archive_masters=False, engine=None,
                 **settings):
        if verbose:
            _show_messages()
        self.config = self._make_config(config, rc_filename, cal_filename, folders, settings)
        self.targetname = str(targetname)
        self.pointing = int(pointing)
        self.musemode = instrument.check_mode(musemode)
        self.fakemode = bool(fakemode)
        self.overwrite_astropy_table = bool(overwrite_astropy_table)
        self.filter_list = str(filter_list)
        self.filter_for_alignment = str(filter_for_alignment or DEFAULT_ALIGNMENT_FILTER)
        self.time_astrometry = bool(time_astrometry)
        self.ifu_mode = ifu_mode
        #: Recipe parameter overrides (by step or recipe) applied to every step run by this object.
        self.parameters = dict(parameters or {})
        self.layout = PointingLayout(self.config.root, self.targetname, self.pointing,
                                     str_pointing=self.config.str_pointing, ndigits=self.config.ndigits,
                                     folders=self.config.folders)
        if not self.layout.folder("raw").is_dir():
            raise MissingPathError(f"raw folder {self.layout.folder('raw')} does not exist",
                                   f"put the raw files of target {self.targetname}, pointing {self.pointing} "
                                   "there (or check root, the target name and the pointing number)")
        if not self.fakemode:
            # The lock is held only while jobs run (run_plans), but a run already working on this pointing must
            # stop this one here, before it writes anything (the scan tables, the copies of the configuration, a
            # reset of the replay log): taken and given back at once, it raises LockHeldError naming the holder
            # (and takes over a lock left by a dead run, with a warning).
            with self.lock():
                pass
        self.layout.create_working_folders()
        if not self.fakemode:
            for source in (rc_filename, cal_filename):
                if source is not None:
                    # A copy of the configuration beside the products, for the record.
                    shutil.copy2(Path(source).expanduser(), self.layout.folder("config") / Path(source).name)
        self.exclusions_file = self.layout.folder("config") / EXCLUSIONS_FILE
        self.scan = self._scan(exclude)
        logger.info("%s", self.scan.summary())
        self.state = PointingState(self.layout.folder("astro_tables"), self.layout.root, persist=not self.fakemode)
        if engine is None:
            log_path = Path(logfile) if Path(logfile).is_absolute() else self.layout.folder("log") / logfile
            engine = make_engine(self.config, musemode=self.musemode, time_astrometry=self.time_astrometry,
                                 fakemode=self.fakemode, executor=executor, pinning=pinning, cpus=cpus,
                                 memory_gb=memory_gb, client=client, scheduler=scheduler, overwrite=overwrite,
                                 esorex=esorex, prefer_archive=prefer_archive_masters, log_path=log_path,
                                 reset_log=reset_log, raw_table=self.scan.table)
        self.engine = engine
        self.recipes = engine.recipes
        self.engine.add_area(self.layout)
        for night in sorted(set(self.scan.table["night"])):
            if night:
                self.engine.add_area(self.layout.night_layout(night))
        #: The HTML report refreshed at the end of the last run_all_recipes.
        self.report_page = None
        #: Step name -> StepStatus: what the last run of each step did (kept in Astro_Tables/PIPE_steps.fits).
        self.steps = OrderedDict((name, self.state.step(name)) for name in STEPS if self.state.step(name))

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _make_config(config, rc_filename, cal_filename, folders, settings):
        if config is not None:
            return config
        if rc_filename is not None or cal_filename is not None:
            if rc_filename is None or cal_filename is None:
                raise ValueError("give both rc_filename and cal_filename (or neither, with musecalib= and root=)")
            return PipelineConfig.from_files(rc_filename, cal_filename, folders=folders, **settings)
        unknown = set(settings) - {"musecalib", "root", "musecalib_time", "calib_tables", "str_pointing", "ndigits"}
        if unknown:
            raise TypeError(f"MusePipe got unexpected argument(s) {', '.join(sorted(unknown))}")
        if "musecalib" not in settings or "root" not in settings:
            raise ValueError("MusePipe needs rc_filename and cal_filename, or the settings musecalib= and root=")
        return PipelineConfig.from_settings(folders=folders, **settings)

    def _scan(self, exclude):
        """Raw frames of the pointing plus the shared calibration folder, minus the user's exclusions."""
        write = not self.fakemode
        scan = scan_pointing(self.layout, self.musemode, overwrite_tables=self.overwrite_astropy_table,
                             write_tables=False)
        shared = self.layout.shared_calibration_raw()
        if shared.is_dir():
            extra = scan_raw(shared, self.musemode)
            if len(extra.table):
                seen = {(str(row["date_obs"]), str(row["tag"])) for row in scan.table}
                keep = [(str(row["date_obs"]), str(row["tag"])) not in seen for row in extra.table]
                scan.table = vstack([scan.table, extra.table[np.array(keep, dtype=bool)]]) if len(scan.table) \
                    else extra.table
                scan.table.sort("mjd_obs")
            if len(extra.excluded):
                scan.excluded = vstack([scan.excluded, extra.excluded])
        if exclude:
            entries = [exclude] if isinstance(exclude, str) else list(exclude)
            if write:
                add_exclusions(self.exclusions_file, entries, origin="MusePipe(exclude=...)")
        exclusions = read_exclusions(self.exclusions_file)
        if exclude and not write:
            from .exclusions import Exclusion

            exclusions += [Exclusion(str(entry), "fakemode", 0) for entry in
                           ([exclude] if isinstance(exclude, str) else exclude)]
        scan.table, scan.excluded, unmatched = apply_exclusions(scan.table, scan.excluded, exclusions,
                                                                f"Config/{EXCLUSIONS_FILE}")
        for exclusion in unmatched:
            logger.warning("%s, line %d: %r matches no raw frame of %s", self.exclusions_file, exclusion.line,
                           exclusion.entry, self.layout.name)
        if write:
            from .rawdata import write_scan_tables

            write_scan_tables(scan, self.layout.folder("astro_tables"), overwrite=self.overwrite_astropy_table)
        return scan

    # ------------------------------------------------------------------ what the pointing holds
    @property
    def raw_table(self):
        """The raw table of this pointing (one row per accepted frame, calibrations of the shared folder too)."""
        return self.scan.table

    @property
    def offset_list(self):
        """The OFFSET_LIST in force (chosen by the alignment steps or set by the user), or None."""
        return self.state.get_path("offset_list")

    @offset_list.setter
    def offset_list(self, path):
        if path is None:
            self.state.forget("offset_list")
            return
        resolved = Path(path).absolute()
        from .alignment.offset_list import read_offset_list

        read_offset_list(resolved)   # validated: the recipes silently ignore a malformed table
        self.state.set("offset_list", resolved, step="user", note="set by the user")

    def context(self) -> StepContext:
        return StepContext(layout=self.layout, engine=self.engine, raw_table=self.raw_table, state=self.state,
                           targetname=self.targetname, musemode=self.musemode, filter_list=self.filter_list,
                           filter_for_alignment=self.filter_for_alignment, ifu_mode=self.ifu_mode,
                           parameters=self.parameters, fakemode=self.fakemode, steps=STEPS)

    # ------------------------------------------------------------------ planning and running
    def plan_steps(self, steps, options=None, context=None) -> list:
        """Plan the given steps in order (each sees the products the previous ones will make).

        Parameters
        ----------
        steps : sequence of str
        options : dict, optional
            step -> keyword options of its planner.

        Returns
        -------
        list of StepPlan
        """
        context = context or self.context()
        plans = []
        for name in steps:
            spec = STEPS[name]
            plans.append(spec.planner(context, **(options or {}).get(spec.name, {})))
        return plans

    def run_plans(self, plans, label: str = "") -> StepReport:
        """Run the jobs of planned steps as one graph; record each step's status; raise if any job failed."""
        jobs = unique_jobs(plans)
        with self.lock():
            report = self.engine.run(jobs, label=label or f"{self.targetname} {self.layout.pointing_name}") \
                if jobs else StepReport([])
        self.record_steps(plans, report)
        raise_for_failures(report)
        return report

    def lock(self):
        """The pointing's lock, held while a run works on it (none in fakemode: a dry run may go alongside).

        A second run on the same pointing stops at once, naming the holder; a lock left by a dead process
        is taken over (:class:`~pymusepipe.lock.FolderLock`)."""
        import contextlib

        if self.fakemode:
            return contextlib.nullcontext()
        from .lock import FolderLock

        return FolderLock(self.layout.pointing_dir, purpose=f"{self.targetname} pointing {self.pointing}")

    def record_steps(self, plans, report: StepReport):
        """Record what each planned step did in this pointing's state (``PIPE_steps.fits``)."""
        for plan in plans:
            sub = report.of_jobs(plan.jobs)
            results = list(sub.results.values())
            status, summary = step_outcome(plan, sub, self.fakemode)
            wrote = sum(max(record.size, 0) for job in plan.jobs
                        if sub.results.get(job.name) is not None and sub.results[job.name].status == "done"
                        for record in self.engine.catalogue.of_job(job.name) if record.status == "done")
            if wrote:
                summary = f"{summary}; wrote {_gigabytes(wrote)}"
            times = [(r.started, r.ended) for r in results if r.started]
            seconds = max(e for _, e in times) - min(s for s, _ in times) if times else 0.0
            failures = [[name, result.message, str(job.area.folder("esorex_log") / job.log_name) if job.log_name
                         else ""] for job in sub.jobs for name, result in [(job.name, sub.results.get(job.name))]
                        if result is not None and result.status == "failed"]
            step_status = StepStatus(plan.step, status, summary, seconds, jobs=len(plan.jobs),
                                     failed=json.dumps(failures), report=sub)
            self.state.set_step(step_status)
            self.steps[plan.step] = step_status
            line = f"{plan.step}: {len(plan.jobs)} job(s): {summary}"
            (logger.error if status == "failed" else logger.info)(line)
            if self.engine.log is not None:
                self.engine.log.comment(line)

    def _run_steps(self, names, options=None) -> StepReport | None:
        plans = self.plan_steps(names, options)
        report = self.run_plans(plans, label=", ".join(names))
        sub = report.for_step(plans[-1].step) if len(plans) == 1 else report
        return sub if sub.jobs else None

    # ------------------------------------------------------------------ the steps (seed's names and arguments)
    def run_bias(self):
        """Master bias of every BIAS template (muse_bias), in its night's calibration area."""
        return self._run_steps(["bias"])

    def run_flat(self):
        """Master flat and trace table of every FLAT template (muse_flat)."""
        return self._run_steps(["flat"])

    def run_wave(self):
        """Wavelength solution of every ARC template (muse_wavecal)."""
        return self._run_steps(["wave"])

    def run_lsf(self):
        """Line-spread function from the dedicated ARC_LSF templates, or else from the arcs (muse_lsf)."""
        return self._run_steps(["lsf"])

    def run_twilight(self, illum=True):
        """Twilight-flat correction cube of every SKYFLAT template (muse_twilight)."""
        return self._run_steps(["twilight"], {"twilight": {"illum": illum}})

    def run_scibasic_all(self, illum=True, expotypes=("OBJECT", "SKY", "STD")):
        """Pixel tables of every exposure of the given types, one esorex per exposure (muse_scibasic)."""
        return self._run_steps(["scibasic_all"], {"scibasic_all": {"illum": illum, "expotypes": expotypes}})

    def run_standard(self, profile=None, aperture_correction=None):
        """Flux response and telluric correction from each standard-star exposure (muse_standard).

        Parameters
        ----------
        profile : str, optional
            muse_standard's flux-integration profile: ESO's default, unless the standard was observed on fewer
            than :data:`~pymusepipe.steps.NARROW_FIELD_IFUS` IFUs (read from the raw file): a strip of a few
            arcsec cannot hold the Moffat fit window, so ``circle`` is used there.
        aperture_correction : bool, optional
            Correct the response for the flux muse_standard misses on such narrow fields
            (:mod:`pymusepipe.stdcorrection`); by default only there.
        """
        return self._run_steps(["standard"], {"standard": {"profile": profile,
                                                           "aperture_correction": aperture_correction}})

    def run_sky(self, fraction=0.8, sky_mask=None):
        """Sky lines and continuum of every OBJECT exposure (muse_create_sky).

        From the SKY exposures of the exposure's night when there are some; else measured on the object
        exposure itself. ``fraction``: the darkest fraction of the field's spaxels taken as sky. ``sky_mask``: a
        SKY_MASK image of your own (kept for later sessions).
        """
        return self._run_steps(["sky"], {"sky": {"fraction": fraction, "sky_mask": sky_mask}})

    def run_prep_align(self, skymethod="none", filter_for_alignment=None):
        """One muse_scipost per OBJECT exposure, without offsets, with an image through the alignment filter."""
        return self._run_steps(["prep_align"], {"prep_align": {"skymethod": skymethod,
                                                               "filter_for_alignment": filter_for_alignment}})

    def run_align_bypointing(self):
        """Offsets of all the pointing's exposures (muse_exp_align) and the pointing's OFFSET_LIST in force."""
        return self._run_steps(["align_bypointing"])

    def run_align_bygroup(self):
        """Offsets within each template (muse_exp_align), as diagnostics."""
        return self._run_steps(["align_bygroup"])

    def run_align_to_reference(self, reference, *, filter_name=None, output=None, **align_options):
        """Offsets and flux scales of the ``run_prep_align`` images against an external reference image.

        Uses :func:`pymusepipe.alignment.align_images`; the OFFSET_LIST written (in the target's
        ``Alignment/`` folder) becomes the one in force, used by :meth:`run_scipost` and
        :meth:`run_combine_pointing`, in this session and the next. Images the fit flags are left unmoved.

        Returns
        -------
        astropy.table.Table
            One row per image: offsets, flux scale, background, errors and quality.
        """
        from .alignment import align_images, write_alignment_offset_list

        images = [frame.path for frame in self.context().products(
            "IMAGE_FOV", step="prep_align", qualifier=self.filter_for_alignment, area=self.layout)]
        images = [path for path in images if Path(path).is_file()]
        if not images:
            raise StepInputError(f"run_align_to_reference: no IMAGE_FOV through {self.filter_for_alignment} for "
                                 f"{self.layout.name}; run run_prep_align() first")
        alignment = self.layout.folder("alignment", create=True)
        output = Path(output) if output else alignment / f"OFFSET_LIST_{self.layout.pointing_name}_reference.fits"
        table = align_images(images, reference, filter_name=filter_name,
                             figure_folder=self.layout.folder("figures", create=True), **align_options)
        write_alignment_offset_list(table, output)
        logger.info("align_to_reference: %d image(s) aligned to %s -> %s", len(table), reference, output)
        self.engine.log.comment(f"align_to_reference: OFFSET_LIST {output} from reference {reference}")
        if not self.fakemode:
            self.state.set("offset_list", output.absolute(), step="align_to_reference",
                           note=f"aligned to the reference image {reference}")
        return table

    def run_scipost(self, expotype="OBJECT", offset_list=True, skymethod="auto", filter_list=None, save=None):
        """Reduced pixel table, cube and images of each exposure of ``expotype`` (muse_scipost).

        Parameters
        ----------
        expotype : str
            ``OBJECT`` or ``SKY``.
        offset_list : bool or str or Path
            True: the OFFSET_LIST in force (alignment steps, or set by the user), if any; a path: that file;
            False: none (products then kept apart from the aligned ones).
        skymethod : str
            muse_scipost's ``--skymethod`` (``model``, ``subtract-model``, ``none``), or ``auto``: ``model``,
            unless refitting the sky would not fit in the memory budget while the exposure has its own sky
            (measured on it by ``run_sky``); that sky is then subtracted as it is (``subtract-model``), and the
            job's note says so. Each exposure gets the sky of ``run_sky``: its own or the SKY exposure of its
            night nearest in time.
        """
        step = "scipost" if expotype == "OBJECT" else f"scipost_{expotype.lower()}"
        options = {"expotype": expotype, "offset_list": offset_list, "skymethod": skymethod,
                   "filter_list": filter_list, "save": save}
        if step == "scipost_sky":
            options.pop("expotype")
        return self._run_steps([step], {step: options})

    def run_combine_pointing(self, offset_list=True, filter_list=None):
        """Combined cube of the pointing's OBJECT exposures with the OFFSET_LIST in force (muse_exp_combine)."""
        return self._run_steps(["combine_pointing"], {"combine_pointing": {"offset_list": offset_list,
                                                                           "filter_list": filter_list}})

    # ------------------------------------------------------------------ the whole chain
    @staticmethod
    def chain_options(illum=True, fraction=0.8) -> dict:
        """Per-step options of ``run_all_recipes``."""
        return {"twilight": {"illum": illum}, "scibasic_all": {"illum": illum}, "sky": {"fraction": fraction},
                "scipost": {"expotype": "OBJECT", "offset_list": True, "skymethod": "auto"},
                "scipost_sky": {"offset_list": False, "skymethod": "none"}}

    def run_all_recipes(self, illum=True, fraction=0.8, first=None, last=None, parameters=None, graph=True,
                        clean=False, report=True):
        """Plan every step of :data:`~pymusepipe.steps.STEPS` (or ``first`` to ``last``) and run them as one
        dependency graph: independent jobs overlap, a failed job's dependents are skipped, the rest goes on.

        Parameters
        ----------
        illum : bool
            Use the raw ILLUM flats in muse_twilight and muse_scibasic.
        fraction : float
            muse_create_sky's ``--fraction`` of darkest spaxels used for the sky.
        first, last : str, optional
            Names of the first and last steps to run (``'bias'`` or ``'run_bias'``...).
        parameters : dict, optional
            Recipe parameter overrides, keyed by step (``{'scipost': {'pixfrac': 0.6}}``) or by recipe
            (``{'muse_scipost': {...}}``); they also apply to the ``run_*`` steps called later on this object.
        graph : bool
            False runs the steps one after the other, each waiting for the previous (to compare).
        clean : bool
            Once the chain succeeded, delete the intermediate products (:meth:`clean`).
        report : bool
            Refresh the HTML report at the end (also after a failure): only figures whose products changed
            are redrawn. Its path is in :attr:`report_page`.

        Returns
        -------
        OrderedDict
            step name -> :class:`~pymusepipe.state.StepStatus`.

        Raises
        ------
        StepFailedError
            When jobs failed (after every job that did not depend on them ran).
        """
        names = STEPS.between(first, last)
        if parameters:
            self.parameters.update(parameters)
        options = self.chain_options(illum, fraction)
        start = time.monotonic()
        try:
            if graph:
                self.run_plans(self.plan_steps(names, options),
                               label=f"{self.targetname} {self.layout.pointing_name}")
            else:
                for name in names:
                    self.run_plans(self.plan_steps([name], options), label=name)
        finally:
            if report and not self.fakemode:
                from .qc.report import refresh_after_run

                self.report_page = refresh_after_run(self.layout)
                if self.report_page is not None:
                    logger.info("report: %s", self.report_page)
        logger.info("run_all_recipes: %d step(s) in %.0f s", len(names), time.monotonic() - start)
        if clean:
            self.clean()
        return self.steps

    #: What :meth:`clean` can remove: name -> (step, tags).
    INTERMEDIATE = {"pixtables": (("scibasic_all", ("PIXTABLE_OBJECT", "PIXTABLE_SKY")),
                                  ("scipost", ("PIXTABLE_REDUCED",))),
                    "prealign": (("prep_align", ("DATACUBE_FINAL",)),)}

    def clean(self, what=("pixtables", "prealign")) -> tuple:
        """Delete intermediate products once the final cube is made: the pixel tables (``pixtables``, about
        0.4 GB per IFU and exposure) and the pre-alignment cubes (``prealign``).

        Their records stay (status ``cleaned``, with their checksums): resume knows what they were, reports
        the step as cleaned rather than missing, and makes them again only if a step that reads them must run
        again. The deletions are in the replay log.

        Returns
        -------
        (int, int)
            Files and bytes removed.
        """
        unknown = set(what) - set(self.INTERMEDIATE)
        if unknown:
            raise ValueError(f"clean(what={sorted(unknown)}): expected some of {', '.join(self.INTERMEDIATE)}")
        final = self.engine.catalogue.select(tag="DATACUBE_FINAL", step="combine_pointing", area=self.layout.base_dir)
        single = self.engine.catalogue.select(tag="DATACUBE_FINAL", step="scipost", area=self.layout.base_dir)
        if not final and not single:
            raise StepInputError(f"clean: {self.layout.name} has no final cube yet: nothing is cleaned before it "
                                 "is made")
        records = [record for key in what for step, tags in self.INTERMEDIATE[key]
                   for record in self.engine.catalogue.select(step=step, area=self.layout.base_dir)
                   if record.tag in tags]
        count, size = self.engine.clean(records, reason=f"intermediate products of {self.layout.name} "
                                                       f"({', '.join(what)})")
        logger.info("clean: %d file(s) removed, %s freed in %s", count, _gigabytes(size), self.layout.name)
        return count, size

    def make_report(self, overwrite=False):
        """QC figures and the HTML pages of this pointing, its nights, its target and the sample
        (``Figures/index.html``); only figures whose products changed are redrawn."""
        from .qc.report import refresh_report

        return refresh_report(self.layout, overwrite=overwrite)

    def status(self) -> str:
        """Each step: done / stale / failed / not run (read from the tables, nothing recomputed), what it did,
        the disk it holds, and the esorex log of each failed job."""
        from .status import status_text

        return status_text(self.layout, session_steps=self.steps)


def make_engine(config, *, musemode, time_astrometry=False, fakemode=False, executor="local", pinning=None,
                cpus=None, memory_gb=None, client=None, scheduler=None, overwrite=False, esorex="esorex",
                prefer_archive=False, log_path=None, reset_log=False, raw_table=None) -> RecipeEngine:
    """The engine of a reduction (pointing, target or sample): static calibrations, executor, replay log."""
    statics = config.static_calibrations()
    validity = None
    if time_astrometry:
        # Chosen per job by date from the validity table instead.
        statics.pop("GEOMETRY_TABLE", None)
        statics.pop("ASTROMETRY_WCS", None)
        if config.musecalib_time is None:
            raise ValueError("time_astrometry=True needs musecalib_time in rc.dic (the folder of the "
                             "time-dependent geometry/astrometry tables)")
        validity = ValidityTable.read(config.musecalib_time / "validity_table.txt")
    if not instrument.is_ao_mode(musemode):
        statics.pop("RAMAN_LINES", None)   # the Raman correction is for laser-assisted AO data only
    engine = RecipeEngine(config.root, recipes=default_recipe_table(), static_calibrations=statics,
                          validity=validity, raw_table=raw_table,
                          executor=make_executor(executor, fakemode=fakemode, pinning=pinning, cpus=cpus,
                                                 memory_gb=memory_gb, client=client, scheduler=scheduler),
                          fakemode=fakemode, overwrite=overwrite, esorex=esorex, prefer_archive=prefer_archive)
    if log_path is not None:
        engine.log = ReplayLog(log_path, reset=reset_log, pipeline_version=engine.version, fakemode=fakemode)
    return engine


def make_executor(executor="local", *, fakemode=False, pinning=None, cpus=None, memory_gb=None, client=None,
                  scheduler=None) -> Executor:
    """``'local'``, ``'dask'`` (with ``client`` or ``scheduler``) or an Executor instance; fake in fakemode."""
    if fakemode:
        return FakeExecutor(memory_gb=memory_gb)
    if isinstance(executor, Executor):
        return executor
    if executor == "local":
        return LocalExecutor(cpus=cpus, memory_gb=memory_gb, pinning=pinning)
    if executor == "dask":
        from .dask_executor import DaskExecutor

        return DaskExecutor(client, scheduler=scheduler, pinning=pinning or "none")
    raise ValueError(f"executor={executor!r}: expected 'local', 'dask' or an Executor instance")


def step_outcome(plan: StepPlan, sub: StepReport, fakemode: bool) -> tuple:
    """(status, summary) of a planned step from its jobs' results."""
    results = list(sub.results.values())
    if plan.skipped and not plan.jobs:
        status, summary = "skipped", plan.skipped
    elif fakemode:
        status, summary = "planned", sub.summary()
    elif any(result.status == "failed" for result in results):
        status, summary = "failed", sub.summary()
    elif results and all(result.status == "skipped" for result in results):
        status, summary = "skipped", results[0].message
    elif any(result.status == "interrupted" for result in results):
        status, summary = "interrupted", sub.summary()
    else:
        status, summary = "done", sub.summary()
    if plan.note:
        summary = f"{summary}; {plan.note}"
    return status, summary


def unique_jobs(plans) -> list:
    """The jobs of several plans, each once (a night's calibrations are planned by every pointing using them)."""
    jobs, seen = [], set()
    for plan in plans:
        for job in plan.jobs:
            if job.name not in seen:
                seen.add(job.name)
                jobs.append(job)
    return jobs


def raise_for_failures(report: StepReport):
    """StepFailedError listing every failed job (its reason and esorex log tail), if any failed."""
    failed = [name for name in report.failed if report.results[name].status == "failed"]
    if not failed:
        return
    details = []
    logs = []
    for name in failed:
        result = report.results[name]
        details.append(f"--- {name}: {result.message}")
        if result.log_tail:
            details.append("    tail of the esorex log:")
            details.extend(f"    {line}" for line in result.log_tail)
        job = next((job for job in report.jobs if job.name == name), None)
        if job is not None and job.log_name:
            logs.append(str(job.area.folder("esorex_log") / job.log_name))
    skipped = report.with_status("skipped")
    more = f"\n{len(skipped)} job(s) depending on them were skipped" if skipped else ""
    first = report.results[failed[0]]
    hint = (f"see {logs[0]}" if logs else "see the esorex logs") + "; fix the cause and rerun to resume"
    error = StepFailedError(f"{len(failed)} job(s) failed ({report.summary()}), first {failed[0]}: {first.message}",
                            hint)
    error.details = "\n".join(details) + more
    raise error


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.0f} MB"


def _show_messages():
    """Send pymusepipe's INFO messages to the terminal when the application configured no logging."""
    package_logger = logging.getLogger("pymusepipe")
    if package_logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
