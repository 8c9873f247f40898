"""Where products go, the per-recipe tables, and resume fingerprints.

Two astropy tables per recipe live in ``Astro_Tables/``:

- ``<recipe>_jobs.fits``: one row per job (inputs, calibrations used and why, parameters, products,
  status, duration, fingerprint, esorex log);
- ``<recipe>_products.fits``: one row per product file with what association needs to find it later
  (tag, path, mjd, date_obs, ins_mode, read_mode, ifu, tpl_start, expno, job, status).

:class:`ProductCatalogue` reads every products table of a pointing, so a later step finds the masters of
earlier ones (and, in fakemode, the *planned* files of jobs that did not run).

A job's :func:`fingerprint` covers its inputs and calibrations (path, size, mtime), parameters, IFUs and the
pipeline version; a job with an unchanged fingerprint whose products all exist is up to date.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from astropy.table import Table

from .association import CalibrationCandidate

__all__ = ["PlannedProduct", "ProductRecord", "JobRecord", "ProductCatalogue", "JobTable", "file_signature",
           "fingerprint", "final_product_name", "atomic_move"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedProduct:
    """A product a job will write, and where it goes.

    Attributes
    ----------
    tag : str
    esorex_name : str
        File name esorex gives it in the job's output folder.
    destination : Path
        Absolute final path in the layout.
    ifu : int
        IFU it covers (0: merged or not per IFU).
    exposure : int
        Index (1-based, SOF order) of the input exposure for ``dateobs`` products, else 0.
    required : bool
        Its absence after exit 0 fails the job.
    """

    tag: str
    esorex_name: str
    destination: Path
    ifu: int = 0
    exposure: int = 0
    required: bool = True


def final_product_name(tag: str, label: str, ifu: int = 0, qualifier: str = "") -> str:
    """Name of a product in the layout: ``TAG[_qualifier]_label[-NN].fits``.

    ``label`` is the template start (masters) or template start and exposure number (per-exposure jobs);
    ``qualifier`` names a member of a series (e.g. the filter of an IMAGE_FOV).
    """
    parts = [tag] + ([qualifier] if qualifier else []) + [label]
    suffix = f"-{ifu:02d}" if ifu else ""
    return "_".join(parts) + suffix + ".fits"


@dataclass
class ProductRecord:
    """One registered product file (a row of ``<recipe>_products.fits``).

    ``batch`` groups the files of one recipe run on one template (``<recipe>_<label>``), across the
    per-IFU jobs of a fan-out, so that association picks the IFUs of one master together.
    """

    tag: str
    path: str
    mjd: float
    date_obs: str = ""
    ins_mode: str = ""
    read_mode: str = ""
    ifu: int = 0
    tpl_start: str = ""
    expno: int = -1
    job: str = ""
    recipe: str = ""
    status: str = "done"
    batch: str = ""

    def candidate(self) -> CalibrationCandidate:
        return CalibrationCandidate(tag=self.tag, path=self.path, mjd=self.mjd, ins_mode=self.ins_mode,
                                    read_mode=self.read_mode, ifu=self.ifu, tpl_start=self.tpl_start,
                                    job=self.job, status=self.status, batch=self.batch)


@dataclass
class JobRecord:
    """One job of a recipe (a row of ``<recipe>_jobs.fits``). List-like fields are stored as text."""

    job: str
    recipe: str
    label: str = ""
    ifus: str = ""
    status: str = ""
    returncode: int = -1
    duration: float = 0.0
    started: str = ""
    inputs: str = ""
    calibrations: str = ""
    parameters: str = ""
    products: str = ""
    fingerprint: str = ""
    message: str = ""
    sof: str = ""
    esorex_log: str = ""


def _column_types(record_type) -> dict:
    """Field name -> Python type of a record dataclass (annotations are strings here)."""
    return {item.name: {"int": int, "float": float}.get(str(item.type), str) for item in fields(record_type)}


def _records_to_table(records, record_type) -> Table:
    types = _column_types(record_type)
    names = list(types)
    if not records:
        return Table(names=names, dtype=[types[name] for name in names])
    return Table(rows=[tuple(getattr(record, name) for name in names) for record in records], names=names)


def _table_to_records(table: Table, record_type) -> list:
    types = {name: cast for name, cast in _column_types(record_type).items() if name in table.colnames}
    # FITS stores empty strings as masked entries: read them back as ''.
    columns = {name: (table[name].filled("") if cast is str and hasattr(table[name], "filled") else table[name])
               for name, cast in types.items()}
    return [record_type(**{name: cast(columns[name][index]) for name, cast in types.items()})
            for index in range(len(table))]


def _write_table_atomically(table: Table, path: Path):
    """Write then rename, so a reader never sees a half-written table; a failure (disk full) leaves neither
    a temporary file nor a damaged table, and is raised as a :class:`~pymusepipe.errors.PipelineError`
    (``DiskFullError``, ``PermissionDeniedError``) naming the table."""
    from .errors import from_os_error  # here: only this function of the module is the fault helper's

    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.write(temporary, format="fits", overwrite=True)
        os.replace(temporary, path)
    except BaseException as error:
        try:
            temporary.unlink()
        except OSError:
            pass
        if isinstance(error, OSError):
            raise from_os_error(error, path, "writing") from error
        raise


class ProductCatalogue:
    """Every registered product of a pointing, read from (and saved to) ``Astro_Tables``.

    Parameters
    ----------
    tables_dir : Path or None
        ``Astro_Tables`` folder; None keeps the catalogue in memory only.
    """

    def __init__(self, tables_dir=None):
        self.tables_dir = Path(tables_dir) if tables_dir is not None else None
        self._by_job: dict = {}   # job -> its records (one dict lookup instead of a scan per job)
        if self.tables_dir is not None and self.tables_dir.is_dir():
            for path in sorted(self.tables_dir.glob("*_products.fits")):
                self._add(_table_to_records(Table.read(path), ProductRecord))

    def _add(self, records):
        for record in records:
            self._by_job.setdefault(record.job, []).append(record)

    @property
    def records(self) -> list:
        """Every registered product record."""
        return [record for records in self._by_job.values() for record in records]

    @records.setter
    def records(self, records):
        self._by_job = {}
        self._add(records)

    def register(self, job: str, records: Iterable[ProductRecord]):
        """Replace the products of ``job`` by ``records``."""
        self._by_job.pop(job, None)
        self._add(records)

    def of_job(self, job: str) -> list:
        return list(self._by_job.get(job, ()))

    def candidates_by_tag(self, include_planned: bool = False) -> dict:
        """tag -> list of CalibrationCandidate (done products; also planned ones if asked)."""
        by_tag = {}
        for record in self.records:
            if record.status == "done" or include_planned:
                by_tag.setdefault(record.tag, []).append(record.candidate())
        return by_tag

    def table(self, recipe: str | None = None, tag: str | None = None) -> Table:
        """The records of a recipe and/or tag as an astropy Table."""
        selected = [record for record in self.records
                    if (recipe is None or record.recipe == recipe) and (tag is None or record.tag == tag)]
        return _records_to_table(selected, ProductRecord)

    def save(self, recipe: str):
        """Write ``<recipe>_products.fits`` (no-op for an in-memory catalogue)."""
        if self.tables_dir is not None:
            _write_table_atomically(self.table(recipe=recipe), self.tables_dir / f"{recipe}_products.fits")


class JobTable:
    """The jobs of one recipe (``<recipe>_jobs.fits``), keyed by job name."""

    def __init__(self, tables_dir, recipe: str):
        self.path = Path(tables_dir) / f"{recipe}_jobs.fits" if tables_dir is not None else None
        self.recipe = recipe
        self.records: dict = {}
        if self.path is not None and self.path.is_file():
            for record in _table_to_records(Table.read(self.path), JobRecord):
                self.records[record.job] = record

    def get(self, job: str) -> JobRecord | None:
        return self.records.get(job)

    def update(self, record: JobRecord):
        self.records[record.job] = record

    def table(self) -> Table:
        return _records_to_table(list(self.records.values()), JobRecord)

    def save(self):
        if self.path is not None:
            _write_table_atomically(self.table(), self.path)


def file_signature(path) -> list:
    """``[path, size, mtime_ns]`` of a file (``[path, -1, -1]`` when it does not exist)."""
    try:
        stat = os.stat(path)
    except OSError:
        return [str(path), -1, -1]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def fingerprint(recipe: str, parameters: Mapping, inputs: Sequence, calibrations: Mapping,
                pipeline_version: str, ifus: Sequence[int] = ()) -> str:
    """SHA-256 of everything that determines a job's products."""
    payload = {
        "recipe": recipe,
        "parameters": {str(key): str(value) for key, value in sorted(parameters.items())},
        "inputs": [file_signature(path) for path in inputs],
        "calibrations": {tag: [file_signature(path) for path in paths] for tag, paths in sorted(calibrations.items())},
        "pipeline": pipeline_version,
        "ifus": list(ifus),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def atomic_move(source, destination):
    """Move a finished product into the layout in one step (rename; copy + rename across file systems)."""
    import shutil

    source, destination = Path(source), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, destination)
    except OSError:
        # Another file system: copy next to the destination, then rename, so no half file is ever visible.
        temporary = destination.with_name(f".{destination.name}.part")
        shutil.copy2(source, temporary)
        os.replace(temporary, destination)
        source.unlink()
