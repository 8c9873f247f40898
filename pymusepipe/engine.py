"""The recipe engine: planned jobs -> executed, checked, registered products, for one step at a time.

``plan`` turns groups of input frames into :class:`Job` objects (IFU fan-out or ESO's in-process mode,
calibrations associated by ESO's rules, expected products and their place in the layout) and reports every
missing required calibration at once. ``run`` writes the SOFs, skips jobs that are up to date, hands the
rest to an executor, moves the products of each successful job into the layout (``finalize``, in the worker,
so dependents see them), registers them in the products catalogue and writes the per-recipe tables and the
replay log. Products only leave ``Pipe_products/<job>/`` after the job succeeded, with an atomic rename: a
crash never leaves a partial file counted as a product.

``MusePipe`` (musepipe.py) owns the steps; it calls this engine from each ``run_*`` method.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from . import instrument
from .association import (Association, CalibrationCandidate, InputFrame, MissingCalibration,
                          MissingCalibrationError, ValidityTable, associate, job_mjd)
from .esorex import (SofEntry, available_cpus, build_command, check_parameters, pipeline_version,
                     write_sof)
from .executors import (STATUS_DONE, STATUS_PLANNED, STATUS_UPTODATE, ExecJob, Executor,
                        FakeExecutor, JobResult, LocalExecutor)
from .products import (JobRecord, JobTable, PlannedProduct, ProductCatalogue, ProductRecord, atomic_move,
                       final_product_name, fingerprint)
from .recipes import NAMING_DATEOBS, NAMING_SEQUENCE, RecipeSpec, RecipeTable, default_recipe_table
from .replaylog import ReplayLog

__all__ = ["Job", "StepReport", "RecipeEngine", "IFU_FANOUT", "IFU_MERGED", "IFU_AUTO", "detect_ifus",
           "raw_calibration_candidates"]

logger = logging.getLogger(__name__)

IFU_FANOUT = "fanout"   # one esorex per IFU present: --nifu=k (the only mode for fewer than 24 IFUs)
IFU_MERGED = "merged"   # ESO's in-process mode: --nifu=-1 --merge (needs all 24 IFUs)
IFU_AUTO = "auto"       # merged when all 24 IFUs are present, else fan-out
_IFU_MODES = (IFU_FANOUT, IFU_MERGED, IFU_AUTO)

#: Layout folder of the per-exposure products of muse_scibasic, by raw tag.
_RAW_TAG_FOLDERS = {"OBJECT": "object", "STD": "std", "SKY": "sky", "ASTROMETRY": "object"}

#: Tags of raw frames (files with one CHANnn extension per IFU) as main recipe inputs.
_RAW_INPUT_TAGS = frozenset(rule.tag for rule in instrument.FRAME_RULES)

#: Raw-table tags usable as calibrations as they are (raw ILLUM, archive-delivered calibration products).
_RAW_CALIBRATION_TAGS = frozenset({"ILLUM"}) | instrument.CALIBRATION_PRODUCT_TAGS


@dataclass
class Job:
    """One esorex run, fully planned.

    Attributes
    ----------
    name : str
        Unique and descriptive (``muse_bias_2018-01-01T10:00:00.000_ifu03``); names the SOF, the esorex log
        and the output folder.
    recipe : str
    label : str
        Template start (or template start + exposure): goes into the product names.
    frames : list of InputFrame
        Main inputs, sorted by MJD.
    ifus : tuple of int
        IFUs the job handles.
    parameters : dict
        Everything passed as ``--name=value`` (including ``nifu``/``merge``).
    associations : list of Association
    missing : list of MissingCalibration
    products : list of PlannedProduct
    sof, output_dir : Path
    log_name : str
        esorex ``--log-file`` (inside ``Esorex_log``).
    depends_on : tuple of str
        Jobs producing planned calibrations of this one.
    threads : int
    memory_gb : float
    """

    name: str
    recipe: str
    label: str
    frames: list
    ifus: tuple
    parameters: dict
    associations: list
    missing: list
    products: list
    sof: Path
    output_dir: Path
    log_name: str
    depends_on: tuple = ()
    threads: int = 1
    memory_gb: float = 1.0

    def calibration_paths(self) -> dict:
        """tag -> tuple of paths of the associated calibrations."""
        return {association.tag: association.paths for association in self.associations}

    def sof_entries(self) -> list:
        entries = [SofEntry(frame.path, frame.tag, frame.mjd) for frame in self.frames]
        for association in self.associations:
            entries.extend(SofEntry(path, association.tag, None) for path in association.paths)
        return entries


@dataclass
class StepReport:
    """What happened to the jobs of a step: ``results`` maps job name -> JobResult."""

    jobs: list
    results: dict = field(default_factory=dict)

    def with_status(self, status) -> list:
        return [name for name, result in self.results.items() if result.status == status]

    @property
    def failed(self) -> list:
        return [name for name, result in self.results.items() if not result.ok]

    @property
    def ok(self) -> bool:
        return not self.failed

    def products(self, tag: str | None = None) -> list:
        """Final paths of the products of the jobs that succeeded (or were planned)."""
        paths = []
        for job in self.jobs:
            if self.results.get(job.name) is not None and self.results[job.name].ok:
                paths.extend(product.destination for product in job.products if tag in (None, product.tag))
        return paths

    def summary(self) -> str:
        counts = {}
        for result in self.results.values():
            counts[result.status] = counts.get(result.status, 0) + 1
        return ", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "no job"


def detect_ifus(path) -> tuple:
    """IFU numbers present in a raw MUSE file (its ``CHANnn`` extensions), read from the headers only."""
    from astropy.io import fits

    found = []
    with fits.open(path, lazy_load_hdus=True) as hdus:
        for hdu in hdus[1:]:
            match = re.fullmatch(r"CHAN(\d{2})", str(hdu.header.get("EXTNAME", "")).strip())
            if match:
                found.append(int(match.group(1)))
    if not found:
        raise ValueError(f"{path}: no CHANnn image extension, cannot tell which IFUs it holds")
    return tuple(sorted(found))


def raw_calibration_candidates(raw_table) -> list:
    """Rows of the raw table usable directly as calibrations (raw ILLUM, archive GEOMETRY_TABLE, ...)."""
    return [CalibrationCandidate.from_raw_row(row) for row in raw_table if str(row["tag"]) in _RAW_CALIBRATION_TAGS]


def _safe_name(text: str) -> str:
    """File-name-safe version of a label (keeps the ISO date characters, no spaces or slashes)."""
    return re.sub(r"[^A-Za-z0-9_.:+-]", "_", text)


def _default_label(frames: Sequence[InputFrame]) -> str:
    first = frames[0]
    base = first.tpl_start or (first.date_obs or f"mjd{first.mjd:.5f}")
    exposures = {(frame.date_obs, frame.mjd) for frame in frames}
    if len(exposures) == 1 and first.expno >= 0 and first.tag not in instrument.MINIMUM_RAW_FRAMES:
        return f"{base}_{first.expno:04d}"
    return base


def _exposures(frames: Sequence[InputFrame]) -> list:
    """First frame of each distinct exposure, in SOF (time) order: esorex numbers dateobs products so."""
    seen, exposures = set(), []
    for frame in frames:
        key = (frame.date_obs, frame.mjd)
        if key not in seen:
            seen.add(key)
            exposures.append(frame)
    return exposures


class RecipeEngine:
    """Plans and runs the jobs of one pointing.

    Parameters
    ----------
    layout : PointingLayout
        Folders (``layout.folder(key)`` and ``layout.master_folder(kind)``).
    recipes : RecipeTable, optional
        Defaults to :func:`~pymusepipe.recipes.default_recipe_table`.
    static_calibrations : mapping tag -> path
        ``PipelineConfig.static_calibrations()``.
    validity : ValidityTable, optional
        Time-dependent GEOMETRY_TABLE / ASTROMETRY_WCS (``time_astrometry=True``).
    raw_table : astropy Table, optional
        The raw table, for raw ILLUM frames and archive-delivered calibrations.
    executor : Executor, optional
        Default: :class:`~pymusepipe.executors.FakeExecutor` in fakemode, else a LocalExecutor.
    fakemode : bool
        Plan, write SOFs and the log, run nothing; tables stay in memory.
    logfile : str or Path, optional
        Replay log (default ``Log/pymusepipe_<date>.log``); relative names go into ``Log/``.
    reset_log : bool
        Start the replay log afresh.
    overwrite : bool
        Re-run jobs even when up to date.
    rules : mapping, optional
        Association rules (:func:`~pymusepipe.association.default_association_rules`).
    esorex : str
        esorex executable.
    esorex_options : sequence of str
        esorex options for every run (default ``--no-checksum``, as the original tool).
    version : str, optional
        MUSE pipeline version (default: asked to esorex once; ``'unknown'`` in fakemode without esorex).
    check_parameters : bool, optional
        Check parameter names against ``esorex --params`` when planning (default: when esorex is there).
    """

    def __init__(self, layout, *, recipes: RecipeTable | None = None, static_calibrations: Mapping | None = None,
                 validity: ValidityTable | None = None, raw_table=None, executor: Executor | None = None,
                 fakemode: bool = False, logfile=None, reset_log: bool = False, overwrite: bool = False,
                 rules: Mapping | None = None, esorex: str = "esorex", esorex_options: Sequence[str] = ("--no-checksum",),
                 version: str | None = None, check_parameters: bool | None = None):
        self.layout = layout
        self.recipes = recipes if recipes is not None else default_recipe_table()
        self.static_calibrations = {tag: str(path) for tag, path in (static_calibrations or {}).items()}
        self.validity = validity
        self.raw_candidates = raw_calibration_candidates(raw_table) if raw_table is not None else []
        self.fakemode = fakemode
        self.executor = executor or (FakeExecutor() if fakemode else LocalExecutor())
        self.overwrite = overwrite
        self.rules = rules
        self.esorex = esorex
        self.esorex_options = tuple(esorex_options)
        self.version = version or self._ask_version()
        # Parameter names are checked against the installed recipes unless told otherwise (or unavailable).
        self.check_parameters = (self.version != "unknown") if check_parameters is None else check_parameters
        self._shipped = default_recipe_table()
        self.catalogue = ProductCatalogue(None if fakemode else layout.folder("astro_tables"))
        if fakemode:
            # fakemode still sees what earlier real runs registered, but writes nothing back.
            self.catalogue.records = list(ProductCatalogue(layout.folder("astro_tables")).records)
        if logfile is None:
            logfile = f"pymusepipe_{datetime.datetime.now():%Y%m%d_%H%M%S}.log"
        log_path = Path(logfile)
        if not log_path.is_absolute():
            log_path = layout.folder("log") / log_path
        self.log = ReplayLog(log_path, reset=reset_log, pipeline_version=self.version, fakemode=fakemode)
        self._catalogue_lock = threading.Lock()
        self._ifu_cache = {}
        self._folders = {}

    def _ask_version(self) -> str:
        try:
            return pipeline_version(self.esorex)
        except Exception as error:  # noqa: BLE001 - fakemode works without esorex
            if not self.fakemode:
                raise
            logger.warning("fakemode: MUSE pipeline version unknown (%s)", error)
            return "unknown"

    @property
    def n_cpus(self) -> int:
        return len(getattr(self.executor, "cpus", None) or available_cpus())

    # ------------------------------------------------------------------ planning
    def ifus_of(self, frames: Sequence[InputFrame]) -> tuple:
        """IFUs of a group: those of per-IFU product inputs, else the ``CHANnn`` extensions common to all raw
        files (read once per file). In fakemode a raw file that does not exist counts as holding all 24."""
        product_ifus = sorted({frame.ifu for frame in frames if frame.ifu})
        if product_ifus:
            return tuple(product_ifus)
        common = None
        for frame in frames:
            if frame.path not in self._ifu_cache:
                if Path(frame.path).is_file():
                    self._ifu_cache[frame.path] = detect_ifus(frame.path)
                elif self.fakemode:
                    self._ifu_cache[frame.path] = tuple(range(1, instrument.N_IFUS + 1))
                else:
                    raise FileNotFoundError(f"input frame {frame.path} ({frame.tag}) does not exist")
            present = set(self._ifu_cache[frame.path])
            common = present if common is None else common & present
        if not common:
            raise ValueError(f"the {len(frames)} frames starting with {frames[0].path} share no IFU")
        return tuple(sorted(common))

    def plan(self, recipe: str, groups: Sequence, *, labels: Sequence[str] | None = None,
             parameters: Mapping | None = None, ifus: Sequence[int] | None = None, ifu_mode: str = IFU_AUTO,
             calibrations: Mapping | None = None, skip_calibrations: Sequence[str] = (),
             include_planned: bool | None = None, check: bool = True) -> list:
        """Plan the jobs of a recipe, one group of input frames (a template, an exposure...) per run.

        Parameters
        ----------
        recipe : str
        groups : sequence of sequences of InputFrame (or raw-table rows)
        labels : sequence of str, optional
            Product-name label per group (default: template start, plus exposure number for a group that is
            one exposure).
        parameters : mapping, optional
            Overrides of the recipe's default parameters (``None`` values remove a default).
        ifus : sequence of int, optional
            IFUs to process (default: those present in the data).
        ifu_mode : str
            ``fanout``, ``merged`` or ``auto``; ignored by recipes without ``--nifu``.
        calibrations : mapping tag -> paths, optional
            Calibrations given by the step (OFFSET_LIST, OUTPUT_WCS, SKY_LINES ...); they bypass association.
        skip_calibrations : sequence of str
            Optional calibrations not to use (e.g. ``["ILLUM"]`` when ``illum=False``).
        include_planned : bool, optional
            Accept products of jobs not run yet as calibrations (default: in fakemode only).
        check : bool
            Raise :class:`MissingCalibrationError` listing every missing calibration of all groups.

        Returns
        -------
        list of Job
        """
        spec = self.recipes[recipe]
        if ifu_mode not in _IFU_MODES:
            raise ValueError(f"ifu_mode={ifu_mode!r}: expected one of {', '.join(_IFU_MODES)}")
        if labels is not None and len(labels) != len(groups):
            raise ValueError(f"{recipe}: {len(labels)} labels for {len(groups)} groups")
        include_planned = self.fakemode if include_planned is None else include_planned
        candidates = self.catalogue.candidates_by_tag(include_planned=include_planned)
        for candidate in self.raw_candidates:
            candidates.setdefault(candidate.tag, []).append(candidate)
        merged_parameters = {**spec.default_parameters, **(parameters or {})}
        merged_parameters = {key: value for key, value in merged_parameters.items() if value is not None}
        if self.check_parameters:
            # A typo in a parameter name must stop the step here, not after hours of other jobs. The shipped
            # defaults are checked by the test suite; only what a user set is asked to esorex (~0.1 s, once).
            shipped = self._shipped.get(recipe)
            shipped_defaults = shipped.default_parameters if shipped is not None else {}
            user_set = [name for name in merged_parameters
                        if name in (parameters or {}) or name not in shipped_defaults]
            if user_set:
                check_parameters(recipe, user_set, self.esorex)
        jobs = []
        for index, group in enumerate(groups):
            frames = sorted((frame if isinstance(frame, InputFrame) else InputFrame.from_raw_row(frame)
                             for frame in group), key=lambda frame: frame.mjd)
            if not frames:
                raise ValueError(f"{recipe}: group {index} has no input frame")
            wrong = sorted({frame.tag for frame in frames} - set(spec.raw_tags))
            if wrong:
                raise ValueError(f"{recipe}: input tag(s) {', '.join(wrong)} in group {index}; the recipe takes "
                                 f"{', '.join(spec.raw_tags)}")
            n_exposures = len(_exposures(frames))
            if n_exposures < spec.min_raw and len(frames) < spec.min_raw:
                raise ValueError(f"{recipe}: group {index} ({frames[0].tpl_start or frames[0].path}) has "
                                 f"{len(frames)} input frame(s); the recipe needs at least {spec.min_raw}")
            label = _safe_name(labels[index] if labels is not None else _default_label(frames))
            if ifus:
                group_ifus = tuple(sorted(ifus))
            elif not spec.takes_nifu and all(frame.tag not in _RAW_INPUT_TAGS for frame in frames) \
                    and not any(frame.ifu for frame in frames):
                # Merged products (IMAGE_FOV, PIXTABLE_REDUCED ...): no IFU structure, no per-IFU calibration.
                group_ifus = ()
            else:
                group_ifus = self.ifus_of(frames)
            jobs.extend(self._plan_group(spec, frames, label, group_ifus, ifu_mode, merged_parameters,
                                         candidates, calibrations or {}, skip_calibrations))
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"{recipe}: two groups have the same label; give distinct labels "
                             f"({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
        for job in jobs:
            # Later plans may build on these products before they exist (include_planned / fakemode);
            # a job with registered (done) products keeps them until it runs again.
            if all(record.status != "done" for record in self.catalogue.of_job(job.name)):
                self._register(job, status="planned")
        if check:
            self._check_missing(jobs)
        return jobs

    def _check_missing(self, jobs):
        """Raise for missing calibrations; in fakemode only warn (a dry run must go through)."""
        try:
            raise_missing(jobs)
        except MissingCalibrationError as error:
            if not self.fakemode:
                raise
            logger.warning("fakemode: %s", error)
            self.log.comment(f"fakemode warning: {error}")

    def _plan_group(self, spec: RecipeSpec, frames, label, group_ifus, ifu_mode, parameters, candidates,
                    explicit, skip_calibrations) -> list:
        if spec.takes_nifu:
            mode = ifu_mode
            if mode == IFU_AUTO:
                mode = IFU_MERGED if len(group_ifus) == instrument.N_IFUS else IFU_FANOUT
            if mode == IFU_MERGED and len(group_ifus) != instrument.N_IFUS:
                raise ValueError(f"{spec.name} {label}: ifu_mode='merged' (--nifu=-1) fails unless all "
                                 f"{instrument.N_IFUS} IFUs are present; only {list(group_ifus)} are. "
                                 "Use ifu_mode='fanout'")
            if mode == IFU_FANOUT:
                threads = max(1, self.n_cpus // min(len(group_ifus), self.n_cpus))
                units = [((ifu,), {"nifu": ifu}, f"_ifu{ifu:02d}", threads) for ifu in group_ifus]
            else:
                merge = {"merge": True} if spec.takes_merge else {}
                units = [(group_ifus, {"nifu": -1, **merge}, "", self.n_cpus)]
        else:
            units = [(group_ifus, {}, "", self.n_cpus)]
        jobs = []
        for job_ifus, ifu_parameters, suffix, threads in units:
            name = f"{spec.name}_{label}{suffix}"
            job_parameters = {**ifu_parameters, **parameters}
            associations, missing = associate(
                spec, frames, job_name=name, ifus=job_ifus, candidates=candidates, static=self.static_calibrations,
                validity=self.validity, explicit=explicit, rules=self.rules, skip=skip_calibrations)
            if not self.fakemode:
                missing.extend(_missing_on_disk(name, [a for a in associations if not a.planned]))
            merged = bool(ifu_parameters.get("merge")) or ifu_parameters.get("nifu") == -1
            products = self._plan_products(spec, frames, label, job_ifus, merged, job_parameters)
            depends = tuple(sorted({job for association in associations if association.planned
                                    for job in association.source_jobs}))
            memory = spec.memory_gb * (min(threads, len(job_ifus)) if merged else 1)
            jobs.append(Job(name=name, recipe=spec.name, label=label, frames=list(frames), ifus=tuple(job_ifus),
                            parameters=job_parameters, associations=associations, missing=missing,
                            products=products, sof=self._folder(("sof",)) / f"{name}.sof",
                            output_dir=self._folder(("pipe_products",)) / name, log_name=f"{name}.log",
                            depends_on=depends, threads=threads, memory_gb=memory))
        return jobs

    def _destination(self, folder: tuple, raw_tag: str) -> Path:
        key = folder[0].replace("{raw_folder}", _RAW_TAG_FOLDERS.get(raw_tag, "object"))
        if key == "master" and len(folder) > 1:
            return self._folder(("master", folder[1]))
        return self._folder((key,))

    def _folder(self, key: tuple) -> Path:
        """Layout folder, cached (planning asks for the same few folders thousands of times)."""
        if key not in self._folders:
            self._folders[key] = self.layout.master_folder(key[1]) if len(key) > 1 else self.layout.folder(key[0])
        return self._folders[key]

    def _plan_products(self, spec, frames, label, job_ifus, merged, parameters) -> list:
        raw_tag = frames[0].tag
        exposures = _exposures(frames)
        planned = []
        for output in spec.products_for(parameters):
            tag = output.tag.replace("{raw}", raw_tag)
            folder = self._destination(output.folder, raw_tag)
            ifus = job_ifus if output.per_ifu and not merged else (0,)
            for ifu in ifus:
                ifu_suffix = f"-{ifu:02d}" if ifu else ""
                if output.naming == NAMING_DATEOBS:
                    for number, exposure in enumerate(exposures, start=1):
                        exposure_label = label if len(exposures) == 1 else _safe_name(
                            f"{exposure.tpl_start}_{exposure.expno:04d}" if exposure.expno >= 0
                            else f"{label}_{number:04d}")
                        planned.append(PlannedProduct(tag, f"{tag}_{number:04d}{ifu_suffix}.fits",
                                                      folder / final_product_name(tag, exposure_label, ifu),
                                                      ifu, number, output.required))
                elif output.naming == NAMING_SEQUENCE:
                    # One file per filter of --filter (IMAGE_FOV), named after the filter.
                    members = [item for item in str(parameters.get("filter", "white")).split(",") if item] or ["1"]
                    for number, member in enumerate(members, start=1):
                        planned.append(PlannedProduct(tag, f"{tag}_{number:04d}{ifu_suffix}.fits",
                                                      folder / final_product_name(tag, label, ifu, member),
                                                      ifu, 0, output.required))
                else:
                    planned.append(PlannedProduct(tag, f"{tag}{ifu_suffix}.fits",
                                                  folder / final_product_name(tag, label, ifu), ifu, 0,
                                                  output.required))
        return planned

    # ------------------------------------------------------------------ running
    def run(self, jobs: Sequence[Job], *, overwrite: bool | None = None, step: str = "") -> StepReport:
        """Run planned jobs: resume check, SOFs, execution, product moves, tables, replay log.

        Raises
        ------
        MissingCalibrationError
            If any job lacks a required calibration (nothing runs then).
        """
        if not self.fakemode:
            names = {job.name for job in jobs}
            for job in jobs:
                job.missing.extend(item for item in _missing_on_disk(job.name, job.associations, names)
                                   if item not in job.missing)
        self._check_missing(jobs)
        overwrite = self.overwrite if overwrite is None else overwrite
        report = StepReport(list(jobs))
        recipes = sorted({job.recipe for job in jobs})
        self.log.stamp(f"step {step or ', '.join(recipes)}: {len(jobs)} job(s)")
        job_tables = {recipe: JobTable(None if self.fakemode else self.layout.folder("astro_tables"), recipe)
                      for recipe in recipes}
        fingerprints, to_run = {}, []
        for job in jobs:
            fingerprints[job.name] = "" if self.fakemode else self._fingerprint(job)
            previous = job_tables[job.recipe].get(job.name)
            if not overwrite and self._is_up_to_date(job, previous, fingerprints[job.name]):
                logger.info("%s is up to date (same inputs, calibrations, parameters and pipeline): skipped",
                            job.name)
                self.log.comment(f"{job.name}: up to date, not run again")
                report.results[job.name] = JobResult(job.name, STATUS_UPTODATE, message="up to date")
                if all(record.status != "done" for record in self.catalogue.of_job(job.name)):
                    self._register(job, status="done")  # e.g. the products table was deleted
                continue
            to_run.append(job)
        if to_run and self.executor.executes:
            self.layout.folder("esorex_log", create=True)
        executable = [self._exec_job(job) for job in to_run]
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        # fakemode runs everything in this thread: one write of the whole step's log block.
        with self.log.batch() if not self.executor.executes else contextlib.nullcontext():
            results = self.executor.run(executable, label=step or jobs[0].recipe) if executable else {}
        for job in to_run:
            result = results[job.name]
            report.results[job.name] = result
            if result.status == STATUS_PLANNED:
                self._register(job, status="planned")
            elif not result.ok:
                self.log.comment(f"FAILED {job.name}: {result.message}")
                with self._catalogue_lock:
                    # Whatever it made before is no longer what its inputs and parameters say: unregister.
                    self.catalogue.register(job.name, [])
            if not self.fakemode:
                job_tables[job.recipe].update(self._job_record(job, result, fingerprints[job.name], started))
        if not self.fakemode:
            for recipe in recipes:
                job_tables[recipe].save()
                self.catalogue.save(recipe)
        logger.info("%s: %s", step or ", ".join(recipes), report.summary())
        return report

    def _fingerprint(self, job: Job) -> str:
        return fingerprint(job.recipe, job.parameters, [frame.path for frame in job.frames],
                           job.calibration_paths(), self.version, job.ifus)

    def _is_up_to_date(self, job: Job, previous: JobRecord | None, job_fingerprint: str) -> bool:
        if self.fakemode or previous is None or previous.status != STATUS_DONE:
            return False
        if previous.fingerprint != job_fingerprint:
            return False
        return all(product.destination.is_file() for product in job.products if product.required)

    def _exec_job(self, job: Job) -> ExecJob:
        sof_text = write_sof(job.sof, job.sof_entries())
        if self.executor.executes and job.output_dir.exists():
            shutil.rmtree(job.output_dir)  # leftovers of an interrupted run must not pass as products
        log_dir = self.layout.folder("esorex_log")
        argv = build_command(job.recipe, job.sof, output_dir=job.output_dir, log_dir=log_dir,
                             log_file=job.log_name, parameters=job.parameters, esorex=self.esorex,
                             esorex_options=self.esorex_options)

        def on_start(exec_job, final_argv, threads):
            with self.log.batch():
                self.log.comment(f"{job.name}: {len(job.frames)} input(s), IFU(s) {_ifu_text(job.ifus)}")
                self.log.mkdir(job.output_dir)
                self.log.mkdir(log_dir)
                self.log.mkdir(job.sof.parent)  # the replay may start from a fresh copy of Raw/ only
                self.log.write_file(job.sof, sof_text)
                self.log.command(final_argv, env={"OMP_NUM_THREADS": threads}, cwd=job.output_dir)

        return ExecJob(name=job.name, argv=argv, output_dir=job.output_dir,
                       stdout_path=log_dir / f"{job.name}.stdout", esorex_log=log_dir / job.log_name,
                       expected_products=[job.output_dir / product.esorex_name for product in job.products
                                          if product.required],
                       threads=job.threads, memory_gb=job.memory_gb, depends_on=job.depends_on,
                       finalize=lambda exec_job: self._finalize(job), on_start=on_start)

    def _finalize(self, job: Job):
        """Move the products of a successful job into the layout and register them (worker thread)."""
        with self.log.batch():
            folders = set()
            for product in job.products:
                source = job.output_dir / product.esorex_name
                if not source.is_file():
                    continue  # an optional product this run did not write
                if product.destination.parent not in folders:
                    folders.add(product.destination.parent)
                    self.log.mkdir(product.destination.parent)
                atomic_move(source, product.destination)
                self.log.move(source, product.destination)
        self._register(job, status="done")

    def _register(self, job: Job, status: str):
        exposures = _exposures(job.frames)
        records = []
        for product in job.products:
            if status == "done" and not product.destination.is_file():
                continue
            frame = exposures[product.exposure - 1] if product.exposure else job.frames[0]
            mjd = frame.mjd if product.exposure else job_mjd(job.frames)
            records.append(ProductRecord(
                tag=product.tag, path=str(product.destination), mjd=mjd, date_obs=frame.date_obs,
                ins_mode=frame.ins_mode, read_mode=frame.read_mode, ifu=product.ifu, tpl_start=frame.tpl_start,
                expno=frame.expno if product.exposure else -1, job=job.name, recipe=job.recipe, status=status,
                batch=f"{job.recipe}_{job.label}"))
        with self._catalogue_lock:
            self.catalogue.register(job.name, records)

    def _job_record(self, job: Job, result: JobResult, job_fingerprint: str, started: str) -> JobRecord:
        calibrations = {association.tag: {"paths": list(association.paths), "delta_days": association.delta_days,
                                          "rule": association.rule} for association in job.associations}
        return JobRecord(
            job=job.name, recipe=job.recipe, label=job.label, ifus=_ifu_text(job.ifus), status=result.status,
            returncode=-1 if result.returncode is None else int(result.returncode),
            duration=float(result.duration), started=started, inputs=to_json([frame.path for frame in job.frames]),
            calibrations=to_json(calibrations), parameters=to_json(job.parameters),
            products=to_json([str(product.destination) for product in job.products]),
            fingerprint=job_fingerprint if result.status == STATUS_DONE else "", message=result.message,
            sof=str(job.sof), esorex_log=str(self.layout.folder("esorex_log") / job.log_name))


def raise_missing(jobs: Sequence[Job]):
    """Raise one MissingCalibrationError listing every missing calibration of these jobs (if any)."""
    missing = [item for job in jobs for item in job.missing]
    if missing:
        raise MissingCalibrationError(missing)


def _missing_on_disk(job_name: str, associations: Sequence[Association], running_with=None) -> list:
    """Associated files that do not exist (planned ones are fine if their jobs are in ``running_with``)."""
    missing = []
    for association in associations:
        if association.planned and association.source_jobs and running_with is not None \
                and set(association.source_jobs) <= running_with:
            continue  # made by a job of the same run, which runs first
        absent = [path for path in association.paths if not Path(path).is_file()]
        if absent:
            what = "planned product not made yet" if association.planned else "file does not exist"
            missing.append(MissingCalibration(job_name, association.tag, f"{what}: {absent[0]}"))
    return missing


def to_json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _ifu_text(ifus) -> str:
    return ",".join(str(ifu) for ifu in ifus)
