"""Exposures the user excludes from a reduction, kept in the pointing's ``Config/excluded_exposures.txt``.

One entry per line: a raw file name (with or without its ``.fits``/``.fits.fz``/``.fits.gz`` suffix) or a
DATE-OBS (``2026-03-14T23:01:02.123``; the first 19 characters are enough), optionally followed by
``# reason``. Exclusions given in Python (``MusePipe(exclude=[...])``) or on the command line
(``--exclude``) are appended to that file, so a later session excludes the same frames; delete a line to
take a frame back. Excluded frames appear in the scan's exclusions as "excluded by the user" and are never
used.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

__all__ = ["EXCLUSIONS_FILE", "Exclusion", "read_exclusions", "add_exclusions", "apply_exclusions"]

EXCLUSIONS_FILE = "excluded_exposures.txt"
_SUFFIXES = (".fits.fz", ".fits.gz", ".fits")


@dataclass(frozen=True)
class Exclusion:
    """One entry of the exclusions file."""

    entry: str
    reason: str = ""
    line: int = 0

    def matches(self, filename: str, date_obs: str) -> bool:
        name = Path(filename).name
        stem = next((name[:-len(suffix)] for suffix in _SUFFIXES if name.endswith(suffix)), name)
        if self.entry in (name, stem):
            return True
        return len(self.entry) >= 19 and bool(date_obs) and date_obs.startswith(self.entry)


def read_exclusions(path) -> list:
    """Entries of an exclusions file (none when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text, _, reason = line.partition("#")
        text = text.strip()
        if text:
            if len(text.split()) != 1:
                raise ValueError(f"{path}, line {number}: expected one file name or DATE-OBS per line "
                                 f"(then '# reason'), got {text!r}")
            entries.append(Exclusion(text, reason.strip(), number))
    return entries


def add_exclusions(path, entries, origin: str = "") -> list:
    """Append entries (file names or DATE-OBS) not already in the file; returns those added."""
    path = Path(path)
    known = {exclusion.entry for exclusion in read_exclusions(path)}
    added = [str(entry).strip() for entry in entries if str(entry).strip() and str(entry).strip() not in known]
    if added:
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        note = f"# added {stamp}" + (f" by {origin}" if origin else "")
        header = "" if path.exists() else ("# Exposures excluded from this pointing's reduction: one file name "
                                           "or DATE-OBS per line, optionally '# reason'.\n")
        with path.open("a") as stream:
            stream.write(header + "".join(f"{entry}  {note}\n" for entry in added))
    return added


def apply_exclusions(table: Table, excluded: Table, exclusions, source: str):
    """Move the rows the exclusions match from the raw table to the exclusions table.

    Returns
    -------
    (Table, Table, list)
        The raw table without them, the exclusions table with them ("excluded by the user (<source>, line N)"),
        and the entries that matched nothing (to warn about typos).
    """
    if not exclusions or not len(table):
        return table, excluded, list(exclusions)
    keep = np.ones(len(table), dtype=bool)
    reasons = []
    used = set()
    for index, row in enumerate(table):
        for exclusion in exclusions:
            if exclusion.matches(str(row["filename"]), str(row["date_obs"])):
                keep[index] = False
                used.add(exclusion)
                why = f": {exclusion.reason}" if exclusion.reason else ""
                reasons.append((str(row["filename"]), f"excluded by the user ({source}, line {exclusion.line}){why}"))
                break
    added = Table(rows=reasons or None, names=("filename", "reason"), dtype=(str, str))
    excluded = vstack([excluded, added]) if len(excluded) else added
    return table[keep], excluded, [exclusion for exclusion in exclusions if exclusion not in used]
