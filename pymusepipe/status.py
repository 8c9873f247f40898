"""Where a reduction stands: per step ``done``, ``stale``, ``failed``, ``skipped`` or ``not run``, read from the
tables on disk, without recomputing anything.

``pymusepipe status`` and ``MusePipe.status()`` answer "what is left to do, and why?" in a fraction of a second,
also on a reduction of hundreds of gigabytes: no checksum and no fingerprint is computed (that is what the next
run does before deciding to skip a job). Only the tables of ``Astro_Tables/`` are read, and files are looked at
with ``stat``:

- a step is **failed** when its last run failed: each failed job is listed with its esorex log;
- a step is **stale** when the next run would redo some of its jobs, as far as times and sizes tell:

  * a product of the job is missing, or its size or modification time is not what was recorded when it was made;
  * an input of the job (raw frame, calibration, product of an earlier job) is missing, was modified after the
    job ran, or was made again after the job ran (the producing job's recorded product is newer than the job);
  * an input comes from a job that is itself stale or failed (staleness flows down the chain);
  * raw frames appeared in ``Raw/`` that no job used (a new exposure or calibration frame, classified from its
    header): the step that takes them, and the steps after it that use what it makes, are stale.

  Times are compared with the job's ``started`` column, which the engine writes when it records the job, i.e.
  when the job ended; two seconds of margin absorb its one-second resolution. A reduction copied without its
  modification times (``cp -r`` rather than ``cp -a`` or ``rsync -a``) shows every step stale: the next run
  compares checksums and finds it up to date;
- a step is **skipped** when its planner decided there was nothing to do, with the reason;
- a step is **not run** when no run of it is recorded (or only a fakemode plan).

The disk a step holds is the sum of the sizes of its products that exist now.

Three levels: :func:`pointing_status` (one row per step), :func:`target_status` (one row per pointing, and the
target's own steps, e.g. the mosaic) and :func:`sample_status` (one row per target under the data root).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DONE", "STALE", "FAILED", "SKIPPED", "NOT_RUN", "INTERRUPTED", "StepView", "PointingStatus",
           "TargetStatus", "SampleStatus", "pointing_status", "target_status", "sample_status", "status_text",
           "find_targets", "find_pointings", "add_arguments", "run"]

logger = logging.getLogger(__name__)

DONE = "done"
STALE = "stale"
FAILED = "failed"
SKIPPED = "skipped"
NOT_RUN = "not run"
INTERRUPTED = "interrupted"

#: Margin on time comparisons: ``started`` is written with a one-second resolution.
TIME_MARGIN_NS = 2_000_000_000

#: Raw frame tag -> the steps that take it, and what each makes from it (None: everything the step makes).
RAW_CONSUMERS = {
    "BIAS": (("bias", None),),
    "FLAT": (("flat", None),),
    "ARC": (("wave", None), ("lsf", None)),
    "ARC_LSF": (("lsf", None),),
    "SKYFLAT": (("twilight", None),),
    # A new ILLUM flat may be the one association picks for the twilight cube and every pixel table.
    "ILLUM": (("twilight", None), ("scibasic_all", None)),
    "OBJECT": (("scibasic_all", ("PIXTABLE_OBJECT",)),),
    "SKY": (("scibasic_all", ("PIXTABLE_SKY",)),),
    "STD": (("scibasic_all", ("PIXTABLE_STD",)),),
}

_FITS_SUFFIXES = (".fits", ".fits.fz", ".fits.gz")


# ---------------------------------------------------------------------------------------------- records
@dataclass
class StepView:
    """The status of one step.

    Attributes
    ----------
    step : str
    status : str
        :data:`DONE`, :data:`STALE`, :data:`FAILED`, :data:`SKIPPED`, :data:`NOT_RUN` or :data:`INTERRUPTED`.
    where : str
        The area(s) its jobs work in (``night 2026-03-14``, ``SIMGAL/P01``).
    jobs : int
        Jobs of the step recorded in the job tables.
    disk : int
        Bytes held by its products that exist now.
    finished : str
        When the step last ran (UTC).
    reasons : list of str
        Why it is stale, skipped or not run.
    failed : list of tuple
        ``(job, message, esorex log)`` of each failed job.
    summary : str
        What the last run of the step said (``PIPE_steps.fits``).
    """

    step: str
    status: str
    where: str = ""
    jobs: int = 0
    disk: int = 0
    finished: str = ""
    reasons: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    summary: str = ""

    @property
    def detail(self) -> str:
        """One line: the failures with their logs, the first reasons, or the summary."""
        if self.status == FAILED and self.failed:
            return "; ".join(f"{job}: {message} (log {log or 'none'})" for job, message, log in self.failed)
        if self.reasons:
            more = f" (+{len(self.reasons) - 2} more)" if len(self.reasons) > 2 else ""
            return "; ".join(self.reasons[:2]) + more
        return self.summary


@dataclass
class RawFrameNews:
    """A raw frame no job used that appeared after the last run (or after the last scan)."""

    path: Path
    tag: str
    steps: tuple


@dataclass
class PointingStatus:
    """The status of every step of one pointing.

    Attributes
    ----------
    name : str
        ``TARGET/P01``.
    steps : list of StepView
        In chain order.
    new_raw : list of RawFrameNews
    nights : list of str
        The observing nights whose calibration areas the pointing uses.
    """

    name: str
    base_dir: Path
    steps: list
    new_raw: list = field(default_factory=list)
    nights: list = field(default_factory=list)

    def step(self, name: str) -> StepView | None:
        return next((view for view in self.steps if view.step == name), None)

    @property
    def overall(self) -> str:
        """``failed``, ``stale``, ``done`` (every step done or skipped), ``incomplete`` or ``not run``."""
        statuses = [view.status for view in self.steps]
        if FAILED in statuses:
            return FAILED
        if STALE in statuses:
            return STALE
        if INTERRUPTED in statuses:
            return INTERRUPTED
        ran = [status for status in statuses if status in (DONE, SKIPPED)]
        if not ran:
            return NOT_RUN
        return DONE if len(ran) == len(statuses) else "incomplete"

    @property
    def disk(self) -> int:
        """Bytes of the products of this pointing's own steps (the nights' shared calibrations not counted)."""
        return sum(view.disk for view in self.steps if not view.where.startswith("night"))

    def counts(self) -> dict:
        out = {}
        for view in self.steps:
            out[view.status] = out.get(view.status, 0) + 1
        return out

    def table(self):
        """astropy Table: step, where, status, jobs, disk (bytes), finished, detail."""
        from astropy.table import Table

        return Table(rows=[(view.step, view.where, view.status, view.jobs, view.disk, view.finished, view.detail)
                           for view in self.steps] or None,
                     names=("step", "where", "status", "jobs", "disk", "finished", "detail"),
                     dtype=(str, str, str, int, np.int64, str, str))

    def format(self) -> str:
        """The status as text: one line per step, then the new raw frames and the failed jobs' logs."""
        lines = [f"{self.name}: {self.overall}"]
        lines.append(f"{'step':<17} {'status':<11} {'jobs':>4} {'disk':>9}  {'where':<28} detail")
        for view in self.steps:
            lines.append(f"{view.step:<17} {view.status:<11} {view.jobs:>4} {_size(view.disk):>9}  "
                         f"{_short_where(view.where):<28} {view.detail}")
        for news in self.new_raw:
            steps = ", ".join(news.steps) or "no step uses this type"
            lines.append(f"new raw frame {news.path.name} ({news.tag}) not reduced yet: {steps}")
        return "\n".join(lines)


@dataclass
class TargetStatus:
    """The pointings of a target and the target's own steps (alignment to the reference, mosaic)."""

    target: str
    pointings: list
    steps: list = field(default_factory=list)

    @property
    def overall(self) -> str:
        statuses = [pointing.overall for pointing in self.pointings] + [view.status for view in self.steps]
        for status in (FAILED, STALE, INTERRUPTED):
            if status in statuses:
                return status
        if not statuses or all(status == NOT_RUN for status in statuses):
            return NOT_RUN
        if all(status in (DONE, SKIPPED) for status in statuses):
            return DONE
        return "incomplete"

    @property
    def mosaic(self) -> str:
        """Status of the target's own steps together ('not run' when there are none)."""
        if not self.steps:
            return NOT_RUN
        return _worst([view.status for view in self.steps])

    def table(self):
        """astropy Table, one row per pointing: status, step counts, disk, first problem."""
        from astropy.table import Table

        rows = []
        for pointing in self.pointings:
            counts = pointing.counts()
            problem = next((f"{view.step}: {view.detail}" for view in pointing.steps
                            if view.status in (FAILED, STALE, INTERRUPTED)), "")
            rows.append((pointing.name.split("/")[-1], pointing.overall, counts.get(DONE, 0), counts.get(STALE, 0),
                         counts.get(FAILED, 0), counts.get(NOT_RUN, 0), counts.get(SKIPPED, 0),
                         pointing.disk, problem))
        for view in self.steps:
            rows.append((f"target:{view.step}", view.status, int(view.status == DONE), int(view.status == STALE),
                         int(view.status == FAILED), int(view.status == NOT_RUN), int(view.status == SKIPPED),
                         view.disk, view.detail))
        return Table(rows=rows or None, names=("pointing", "status", "done", "stale", "failed", "not_run",
                                               "skipped", "disk", "detail"),
                     dtype=(str, str, int, int, int, int, int, np.int64, str))

    def format(self) -> str:
        lines = [f"{self.target}: {self.overall} ({len(self.pointings)} pointing(s))",
                 f"{'pointing':<22} {'status':<11} {'done':>4} {'stale':>5} {'failed':>6} {'not run':>7} "
                 f"{'disk':>9}  first problem"]
        for row in self.table():
            lines.append(f"{row['pointing']:<22} {row['status']:<11} {row['done']:>4} {row['stale']:>5} "
                         f"{row['failed']:>6} {row['not_run']:>7} {_size(row['disk']):>9}  {row['detail']}")
        return "\n".join(lines)


@dataclass
class SampleStatus:
    """Every target under a data root."""

    root: Path
    targets: list

    def table(self):
        from astropy.table import Table

        rows = []
        for target in self.targets:
            overall = [pointing.overall for pointing in target.pointings]
            rows.append((target.target, target.overall, len(target.pointings), overall.count(DONE),
                         overall.count(STALE), overall.count(FAILED), target.mosaic,
                         sum(pointing.disk for pointing in target.pointings)))
        return Table(rows=rows or None, names=("target", "status", "pointings", "done", "stale", "failed", "mosaic",
                                               "disk"),
                     dtype=(str, str, int, int, int, int, str, np.int64))

    def format(self) -> str:
        lines = [f"{self.root}: {len(self.targets)} target(s)",
                 f"{'target':<20} {'status':<11} {'pointings':>9} {'done':>4} {'stale':>5} {'failed':>6} "
                 f"{'mosaic':<8} {'disk':>9}"]
        for row in self.table():
            lines.append(f"{row['target']:<20} {row['status']:<11} {row['pointings']:>9} {row['done']:>4} "
                         f"{row['stale']:>5} {row['failed']:>6} {row['mosaic']:<8} {_size(row['disk']):>9}")
        return "\n".join(lines)


def _worst(statuses) -> str:
    for status in (FAILED, STALE, INTERRUPTED, NOT_RUN):
        if status in statuses:
            return status
    return DONE


def _size(nbytes) -> str:
    nbytes = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000.0
    return f"{nbytes:.1f} TB"


def _short_where(where: str) -> str:
    return where if len(where) <= 28 else where[:27] + "+"


# ---------------------------------------------------------------------------------------------- tables
@dataclass
class _Job:
    record: object            # products.JobRecord (paths absolute)
    area: str                 # the area's name
    products: list            # ProductRecord of the job (status done)
    recorded_ns: int | None   # 'started' as ns since the epoch
    reasons: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.record.job

    @property
    def status(self) -> str:
        return self.record.status

    def input_paths(self) -> list:
        paths = _json_list(self.record.inputs)
        for entry in _json_dict(self.record.calibrations).values():
            paths.extend(entry.get("paths", []) if isinstance(entry, dict) else [])
        return [str(path) for path in paths if path]

    def product_paths(self) -> set:
        return {str(path) for path in _json_list(self.record.products)} | {record.path for record in self.products}


def _json_list(text) -> list:
    try:
        value = json.loads(text) if text else []
    except (TypeError, ValueError):
        return []
    return value if isinstance(value, list) else []


def _json_dict(text) -> dict:
    try:
        value = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _parse_time_ns(text) -> int | None:
    try:
        moment = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp() * 1e9)


def _format_ns(value: int) -> str:
    return datetime.datetime.fromtimestamp(value / 1e9, datetime.timezone.utc).isoformat(timespec="seconds")


#: (path, size, mtime_ns, root) -> records read from a table: the status of a pointing, its target and the
#: sample read the same tables; a refresh after each run must not read them three times.
_RECORDS_CACHE = {}
_RECORDS_CACHE_SIZE = 1024


def read_records(path, kind: str, root) -> list:
    """The records of a ``*_jobs.fits`` (``kind='job'``) or ``*_products.fits`` (``kind='product'``) table, paths
    absolute; read once per version of the file (size and modification time) in this process."""
    from astropy.table import Table

    from .layout import resolve_from_root
    from .products import JobRecord, ProductRecord, _convert_paths, _table_to_records

    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns, str(root), kind)
    if key not in _RECORDS_CACHE:
        record_type = JobRecord if kind == "job" else ProductRecord
        records = _table_to_records(Table.read(path), record_type)
        _RECORDS_CACHE[key] = [_convert_paths(record, record_type, lambda text: resolve_from_root(text, root))
                               for record in records]
        if len(_RECORDS_CACHE) > _RECORDS_CACHE_SIZE:
            _RECORDS_CACHE.pop(next(iter(_RECORDS_CACHE)))
    return list(_RECORDS_CACHE[key])


def area_records(area, kind: str) -> list:
    """Every job (``kind='job'``) or product (``kind='product'``) record of an area's tables."""
    tables = area.folder("astro_tables")
    if not tables.is_dir():
        return []
    records = []
    for path in sorted(tables.glob(f"*_{kind}s.fits")):
        try:
            records.extend(read_records(path, kind, area.root))
        except (OSError, ValueError) as error:
            logger.warning("table %s unreadable: %s", path, error)
    return records


def _load_area(area, root: Path) -> list:
    """Every job of an area's job tables, with its registered products."""
    products = {}
    for record in area_records(area, "product"):
        if record.status == "done":
            products.setdefault(record.job, []).append(record)
    return [_Job(record, area.name, products.get(record.job, []), _parse_time_ns(record.started))
            for record in area_records(area, "job")]


class _JobGraph:
    """The jobs of several areas, linked through the files one makes and another uses."""

    def __init__(self, jobs):
        self.jobs = jobs
        self.producer = {}       # path -> (_Job, ProductRecord)
        self.consumers = {}      # path -> [_Job]
        for job in jobs:
            for record in job.products:
                self.producer[record.path] = (job, record)
            for path in job.input_paths():
                self.consumers.setdefault(path, []).append(job)
        self._stats = {}

    def stat(self, path):
        if path not in self._stats:
            try:
                self._stats[path] = os.stat(path)
            except OSError:
                self._stats[path] = None
        return self._stats[path]

    def used_paths(self) -> set:
        return set(self.consumers)

    def judge(self):
        """Give each done job its own reasons, then let staleness and failures flow to the jobs using them."""
        for job in self.jobs:
            if job.status == DONE:
                job.reasons.extend(self._own_reasons(job))
        by_step_area = {}
        for job in self.jobs:
            by_step_area.setdefault((job.record.step, job.area), []).append(job)
        queue = [job for job in self.jobs if job.reasons or job.status == FAILED]
        seen = {job.name for job in queue}
        while queue:
            upstream = queue.pop(0)
            what = "failed" if upstream.status == FAILED else "stale"
            downstream = []
            for path in upstream.product_paths():
                for consumer in self.consumers.get(path, []):
                    downstream.append((consumer, f"uses {Path(path).name} from job {upstream.name} ({what})"))
            # Python jobs record no inputs: they use what the recipe jobs of their step made.
            if not upstream.record.recipe.startswith("python:"):
                for sibling in by_step_area.get((upstream.record.step, upstream.area), []):
                    if sibling.record.recipe.startswith("python:") and not _json_list(sibling.record.inputs):
                        downstream.append((sibling, f"follows job {upstream.name} ({what})"))
            for consumer, reason in downstream:
                if consumer.status != DONE or consumer is upstream:
                    continue
                if not consumer.reasons:
                    consumer.reasons.append(reason)
                if consumer.name not in seen:
                    seen.add(consumer.name)
                    queue.append(consumer)
        # A python job that records no inputs (it uses what its step's recipe jobs made) and whose step's recipe
        # jobs were made again after it. One that records its inputs (a mosaic's grid, made before the mosaic's
        # recipe job) is judged by them, above.
        for (step, area), group in by_step_area.items():
            recipe_jobs = [job for job in group if not job.record.recipe.startswith("python:")]
            for job in group:
                if job.status != DONE or job.reasons or not job.record.recipe.startswith("python:") \
                        or job.recorded_ns is None or _json_list(job.record.inputs):
                    continue
                later = [other for other in recipe_jobs if other.status == DONE and other.recorded_ns
                         and other.recorded_ns > job.recorded_ns + TIME_MARGIN_NS]
                if later:
                    job.reasons.append(f"job {later[0].name} ran again after it")

    def _own_reasons(self, job) -> list:
        reasons = []
        for record in job.products:
            name = Path(record.path).name
            stat = self.stat(record.path)
            if stat is None:
                reasons.append(f"product {name} missing")
            elif record.size >= 0 and stat.st_size != record.size:
                reasons.append(f"product {name} changed since it was made (size {stat.st_size}, was {record.size})")
            elif record.mtime_ns >= 0 and stat.st_mtime_ns != record.mtime_ns:
                reasons.append(f"product {name} modified since it was made ({_format_ns(stat.st_mtime_ns)})")
        for path in job.input_paths():
            name = Path(path).name
            stat = self.stat(path)
            if stat is None:
                reasons.append(f"input {name} missing")
                continue
            made = self.producer.get(path)
            if made is not None:
                producer, record = made
                if (record.size >= 0 and stat.st_size != record.size) or \
                        (record.mtime_ns >= 0 and stat.st_mtime_ns != record.mtime_ns):
                    # The producer's own check reports it too; here it says why this job must be redone.
                    reasons.append(f"input {name} modified since job {producer.name} made it")
                elif job.recorded_ns is not None and record.mtime_ns > job.recorded_ns + TIME_MARGIN_NS:
                    reasons.append(f"input {name} made again by job {producer.name} after this job ran "
                                   f"({_format_ns(record.mtime_ns)})")
            elif job.recorded_ns is not None and stat.st_mtime_ns > job.recorded_ns + TIME_MARGIN_NS:
                reasons.append(f"input {name} modified after this job ran ({_format_ns(stat.st_mtime_ns)})")
        return reasons


# ---------------------------------------------------------------------------------------------- pointings
def _nights_of(layout, jobs, raw_table) -> list:
    """Observing nights whose calibration area the pointing uses: from its raw table and its jobs' calibrations."""
    nights = set()
    if raw_table is not None and "night" in raw_table.colnames:
        nights.update(str(value) for value in raw_table["night"] if str(value).strip() not in ("", "--"))
    calibrations = str(layout.folder("calibrations")) + os.sep
    for job in jobs:
        for path in job.input_paths():
            if path.startswith(calibrations):
                nights.add(path[len(calibrations):].split(os.sep, 1)[0])
    valid = []
    for night in sorted(nights):
        if len(night) == 10 and night[4] == "-" and night[7] == "-" and layout.night_layout(night).base_dir.is_dir():
            valid.append(night)
    return valid


def _read_raw_tables(tables_dir: Path):
    from astropy.table import Table

    from .rawdata import EXCLUDED_TABLE_NAME, RAW_TABLE_NAME

    tables = []
    for name in (RAW_TABLE_NAME, EXCLUDED_TABLE_NAME):
        path = tables_dir / name
        try:
            tables.append(Table.read(path) if path.is_file() else None)
        except (OSError, ValueError):
            tables.append(None)
    return tables


def _raw_files(layout) -> list:
    folders = [layout.folder("raw"), layout.shared_calibration_raw()]
    files = []
    for folder in folders:
        if folder.is_dir():
            files.extend(path for path in sorted(folder.iterdir())
                         if path.is_file() and path.name.endswith(_FITS_SUFFIXES))
    return files


def _classify(path: Path) -> str:
    """The SOF tag of a raw frame from its primary header ('' when it is not a frame this pipeline reduces)."""
    from . import instrument
    from .fitsheader import FitsHeaderError, read_primary_header
    from .rawdata import HEADER_KEYWORDS

    try:
        header = read_primary_header(path, HEADER_KEYWORDS)
    except (FitsHeaderError, OSError):
        return ""
    if str(header.get("INSTRUME", "")) != "MUSE":
        return ""
    classification = instrument.classify_frame(
        str(header.get("ESO DPR CATG", "")), str(header.get("ESO DPR TYPE", "")),
        str(header.get("ESO DPR TECH", "")), str(header.get("ESO PRO CATG", "")))
    return classification.tag or ""


def _new_raw_frames(layout, graph: _JobGraph, raw_table, excluded_table, last_run_ns) -> list:
    """Raw frames that no job used and that appeared after the last run or the last scan."""
    from .exclusions import EXCLUSIONS_FILE, read_exclusions
    from .steps import STEPS

    used = graph.used_paths()
    scanned = set(str(value) for value in raw_table["filename"]) if raw_table is not None else set()
    left_out = set(str(value) for value in excluded_table["filename"]) if excluded_table is not None \
        and len(excluded_table) else set()
    try:
        exclusions = read_exclusions(layout.folder("config") / EXCLUSIONS_FILE)
    except ValueError:
        exclusions = []
    news = []
    for path in _raw_files(layout):
        text = str(path)
        if text in used or text in left_out or any(exclusion.matches(path.name, "") for exclusion in exclusions):
            continue
        stat = graph.stat(text)
        appeared = text not in scanned or (last_run_ns is not None and stat is not None
                                           and stat.st_mtime_ns > last_run_ns + TIME_MARGIN_NS)
        if not appeared:
            continue  # known to the last scan and older than the reduction: a frame no step takes
        tag = _classify(path)
        if not tag:
            continue
        consumers = [step for step, _ in RAW_CONSUMERS.get(tag, ())]
        if not consumers:  # archive masters and the like: the steps that need that tag
            consumers = [spec.name for spec in STEPS.values() if tag in spec.needs]
        news.append(RawFrameNews(path, tag, tuple(consumers)))
    return news


def _stale_from_new_raw(news, views: dict):
    """Mark the steps taking new raw frames stale, and every later step using what those steps make."""
    from .steps import STEPS

    first_reason, made_from_new = {}, {}
    for item in news:
        consumers = dict(RAW_CONSUMERS.get(item.tag, ()))
        for step in item.steps:
            made_from_new.setdefault(step, set()).update(consumers.get(step) or STEPS[step].makes)
            first_reason.setdefault(step, f"new raw frame {item.path.name} ({item.tag}) not used by any job")
    affected = set()
    for name, spec in STEPS.items():
        view = views.get(name)
        if view is None or view.status not in (DONE, STALE):
            continue  # a step that did not run passes nothing down
        reason = first_reason.get(name)
        if reason is not None:
            affected.update(made_from_new[name])
        elif affected & set(spec.needs):
            reason = f"uses {', '.join(sorted(affected & set(spec.needs)))}, which new raw frames change"
            affected.update(spec.makes)
        if reason is not None:
            view.status = STALE
            view.reasons.append(reason)


def _step_view(name, jobs, graph, state_step) -> StepView:
    """Combine the step's recorded status (PIPE_steps) with what its jobs' tables say now."""
    view = StepView(name, NOT_RUN, where=", ".join(sorted({job.area for job in jobs})), jobs=len(jobs))
    done = [job for job in jobs if job.status == DONE]
    view.disk = sum(stat.st_size for stat in (graph.stat(record.path) for job in done for record in job.products)
                    if stat is not None)
    times = [job.recorded_ns for job in jobs if job.recorded_ns is not None]
    view.finished = _format_ns(max(times)) if times else ""
    failed_jobs = [(job.name, job.record.message, job.record.esorex_log) for job in jobs if job.status == FAILED]
    status = state_step.status if state_step is not None else ""
    if state_step is not None:
        view.summary = state_step.summary
        view.finished = state_step.finished or view.finished
    if status == FAILED or (not status and failed_jobs):
        view.status = FAILED
        view.failed = [tuple(item) for item in state_step.failures] if state_step is not None and \
            state_step.failures else failed_jobs
        return view
    if status == SKIPPED:
        view.status = SKIPPED
        view.reasons = [state_step.summary] if state_step.summary else []
        return view
    if status == INTERRUPTED:
        view.status = INTERRUPTED
        view.reasons = ["interrupted by the user: run again to resume"]
        return view
    if status == "planned":
        view.reasons = ["planned only (fakemode)"]
        return view
    if status in (DONE, "uptodate") or (not status and done):
        reasons = [f"{job.name}: {reason}" for job in done for reason in job.reasons[:1]]
        view.status = STALE if reasons else DONE
        view.reasons = reasons
        if not jobs and status:
            view.summary = (view.summary + "; " if view.summary else "") + "no job record in the tables"
    return view


def pointing_status(layout, *, session_steps=None, check_raw: bool = True) -> PointingStatus:
    """The status of every step of one pointing, from its tables and those of the nights it uses.

    Parameters
    ----------
    layout : PointingLayout
    session_steps : mapping, optional
        step -> :class:`~pymusepipe.state.StepStatus` known in memory (``MusePipe.steps``): they take precedence
        over ``PIPE_steps.fits`` (a fakemode run writes no table but its plans show as 'planned only').
    check_raw : bool
        Look for raw frames no job used (reads the primary header of each such frame).

    Returns
    -------
    PointingStatus
    """
    from .state import PointingState
    from .steps import STEPS

    tables = layout.folder("astro_tables")
    jobs = _load_area(layout, layout.root)
    raw_table, excluded_table = _read_raw_tables(tables)
    nights = _nights_of(layout, jobs, raw_table)
    for night in nights:
        jobs.extend(_load_area(layout.night_layout(night), layout.root))
    graph = _JobGraph(jobs)
    graph.judge()
    state = PointingState(tables, layout.root, persist=False) if tables.is_dir() else None
    recorded_steps = dict(state.steps()) if state is not None else {}
    recorded_steps.update(dict(session_steps or {}))
    views = {}
    for name in STEPS:
        step_jobs = [job for job in jobs if job.record.step == name]
        views[name] = _step_view(name, step_jobs, graph, recorded_steps.get(name))
        if not views[name].where:
            views[name].where = "night" if STEPS[name].area == "night" else layout.name
    news = []
    if check_raw:
        pointing_jobs = [job.recorded_ns for job in jobs if job.area == layout.name and job.recorded_ns]
        last_run = max(pointing_jobs) if pointing_jobs else None
        news = _new_raw_frames(layout, graph, raw_table, excluded_table, last_run)
        _stale_from_new_raw(news, views)
    return PointingStatus(layout.name, layout.base_dir, list(views.values()), news, nights)


def status_text(layout, session_steps=None) -> str:
    """What ``MusePipe.status()`` prints: :meth:`PointingStatus.format` of :func:`pointing_status`."""
    return pointing_status(layout, session_steps=session_steps).format()


# ---------------------------------------------------------------------------------------------- targets
def find_pointings(root, target, str_pointing: str = "P", ndigits: int = 2) -> list:
    """Pointing numbers of a target: its folders named ``<str_pointing><N digits>``."""
    target_dir = Path(root) / target
    numbers = []
    if target_dir.is_dir():
        for child in sorted(target_dir.iterdir()):
            number = child.name[len(str_pointing):]
            if child.is_dir() and child.name.startswith(str_pointing) and number.isdigit() and len(number) == ndigits:
                numbers.append(int(number))
    return numbers


def find_targets(root, str_pointing: str = "P", ndigits: int = 2) -> list:
    """Target folders under the data root: those holding at least one pointing folder."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [child.name for child in sorted(root.iterdir())
            if child.is_dir() and find_pointings(root, child.name, str_pointing, ndigits)]


def _target_area(root, target, folders=None):
    """The target's own area (``<target>/Combined``, working folders below it), as an AreaLayout."""
    from .layout import DEFAULT_FOLDERS, AreaLayout

    names = {**DEFAULT_FOLDERS, **dict(folders or {})}
    return AreaLayout(root, Path(root).absolute() / target / names["combined"], f"{target} (target)",
                      folders=folders)


def target_status(root, target, *, str_pointing: str = "P", ndigits: int = 2, folders=None,
                  pointings=None, check_raw: bool = True) -> TargetStatus:
    """The status of each pointing of a target, and of the target's own steps (``Combined/Astro_Tables``).

    Parameters
    ----------
    root : str or Path
        Data root.
    target : str
    str_pointing, ndigits, folders
        As in ``rc.dic``.
    pointings : sequence of int, optional
        Default: every pointing folder of the target.
    """
    from .layout import PointingLayout
    from .state import PointingState

    numbers = list(pointings) if pointings else find_pointings(root, target, str_pointing, ndigits)
    views = []
    layouts = [PointingLayout(root, target, number, str_pointing=str_pointing, ndigits=ndigits, folders=folders)
               for number in numbers]
    for layout in layouts:
        views.append(pointing_status(layout, check_raw=check_raw))
    area = _target_area(root, target, folders)
    steps = []
    tables = area.folder("astro_tables")
    if tables.is_dir():
        jobs = _load_area(area, area.root)
        own = {job.name for job in jobs}
        for layout in layouts:  # the pointings' products are the mosaic's inputs
            jobs.extend(_load_area(layout, layout.root))
        graph = _JobGraph(jobs)
        graph.judge()
        state = PointingState(tables, area.root, persist=False)
        own_jobs = [job for job in jobs if job.name in own]
        names = list(state.steps()) + [job.record.step for job in own_jobs]
        for name in dict.fromkeys(names):
            if name:
                view = _step_view(name, [job for job in own_jobs if job.record.step == name], graph,
                                  state.step(name))
                view.where = view.where or area.name
                steps.append(view)
    return TargetStatus(target, views, steps)


def sample_status(root, *, str_pointing: str = "P", ndigits: int = 2, folders=None,
                  check_raw: bool = True) -> SampleStatus:
    """The status of every target under the data root."""
    return SampleStatus(Path(root), [target_status(root, target, str_pointing=str_pointing, ndigits=ndigits,
                                                   folders=folders, check_raw=check_raw)
                                     for target in find_targets(root, str_pointing, ndigits)])


# ---------------------------------------------------------------------------------------------- command
def add_arguments(parser):
    """``pymusepipe status --rc RC --cal CAL [--target T] [--pointing N[,M]]``."""
    parser.add_argument("--rc", required=True, help="rc.dic file (musecalib, musecalib_time, root)")
    parser.add_argument("--cal", required=True, help="calib_tables.dic file (static calibration file names)")
    parser.add_argument("--target", help="target name (default: a table of every target under root)")
    parser.add_argument("--pointing", help="pointing number(s), e.g. 1 or 1,2: one row per step (default: a "
                                           "table of the target's pointings)")
    parser.add_argument("--no-raw-check", action="store_true",
                        help="do not look for raw frames that no job used (reads their headers)")


def run(args) -> int:
    """Print the status; exit 1 when the target or pointing folder does not exist."""
    import sys

    from .config import PipelineConfig
    from .layout import PointingLayout

    config = PipelineConfig.from_files(args.rc, args.cal)
    options = {"str_pointing": config.str_pointing, "ndigits": config.ndigits, "folders": config.folders}
    check_raw = not args.no_raw_check
    if not args.target:
        print(sample_status(config.root, check_raw=check_raw, **options).format())
        return 0
    if not (Path(config.root) / args.target).is_dir():
        print(f"no target folder {Path(config.root) / args.target} (root is {config.root})", file=sys.stderr)
        return 1
    if not args.pointing:
        print(target_status(config.root, args.target, check_raw=check_raw, **options).format())
        return 0
    try:
        numbers = [int(part) for part in str(args.pointing).split(",") if part.strip()]
    except ValueError:
        print(f"--pointing {args.pointing!r}: expected integers separated by commas, e.g. 1,2", file=sys.stderr)
        return 2
    for number in numbers:
        layout = PointingLayout(config.root, args.target, number, **options)
        if not layout.pointing_dir.is_dir():
            print(f"no pointing folder {layout.pointing_dir}", file=sys.stderr)
            return 1
        print(pointing_status(layout, check_raw=check_raw).format())
    return 0
