"""The recipe engine: from groups of input frames to planned jobs, and from planned jobs to checked, registered
products.

``plan`` turns groups of frames into :class:`Job` objects in a working *area* (a pointing, or a night's shared
calibrations): IFU fan-out or ESO's in-process mode, calibrations associated by ESO's rules (every missing one
reported at once), expected products and their place in the layout. ``python_job`` plans a Python step of the
chain (choosing the OFFSET_LIST in force, an aperture correction...) the same way. ``run`` hands the jobs to the
one :class:`~pymusepipe.scheduler.Scheduler` as a dependency graph: each job, when its inputs are ready, is
skipped if up to date (same fingerprint, products intact), else its SOF and replay-log block are written and it
runs; the products of a successful job are moved into the layout with an atomic rename, recorded with their
checksum, and the area's tables are saved at once, so a crash never leaves a partial file counted as a product
and loses no finished job.
"""
from __future__ import annotations

import datetime
import functools
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from . import instrument
from .association import (Association, CalibrationCandidate, InputFrame, MissingCalibration,
                          MissingCalibrationError, ValidityTable, associate, job_mjd)
from .esorex import available_cpus, build_command, check_parameters, pipeline_version, write_sof
from .executors import Executor, FakeExecutor, LocalExecutor
from .atomic import atomic_move
from .layout import AreaLayout
from .memory import memory_advice, memory_need
from .products import (CatalogueSet, JobRecord, JobTable, PlannedProduct, ProductCatalogue, ProductRecord,
                       file_checksum, final_product_name, fingerprint, product_integrity)
from .recipes import NAMING_DATEOBS, NAMING_SEQUENCE, RecipeSpec, RecipeTable, default_recipe_table
from .replaylog import ReplayLog
from .scheduler import (STATUS_DONE, STATUS_PLANNED, STATUS_UPTODATE, Command, JobResult, Scheduler, Task)

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
    """One esorex run (or one Python step), fully planned.

    Attributes
    ----------
    name : str
        Unique and descriptive (``muse_bias_2018-01-01T10:00:00.000_ifu03``); names the SOF, the esorex log
        and the output folder.
    recipe : str
        esorex recipe, or ``python:<what>`` for a Python step.
    label : str
        Template start (or template start + exposure): goes into the product names.
    step : str
        The chain's step the job belongs to (``bias``, ``scibasic_all`` ...).
    area : AreaLayout
        Where it works and writes (a pointing, or a night's calibration area).
    frames : list of InputFrame
        Main inputs, sorted by MJD.
    ifus : tuple of int
    parameters : dict
        Everything passed as ``--name=value`` (including ``nifu``/``merge``).
    associations : list of Association
    missing : list of MissingCalibration
    products : list of PlannedProduct
    sof, output_dir : Path
    log_name : str
        esorex ``--log-file`` (inside ``Esorex_log``).
    depends_on : tuple of str
        Jobs producing inputs or calibrations of this one.
    threads : int
        Most threads worth giving it.
    memory_gb : float
        Modelled peak memory with ``threads`` threads (:mod:`pymusepipe.memory`).
    memory_for : callable, optional
        ``(threads, margin=True) -> GB``: the need with fewer threads (in ESO's merged mode each thread holds an
        IFU); ``margin=False`` gives it without the safety margin (what the job may use running alone).
    function : callable, optional
        A Python step: called with no argument, writes the products (atomically), returns a message.
    log_argv : tuple of str
        A Python step's equivalent command line, for the replay log.
    postprocess : callable, optional
        Called after the products are moved, before they are registered (e.g. the narrow-field aperture
        correction of a standard-star response); ``postprocess_argv`` is its replay-log command.
    note : str
        What the planning decided for this job and why (recorded in the job table).
    """

    name: str
    recipe: str
    label: str
    step: str
    area: AreaLayout
    frames: list
    ifus: tuple
    parameters: dict
    associations: list
    missing: list
    products: list
    sof: Path | None
    output_dir: Path | None
    log_name: str
    depends_on: tuple = ()
    threads: int = 1
    memory_gb: float = 1.0
    memory_for: Callable | None = None
    function: Callable | None = None
    log_argv: tuple = ()
    postprocess: Callable | None = None
    postprocess_argv: tuple = ()
    note: str = ""

    @property
    def is_python(self) -> bool:
        return self.function is not None

    def calibration_paths(self) -> dict:
        """tag -> tuple of paths of the associated calibrations."""
        return {association.tag: association.paths for association in self.associations}

    def sof_entries(self) -> list:
        entries = [(frame.path, frame.tag, frame.mjd) for frame in self.frames]
        for association in self.associations:
            entries.extend((path, association.tag, None) for path in association.paths)
        return entries


@dataclass
class StepReport:
    """What happened to a set of jobs: ``results`` maps job name -> JobResult."""

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

    def of_jobs(self, jobs) -> "StepReport":
        """The report of some of the jobs (e.g. one step's, in one pointing)."""
        return StepReport(list(jobs), {job.name: self.results[job.name] for job in jobs if job.name in self.results})

    def for_step(self, step: str) -> "StepReport":
        jobs = [job for job in self.jobs if job.step == step]
        return StepReport(jobs, {job.name: self.results[job.name] for job in jobs if job.name in self.results})

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
    """Rows of the raw table usable directly as calibrations (raw ILLUM, archive masters, GEOMETRY_TABLE...)."""
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


def _night_of_mjd(mjd: float) -> str:
    # Paranal is at UTC-4/-3: the date of the evening a night started is that of MJD - 0.5 d (as the raw table).
    base = datetime.datetime(1858, 11, 17) + datetime.timedelta(days=float(mjd) - 0.5)
    return base.strftime("%Y-%m-%d")


class RecipeEngine:
    """Plans and runs the jobs of a reduction, in any number of areas (pointings, nights).

    Parameters
    ----------
    root : Path
        Data root (paths in tables are relative to it).
    recipes : RecipeTable, optional
        Defaults to :func:`~pymusepipe.recipes.default_recipe_table`.
    static_calibrations : mapping tag -> path
        ``PipelineConfig.static_calibrations()``.
    validity : ValidityTable, optional
        Time-dependent GEOMETRY_TABLE / ASTROMETRY_WCS (``time_astrometry=True``).
    raw_table : astropy Table, optional
        The raw table, for raw ILLUM frames and calibrations delivered with the data.
    executor : Executor, optional
        Default: :class:`~pymusepipe.executors.FakeExecutor` in fakemode, else a LocalExecutor.
    fakemode : bool
        Plan, log the commands, run nothing, write nothing a real run reads (no SOF file, no table).
    log : ReplayLog
        The replay log of this run.
    overwrite : bool
        Re-run jobs even when up to date.
    rules : mapping, optional
        Association rules (:func:`~pymusepipe.association.default_association_rules`).
    prefer_archive : bool
        Prefer masters delivered with the data over masters made here from raw frames.
    esorex : str
    esorex_options : sequence of str
        esorex options for every run (default ``--no-checksum``, as the original tool).
    version : str, optional
        MUSE pipeline version (default: asked to esorex once; ``'unknown'`` in fakemode without esorex).
    check_parameters : bool, optional
        Check parameter names against ``esorex --params`` when planning (default: when esorex is there).
    """

    def __init__(self, root, *, recipes: RecipeTable | None = None, static_calibrations: Mapping | None = None,
                 validity: ValidityTable | None = None, raw_table=None, executor: Executor | None = None,
                 fakemode: bool = False, log: ReplayLog | None = None, overwrite: bool = False,
                 rules: Mapping | None = None, prefer_archive: bool = False, esorex: str = "esorex",
                 esorex_options: Sequence[str] = ("--no-checksum",), version: str | None = None,
                 check_parameters: bool | None = None):
        self.root = Path(root).absolute()
        self.recipes = recipes if recipes is not None else default_recipe_table()
        self.static_calibrations = {tag: str(path) for tag, path in (static_calibrations or {}).items()}
        self.validity = validity
        self.raw_candidates = raw_calibration_candidates(raw_table) if raw_table is not None else []
        self.fakemode = fakemode
        self.executor = executor or (FakeExecutor() if fakemode else LocalExecutor())
        self.overwrite = overwrite
        self.rules = rules
        self.prefer_archive = prefer_archive
        self.esorex = esorex
        self.esorex_options = tuple(esorex_options)
        self.version = version or self._ask_version()
        # Parameter names are checked against the installed recipes unless told otherwise (or unavailable).
        self.check_parameters = (self.version != "unknown") if check_parameters is None else check_parameters
        self._shipped = default_recipe_table()
        self.catalogue = CatalogueSet()
        self.log = log
        self._job_tables: dict = {}
        self._ifu_cache: dict = {}
        self._planned_ifus: dict = {}     # job name -> IFUs, for the jobs planned in this session
        self._folders: dict = {}
        self._areas: dict = {}
        self.area_hooks: list = []          # callables(area) run before the first job of an area runs
        self._prepared_areas: set = set()
        self._forced: set = set()
        self._area_locks: list = []

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
        capacity = self.executor.capacity()
        if capacity is not None:
            return int(capacity.cpus)
        return len(getattr(self.executor, "cpus", None) or available_cpus())

    def memory_budget(self) -> float:
        """Memory (GB) the jobs of a run may use together (the executor's, or its largest worker's)."""
        return self.executor.job_memory_limit()

    # ------------------------------------------------------------------ areas and tables
    def add_area(self, area: AreaLayout) -> AreaLayout:
        """Make an area's registered products visible to association (read from its tables once)."""
        key = area.base_dir
        if key not in self._areas:
            self._areas[key] = area
            self.catalogue.add(key, ProductCatalogue(area.folder("astro_tables"), root=self.root))
        return self._areas[key]

    def area_catalogue(self, area: AreaLayout) -> ProductCatalogue:
        self.add_area(area)
        return self.catalogue.get(area.base_dir)

    def job_table(self, area: AreaLayout, recipe: str) -> JobTable:
        key = (area.base_dir, recipe)
        if key not in self._job_tables:
            self._job_tables[key] = JobTable(area.folder("astro_tables"), recipe, root=self.root)
        return self._job_tables[key]

    def set_raw_table(self, raw_table):
        """Raw frames usable as calibrations (raw ILLUM, archive masters) come from this table."""
        self.raw_candidates = raw_calibration_candidates(raw_table) if raw_table is not None else []

    # ------------------------------------------------------------------ planning
    def ifus_of(self, frames: Sequence[InputFrame]) -> tuple:
        """IFUs of a group: those of per-IFU product inputs, else the ``CHANnn`` extensions common to all raw
        files (read once per file). In fakemode a raw file that does not exist counts as holding all 24."""
        product_ifus = sorted({frame.ifu for frame in frames if frame.ifu})
        if product_ifus:
            return tuple(product_ifus)
        common = None
        for frame in frames:
            common = set(self.raw_ifus(frame.path)) if common is None else common & set(self.raw_ifus(frame.path))
        if not common:
            raise ValueError(f"the {len(frames)} frames starting with {frames[0].path} share no IFU")
        return tuple(sorted(common))

    def ifus_held(self, paths: Iterable[str]) -> int:
        """How many IFUs merged inputs (``PIXTABLE_REDUCED`` ...) at ``paths`` hold together: those of the jobs
        that make them, planned in this session or recorded in their job tables (1 when unknown)."""
        by_path = self.catalogue.by_path()
        held = 1
        for path in paths:
            record = by_path.get(str(path))
            if record is None or not record.job:
                continue
            ifus = self._planned_ifus.get(record.job)
            if ifus is None:
                ifus = self._recorded_ifus(record)
            held = max(held, len(ifus))
        return held

    def _recorded_ifus(self, record) -> tuple:
        for key, area in self._areas.items():
            if Path(record.path).is_relative_to(Path(key)):
                previous = self.job_table(area, record.recipe).get(record.job)
                if previous is not None:
                    return tuple(int(ifu) for ifu in str(previous.ifus).split(",") if ifu.strip())
        return ()

    def raw_ifus(self, path) -> tuple:
        """IFUs (``CHANnn`` extensions) of one raw file, cached."""
        path = str(path)
        if path not in self._ifu_cache:
            if Path(path).is_file():
                self._ifu_cache[path] = detect_ifus(path)
            elif self.fakemode:
                self._ifu_cache[path] = tuple(range(1, instrument.N_IFUS + 1))
            else:
                raise FileNotFoundError(f"input frame {path} does not exist")
        return self._ifu_cache[path]

    def plan(self, recipe: str, groups: Sequence, *, area: AreaLayout, step: str = "",
             labels: Sequence[str] | None = None, parameters: Mapping | None = None,
             ifus: Sequence[int] | None = None, ifu_mode: str = IFU_AUTO, calibrations: Mapping | None = None,
             skip_calibrations: Sequence[str] = (), include_planned: bool = True, check: bool = True,
             qualifiers: Mapping | None = None) -> list:
        """Plan the jobs of a recipe, one group of input frames (a template, an exposure...) per run.

        Parameters
        ----------
        recipe : str
        groups : sequence of sequences of InputFrame (or raw-table rows)
        area : AreaLayout
            Where the jobs work and their products go.
        step : str
            The chain's step (recorded with the jobs and products).
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
            One mapping for every group, or a sequence of mappings (one per group).
        skip_calibrations : sequence of str
            Optional calibrations not to use (e.g. ``["ILLUM"]`` when ``illum=False``).
        include_planned : bool
            Accept products of jobs not run yet (planned in this run) as inputs and calibrations.
        check : bool
            Raise :class:`MissingCalibrationError` listing every missing calibration of all groups.
        qualifiers : mapping tag -> str, optional
            Qualifier recorded with products of a tag (e.g. the filter of IMAGE_FOV is set automatically).

        Returns
        -------
        list of Job
        """
        spec = self.recipes[recipe]
        self.add_area(area)
        if ifu_mode not in _IFU_MODES:
            raise ValueError(f"ifu_mode={ifu_mode!r}: expected one of {', '.join(_IFU_MODES)}")
        if labels is not None and len(labels) != len(groups):
            raise ValueError(f"{recipe}: {len(labels)} labels for {len(groups)} groups")
        per_group_calibrations = isinstance(calibrations, (list, tuple))
        if per_group_calibrations and len(calibrations) != len(groups):
            raise ValueError(f"{recipe}: {len(calibrations)} calibration sets for {len(groups)} groups")
        candidates = self.catalogue.candidates_by_tag(include_planned=include_planned or self.fakemode)
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
        producers = self._producers()
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
            explicit = (calibrations[index] if per_group_calibrations else calibrations) or {}
            jobs.extend(self._plan_group(spec, frames, label, step, area, group_ifus, ifu_mode, merged_parameters,
                                         candidates, explicit, skip_calibrations, producers, qualifiers or {}))
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"{recipe}: two groups have the same label; give distinct labels "
                             f"({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
        for job in jobs:
            self._register_planned(job)
        if check:
            self.check_missing(jobs)
        return jobs

    def _producers(self) -> dict:
        """path -> name of the job that makes (or made) it, for dependencies on explicit inputs."""
        return {record.path: record.job for record in self.catalogue.records if record.job}

    def check_missing(self, jobs):
        """Raise for missing calibrations; in fakemode only warn (a dry run must go through)."""
        missing = [item for job in jobs for item in job.missing]
        if not missing:
            return
        error = MissingCalibrationError(missing)
        if not self.fakemode:
            raise error
        logger.warning("fakemode: %s", error)
        if self.log is not None:
            self.log.comment(f"fakemode warning: {error}")

    def _plan_group(self, spec: RecipeSpec, frames, label, step, area, group_ifus, ifu_mode, parameters,
                    candidates, explicit, skip_calibrations, producers, qualifiers) -> list:
        n_cpus = self.n_cpus
        if spec.takes_nifu:
            mode = ifu_mode
            if mode == IFU_AUTO:
                # ESO's in-process mode needs every IFU, and its memory (one IFU per thread) must fit.
                fits_budget = memory_need(spec.name, ifus=len(group_ifus), threads=min(n_cpus, len(group_ifus)),
                                          merged=True) <= self.memory_budget()
                mode = IFU_MERGED if len(group_ifus) == instrument.N_IFUS and fits_budget else IFU_FANOUT
            if mode == IFU_MERGED and len(group_ifus) != instrument.N_IFUS:
                raise ValueError(f"{spec.name} {label}: ifu_mode='merged' (--nifu=-1) fails unless all "
                                 f"{instrument.N_IFUS} IFUs are present; only {list(group_ifus)} are. "
                                 "Use ifu_mode='fanout'")
            if mode == IFU_FANOUT:
                units = [((ifu,), {"nifu": ifu}, f"_ifu{ifu:02d}") for ifu in group_ifus]
            else:
                merge = {"merge": True} if spec.takes_merge else {}
                units = [(group_ifus, {"nifu": -1, **merge}, "")]
        else:
            units = [(group_ifus, {}, "")]
        jobs = []
        for job_ifus, ifu_parameters, suffix in units:
            name = f"{spec.name}_{label}{suffix}"
            job_parameters = {**ifu_parameters, **parameters}
            associations, missing = associate(
                spec, frames, job_name=name, ifus=job_ifus, candidates=candidates, static=self.static_calibrations,
                validity=self.validity, explicit=explicit, rules=self.rules, skip=skip_calibrations,
                prefer_archive=self.prefer_archive)
            if not self.fakemode:
                missing.extend(_missing_on_disk(name, associations, producers))
            merged = bool(ifu_parameters.get("merge")) or ifu_parameters.get("nifu") == -1
            products = self._plan_products(spec, frames, label, area, job_ifus, merged, job_parameters,
                                           qualifiers)
            depends = {job for association in associations if association.planned
                       for job in association.source_jobs}
            # Inputs and explicit calibrations that are products of other jobs of the run come after them.
            for path in [frame.path for frame in frames] + [p for a in associations for p in a.paths]:
                producer = producers.get(path)
                if producer and producer != name:
                    depends.add(producer)
            n_exposures = max(len(_exposures(frames)), 1)
            # A merged input holds the IFUs of the job that made it: a full exposure's PIXTABLE_REDUCED holds 24.
            ifus_read = len(job_ifus) or self.ifus_held(frame.path for frame in frames)
            memory = functools.partial(memory_need, spec.name, ifus=ifus_read,
                                       exposures=n_exposures, merged=merged, parameters=job_parameters)
            jobs.append(Job(name=name, recipe=spec.name, label=label, step=step, area=area, frames=list(frames),
                            ifus=tuple(job_ifus), parameters=job_parameters, associations=associations,
                            missing=missing, products=products,
                            sof=self._folder(area, ("sof",)) / f"{name}.sof",
                            output_dir=self._folder(area, ("pipe_products",)) / name, log_name=f"{name}.log",
                            depends_on=tuple(sorted(depends)), threads=n_cpus, memory_gb=memory(threads=n_cpus),
                            memory_for=memory))
        return jobs

    def _destination(self, area, folder: tuple, raw_tag: str) -> Path:
        key = folder[0].replace("{raw_folder}", _RAW_TAG_FOLDERS.get(raw_tag, "object"))
        if key == "master" and len(folder) > 1:
            return self._folder(area, ("master", folder[1]))
        return self._folder(area, (key,))

    def _folder(self, area, key: tuple) -> Path:
        """Layout folder, cached (planning asks for the same few folders thousands of times)."""
        cache_key = (area.base_dir, key)
        if cache_key not in self._folders:
            self._folders[cache_key] = area.master_folder(key[1]) if len(key) > 1 else area.folder(key[0])
        return self._folders[cache_key]

    def _plan_products(self, spec, frames, label, area, job_ifus, merged, parameters, qualifiers) -> list:
        raw_tag = frames[0].tag
        exposures = _exposures(frames)
        planned = []
        for output in spec.products_for(parameters):
            tag = output.tag.replace("{raw}", raw_tag)
            folder = self._destination(area, output.folder, raw_tag)
            ifus = job_ifus if output.per_ifu and not (merged and output.mergeable) else (0,)
            qualifier = qualifiers.get(tag, "")
            for ifu in ifus:
                ifu_suffix = f"-{ifu:02d}" if ifu else ""
                if output.naming == NAMING_DATEOBS:
                    for number, exposure in enumerate(exposures, start=1):
                        exposure_label = label if len(exposures) == 1 else _safe_name(
                            f"{exposure.tpl_start}_{exposure.expno:04d}" if exposure.expno >= 0
                            else f"{label}_{number:04d}")
                        planned.append(PlannedProduct(tag, f"{tag}_{number:04d}{ifu_suffix}.fits",
                                                      folder / final_product_name(tag, exposure_label, ifu),
                                                      ifu, number, output.required, qualifier))
                elif output.naming == NAMING_SEQUENCE:
                    # One file per filter of --filter (IMAGE_FOV), named after the filter.
                    members = [item for item in str(parameters.get("filter", "white")).split(",") if item] or ["1"]
                    for number, member in enumerate(members, start=1):
                        planned.append(PlannedProduct(tag, f"{tag}_{number:04d}{ifu_suffix}.fits",
                                                      folder / final_product_name(tag, label, ifu, member),
                                                      ifu, 0, output.required, member))
                else:
                    planned.append(PlannedProduct(tag, f"{tag}{ifu_suffix}.fits",
                                                  folder / final_product_name(tag, label, ifu), ifu, 0,
                                                  output.required, qualifier))
        return planned

    def python_job(self, name: str, *, step: str, area: AreaLayout, function: Callable, log_argv: Sequence[str],
                   frames: Sequence[InputFrame] = (), products: Sequence[PlannedProduct] = (),
                   depends_on: Sequence[str] = (), label: str = "", parameters: Mapping | None = None) -> Job:
        """Plan a Python step of the chain (it runs in this process, in dependency order with the esorex jobs).

        ``function()`` must write ``products`` at their destinations (atomically) and return a message;
        ``log_argv`` is the equivalent command line for the replay log (``python3 -m pymusepipe.tasks ...``).
        Inputs that are products of other jobs make it depend on them.
        """
        self.add_area(area)
        producers = self._producers()
        depends = set(depends_on) | {producers[frame.path] for frame in frames if frame.path in producers}
        depends.discard(name)
        job = Job(name=name, recipe=f"python:{step}", label=label or name, step=step, area=area, frames=list(frames),
                  ifus=(), parameters=dict(parameters or {}), associations=[], missing=[], products=list(products),
                  sof=None, output_dir=None, log_name="", depends_on=tuple(sorted(depends)), threads=1,
                  memory_gb=0.5, function=function, log_argv=tuple(str(item) for item in log_argv))
        self._register_planned(job)
        return job

    def _register_planned(self, job: Job):
        # Later plans may build on these products before they exist; a job with registered (done) products
        # keeps them until it runs again.
        self._planned_ifus[job.name] = tuple(job.ifus)
        if all(record.status not in ("done", "cleaned") for record in self.catalogue.of_job(job.name)):
            self._register(job, status="planned")

    # ------------------------------------------------------------------ running
    def run(self, jobs: Sequence[Job], *, overwrite: bool | None = None, label: str = "") -> StepReport:
        """Run planned jobs as one dependency graph; returns what happened to each.

        Raises
        ------
        MissingCalibrationError
            If any job lacks a required calibration that no job of the run makes (nothing runs then).
        RunInterrupted
            On Ctrl-C (running jobs stopped, none recorded as failed).
        """
        jobs = list(jobs)
        for job in jobs:
            self.add_area(job.area)
        if not self.fakemode:
            names = {job.name for job in jobs}
            producers = self._producers()
            for job in jobs:
                found = _missing_on_disk(job.name, job.associations, producers, names) + \
                    _missing_inputs(job, producers, names)
                job.missing = [item for item in job.missing if "not made by this run" not in item.reason]
                job.missing.extend(item for item in found if item not in job.missing)
        self.check_missing(jobs)
        overwrite = self.overwrite if overwrite is None else overwrite
        self._forced = set() if self.fakemode else self._remakes_of_cleaned(jobs, overwrite)
        if self.log is not None:
            self.log.stamp(f"{label or 'run'}: {len(jobs)} job(s)")
        tasks = [_EngineTask(self, job, overwrite) for job in jobs]
        try:
            results = Scheduler(self.executor).run(tasks, label=label)
        finally:
            self._release_area_locks()
        report = StepReport(jobs, results)
        logger.info("%s: %s", label or "run", report.summary())
        return report

    def _lock_area(self, area):
        """Hold an area's lock while this run writes into it (a night's calibrations may be shared with another
        run: it finds the area locked, and its job fails with the holder named, rather than two esorex
        writing the same products)."""
        from .lock import FolderLock

        area.base_dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(area.base_dir, purpose=area.name).acquire()
        self._area_locks.append(lock)

    def _release_area_locks(self):
        for lock in reversed(self._area_locks):
            lock.release()
        self._area_locks = []
        self._prepared_areas = set()

    def _remakes_of_cleaned(self, jobs, overwrite) -> set:
        """Jobs to run again because a job that will run reads products cleaned away since (their makers)."""
        records = {record.path: record for record in self.catalogue.records}
        by_name = {job.name: job for job in jobs}
        forced = set()
        for job in reversed(jobs):
            inputs = [frame.path for frame in job.frames] + [p for a in job.associations for p in a.paths]
            cleaned = [records[path] for path in inputs if path in records and records[path].status == "cleaned"]
            if not cleaned:
                continue
            will_run = overwrite or job.name in forced or self._fingerprint_changed(job)
            if will_run:
                for record in cleaned:
                    if record.job in by_name:
                        forced.add(record.job)
                        logger.info("%s: remade for %s (its product %s was cleaned)", record.job, job.name,
                                    Path(record.path).name)
        return forced

    def _fingerprint_changed(self, job) -> bool:
        previous = self.job_table(job.area, job.recipe).get(job.name)
        return previous is None or previous.status != STATUS_DONE or previous.fingerprint != self.fingerprint_of(job)

    def clean(self, records, *, reason: str) -> tuple:
        """Delete product files to save disk, keeping their records (status ``cleaned``) so that resume knows
        what they were; the deletions go to the replay log. Returns (files, bytes)."""
        count = size = 0
        touched = set()
        for record in records:
            path = Path(record.path)
            if record.status != "done" or not path.is_file():
                continue
            size += path.stat().st_size
            path.unlink()
            count += 1
            record.status = "cleaned"
            touched.add(record.job)
            if self.log is not None:
                self.log.command(["rm", "-f", str(path)])
        if self.log is not None and count:
            self.log.comment(f"cleaned {count} file(s), {size / 1e9:.2f} GB: {reason}")
        for area_key in {key for key in self._areas}:
            catalogue = self.catalogue.get(area_key)
            for recipe in {record.recipe for record in catalogue.records if record.job in touched}:
                catalogue.save(recipe)
        return count, size

    # --- what the tasks do (called by _EngineTask, in the scheduler's thread)
    def fingerprint_of(self, job: Job) -> str:
        if job.is_python:
            calibrations = {"inputs": [frame.path for frame in job.frames]}
            return fingerprint(job.recipe, {**job.parameters, "argv": " ".join(job.log_argv)}, [], calibrations,
                               self.version, (), root=self.root, checksums=self._checksums())
        return fingerprint(job.recipe, job.parameters, [frame.path for frame in job.frames],
                           job.calibration_paths(), self.version, job.ifus, root=self.root,
                           checksums=self._checksums())

    def _checksums(self) -> dict:
        # A cleaned product (deleted to save disk) still stands for what it was in its consumers' fingerprints.
        return {record.path: record.checksum for record in self.catalogue.records
                if record.status in ("done", "cleaned") and record.checksum}

    def changed_products(self, job: Job) -> list:
        """Required products of a done job that are missing or no longer what was made (size, time, then
        checksum): (path, what) pairs."""
        records = {record.path: record for record in self.catalogue.of_job(job.name)
                   if record.status in ("done", "cleaned")}
        changed = []
        for product in job.products:
            if not product.required:
                continue
            path = str(product.destination)
            record = records.get(path)
            if record is not None and record.status == "cleaned" and job.name not in self._forced:
                continue  # removed on purpose once the final products were made

            try:
                stat = Path(path).stat()
            except OSError:
                changed.append((path, "missing"))
                continue
            if record is None or record.size < 0:
                continue  # made by an older version: no integrity record to compare with
            if stat.st_size != record.size:
                changed.append((path, f"size {stat.st_size} bytes, {record.size} when made"))
            elif stat.st_mtime_ns != record.mtime_ns and record.checksum and \
                    file_checksum(path) != record.checksum:
                changed.append((path, "content changed since it was made (checksum)"))
        return changed

    def up_to_date(self, job: Job, overwrite: bool) -> str | None:
        if self.fakemode or overwrite or job.name in self._forced:
            return None
        previous = self.job_table(job.area, job.recipe).get(job.name)
        if previous is None or previous.status != STATUS_DONE:
            return None
        if previous.fingerprint != self.fingerprint_of(job):
            return None
        changed = self.changed_products(job)
        if changed:
            for path, what in changed:
                message = f"{job.name}: product {Path(path).name} {what}: making it again"
                logger.warning("%s", message)
                if self.log is not None:
                    self.log.comment(message)
            return None
        if all(record.status not in ("done", "cleaned") for record in self.catalogue.of_job(job.name)):
            self._register(job, status="done")  # e.g. the products table was deleted
            self.area_catalogue(job.area).save(job.recipe)
        if self.log is not None:
            self.log.comment(f"{job.name}: up to date, not run again")
        return "up to date (same inputs, calibrations, parameters and pipeline; products intact)"

    def prepare(self, job: Job, threads: int):
        """SOF and replay-log block of a job about to start; returns its Command (or its Python callable)."""
        if not self.fakemode and job.area.base_dir not in self._prepared_areas:
            self._lock_area(job.area)
            for hook in self.area_hooks:
                hook(job.area)
            self._prepared_areas.add(job.area.base_dir)
        if job.is_python:
            if self.log is not None:
                with self.log.batch():
                    self.log.comment(f"{job.name}: {job.step}")
                    self.log.command(list(job.log_argv))
            if self.fakemode:
                return lambda: "fakemode: not run"
            return job.function
        sof_text = "".join(f"{path} {tag}\n" for path, tag, _ in sorted(
            job.sof_entries(), key=lambda entry: (entry[2] is None, entry[2] or 0.0)))
        log_dir = job.area.folder("esorex_log")
        if not self.fakemode:
            sof_text = write_sof(job.sof, job.sof_entries())
            if job.output_dir.exists():
                shutil.rmtree(job.output_dir)  # leftovers of an interrupted run must not pass as products
            log_dir.mkdir(parents=True, exist_ok=True)
        argv = build_command(job.recipe, job.sof, output_dir=job.output_dir, log_dir=log_dir,
                             log_file=job.log_name, parameters=job.parameters, esorex=self.esorex,
                             esorex_options=self.esorex_options)
        if self.log is not None:
            with self.log.batch():
                self.log.comment(f"{job.name}: {len(job.frames)} input(s), IFU(s) {_ifu_text(job.ifus)}")
                self.log.mkdir(job.output_dir)
                self.log.mkdir(log_dir)
                self.log.mkdir(job.sof.parent)  # the replay may start from a fresh copy of Raw/ only
                self.log.write_file(job.sof, sof_text)
                self.log.esorex(argv, threads=threads, cwd=job.output_dir)
        return Command(name=job.name, argv=argv, cwd=job.output_dir, stdout_path=log_dir / f"{job.name}.stdout",
                       threads=threads, memory_gb=job.memory_gb,
                       expected_products=[job.output_dir / product.esorex_name for product in job.products
                                          if product.required],
                       esorex_log=log_dir / job.log_name)

    def finalize(self, job: Job, result: JobResult):
        """Move the products of a successful job into the layout and register them with their checksums."""
        if result.status == STATUS_PLANNED:
            if job.postprocess_argv and self.log is not None:
                self.log.command(list(job.postprocess_argv))
            return
        if not job.is_python:
            batch = self.log.batch() if self.log is not None else _nullcontext()
            with batch:
                folders = set()
                for product in job.products:
                    source = job.output_dir / product.esorex_name
                    if not source.is_file():
                        continue  # an optional product this run did not write
                    if product.destination.parent not in folders:
                        folders.add(product.destination.parent)
                        if self.log is not None:
                            self.log.mkdir(product.destination.parent)
                    atomic_move(source, product.destination)
                    if self.log is not None:
                        self.log.move(source, product.destination)
                if job.postprocess is not None:
                    message = job.postprocess()
                    if self.log is not None:
                        if message:
                            self.log.comment(f"{job.name}: {message}")
                        self.log.command(list(job.postprocess_argv))
        self._register(job, status="done")

    def discard(self, job: Job, result: JobResult):
        """A failed job: whatever it made before no longer matches its inputs and parameters."""
        if self.log is not None:
            self.log.comment(f"FAILED {job.name}: {result.message}")
        self.catalogue.register(job.area.base_dir, job.name, [])
        if not self.fakemode:
            self.area_catalogue(job.area).save(job.recipe)

    def record(self, job: Job, result: JobResult):
        """The job's row in its area's job table; both tables saved at once (nothing lost on a crash)."""
        if self.fakemode:
            return
        table = self.job_table(job.area, job.recipe)
        if result.status == STATUS_UPTODATE and table.get(job.name) is not None:
            return  # keep the record of the run that made the products
        job_fingerprint = self.fingerprint_of(job) if result.status == STATUS_DONE else ""
        calibrations = {association.tag: {"paths": list(association.paths), "delta_days": association.delta_days,
                                          "rule": association.rule} for association in job.associations}
        table.update(JobRecord(
            job=job.name, recipe=job.recipe, label=job.label, step=job.step, area=job.area.name,
            ifus=_ifu_text(job.ifus), status=result.status,
            returncode=-1 if result.returncode is None else int(result.returncode),
            duration=float(result.duration), cpu_seconds=float(result.cpu_seconds),
            max_rss_mb=float(result.max_rss_mb), threads=int(result.threads),
            started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            inputs=to_json([frame.path for frame in job.frames]), calibrations=to_json(calibrations),
            parameters=to_json(job.parameters), products=to_json([str(p.destination) for p in job.products]),
            fingerprint=job_fingerprint, message=result.message, note=job.note, sof=str(job.sof or ""),
            esorex_log=str(job.area.folder("esorex_log") / job.log_name) if job.log_name else ""))
        table.save()
        self.area_catalogue(job.area).save(job.recipe)

    def _register(self, job: Job, status: str):
        exposures = _exposures(job.frames) if job.frames else []
        records = []
        for product in job.products:
            path = str(product.destination)
            size = mtime_ns = -1
            checksum = ""
            if status == "done":
                if not product.destination.is_file():
                    continue
                size, mtime_ns, checksum = product_integrity(path)
            frame = exposures[product.exposure - 1] if product.exposure and exposures else \
                (job.frames[0] if job.frames else None)
            mjd = (frame.mjd if product.exposure else job_mjd(job.frames)) if frame is not None else 0.0
            records.append(ProductRecord(
                tag=product.tag, path=path, mjd=mjd, date_obs=frame.date_obs if frame else "",
                ins_mode=frame.ins_mode if frame else "", read_mode=frame.read_mode if frame else "",
                ifu=product.ifu, tpl_start=frame.tpl_start if frame else "",
                expno=frame.expno if (frame and product.exposure) else -1, job=job.name, recipe=job.recipe,
                status=status, batch=f"{job.recipe}_{job.label}", step=job.step, qualifier=product.qualifier,
                night=_night_of_mjd(mjd) if mjd else "", size=size, mtime_ns=mtime_ns, checksum=checksum))
        self.catalogue.register(job.area.base_dir, job.name, records)


class _EngineTask(Task):
    """A planned job as the scheduler sees it."""

    def __init__(self, engine: RecipeEngine, job: Job, overwrite: bool):
        self.engine = engine
        self.job = job
        self.overwrite = overwrite
        self.name = job.name
        self.depends_on = job.depends_on
        self.max_threads = max(1, job.threads)
        self.memory_gb = job.memory_gb
        self.local = job.is_python

    def memory_need(self, threads):
        return self.job.memory_for(threads=threads) if self.job.memory_for is not None else self.job.memory_gb

    def memory_alone(self, threads):
        return (self.job.memory_for(threads=threads, margin=False) if self.job.memory_for is not None
                else self.job.memory_gb)

    def memory_advice(self):
        return memory_advice(self.job.recipe, self.job.parameters)

    def up_to_date(self):
        return self.engine.up_to_date(self.job, self.overwrite)

    def prepare(self, threads):
        return self.engine.prepare(self.job, threads)

    def finalize(self, result):
        self.engine.finalize(self.job, result)

    def discard(self, result):
        self.engine.discard(self.job, result)

    def record(self, result):
        self.engine.record(self.job, result)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _missing_on_disk(job_name: str, associations: Sequence[Association], producers: Mapping,
                     running_with=None) -> list:
    """Associated files that do not exist and that no job makes (at planning), or no job of the run makes
    (``running_with``: the names of the jobs of the run)."""
    missing = []
    for association in associations:
        absent = [path for path in association.paths if not Path(path).is_file()]
        if not absent:
            continue
        makers = {producers.get(path) for path in absent} | set(association.source_jobs if association.planned
                                                                   else ())
        makers.discard(None)
        if makers and (running_with is None or makers <= running_with):
            continue  # made by a job that runs first
        what = "planned product not made by this run" if makers else "file does not exist"
        missing.append(MissingCalibration(job_name, association.tag, f"{what}: {absent[0]}"))
    return missing


def _missing_inputs(job: Job, producers: Mapping, running_with) -> list:
    """Main inputs that do not exist and that no job of the run makes."""
    missing = []
    for frame in job.frames:
        if Path(frame.path).is_file() or producers.get(frame.path) in running_with:
            continue
        missing.append(MissingCalibration(job.name, frame.tag, f"input does not exist and no job of this run "
                                                                f"makes it: {frame.path}"))
    return missing


def to_json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _ifu_text(ifus) -> str:
    return ",".join(str(ifu) for ifu in ifus)
