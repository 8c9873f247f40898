"""``MuseTarget``: one target and its pointings, reduced as one graph and combined into one mosaic.

- The master calibrations of each night are made once, in the night's shared area, whatever pointing's
  ``Raw/`` (or ``<root>/Calibrations/Raw/``) holds the raw calibration frames.
- Each pointing is reduced as :class:`~pymusepipe.musepipe.MusePipe` does, up to its alignment images.
- Every OBJECT exposure of every pointing is aligned to **one reference image** (any FITS image with a WCS and a
  photometric calibration, e.g. a broad-band survey image) by :mod:`pymusepipe.alignment`, giving one target
  OFFSET_LIST with offsets and FLUX_SCALE (``<target>/Alignment/OFFSET_LIST_<target>.fits``). Without a reference
  the exposures are aligned to the first one and scaled to the most transparent one (and the log says so).
- One OUTPUT_WCS covering every pointing is built (the first exposure's grid, north up at the mode's spaxel
  scale, extended by whole spaxels), and every reduced exposure is combined on it by muse_exp_combine into
  ``<target>/Combined/DATACUBE_FINAL_<target>.fits`` (plus its filter images); with ``pointing_cubes=True`` each
  pointing's cube is also made on that grid, so that pointings can be compared pixel by pixel.

Flux scales are applied by the recipes (FLUX_SCALE of the OFFSET_LIST), so the mosaic is on the reference's
photometric scale.
"""
from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from astropy.table import vstack

from . import instrument
from .association import InputFrame
from .engine import StepReport
from .layout import TargetLayout, pointing_folder_name
from .musepipe import MusePipe, _show_messages, make_engine, raise_for_failures, step_outcome, unique_jobs
from .products import PlannedProduct
from .state import PointingState, StepStatus
from .steps import (DEFAULT_ALIGNMENT_FILTER, STEPS, StepContext, StepPlan, plan_align_bygroup, plan_align_bypointing,
                    plan_bias, plan_combine_pointing, plan_flat, plan_lsf, plan_prep_align, plan_scibasic_all,
                    plan_scipost, plan_scipost_sky, plan_sky, plan_standard, plan_twilight, plan_wave)

__all__ = ["MuseTarget", "TARGET_STEPS", "discover_pointings", "union_raw_table", "alignment_band"]

logger = logging.getLogger(__name__)

#: The target-level steps, after the pointings' own.
TARGET_STEPS = ("align_target", "mosaic")

#: Steps whose jobs work in the nights' shared areas: planned once for every pointing (and target) together.
NIGHT_STEPS = ("bias", "flat", "wave", "lsf", "twilight", "standard")


def discover_pointings(root, target, str_pointing="P", ndigits=2) -> list:
    """Pointing numbers of a target: its ``<str_pointing>NN`` folders that have a ``Raw`` folder."""
    folder = Path(root) / target
    if not folder.is_dir():
        raise FileNotFoundError(f"target folder {folder} does not exist (root {root}, target {target})")
    pattern = re.compile(rf"^{re.escape(str_pointing)}(\d{{{ndigits},}})$")
    found = sorted(int(match.group(1)) for path in folder.iterdir()
                   if (match := pattern.match(path.name)) and (path / "Raw").is_dir())
    if not found:
        raise FileNotFoundError(f"no pointing folder with a Raw folder in {folder} (expected "
                                f"{pointing_folder_name(1, str_pointing, ndigits)}/Raw ...)")
    return found


def alignment_band(reference, reference_filter=None, filter_list=None) -> str:
    """The band of the images aligned to a reference: the reference's own band when the MUSE FILTER_LIST has
    it (the flux scales then compare like with like: through two bands they would depend on each star's
    colour), else :data:`~pymusepipe.steps.DEFAULT_ALIGNMENT_FILTER`, with a warning."""
    if reference is None:
        return DEFAULT_ALIGNMENT_FILTER
    from astropy.io import fits

    from .alignment import match_filter_name, reference_band

    band = reference_filter or reference_band(reference)
    names = []
    if filter_list:
        with fits.open(filter_list) as hdul:
            names = [str(hdu.header.get("EXTNAME", hdu.name)).strip() for hdu in hdul[1:]]  # as spelt there
    match = match_filter_name(band, names)
    if match:
        return match
    logger.warning("%s: its band %s is not in the FILTER_LIST %s; the exposures are aligned through %s, so their "
                   "flux scales include the colour difference of the two bands (give filter_for_alignment=)",
                   reference, band or "(not in its header)", filter_list, DEFAULT_ALIGNMENT_FILTER)
    return DEFAULT_ALIGNMENT_FILTER


def union_raw_table(tables):
    """The raw tables of several pointings as one, each exposure once (calibration frames are often in every
    pointing's Raw folder of an archive download)."""
    tables = [table for table in tables if len(table)]
    if not tables:
        return None
    merged = vstack(tables, metadata_conflicts="silent")
    keys = [f"{date}|{tag}" for date, tag in zip(merged["date_obs"], merged["tag"])]
    _, first = np.unique(keys, return_index=True)
    merged = merged[np.sort(first)]
    merged.sort("mjd_obs")
    return merged


def plan_night_steps(context: StepContext, illum=True) -> list:
    """The calibration steps (and the standard stars) of every night of ``context``'s raw table."""
    plans = [plan_bias(context), plan_flat(context), plan_wave(context), plan_lsf(context),
             plan_twilight(context, illum=illum)]
    standards = plan_scibasic_all(context, illum=illum, expotypes=("STD",), required=False)
    standards.step = "scibasic_all"
    plans.append(standards)
    if standards.jobs or context.archive_masters(("STD_RESPONSE",)) or context.products_by_exposure("PIXTABLE_STD"):
        plans.append(plan_standard(context))
    return plans


class MuseTarget:
    """Reduce every pointing of a target, align them to a reference image and combine them into one mosaic.

    Parameters
    ----------
    targetname : str
        Target folder under ``root``.
    pointings : sequence of int, optional
        Pointings to reduce (default: every ``P<NN>`` folder with a ``Raw`` folder).
    rc_filename, cal_filename : str or Path, optional
        As for :class:`~pymusepipe.musepipe.MusePipe` (or ``config=``, or ``musecalib=``/``root=``).
    reference : str or Path, optional
        Reference image (a FITS image with a celestial WCS and BUNIT/FILTER or PHOTFLAM/PHOTPLAM keywords).
    reference_filter : str, optional
        Band of the reference when its header does not say.
    logfile : str
        Replay log in ``<target>/Combined/Log/``.
    pointing_cubes : bool
        Also make each pointing's cube on the mosaic's grid.
    filter_for_alignment : str, optional
        Band of the images aligned to the reference; default: the reference's band when the FILTER_LIST has
        it (:func:`alignment_band`), else Cousins_R.
    executor, client, scheduler, pinning, cpus, memory_gb, overwrite, fakemode, musemode, filter_list,
    time_astrometry, parameters, ifu_mode, exclude, prefer_archive_masters :
        As for :class:`~pymusepipe.musepipe.MusePipe`; ``exclude`` applies to every pointing.
    engine : RecipeEngine, optional
        Share a sample's engine.
    """

    def __init__(self, targetname, pointings=None, rc_filename=None, cal_filename=None, *, config=None,
                 reference=None, reference_filter=None, logfile="Target.log", reset_log=False, fakemode=False,
                 filter_list="white", filter_for_alignment=None, musemode=instrument.DEFAULT_MODE,
                 time_astrometry=False, executor="local", client=None, scheduler=None, pinning=None, cpus=None,
                 memory_gb=None, overwrite=False, parameters=None, pointing_cubes=False, verbose=True,
                 esorex="esorex", prefer_archive_masters=False, engine=None, **pipe_options):
        if verbose:
            _show_messages()
        settings = {key: pipe_options.pop(key) for key in ("musecalib", "root", "musecalib_time", "calib_tables",
                                                           "str_pointing", "ndigits", "folders") if key in pipe_options}
        self.config = config or MusePipe._make_config(None, rc_filename, cal_filename, settings.pop("folders", None),
                                                       settings)
        self.targetname = str(targetname)
        self.musemode = instrument.check_mode(musemode)
        self.fakemode = bool(fakemode)
        self.filter_list = str(filter_list)
        self.pointing_cubes = bool(pointing_cubes)
        self.reference = Path(reference).absolute() if reference is not None else None
        if self.reference is not None and not self.reference.is_file():
            raise FileNotFoundError(f"reference={reference}: file does not exist")
        self.reference_filter = reference_filter
        self.layout = TargetLayout(self.config.root, self.targetname, folders=self.config.folders)
        numbers = list(pointings) if pointings is not None else discover_pointings(
            self.config.root, self.targetname, self.config.str_pointing, self.config.ndigits)
        if not self.fakemode:
            for key in ("astro_tables", "log", "alignment", "sof"):
                self.layout.folder(key, create=True)
        self.state = PointingState(self.layout.folder("astro_tables"), self.layout.root, persist=not self.fakemode)
        if engine is None:
            log_path = Path(logfile) if Path(logfile).is_absolute() else self.layout.folder("log") / logfile
            engine = make_engine(self.config, musemode=self.musemode, time_astrometry=time_astrometry,
                                 fakemode=self.fakemode, executor=executor, pinning=pinning, cpus=cpus,
                                 memory_gb=memory_gb, client=client, scheduler=scheduler, overwrite=overwrite,
                                 esorex=esorex, prefer_archive=prefer_archive_masters, log_path=log_path,
                                 reset_log=reset_log)
        self.engine = engine
        self.engine.add_area(self.layout)
        self.filter_for_alignment = filter_for_alignment or alignment_band(
            self.reference, reference_filter, self.engine.static_calibrations.get("FILTER_LIST"))
        self.pipes = OrderedDict()
        for number in numbers:
            self.pipes[number] = MusePipe(
                self.targetname, number, config=self.config, fakemode=self.fakemode, filter_list=self.filter_list,
                filter_for_alignment=self.filter_for_alignment, musemode=self.musemode,
                time_astrometry=time_astrometry, parameters=parameters, engine=self.engine, verbose=False,
                **pipe_options)
        self.raw_table = union_raw_table([pipe.raw_table for pipe in self.pipes.values()])
        self.engine.set_raw_table(self.raw_table)
        #: The HTML report refreshed at the end of the last run_all_recipes.
        self.report_page = None
        #: Target-level step name -> StepStatus.
        self.steps = OrderedDict((name, self.state.step(name)) for name in TARGET_STEPS if self.state.step(name))

    # ------------------------------------------------------------------ state
    @property
    def offset_list(self):
        """The target OFFSET_LIST in force (every exposure of every pointing), or None."""
        return self.state.get_path("offset_list")

    def union_context(self) -> StepContext:
        """A context over the raw frames of every pointing (for the nights' calibration steps)."""
        first = next(iter(self.pipes.values()))
        return StepContext(layout=first.layout, engine=self.engine, raw_table=self.raw_table, state=self.state,
                           targetname=self.targetname, musemode=self.musemode, filter_list=self.filter_list,
                           filter_for_alignment=self.filter_for_alignment, ifu_mode=first.ifu_mode,
                           parameters=first.parameters, fakemode=self.fakemode)

    # ------------------------------------------------------------------ planning
    def plan(self, illum=True, fraction=0.8, mosaic=True, night_plans=True) -> OrderedDict:
        """Plan the whole reduction of the target: {owner: [StepPlan]} with owner a pointing number, ``'night'``
        or ``'target'``; every job of every step, in dependency order."""
        plans = OrderedDict()
        if night_plans:
            plans["night"] = plan_night_steps(self.union_context(), illum=illum)
        plans.update(self.plan_science(illum=illum, fraction=fraction, mosaic=mosaic))
        return plans

    @property
    def is_single_pointing(self) -> bool:
        """One pointing and no reference image: the target is reduced as its pointing is (muse_exp_align's
        relative offsets, the pointing's combined cube), with no target-level alignment or mosaic."""
        return len(self.pipes) == 1 and self.reference is None

    def plan_science(self, illum=True, fraction=0.8, mosaic=True) -> OrderedDict:
        """Plan everything after the nights' calibrations (see :meth:`plan`)."""
        plans = OrderedDict()
        if self.is_single_pointing:
            ((number, pipe),) = self.pipes.items()
            context = pipe.context()
            options = pipe.chain_options(illum=illum, fraction=fraction)
            options["scibasic_all"]["expotypes"] = ("OBJECT", "SKY")
            plans[number] = pipe.plan_steps([name for name in STEPS if name not in NIGHT_STEPS], options, context)
            return plans
        contexts = OrderedDict((number, pipe.context()) for number, pipe in self.pipes.items())
        for number, context in contexts.items():
            plans[number] = [plan_scibasic_all(context, illum=illum, expotypes=("OBJECT", "SKY")),
                             plan_sky(context, fraction=fraction), plan_prep_align(context),
                             plan_align_bypointing(context), plan_align_bygroup(context)]
        target_plans = [self._plan_align_target(contexts)]
        grid = None
        if mosaic or self.pointing_cubes:
            grid_plan, grid = self._plan_output_wcs(contexts)
            target_plans.append(grid_plan)
        for number, context in contexts.items():
            context.offset_list_in_force = self._offset_list_path()
            cubes_on_grid = grid if self.pointing_cubes else None
            plans[number] += [plan_scipost(context, output_wcs=cubes_on_grid), plan_scipost_sky(context)]
            if self.pointing_cubes:
                plans[number].append(plan_combine_pointing(context, output_wcs=grid))
        if mosaic:
            target_plans.append(self._plan_mosaic(contexts, grid))
        plans["target"] = target_plans
        return plans

    def _offset_list_path(self) -> Path:
        return self.layout.folder("alignment") / f"OFFSET_LIST_{self.targetname}.fits"

    def _images(self, contexts) -> list:
        images = []
        for number, context in contexts.items():
            images.extend(context.products("IMAGE_FOV", step="prep_align", qualifier=self.filter_for_alignment,
                                           area=self.pipes[number].layout))
        return images

    def _plan_align_target(self, contexts) -> StepPlan:
        images = self._images(contexts)
        if not images:
            return StepPlan("align_target", skipped="no alignment image (run the pointings' prep_align first)")
        output = self._offset_list_path()
        reference, band = self.reference, self.reference_filter
        filter_list = self.engine.static_calibrations.get("FILTER_LIST")
        figures = self.layout.folder("figures")
        state = self.state
        paths = [frame.path for frame in images]

        def align():
            from .tasks import align_to_reference

            message = align_to_reference(output, paths, reference, band, filter_list, figure_folder=figures)
            state.set("offset_list", output, step="align_target", note=message)
            if reference is not None:
                state.set("reference_image", reference, step="align_target")
            logger.info("align_target: %s", message)
            return message

        argv = ["python3", "-m", "pymusepipe.tasks", "align-to-reference", "--output", str(output)]
        if reference is not None:
            argv += ["--reference", str(reference)] + (["--filter", band] if band else [])
        if filter_list:
            argv += ["--filter-list", str(filter_list)]
        job = self.engine.python_job(
            f"align_{self.targetname}", step="align_target", area=self.layout, function=align,
            log_argv=argv + paths,
            frames=images + ([InputFrame(str(reference), "REFERENCE_IMAGE", images[0].mjd)] if reference else []),
            products=[PlannedProduct("OFFSET_LIST", output.name, output, qualifier="in_force")],
            parameters={"reference": str(reference or ""), "filter": band or ""})
        note = (f"{len(images)} exposure(s) of {len(contexts)} pointing(s) aligned to "
                + (reference.name if reference is not None else "the first exposure (no reference image: flux "
                                                                 "scaled to the most transparent exposure)"))
        return StepPlan("align_target", [job], note=note)

    def _plan_output_wcs(self, contexts):
        images = self._images(contexts)
        output = self.layout.folder("object") / f"OUTPUT_WCS_{self.targetname}.fits"
        if not images:
            return StepPlan("mosaic", skipped="no alignment image"), None
        offsets = self._offset_list_path()
        spaxel = instrument.spaxel_scale(self.musemode)
        paths = [frame.path for frame in images]
        state = self.state

        def grid():
            from .tasks import output_wcs

            message = output_wcs(output, paths, offsets, spaxel)
            state.set("output_wcs", output, step="mosaic", note=message)
            return message

        job = self.engine.python_job(
            f"output_wcs_{self.targetname}", step="mosaic", area=self.layout, function=grid,
            log_argv=["python3", "-m", "pymusepipe.tasks", "output-wcs", "--output", str(output), "--offset-list",
                      str(offsets), "--spaxel", repr(spaxel)] + paths,
            frames=images + [InputFrame(str(offsets), "OFFSET_LIST", images[0].mjd)],
            products=[PlannedProduct("OUTPUT_WCS", output.name, output)], depends_on=[f"align_{self.targetname}"])
        return StepPlan("mosaic", [job]), output

    def _plan_mosaic(self, contexts, grid) -> StepPlan:
        frames = []
        for number, context in contexts.items():
            records = self.engine.catalogue.select(tag="PIXTABLE_REDUCED", step="scipost",
                                                   area=self.pipes[number].layout.base_dir,
                                                   statuses=("done", "planned", "cleaned"))
            frames.extend(context.products("PIXTABLE_REDUCED", step="scipost", area=self.pipes[number].layout))
            unaligned = {record.path for record in records if record.qualifier == "unaligned"}
            frames = [frame for frame in frames if frame.path not in unaligned]
        if len(frames) < 2:
            return StepPlan("mosaic", skipped="fewer than two reduced exposures")
        calibrations = {"OFFSET_LIST": [str(self._offset_list_path())]}
        if grid is not None:
            calibrations["OUTPUT_WCS"] = [str(grid)]
        parameters = next(iter(contexts.values())).parameters_for("mosaic", "muse_exp_combine",
                                                                  {"filter": self.filter_list})
        jobs = self.engine.plan("muse_exp_combine", [frames], area=self.layout, step="mosaic",
                                labels=[self.targetname], parameters=parameters, calibrations=calibrations)
        return StepPlan("mosaic", jobs, note=f"{len(frames)} exposure(s) of {len(contexts)} pointing(s)")

    # ------------------------------------------------------------------ running
    def run_all_recipes(self, illum=True, fraction=0.8, parameters=None, mosaic=True, report=True) -> OrderedDict:
        """Reduce every pointing, align everything to the reference, build the mosaic: one graph.

        Returns
        -------
        OrderedDict
            target-level step -> StepStatus (each pointing's steps are in ``self.pipes[n].steps``).

        Raises
        ------
        StepFailedError
            When jobs failed (after every job that did not depend on them ran).
        """
        self.update_parameters(parameters)
        plans = self.plan(illum=illum, fraction=fraction, mosaic=mosaic)
        try:
            outcome = self.run_plans(plans)
        finally:
            if report and not self.fakemode:
                self.refresh_report()
        raise_for_failures(outcome)
        return self.steps

    def update_parameters(self, parameters=None):
        """Recipe parameter overrides by step or recipe (as ``parameters`` of :class:`MusePipe`) for every pointing."""
        for pipe in self.pipes.values():
            pipe.parameters.update(parameters or {})

    def refresh_report(self):
        """Every pointing's report page, its nights', the target's and the sample's; :attr:`report_page` is the
        target's page (it links the others)."""
        from .qc.report import refresh_after_runs
        from .qc.target import target_page_path

        pages = refresh_after_runs(pipe.layout for pipe in self.pipes.values())
        page = target_page_path(self.layout.root, self.targetname, self.layout.names)
        self.report_page = page if pages and page.is_file() else (pages[0] if pages else None)
        return self.report_page

    def run_plans(self, plans: OrderedDict) -> StepReport:
        """Run planned steps as one graph (jobs planned twice, e.g. a night's calibrations, run once) and
        record what each step did in each pointing's and the target's state."""
        jobs = unique_jobs(plan for owner_plans in plans.values() for plan in owner_plans)
        start = time.monotonic()
        with self.lock():
            report = self.engine.run(jobs, label=self.targetname) if jobs else StepReport([])
        self.record(plans, report)
        logger.info("%s: %d job(s) in %.0f s: %s", self.targetname, len(jobs), time.monotonic() - start,
                    report.summary())
        return report

    def lock(self):
        """The locks of the target's area and of every pointing, held while a run works on them."""
        import contextlib

        if self.fakemode:
            return contextlib.nullcontext()
        from .lock import lock_folders

        self.layout.base_dir.mkdir(parents=True, exist_ok=True)
        return lock_folders([self.layout.base_dir] + [pipe.layout.pointing_dir for pipe in self.pipes.values()])

    def record(self, plans: OrderedDict, report: StepReport):
        night = plans.get("night", [])
        for number, pipe in self.pipes.items():
            pipe.record_steps(_merge_plans(night + plans.get(number, [])), report)
        target_plans = _merge_plans(plans.get("target", []))
        for plan in target_plans:
            sub = report.of_jobs(plan.jobs)
            status, summary = step_outcome(plan, sub, self.fakemode)
            step_status = StepStatus(plan.step, status, summary, jobs=len(plan.jobs), report=sub)
            self.state.set_step(step_status)
            self.steps[plan.step] = step_status

    def status(self) -> str:
        """Each pointing's steps, then the target's."""
        lines = []
        for number, pipe in self.pipes.items():
            lines.append(f"--- {pipe.layout.name}")
            lines.append(pipe.status())
        lines.append(f"--- {self.targetname} (target)")
        lines.extend(f"{name:<17} {step.status:<11} {step.summary}" for name, step in self.steps.items())
        return "\n".join(lines)

    def mosaic_products(self) -> dict:
        """tag -> paths of the mosaic's products (from the target's tables)."""
        out = {}
        for record in self.engine.catalogue.select(step="mosaic", area=self.layout.base_dir):
            out.setdefault(record.tag, []).append(Path(record.path))
        return out


def _merge_plans(plans) -> list:
    """Plans of the same step (e.g. scibasic_all for the standards and for the science) as one."""
    merged = OrderedDict()
    for plan in plans:
        if plan.step in merged:
            previous = merged[plan.step]
            notes = "; ".join(note for note in (previous.note, plan.note) if note)
            merged[plan.step] = StepPlan(plan.step, previous.jobs + plan.jobs, notes,
                                         previous.skipped if not plan.jobs else "")
        else:
            merged[plan.step] = plan
    return list(merged.values())

