"""Scanning a ``Raw/`` folder: which frames are there, what each one is, and what was left out and why.

:func:`scan_raw` reads only primary headers, classifies every frame with ESO's rules
(:mod:`pymusepipe.instrument`), applies the observing-mode filter and returns a :class:`RawScan`: the
table of accepted frames (columns documented in ``docs/architecture.md``) and the table of exclusions with
their reasons. Headers are cached on path, size and modification time, so rescanning an unchanged folder
reads no file. Nothing in ``Raw/`` is ever written, moved or deleted.
"""
from __future__ import annotations

import datetime
import functools
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from . import instrument
from .atomic import write_atomically
from .errors import MissingPathError, PipelineError
from .fitsheader import FitsHeaderError, FitsReadError, FitsTruncatedError, read_primary_header_checked

__all__ = ["RawFolderError", "RawScan", "scan_raw", "RAW_COLUMNS", "FITS_SUFFIXES",
           "RAW_TABLE_NAME", "EXCLUDED_TABLE_NAME", "write_scan_tables", "read_scan_tables"]

logger = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fits.fz", ".fits.gz")
RAW_TABLE_NAME = "RAW_rawfiles_list_table.fits"
EXCLUDED_TABLE_NAME = "RAW_excluded_list_table.fits"
# 2: headers read with the size check (a version-1 cache may hold truncated files as good ones).
CACHE_VERSION = 2
MAX_LAMPS = 8

#: Columns of the raw table: name -> (numpy dtype, header keyword or None when derived).
RAW_COLUMNS = {
    "filename": (str, None),
    "tag": (str, None),
    "object": (str, "OBJECT"),
    "dpr_catg": (str, "ESO DPR CATG"),
    "dpr_type": (str, "ESO DPR TYPE"),
    "dpr_tech": (str, "ESO DPR TECH"),
    "pro_catg": (str, "ESO PRO CATG"),
    "ins_mode": (str, "ESO INS MODE"),
    "date_obs": (str, "DATE-OBS"),
    "mjd_obs": (float, "MJD-OBS"),
    "night": (str, None),
    "exptime": (float, "EXPTIME"),
    "tpl_start": (str, "ESO TPL START"),
    "tpl_nexp": (int, "ESO TPL NEXP"),
    "tpl_expno": (int, "ESO TPL EXPNO"),
    "read_mode": (str, "ESO DET READ CURNAME"),
    "ra": (float, "RA"),
    "dec": (float, "DEC"),
    "posang": (float, "ESO INS DROT POSANG"),
    "obs_id": (int, "ESO OBS ID"),
    "lamps": (str, None),
    "size": (int, None),
    "mtime": (float, None),
}

_LAMP_KEYWORDS = [f"ESO INS {kind}{i} {what}" for i in range(1, MAX_LAMPS + 1)
                  for kind in ("LAMP", "SHUT") for what in ("NAME", "ST")]
HEADER_KEYWORDS = frozenset([kw for _, kw in RAW_COLUMNS.values() if kw] + ["INSTRUME", "ARCFILE"]
                            + _LAMP_KEYWORDS)

_DUPLICATE_PATTERN = re.compile(r"^(?P<base>.+\.fits(?:\.fz|\.gz)?)(?:\.\d+|\s*\(\d+\))$")


class RawFolderError(MissingPathError):
    """The raw folder does not exist or is not a folder."""


@dataclass
class RawScan:
    """Result of scanning one ``Raw/`` folder.

    Attributes
    ----------
    folder : Path
        The scanned folder.
    table : astropy.table.Table
        One row per accepted frame, sorted by MJD-OBS.
    excluded : astropy.table.Table
        ``filename`` and ``reason`` of every file left out.
    musemode : str
        Observing mode the frames were filtered for.
    nread : int
        Number of headers actually read from disk (the rest came from the cache).
    """

    folder: Path
    table: Table
    excluded: Table
    musemode: str
    nread: int = 0

    def select(self, tag) -> Table:
        """Rows of the raw table with the given tag."""
        return self.table[self.table["tag"] == tag]

    def templates(self) -> Table:
        """One row per template (``ESO TPL START``) and tag, flagging incomplete templates.

        A template is incomplete when it has fewer frames than announced by ``ESO TPL NEXP`` or than the
        recipe's minimum (:data:`pymusepipe.instrument.MINIMUM_RAW_FRAMES`).
        """
        rows = []
        if len(self.table):
            keys = sorted({(tpl, tag) for tpl, tag in zip(self.table["tpl_start"], self.table["tag"])})
            for tpl, tag in keys:
                group = self.table[(self.table["tpl_start"] == tpl) & (self.table["tag"] == tag)]
                nframes = len(group)
                nexp = int(max(group["tpl_nexp"]))
                # A template may mix types (OBJECT and SKY exposures of one science template): TPL NEXP counts all.
                in_template = int(np.sum(self.table["tpl_start"] == tpl))
                minimum = instrument.MINIMUM_RAW_FRAMES.get(tag, 1)
                problems = []
                if nframes < minimum:
                    problems.append(f"{nframes} frame(s), the recipe needs at least {minimum}")
                if nexp > 0 and in_template < nexp:
                    problems.append(f"{in_template} of the {nexp} exposures announced by TPL NEXP")
                rows.append((tpl, tag, str(group["night"][0]), nframes, nexp, minimum, not problems,
                             "; ".join(problems)))
        return Table(rows=rows or None, names=("tpl_start", "tag", "night", "nframes", "tpl_nexp", "minimum",
                                               "complete", "problem"),
                     dtype=(str, str, str, int, int, int, bool, str))

    def summary(self) -> str:
        """A readable summary: counts per tag, per template and per night, and the exclusions."""
        lines = [f"Raw folder {self.folder}: {len(self.table)} frame(s) accepted for mode {self.musemode}, "
                 f"{len(self.excluded)} left out"]
        if len(self.table):
            counts = Counter(self.table["tag"])
            lines.append("  per tag:   " + ", ".join(f"{tag} {n}" for tag, n in sorted(counts.items())))
            nights = Counter(self.table["night"])
            lines.append("  per night: " + ", ".join(f"{night} {n}" for night, n in sorted(nights.items())))
            lines.append("  templates:")
            for row in self.templates():
                flag = "" if row["complete"] else f"   INCOMPLETE: {row['problem']}"
                lines.append(f"    {row['tpl_start'] or '(no TPL START)':<23} {row['tag']:<14} "
                             f"{row['nframes']:>3} frame(s){flag}")
        if len(self.excluded):
            lines.append("  left out:")
            for row in self.excluded:
                lines.append(f"    {Path(row['filename']).name}: {row['reason']}")
        return "\n".join(lines)


_MJD_ZERO = datetime.datetime(1858, 11, 17)


def _night_of(mjd: float) -> str:
    # Paranal is at UTC-4/-3: shifting by 12 h gives the date of the evening the night started.
    if not math.isfinite(mjd):
        return ""
    return _night_of_day(math.floor(mjd - 0.5))


@functools.lru_cache(maxsize=4096)
def _night_of_day(day: int) -> str:
    # One strftime per night, not per frame (a rescan is mostly this kind of bookkeeping).
    return (_MJD_ZERO + datetime.timedelta(days=day)).strftime("%Y-%m-%d")


_LAMP_CARDS = [(f"ESO INS LAMP{i} NAME", f"ESO INS LAMP{i} ST", f"ESO INS SHUT{i} ST") for i in range(1, MAX_LAMPS + 1)]


def _lamps_on(header: dict) -> str:
    names = []
    for name_key, state_key, shutter_key in _LAMP_CARDS:
        name = header.get(name_key)
        if name is None:
            continue
        shutter_open = header.get(shutter_key, True)
        if header.get(state_key) is True and shutter_open is True:
            names.append(instrument.CALIBRATION_LAMPS.get(str(name), str(name).replace("CU-LAMP-", "")))
    return ",".join(dict.fromkeys(names))


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _as_int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


_HEADER_COLUMNS = [(column, kind, keyword) for column, (kind, keyword) in RAW_COLUMNS.items() if keyword]


def _row_from_header(path: Path, header: dict, tag: str, size: int, mtime: float) -> dict:
    row = {}
    get = header.get
    for column, kind, keyword in _HEADER_COLUMNS:
        value = get(keyword)
        if kind is str:
            row[column] = "" if value is None else value if type(value) is str else str(value)
        elif kind is float:
            row[column] = value if type(value) is float else _as_float(value)
        else:
            row[column] = value if type(value) is int else _as_int(value)
    row.update(filename=str(path), tag=tag, night=_night_of(row["mjd_obs"]), lamps=_lamps_on(header),
               size=size, mtime=mtime)
    return row


class _HeaderCache:
    """Headers already read, keyed by file name with size and modification time."""

    def __init__(self, path):
        self.path = Path(path) if path else None
        self.entries = {}
        if self.path and self.path.is_file():
            try:
                content = json.loads(self.path.read_text())
                if content.get("version") == CACHE_VERSION:
                    self.entries = content["entries"]
            except (OSError, ValueError, KeyError):
                logger.warning("header cache %s is unreadable; rescanning every file", self.path)

    def get(self, name, size, mtime):
        entry = self.entries.get(name)
        if entry and entry["size"] == size and entry["mtime"] == mtime:
            return entry
        return None

    def put(self, name, size, mtime, header=None, error=None):
        self.entries[name] = {"size": size, "mtime": mtime, "header": header, "error": error}

    def save(self, keep, changed):
        if not self.path:
            return
        stale = set(self.entries) - set(keep)
        if not changed and not stale and self.path.exists():
            return
        self.entries = {name: entry for name, entry in self.entries.items() if name in keep}
        try:
            write_atomically(self.path, lambda tmp: tmp.write_text(
                json.dumps({"version": CACHE_VERSION, "entries": self.entries})))
        except (OSError, PipelineError) as error:
            # Only a cache: the scan's result stands, the next scan reads the headers again.
            logger.warning("header cache not saved: %s", error)


def _empty_raw_table() -> Table:
    return Table(names=list(RAW_COLUMNS), dtype=[kind for kind, _ in RAW_COLUMNS.values()])


def scan_raw(folder, musemode=instrument.DEFAULT_MODE, *, cache_file=None, checkmode=True) -> RawScan:
    """Scan a raw folder and classify its frames.

    Parameters
    ----------
    folder : str or Path
        The ``Raw/`` folder of a pointing.
    musemode : str
        Observing mode of the reduction; frames of other modes are left out (see ``checkmode``).
    cache_file : str or Path, optional
        JSON file caching the headers read (keyed on name, size and modification time).
    checkmode : bool
        Apply the mode filter: science, standard and most calibrations must match ``musemode`` fully,
        ILLUM and ASTROMETRY only in field (WFM/NFM), biases and darks not at all.

    Returns
    -------
    RawScan

    Raises
    ------
    RawFolderError
        If ``folder`` does not exist.
    """
    folder = Path(folder).absolute()
    musemode = instrument.check_mode(musemode)
    if not folder.is_dir():
        raise RawFolderError(f"raw folder {folder} does not exist",
                             "put the raw MUSE files (.fits, .fits.fz or .fits.gz) of this pointing there")
    cache = _HeaderCache(cache_file)
    rows, excluded, nread = [], [], 0
    seen_exposures = {}
    entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    for entry in entries:
        if not entry.is_file():
            continue
        name = entry.name
        path = folder / name
        if not name.endswith(FITS_SUFFIXES):
            duplicate = _DUPLICATE_PATTERN.match(name)
            if duplicate:
                excluded.append((str(path), f"duplicate download of {duplicate.group('base')} "
                                            "(the name does not end in .fits, .fits.fz or .fits.gz)"))
            else:
                excluded.append((str(path), "not a FITS file name (expected .fits, .fits.fz or .fits.gz)"))
            continue
        stat = entry.stat()
        cached = cache.get(name, stat.st_size, stat.st_mtime)
        if cached is None:
            nread += 1
            try:
                header = read_primary_header_checked(path, HEADER_KEYWORDS)
                cache.put(name, stat.st_size, stat.st_mtime, header=header)
                cached = cache.get(name, stat.st_size, stat.st_mtime)
            except FitsReadError as exc:
                # Unreadable now (permissions): say so, but read it again next time (chmod keeps mtime).
                cached = {"error": str(exc).replace(f"{path}: ", "")}
            except FitsHeaderError as exc:
                # Truncated or corrupt: a download that completes changes size and mtime, so caching is safe.
                reason = str(exc).replace(f"{path}: ", "")
                if isinstance(exc, FitsTruncatedError):
                    reason += "; download it again"
                cache.put(name, stat.st_size, stat.st_mtime, error=reason)
                cached = cache.get(name, stat.st_size, stat.st_mtime)
        if cached["error"]:
            excluded.append((str(path), cached["error"]))
            continue
        header = cached["header"]
        instrume = str(header.get("INSTRUME", ""))
        if instrume != "MUSE":
            excluded.append((str(path), f"not a MUSE file (INSTRUME='{instrume}', expected 'MUSE')"))
            continue
        classification = instrument.classify_frame(
            str(header.get("ESO DPR CATG", "")), str(header.get("ESO DPR TYPE", "")),
            str(header.get("ESO DPR TECH", "")), str(header.get("ESO PRO CATG", "")))
        if classification.tag is None:
            excluded.append((str(path), classification.reason))
            continue
        frame_mode = str(header.get("ESO INS MODE", ""))
        if checkmode and not instrument.mode_compatible(frame_mode, musemode, classification.mode_match):
            how = "its field (WFM/NFM)" if classification.mode_match == instrument.MODE_MATCH_FIELD else "the mode"
            excluded.append((str(path), f"ESO INS MODE='{frame_mode}' does not match musemode={musemode} "
                                        f"({classification.tag} frames must match {how})"))
            continue
        # The same exposure downloaded twice (e.g. .fits and .fits.fz) must not be reduced twice.
        date_obs = header.get("DATE-OBS")
        identity = header.get("ARCFILE") or ((date_obs, classification.tag) if date_obs else None)
        if identity is not None:
            if identity in seen_exposures:
                excluded.append((str(path), f"duplicate of {Path(seen_exposures[identity]).name} "
                                            "(same exposure: same ARCFILE or DATE-OBS)"))
                continue
            seen_exposures[identity] = str(path)
        rows.append(_row_from_header(path, header, classification.tag, stat.st_size, stat.st_mtime))
    cache.save(keep={entry.name for entry in entries}, changed=nread > 0)
    if rows:
        table = Table({column: np.array([row[column] for row in rows], dtype=kind)
                       for column, (kind, _) in RAW_COLUMNS.items()})
        table = table[np.argsort(table["mjd_obs"], kind="stable")]
    else:
        table = _empty_raw_table()
        logger.warning("no usable raw frame in %s", folder)
    excluded_table = Table(rows=excluded or None, names=("filename", "reason"), dtype=(str, str))
    for filename, reason in excluded:
        logger.info("left out %s: %s", Path(filename).name, reason)
    table.meta["MUSEMODE"] = musemode
    table.meta["RAWDIR"] = str(folder)
    return RawScan(folder=folder, table=table, excluded=excluded_table, musemode=musemode, nread=nread)


def write_scan_tables(scan: RawScan, folder, overwrite=True):
    """Write the raw and exclusion tables as FITS into ``folder`` (``Astro_Tables/``).

    With ``overwrite=False`` existing tables are kept (and a differing new scan is reported).

    Returns
    -------
    tuple of Path
        The raw table and exclusion table files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in ((RAW_TABLE_NAME, scan.table), (EXCLUDED_TABLE_NAME, scan.excluded)):
        path = folder / name
        if path.exists() and not overwrite:
            previous = Table.read(path)
            if len(previous) != len(table):
                logger.warning("%s kept (overwrite_astropy_table=False) but the new scan differs: %d rows now, "
                               "%d in the file", path, len(table), len(previous))
        else:
            write_atomically(path, lambda tmp: table.write(tmp, format="fits", overwrite=True))
        written.append(path)
    return tuple(written)


def read_scan_tables(folder):
    """Read back the raw and exclusion tables written by :func:`write_scan_tables`."""
    folder = Path(folder)
    return Table.read(folder / RAW_TABLE_NAME), Table.read(folder / EXCLUDED_TABLE_NAME)


HEADER_CACHE_NAME = "raw_header_cache.json"


def scan_pointing(layout, musemode=instrument.DEFAULT_MODE, *, checkmode=True, overwrite_tables=True,
                  write_tables=True) -> RawScan:
    """Scan the ``Raw/`` folder of a :class:`~pymusepipe.layout.PointingLayout` and record the result.

    The header cache and the raw/exclusion tables go into the pointing's ``Astro_Tables/`` folder.
    """
    tables = layout.folder("astro_tables")
    scan = scan_raw(layout.folder("raw"), musemode, checkmode=checkmode,
                    cache_file=tables / HEADER_CACHE_NAME if write_tables else None)
    if write_tables:
        write_scan_tables(scan, tables, overwrite=overwrite_tables)
    return scan
