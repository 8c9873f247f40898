"""What a pointing's reduction decided, kept with its tables so that a new session resumes exactly.

Two small tables in the area's ``Astro_Tables/``:

- ``PIPE_decisions.fits``: one row per decision (``key``, ``value``, ``step``, ``time``, ``note``): the
  OFFSET_LIST in force and where it came from, the sky method of each exposure, a user SKY_MASK, the
  narrow-field decision of the standard star ...;
- ``PIPE_steps.fits``: one row per step (``step``, ``status``, ``summary``, ``seconds``, ``finished``,
  ``jobs``, ``failed``): what the last run of each step did.

Paths are stored relative to the data root. Both tables are rewritten atomically after every change.
"""
from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

from astropy.table import Table

from .layout import relative_to_root, resolve_from_root
from .products import write_table_atomically

__all__ = ["PointingState", "Decision", "StepStatus", "DECISIONS_TABLE", "STEPS_TABLE"]

logger = logging.getLogger(__name__)

DECISIONS_TABLE = "PIPE_decisions.fits"
STEPS_TABLE = "PIPE_steps.fits"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Decision:
    """One decision of a step. ``value`` is text (a path is stored relative to the data root)."""

    key: str
    value: str
    step: str = ""
    time: str = ""
    note: str = ""


@dataclass
class StepStatus:
    """What the last run of a step did.

    Attributes
    ----------
    step : str
    status : str
        ``done``, ``uptodate``, ``failed``, ``skipped``, ``planned`` (fakemode) or ``interrupted``.
    summary : str
        Job counts and what the step decided (e.g. the sky method).
    seconds : float
        Wall time of the step's jobs (they may have overlapped with other steps').
    finished : str
        UTC time.
    jobs : int
    failed : str
        JSON list of ``[job, message, esorex log]`` of the failed jobs.
    """

    step: str
    status: str
    summary: str = ""
    seconds: float = 0.0
    finished: str = ""
    jobs: int = 0
    failed: str = "[]"
    #: The jobs and their results, when the step ran in this session (not stored).
    report: object = field(default=None, compare=False, repr=False)

    @property
    def failures(self) -> list:
        return json.loads(self.failed or "[]")


def _stored_fields(record_type) -> list:
    return [item for item in fields(record_type) if item.name != "report"]


def _read(path: Path, record_type) -> list:
    if not path.is_file():
        return []
    table = Table.read(path)
    types = {item.name: {"int": int, "float": float}.get(str(item.type), str)
             for item in _stored_fields(record_type)}
    out = []
    for row in table:
        values = {}
        for name, cast in types.items():
            if name in table.colnames:
                value = row[name]
                values[name] = cast("" if (cast is str and getattr(value, "mask", False)) else value)
        out.append(record_type(**values))
    return out


def _write(path: Path, records, record_type):
    names = [item.name for item in _stored_fields(record_type)]
    dtypes = [{"int": int, "float": float}.get(str(item.type), str) for item in _stored_fields(record_type)]
    if records:
        table = Table(rows=[tuple(getattr(record, name) for name in names) for record in records], names=names)
    else:
        table = Table(names=names, dtype=dtypes)
    write_table_atomically(table, path)


class PointingState:
    """The decisions and step statuses of one area (a pointing).

    Parameters
    ----------
    tables_dir : Path
        The area's ``Astro_Tables`` folder.
    root : Path
        Data root (paths are stored relative to it).
    persist : bool
        Write changes to disk (False in fakemode: a dry run changes nothing a real run reads).
    """

    def __init__(self, tables_dir, root, *, persist: bool = True):
        self.tables_dir = Path(tables_dir)
        self.root = Path(root).absolute()
        self.persist = persist
        self._decisions = {decision.key: decision for decision in _read(self.tables_dir / DECISIONS_TABLE,
                                                                        Decision)}
        self._steps = {status.step: status for status in _read(self.tables_dir / STEPS_TABLE, StepStatus)}

    # ------------------------------------------------------------------ decisions
    def get(self, key: str, default=None) -> str | None:
        decision = self._decisions.get(key)
        return decision.value if decision is not None else default

    def get_path(self, key: str) -> Path | None:
        """A decision whose value is a path, absolute (None when not decided or decided 'none')."""
        value = self.get(key)
        if not value or value == "none":
            return None
        return Path(resolve_from_root(value, self.root))

    def decision(self, key: str) -> Decision | None:
        return self._decisions.get(key)

    def set(self, key: str, value, *, step: str = "", note: str = ""):
        """Record a decision (and save). Paths are stored relative to the data root."""
        if isinstance(value, Path) or (isinstance(value, str) and value.startswith("/")):
            value = relative_to_root(value, self.root)
        self._decisions[key] = Decision(key, str(value), step, _now(), note)
        self._save_decisions()

    def forget(self, key: str):
        if self._decisions.pop(key, None) is not None:
            self._save_decisions()

    def decisions(self) -> list:
        return list(self._decisions.values())

    def _save_decisions(self):
        if self.persist:
            _write(self.tables_dir / DECISIONS_TABLE, list(self._decisions.values()), Decision)

    # ------------------------------------------------------------------ steps
    def step(self, name: str) -> StepStatus | None:
        return self._steps.get(name)

    def steps(self) -> dict:
        return dict(self._steps)

    def set_step(self, status: StepStatus):
        if not status.finished:
            status.finished = _now()
        self._steps[status.step] = status
        if self.persist:
            _write(self.tables_dir / STEPS_TABLE, list(self._steps.values()), StepStatus)
