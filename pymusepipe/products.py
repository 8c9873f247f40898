"""Where products go, the per-recipe tables, product integrity and resume fingerprints.

Two astropy tables per recipe live in each area's ``Astro_Tables/`` (a pointing, or a night's calibrations):

- ``<recipe>_jobs.fits``: one row per job (step, inputs, calibrations used and why, parameters, products,
  status, duration, CPU time, peak memory, fingerprint, esorex log);
- ``<recipe>_products.fits``: one row per product file with what association needs to find it later (tag,
  path, mjd, date_obs, ins_mode, read_mode, ifu, tpl_start, expno, night), which step made it and what it is
  (``step``, ``qualifier``: e.g. the filter of an IMAGE_FOV), and its integrity record (size, mtime, CRC-32).

Later steps find products through these tables (step, tag, qualifier), never through patterns in file names.
Paths are stored relative to the data root, so a reduction folder can be moved or copied and reopened.

A job's :func:`fingerprint` covers its inputs and calibrations (by content: the checksum of registered
products, name and size of raw frames, size and time of static files), parameters, IFUs and the pipeline
version; a job with an unchanged fingerprint whose products are all intact is up to date.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from astropy.table import Table

from .association import CalibrationCandidate
from .atomic import write_atomically
from .layout import relative_to_root, resolve_from_root

__all__ = ["PlannedProduct", "ProductRecord", "JobRecord", "ProductCatalogue", "CatalogueSet", "JobTable",
           "file_checksum", "file_signature", "fingerprint", "final_product_name",
           "product_integrity", "write_table_atomically"]

logger = logging.getLogger(__name__)

_CHUNK = 16 * 1024 * 1024


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
    qualifier : str
        What distinguishes products of one tag made by one job (the filter of an IMAGE_FOV), '' otherwise.
    """

    tag: str
    esorex_name: str
    destination: Path
    ifu: int = 0
    exposure: int = 0
    required: bool = True
    qualifier: str = ""


def final_product_name(tag: str, label: str, ifu: int = 0, qualifier: str = "") -> str:
    """Name of a product in the layout: ``TAG[_qualifier]_label[-NN].fits``.

    ``label`` is the template start (masters) or template start and exposure number (per-exposure jobs);
    ``qualifier`` names a member of a series (e.g. the filter of an IMAGE_FOV). Names are for people: the
    pipeline finds products through the tables.
    """
    parts = [tag] + ([qualifier] if qualifier else []) + [label]
    suffix = f"-{ifu:02d}" if ifu else ""
    return "_".join(parts) + suffix + ".fits"


@dataclass
class ProductRecord:
    """One registered product file (a row of ``<recipe>_products.fits``).

    ``batch`` groups the files of one recipe run on one template (``<recipe>_<label>``), across the per-IFU
    jobs of a fan-out, so that association picks the IFUs of one master together. ``path`` is absolute in
    memory and stored relative to the data root.
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
    step: str = ""
    qualifier: str = ""
    night: str = ""
    size: int = -1
    mtime_ns: int = -1
    checksum: str = ""

    def candidate(self) -> CalibrationCandidate:
        return CalibrationCandidate(tag=self.tag, path=self.path, mjd=self.mjd, ins_mode=self.ins_mode,
                                    read_mode=self.read_mode, ifu=self.ifu, tpl_start=self.tpl_start,
                                    job=self.job, status=self.status, batch=self.batch, night=self.night,
                                    date_obs=self.date_obs)


@dataclass
class JobRecord:
    """One job of a recipe (a row of ``<recipe>_jobs.fits``). List-like fields are stored as JSON text."""

    job: str
    recipe: str
    label: str = ""
    step: str = ""
    area: str = ""
    ifus: str = ""
    status: str = ""
    returncode: int = -1
    duration: float = 0.0
    cpu_seconds: float = -1.0
    max_rss_mb: float = -1.0
    threads: int = 0
    started: str = ""
    inputs: str = ""
    calibrations: str = ""
    parameters: str = ""
    products: str = ""
    fingerprint: str = ""
    message: str = ""
    note: str = ""
    sof: str = ""
    esorex_log: str = ""


#: Fields of each record type that hold paths (single path, or JSON with paths inside).
_PATH_FIELDS = {ProductRecord: ("path",), JobRecord: ("sof", "esorex_log")}
_JSON_PATH_FIELDS = {JobRecord: ("inputs", "calibrations", "products")}


def _column_types(record_type) -> dict:
    """Field name -> Python type of a record dataclass (annotations are strings here)."""
    return {item.name: {"int": int, "float": float}.get(str(item.type), str) for item in fields(record_type)}


def _convert_json_paths(name, text, convert):
    """Paths inside the JSON fields of a job record: a list of paths, or tag -> {"paths": [...], ...}."""
    value = json.loads(text)
    if name == "calibrations":
        value = {tag: {**entry, "paths": [convert(path) for path in entry.get("paths", [])]}
                 for tag, entry in value.items()}
    else:
        value = [convert(path) for path in value]
    return json.dumps(value, sort_keys=True)


def _convert_paths(record, record_type, convert):
    """A copy of ``record`` with its path fields passed through ``convert`` (relative <-> absolute)."""
    changes = {name: convert(getattr(record, name)) for name in _PATH_FIELDS.get(record_type, ())
               if getattr(record, name)}
    for name in _JSON_PATH_FIELDS.get(record_type, ()):
        text = getattr(record, name)
        if text:
            changes[name] = _convert_json_paths(name, text, convert)
    return record_type(**{**record.__dict__, **changes}) if changes else record


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


def write_table_atomically(table: Table, path: Path):
    """Write a FITS table whole or not at all (:func:`pymusepipe.atomic.write_atomically`): a failure (disk
    full) leaves the previous table and no temporary file, and is raised as a
    :class:`~pymusepipe.errors.PipelineError` (``DiskFullError``, ``PermissionDeniedError``) naming it."""
    write_atomically(path, lambda temporary: table.write(temporary, format="fits", overwrite=True))


def file_checksum(path) -> str:
    """CRC-32 of a file's content (``crc32:xxxxxxxx``): detects truncated or altered products at ~3 GB/s."""
    value = 0
    with open(path, "rb") as stream:
        while True:
            block = stream.read(_CHUNK)
            if not block:
                break
            value = zlib.crc32(block, value)
    return f"crc32:{value & 0xFFFFFFFF:08x}"


def product_integrity(path) -> tuple:
    """(size, mtime_ns, checksum) of a product just made (it is still in the page cache: cheap to read)."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns, file_checksum(path)


class ProductCatalogue:
    """Every registered product of one area, read from (and saved to) its ``Astro_Tables``.

    Parameters
    ----------
    tables_dir : Path or None
        ``Astro_Tables`` folder; None keeps the catalogue in memory only.
    root : Path, optional
        Data root: paths are stored relative to it (and resolved against it when read).
    """

    def __init__(self, tables_dir=None, root=None):
        self.tables_dir = Path(tables_dir) if tables_dir is not None else None
        self.root = Path(root).absolute() if root is not None else None
        self._by_job: dict = {}   # job -> its records (one dict lookup instead of a scan per job)
        if self.tables_dir is not None and self.tables_dir.is_dir():
            for path in sorted(self.tables_dir.glob("*_products.fits")):
                records = _table_to_records(Table.read(path), ProductRecord)
                self._add([self._absolute(record) for record in records])

    def _absolute(self, record):
        if self.root is None:
            return record
        return _convert_paths(record, ProductRecord, lambda text: resolve_from_root(text, self.root))

    def _stored(self, record):
        if self.root is None:
            return record
        return _convert_paths(record, ProductRecord, lambda text: relative_to_root(text, self.root))

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

    def jobs(self) -> list:
        return list(self._by_job)

    def table(self, recipe: str | None = None, tag: str | None = None) -> Table:
        """The records of a recipe and/or tag as an astropy Table (paths absolute)."""
        selected = [record for record in self.records
                    if (recipe is None or record.recipe == recipe) and (tag is None or record.tag == tag)]
        return _records_to_table(selected, ProductRecord)

    def save(self, recipe: str):
        """Write ``<recipe>_products.fits`` (no-op for an in-memory catalogue)."""
        if self.tables_dir is not None:
            # Only what exists (or was cleaned on purpose) is recorded: planned products live in memory for the
            # run that plans them.
            records = [self._stored(record) for record in self.records
                       if record.recipe == recipe and record.status in ("done", "cleaned")]
            write_table_atomically(_records_to_table(records, ProductRecord),
                                   self.tables_dir / f"{recipe}_products.fits")


class CatalogueSet:
    """The catalogues of several areas seen as one (a pointing and the nights it uses).

    Association searches all of them; a job's products are registered in its own area's catalogue.
    """

    def __init__(self):
        self._catalogues: dict = {}   # area key -> ProductCatalogue
        self._area_of_job: dict = {}

    def add(self, key, catalogue: ProductCatalogue):
        if key not in self._catalogues:
            self._catalogues[key] = catalogue
            for job in catalogue.jobs():
                self._area_of_job.setdefault(job, key)
        return self._catalogues[key]

    def get(self, key) -> ProductCatalogue | None:
        return self._catalogues.get(key)

    def __contains__(self, key):
        return key in self._catalogues

    @property
    def records(self) -> list:
        return [record for catalogue in self._catalogues.values() for record in catalogue.records]

    def register(self, key, job: str, records):
        self._catalogues[key].register(job, records)
        self._area_of_job[job] = key

    def of_job(self, job: str) -> list:
        key = self._area_of_job.get(job)
        return self._catalogues[key].of_job(job) if key is not None else []

    def by_path(self) -> dict:
        """path -> record, for every registered product (to find which job makes a file)."""
        return {record.path: record for record in self.records}

    def candidates_by_tag(self, include_planned: bool = False) -> dict:
        """tag -> list of CalibrationCandidate (done products; also planned ones if asked)."""
        by_tag = {}
        for record in self.records:
            if record.status == "done" or include_planned:
                by_tag.setdefault(record.tag, []).append(record.candidate())
        return by_tag

    def select(self, *, tag=None, step=None, recipe=None, qualifier=None, area=None,
               statuses=("done",)) -> list:
        """Registered records matching every given attribute (``area``: the base folder of one area)."""
        out = []
        if area is not None:
            catalogue = self._catalogues.get(area)
            pool = catalogue.records if catalogue is not None else []
        else:
            pool = self.records
        for record in pool:
            if statuses is not None and record.status not in statuses:
                continue
            if tag is not None and record.tag != tag:
                continue
            if step is not None and record.step != step:
                continue
            if recipe is not None and record.recipe != recipe:
                continue
            if qualifier is not None and record.qualifier != qualifier:
                continue
            out.append(record)
        return out

    def save(self, key, recipe: str):
        self._catalogues[key].save(recipe)


class JobTable:
    """The jobs of one recipe in one area (``<recipe>_jobs.fits``), keyed by job name."""

    def __init__(self, tables_dir, recipe: str, root=None):
        self.path = Path(tables_dir) / f"{recipe}_jobs.fits" if tables_dir is not None else None
        self.recipe = recipe
        self.root = Path(root).absolute() if root is not None else None
        self.records: dict = {}
        if self.path is not None and self.path.is_file():
            for record in _table_to_records(Table.read(self.path), JobRecord):
                if self.root is not None:
                    record = _convert_paths(record, JobRecord, lambda text: resolve_from_root(text, self.root))
                self.records[record.job] = record

    def get(self, job: str) -> JobRecord | None:
        return self.records.get(job)

    def update(self, record: JobRecord):
        self.records[record.job] = record

    def table(self) -> Table:
        return _records_to_table(list(self.records.values()), JobRecord)

    def save(self):
        if self.path is not None:
            records = list(self.records.values())
            if self.root is not None:
                records = [_convert_paths(record, JobRecord, lambda text: relative_to_root(text, self.root))
                           for record in records]
            write_table_atomically(_records_to_table(records, JobRecord), self.path)


def file_signature(path, root=None, checksums: Mapping | None = None) -> list:
    """What a job's result depends on in one input file.

    - a registered product (``checksums`` maps its path to its recorded CRC-32): its content;
    - a raw frame (under ``root``, read-only by contract): its name and size, so a copied or moved reduction
      (new modification times) stays up to date;
    - anything else (static calibrations): path, size and modification time.
    """
    name = relative_to_root(path, root) if root is not None else str(path)
    if checksums and str(path) in checksums and checksums[str(path)]:
        return [name, checksums[str(path)]]
    try:
        stat = os.stat(path)
    except OSError:
        return [name, -1, -1]
    if root is not None and not os.path.isabs(name):
        return [name, stat.st_size]
    return [name, stat.st_size, stat.st_mtime_ns]


def fingerprint(recipe: str, parameters: Mapping, inputs: Sequence, calibrations: Mapping,
                pipeline_version: str, ifus: Sequence[int] = (), *, root=None, checksums=None) -> str:
    """SHA-256 of everything that determines a job's products."""
    payload = {
        "recipe": recipe,
        "parameters": {str(key): str(value) for key, value in sorted(parameters.items())},
        "inputs": [file_signature(path, root, checksums) for path in inputs],
        "calibrations": {tag: [file_signature(path, root, checksums) for path in paths]
                         for tag, paths in sorted(calibrations.items())},
        "pipeline": pipeline_version,
        "ifus": list(ifus),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
