"""Which calibration goes with which job, and why.

ESO's association rules for MUSE (Reflex ``muse_wkf.oca``, see ``muse-pipeline.md`` section 4.3) are data
here: an :class:`AssociationRule` per calibration tag says which header values must match (``INS.MODE``,
read-out mode) and how far in time a calibration may be (``|delta MJD-OBS|`` in days); among the candidates
that pass, the closest in time wins. Every choice is returned as an :class:`Association` that records the
file(s), the time difference and the rule applied, so that the products tables can say why.

Missing required calibrations are collected, never raised one at a time: the engine gathers them for a
whole plan and raises one :class:`MissingCalibrationError` listing them all.

Time-dependent geometry and astrometry tables are chosen by date through a :class:`ValidityTable`
(``musecalib_time/validity_table.txt``). A date outside every range is an error naming the date and the
file: it is never mapped to the nearest entry.
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .recipes import SOURCE_MASTER, SOURCE_RAW, SOURCE_STATIC, SOURCE_TIME, SOURCE_USER, RecipeSpec

__all__ = ["InputFrame", "CalibrationCandidate", "AssociationRule", "Association", "MissingCalibration",
           "MissingCalibrationError", "ValidityEntry", "ValidityTable", "ValidityError",
           "default_association_rules", "associate", "job_mjd"]

logger = logging.getLogger(__name__)

#: MJD of 2017-03-10: the VIGNETTING_MASK is only used for data taken before the 2017 intervention.
VIGNETTING_LAST_MJD = 57822.0
_MJD_EPOCH = datetime.date(1858, 11, 17)


@dataclass(frozen=True)
class InputFrame:
    """One main input of a job: a raw frame or a product of an earlier step.

    Attributes mirror the raw table columns (``docs/architecture.md``); ``path`` is absolute; ``ifu`` is the
    IFU of a per-IFU product (0 for raw frames, which hold whatever ``CHANnn`` extensions they have).
    """

    path: str
    tag: str
    mjd: float
    date_obs: str = ""
    tpl_start: str = ""
    expno: int = -1
    ins_mode: str = ""
    read_mode: str = ""
    ifu: int = 0

    @classmethod
    def from_product(cls, record, tag: str | None = None) -> "InputFrame":
        """Build from a registered product (``products.ProductRecord``), optionally playing another tag."""
        return cls(path=str(record.path), tag=tag or record.tag, mjd=float(record.mjd), date_obs=record.date_obs,
                   tpl_start=record.tpl_start, expno=int(record.expno), ins_mode=record.ins_mode,
                   read_mode=record.read_mode, ifu=int(record.ifu))

    @classmethod
    def from_raw_row(cls, row) -> "InputFrame":
        """Build from a row of the raw table (``rawdata.scan_raw(...).table``)."""
        return cls(path=str(row["filename"]), tag=str(row["tag"]), mjd=float(row["mjd_obs"]),
                   date_obs=str(row["date_obs"]), tpl_start=str(row["tpl_start"]),
                   expno=int(row["tpl_expno"]), ins_mode=str(row["ins_mode"]), read_mode=str(row["read_mode"]))


@dataclass(frozen=True)
class CalibrationCandidate:
    """A file that could serve as a calibration: a registered product, a raw ILLUM, an archive master.

    Attributes
    ----------
    tag, path : str
    mjd : float
        MJD-OBS of the data it was made from (mean over the template for masters).
    ins_mode, read_mode : str
    ifu : int
        IFU the file covers; 0 for a merged file or a file that is not per IFU.
    tpl_start : str
    job : str
        Name of the job that made (or will make) it; '' for raw or archive files.
    status : str
        ``done`` (exists) or ``planned`` (the product of a job not run yet, e.g. in fakemode).
    batch : str
        Products made together (one recipe run on one template, fanned out over IFUs or not) share it.
    night : str
        Observing night of the data it was made from (``YYYY-MM-DD`` of the evening).
    date_obs : str
        DATE-OBS of the exposure it was made from (per-exposure products).
    """

    tag: str
    path: str
    mjd: float
    ins_mode: str = ""
    read_mode: str = ""
    ifu: int = 0
    tpl_start: str = ""
    job: str = ""
    status: str = "done"
    batch: str = ""
    night: str = ""
    date_obs: str = ""

    @classmethod
    def from_raw_row(cls, row, tag=None) -> "CalibrationCandidate":
        """Build from a raw-table row (raw ILLUM, or an archive-delivered MASTER_BIAS, GEOMETRY_TABLE ...)."""
        return cls(tag=tag or str(row["tag"]), path=str(row["filename"]), mjd=float(row["mjd_obs"]),
                   ins_mode=str(row["ins_mode"]), read_mode=str(row["read_mode"]), ifu=0,
                   tpl_start=str(row["tpl_start"]), night=str(row["night"]), date_obs=str(row["date_obs"]))

    @property
    def from_archive(self) -> bool:
        """A file delivered with the data (archive master, raw ILLUM), not made by this pipeline."""
        return not self.job

    @property
    def group(self) -> str:
        """Files made together (the IFUs of one master, even by per-IFU jobs) share a group."""
        return self.batch or self.job or self.path


@dataclass(frozen=True)
class AssociationRule:
    """ESO's constraints for one calibration tag.

    Attributes
    ----------
    tag : str
    match_ins_mode : bool
        Same ``INS.MODE`` as the job's data.
    match_read_mode : bool
        Same ``DET.READ.CURNAME`` as the job's data.
    window_days : float or None
        Largest ``|delta MJD|`` accepted; None = no limit (closest wins).
    before_mjd : float or None
        Only used for data taken up to this MJD (VIGNETTING_MASK).
    """

    tag: str
    match_ins_mode: bool = False
    match_read_mode: bool = False
    window_days: float | None = None
    before_mjd: float | None = None

    def describe(self) -> str:
        parts = []
        if self.match_ins_mode:
            parts.append("same INS.MODE")
        if self.match_read_mode:
            parts.append("same read mode")
        parts.append(f"within +-{self.window_days:g} d" if self.window_days is not None else "no time limit")
        return ", ".join(parts) + ", closest in time"


def default_association_rules() -> dict:
    """ESO's rules (muse_wkf.oca): tag -> rule, or (tag, raw tag) -> rule where the main input matters.

    A fresh dict every call, so a caller may change it (e.g. widen a window) for its own runs.
    """
    rule = AssociationRule
    rules = {
        "MASTER_BIAS": rule("MASTER_BIAS", match_read_mode=True, window_days=3.0),
        "MASTER_DARK": rule("MASTER_DARK", match_read_mode=True, window_days=5.0),
        "MASTER_FLAT": rule("MASTER_FLAT", match_ins_mode=True, match_read_mode=True, window_days=3.0),
        "TRACE_TABLE": rule("TRACE_TABLE", match_ins_mode=True, match_read_mode=True, window_days=3.0),
        "WAVECAL_TABLE": rule("WAVECAL_TABLE", match_ins_mode=True, match_read_mode=True, window_days=3.0),
        "ILLUM": rule("ILLUM", match_read_mode=True, window_days=0.5),       # twilight, standard, sky
        ("ILLUM", "OBJECT"): rule("ILLUM", window_days=1.0),                  # science exposures
        "TWILIGHT_CUBE": rule("TWILIGHT_CUBE", match_ins_mode=True, window_days=30.0),
        "LSF_PROFILE": rule("LSF_PROFILE", match_ins_mode=True),
        "STD_RESPONSE": rule("STD_RESPONSE", match_ins_mode=True),
        "STD_TELLURIC": rule("STD_TELLURIC", match_ins_mode=True, window_days=1.0),
        "VIGNETTING_MASK": rule("VIGNETTING_MASK", before_mjd=VIGNETTING_LAST_MJD),
    }
    return rules


def _rule_for(rules: Mapping, tag: str, raw_tag: str) -> AssociationRule:
    return rules.get((tag, raw_tag)) or rules.get(tag) or AssociationRule(tag)


@dataclass(frozen=True)
class Association:
    """One calibration chosen for a job, and why.

    Attributes
    ----------
    tag : str
    paths : tuple of str
        One file, or one per IFU when per-IFU masters are used.
    delta_days : float or None
        ``|delta MJD|`` between the job's data and the calibration (None for static files).
    rule : str
        Human-readable rule that selected it.
    source_jobs : tuple of str
        Jobs that produce these files (to order jobs planned together).
    planned : bool
        The files do not exist yet (products of jobs not run yet).
    """

    tag: str
    paths: tuple
    delta_days: float | None
    rule: str
    source_jobs: tuple = ()
    planned: bool = False


@dataclass(frozen=True)
class MissingCalibration:
    """A required calibration that could not be found for a job."""

    job: str
    tag: str
    reason: str

    def __str__(self):
        return f"{self.job}: {self.tag}: {self.reason}"


class MissingCalibrationError(RuntimeError):
    """Raised before anything runs, listing every missing required calibration of a plan."""

    def __init__(self, missing: Sequence[MissingCalibration]):
        self.missing = list(missing)
        lines = "\n  ".join(str(item) for item in self.missing)
        super().__init__(f"{len(self.missing)} required calibration(s) missing:\n  {lines}")


class ValidityError(ValueError):
    """A validity table is malformed, or a date falls outside all its ranges."""


@dataclass(frozen=True)
class ValidityEntry:
    """One line of the validity table: files valid from ``start`` to ``end`` (inclusive) for a field."""

    start: datetime.date
    end: datetime.date
    field: str
    geometry_table: Path
    astrometry_wcs: Path
    line_number: int = 0


@dataclass
class ValidityTable:
    """Time-dependent geometry/astrometry tables, from ``musecalib_time/validity_table.txt``.

    Format: one line per range, ``#`` comments::

        # start       end          field  geometry_table                 astrometry_wcs
        2014-09-13    2014-09-26   wfm    geometry_table_wfm_gto01.fits  astrometry_wcs_wfm_gto01.fits

    File names are relative to the table's folder. Where ranges overlap, the narrowest range containing the
    date wins (a short, specific run beats a long catch-all range).
    """

    path: Path
    entries: list = field(default_factory=list)

    @classmethod
    def read(cls, path) -> "ValidityTable":
        """Parse and range-check a validity table; errors name the file and the line."""
        path = Path(path)
        if not path.is_file():
            raise ValidityError(f"validity table {path} does not exist (needed by time_astrometry=True)")
        entries = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            words = text.split()
            if len(words) != 5:
                raise ValidityError(f"{path}, line {number}: expected 5 columns 'start end field geometry_table "
                                    f"astrometry_wcs', got {len(words)}: {text!r}")
            try:
                start, end = (datetime.date.fromisoformat(word) for word in words[:2])
            except ValueError:
                raise ValidityError(f"{path}, line {number}: dates must be YYYY-MM-DD, got {words[0]!r} "
                                    f"{words[1]!r}") from None
            if end < start:
                raise ValidityError(f"{path}, line {number}: end {end} is before start {start}")
            field_name = words[2].lower()
            if field_name not in ("wfm", "nfm"):
                raise ValidityError(f"{path}, line {number}: field must be wfm or nfm, got {words[2]!r}")
            entries.append(ValidityEntry(start, end, field_name, path.parent / words[3], path.parent / words[4],
                                         number))
        if not entries:
            raise ValidityError(f"validity table {path} has no entries")
        return cls(path, entries)

    def lookup(self, date, field_name="wfm") -> ValidityEntry:
        """The entry valid at ``date`` (a date, or a DATE-OBS string) for the field (``wfm``/``nfm``)."""
        day = _as_date(date)
        matching = [entry for entry in self.entries
                    if entry.field == field_name.lower() and entry.start <= day <= entry.end]
        if not matching:
            raise ValidityError(f"date {day} ({field_name}) is outside every validity range of {self.path}; "
                                "add a line for it (start end field geometry_table astrometry_wcs)")
        return min(matching, key=lambda entry: (entry.end - entry.start, entry.line_number))


def _as_date(value) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ValidityError(f"cannot read a date from {value!r} (expected DATE-OBS like 2018-01-01T10:00:00)") from None


def _mjd_to_date(mjd: float) -> datetime.date:
    return _MJD_EPOCH + datetime.timedelta(days=int(mjd))


def job_mjd(frames: Sequence[InputFrame]) -> float:
    """Time of a job: mean MJD-OBS of its main inputs."""
    return sum(frame.mjd for frame in frames) / len(frames)


def _field_of_mode(ins_mode: str) -> str:
    return "nfm" if ins_mode.upper().startswith("NFM") else "wfm"


def associate(spec: RecipeSpec, frames: Sequence[InputFrame], *, job_name: str, ifus: Sequence[int],
              candidates: Mapping[str, Sequence[CalibrationCandidate]] | None = None,
              static: Mapping[str, str] | None = None, validity: ValidityTable | None = None,
              explicit: Mapping[str, Sequence[str]] | None = None, rules: Mapping | None = None,
              skip: Iterable[str] = (), prefer_archive: bool = False) -> tuple:
    """Choose every calibration of one job.

    Parameters
    ----------
    spec : RecipeSpec
    frames : sequence of InputFrame
        The job's main inputs (their MJD, INS.MODE and read mode drive the choice).
    job_name : str
        For messages.
    ifus : sequence of int
        IFUs the job handles: per-IFU calibrations must cover them (one file each, or a merged file).
    candidates : mapping tag -> CalibrationCandidate list
        Registered products (masters), raw ILLUM frames, archive-delivered calibrations.
    static : mapping tag -> path
        Static calibrations (``PipelineConfig.static_calibrations()``).
    validity : ValidityTable, optional
        With ``time_astrometry``: GEOMETRY_TABLE / ASTROMETRY_WCS are chosen by date from it.
    explicit : mapping tag -> paths, optional
        Calibrations the step gives by hand (OFFSET_LIST, OUTPUT_WCS, ...); they bypass the rules.
    rules : mapping, optional
        Defaults to :func:`default_association_rules`.
    skip : iterable of str
        Optional tags not to associate (e.g. ILLUM when ``illum=False``).
    prefer_archive : bool
        Where both qualify, take a master delivered with the data (an ESO archive download) rather than
        one this pipeline made from raw frames (the default prefers the pipeline's own).

    Returns
    -------
    (list of Association, list of MissingCalibration)
    """
    if not frames:
        raise ValueError(f"{job_name}: a job needs at least one input frame")
    candidates = candidates or {}
    static = static or {}
    explicit = explicit or {}
    rules = default_association_rules() if rules is None else rules
    skip = set(skip)
    mjd = job_mjd(frames)
    first = frames[0]
    associations, missing = [], []
    for calibration in spec.calibrations:
        tag = calibration.tag
        if tag in explicit:
            paths = tuple(str(path) for path in explicit[tag])
            if paths:
                associations.append(Association(tag, paths, None, "given by the step"))
            continue
        if tag in skip:
            continue
        rule = _rule_for(rules, tag, first.tag)
        if rule.before_mjd is not None and mjd > rule.before_mjd:
            continue  # e.g. VIGNETTING_MASK: not applicable to data taken after the 2017 intervention
        chosen, reason = None, ""
        if calibration.source == SOURCE_USER:
            reason = "only given explicitly by the step"
        elif calibration.source == SOURCE_TIME and validity is not None:
            try:
                chosen = _from_validity(tag, first, validity)
            except ValidityError as error:
                # With time_astrometry a date outside every range is an error even for an optional table.
                missing.append(MissingCalibration(job_name, tag, str(error)))
                continue
        elif calibration.source in (SOURCE_MASTER, SOURCE_RAW, SOURCE_TIME):
            chosen, reason = _closest(calibration, rule, candidates.get(tag, ()), first, mjd, ifus,
                                      prefer_archive=prefer_archive)
            if chosen is None and calibration.source == SOURCE_TIME and tag in static:
                chosen = Association(tag, (str(static[tag]),), None, "static file from calib_tables")
        if calibration.source == SOURCE_STATIC:
            if tag in static:
                chosen = Association(tag, (str(static[tag]),), None, "static file from calib_tables")
            else:
                reason = "no such static calibration in calib_tables / musecalib"
        if chosen is not None:
            associations.append(chosen)
        elif calibration.required:
            missing.append(MissingCalibration(job_name, tag, reason or "not found"))
    return associations, missing


def _from_validity(tag, frame: InputFrame, validity: ValidityTable) -> Association:
    date = frame.date_obs[:10] if frame.date_obs else _mjd_to_date(frame.mjd)
    entry = validity.lookup(date, _field_of_mode(frame.ins_mode))
    path = entry.geometry_table if tag == "GEOMETRY_TABLE" else entry.astrometry_wcs
    if not path.is_file():
        raise ValidityError(f"{validity.path}, line {entry.line_number}: {path.name} does not exist in "
                            f"{path.parent}")
    return Association(tag, (str(path),), None,
                       f"validity table {validity.path.name}: {entry.start}..{entry.end} contains {date}")


def _closest(calibration, rule: AssociationRule, candidates, frame: InputFrame, mjd: float, ifus, *,
             prefer_archive: bool = False):
    """Closest group of candidates passing the rule and covering the job's IFUs; (Association, reason).

    Masters made by this pipeline (from raw frames) win over masters delivered with the data within the
    rule's window, unless ``prefer_archive``; outside the window neither is used.
    """
    passing = []
    for candidate in candidates:
        if rule.match_ins_mode and frame.ins_mode and candidate.ins_mode != frame.ins_mode:
            continue
        if rule.match_read_mode and frame.read_mode and candidate.read_mode != frame.read_mode:
            continue
        passing.append(candidate)
    if not candidates:
        return None, f"no {calibration.tag} available (the step that makes it has not run, or found nothing)"
    if not passing:
        constraint = rule.describe().replace(", closest in time", "")
        return None, (f"none of {len(candidates)} candidate(s) matches INS.MODE={frame.ins_mode!r} / "
                      f"read mode={frame.read_mode!r} ({constraint})")
    groups = {}
    for candidate in passing:
        groups.setdefault(candidate.group, []).append(candidate)
    needed = set(ifus)
    usable = []
    for members in groups.values():
        delta = abs(sum(member.mjd for member in members) / len(members) - mjd)
        merged = [member for member in members if member.ifu == 0]
        if merged:
            chosen_members = merged[:1]
        elif calibration.per_ifu and needed <= {member.ifu for member in members}:
            chosen_members = sorted((m for m in members if m.ifu in needed), key=lambda m: m.ifu)
        else:
            continue
        usable.append((delta, chosen_members))
    if not usable:
        return None, f"{len(groups)} candidate set(s) match but none covers IFU(s) {sorted(needed)}"
    usable.sort(key=lambda item: item[0])
    inside = [item for item in usable if rule.window_days is None or item[0] <= rule.window_days]
    if not inside:
        delta, members = usable[0]
        return None, (f"closest {calibration.tag} is {delta:.2f} d away from MJD {mjd:.4f}, outside "
                      f"+-{rule.window_days:g} d ({members[0].path})")
    preferred = [item for item in inside if all(m.from_archive for m in item[1]) == prefer_archive]
    delta, members = (preferred or inside)[0]
    if not calibration.per_ifu or calibration.max_count == 1:
        # One file of a non-per-IFU calibration; per-IFU ones keep one file per IFU.
        members = members if calibration.per_ifu else members[:1]
    jobs = tuple(sorted({member.job for member in members if member.job}))
    planned = any(member.status != "done" for member in members)
    origin = calibration.source
    if calibration.source == SOURCE_MASTER and all(member.from_archive for member in members):
        origin = "archive master delivered with the data"
    return Association(calibration.tag, tuple(member.path for member in members), delta,
                       f"{rule.describe()} ({origin})", jobs, planned), ""
