"""The static HTML quality-control report: one page per pointing, per observing night, per target and for the
whole sample, each ``Figures/index.html`` in its area with its PNGs.

Pages are built from what is on disk only: the products and job tables of ``Astro_Tables/`` (plus products
found by name in the area's folders, e.g. an OFFSET_LIST written by the alignment module), so they work on any
reduction at any stage without running anything. A figure whose products are missing is replaced by a note
saying why; a figure that fails is reported on the page too, and never stops the others. Every link is relative
(and percent-encoded: product names hold ISO dates with colons), so a folder can be copied and browsed elsewhere.

A PNG newer than all its products is reused unless ``overwrite=True``: :func:`refresh_report`, called after each
run, redraws only what changed.

- pointing (this module, :func:`build_report`): status of each step, the pointing's products (sky spectrum and
  the sky each exposure used, residual sky of the final cube, images, offsets, cubes), QC keywords, job tables;
- night (:mod:`.night`): the master calibrations made that night, their QC keywords, who used them;
- target and sample (:mod:`.target`): alignment to the reference image, mosaic; every target with its status.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_atomically
from ..errors import PipelineError
from . import figures
from .pages import (REPORT_NAME, escape, figure_html, href, now_utc, page_exists, page_head, planned_pages,
                    status_badge, table_html, write_page)

__all__ = ["FigureEntry", "ProductFile", "FIGURE_KINDS", "find_products", "make_figures", "build_report",
           "refresh_report", "refresh_after_run", "refresh_after_runs", "REPORT_NAME"]

logger = logging.getLogger(__name__)

#: Layout folders of a pointing searched for products by name (tag prefix) when the catalogue does not list them.
_PRODUCT_FOLDERS = ("object", "sky", "std")
_MASTER_KINDS = ("Bias", "Flat", "Trace", "Wave", "Lsf", "Twilight", "Std")

#: Job-table columns shown in the step tables, in order.
_JOB_COLUMNS = ("job", "ifus", "status", "duration", "started", "message", "note")


@dataclass
class ProductFile:
    """A product file: its tag, path, and what the products table says of it ('' when found by name)."""

    tag: str
    path: Path
    recipe: str = ""
    job: str = ""
    ifu: int = 0
    step: str = ""
    qualifier: str = ""
    date_obs: str = ""


@dataclass
class FigureEntry:
    """One figure of a page: where it is, from what, or why it is absent."""

    section: str
    title: str
    png: Path | None = None
    products: list = field(default_factory=list)
    note: str = ""
    caption: str = ""


@dataclass(frozen=True)
class _FigureKind:
    section: str
    tag: str
    function: object
    partner: str = ""           # tag of a second product of the same job (and IFU)
    partner_folder: tuple = ()  # layout folder of that partner when found by name (default: the product's own)
    partner_required: bool = False


#: The figures of products, in page order: section, product tag drawn, function and an optional partner product.
FIGURE_KINDS = (
    _FigureKind("Master bias", "MASTER_BIAS", figures.master_image),
    _FigureKind("Master flat", "MASTER_FLAT", figures.master_image),
    _FigureKind("Trace", "TRACE_TABLE", figures.trace_overlay, "MASTER_FLAT", ("master", "Flat"), True),
    _FigureKind("Wavelength calibration", "WAVECAL_TABLE", figures.wavecal_residuals, "WAVECAL_RESIDUALS"),
    _FigureKind("Line-spread function", "LSF_PROFILE", figures.lsf_width),
    _FigureKind("Twilight correction", "TWILIGHT_CUBE", figures.twilight_correction),
    _FigureKind("Standard star response", "STD_RESPONSE", figures.std_response, "STD_TELLURIC"),
    _FigureKind("Sky spectrum", "SKY_SPECTRUM", figures.sky_spectrum, "SKY_LINES"),
    _FigureKind("Reconstructed images", "IMAGE_FOV", figures.exposure_image),
    _FigureKind("Alignment", "OFFSET_LIST", figures.alignment_offsets),
    _FigureKind("Cubes", "DATACUBE_FINAL", figures.cube_overview),
)
#: What a night's page draws (the rest is the pointings').
NIGHT_TAGS = ("MASTER_BIAS", "MASTER_FLAT", "TRACE_TABLE", "WAVECAL_TABLE", "LSF_PROFILE", "TWILIGHT_CUBE",
              "STD_RESPONSE")


# ---------------------------------------------------------------------- finding products
def find_products(area, *, folders=None) -> dict:
    """tag -> list of ProductFile of one area: the catalogue's done products that exist, then files found by
    name in the area's folders (masters, and for a pointing its Object/Sky/Std folders and its own files in the
    target's Alignment folder).

    Parameters
    ----------
    area : PointingLayout or NightLayout
    folders : list of Path, optional
        Folders searched by name (default: as above).
    """
    from ..status import area_records

    found, seen = {}, set()
    for record in sorted(area_records(area, "product"), key=lambda record: (record.tag, record.path)):
        path = Path(record.path)
        if record.status == "done" and path.is_file() and path not in seen:
            seen.add(path)
            found.setdefault(record.tag, []).append(ProductFile(
                record.tag, path, record.recipe, record.job, int(record.ifu), record.step, record.qualifier,
                record.date_obs))
    if folders is None:
        folders = [area.master_folder(kind) for kind in _MASTER_KINDS]
        if getattr(area, "kind", "") == "pointing":
            folders += [area.folder(key) for key in _PRODUCT_FOLDERS]
        else:
            folders += [area.folder("std")]
    tags = {kind.tag for kind in FIGURE_KINDS} | {kind.partner for kind in FIGURE_KINDS if kind.partner}
    candidates = [path for folder in folders if folder.is_dir() for path in sorted(folder.glob("*.fits"))]
    if getattr(area, "kind", "") == "pointing":
        alignment = area.folder("alignment")
        # The target's Alignment folder holds every pointing's files: take this pointing's only.
        candidates += [path for path in sorted(alignment.glob("*.fits")) if area.pointing_name in path.name] \
            if alignment.is_dir() else []
    for path in candidates:
        tag = _tag_of_name(path.name, tags)
        if tag and path not in seen:
            seen.add(path)
            found.setdefault(tag, []).append(ProductFile(tag, path))
    return found


def _tag_of_name(name: str, tags) -> str:
    """The longest tag that ``name`` starts with, followed by ``_``, ``-`` or ``.`` ('' if none)."""
    matches = [tag for tag in tags if name.startswith(tag) and name[len(tag):len(tag) + 1] in ("_", ".", "-")]
    return max(matches, key=len) if matches else ""


def _partner(product: ProductFile, kind: _FigureKind, products: dict) -> Path | None:
    """The product of tag ``kind.partner`` made by the same job for the same IFU (from the products tables),
    else the file named like ``product`` beside it (for products found by name)."""
    if product.job:
        for other in products.get(kind.partner, []):
            if other.job == product.job and other.ifu == product.ifu:
                return other.path
    folder = product.path.parent.parent / kind.partner_folder[1] if kind.partner_folder else product.path.parent
    candidate = folder / (kind.partner + product.path.name[len(product.tag):])
    return candidate if candidate.is_file() else None


# ---------------------------------------------------------------------- figures
def is_fresh(png: Path, sources) -> bool:
    """Whether a PNG exists, is not empty and is at least as new as every source (then it is not redrawn)."""
    try:
        stat = os.stat(png)
        newest = max(os.stat(path).st_mtime for path in sources)
    except (OSError, ValueError):
        return False
    return stat.st_mtime >= newest and stat.st_size > 0


def draw(section: str, title: str, png: Path, sources, function, *, overwrite: bool = False,
         caption: str = "") -> FigureEntry:
    """Draw one figure with ``function(png)`` unless the PNG is fresher than ``sources``; a failure becomes the
    entry's note (the page says why), never an exception."""
    entry = FigureEntry(section, title, None, list(sources), caption=caption)
    if not overwrite and is_fresh(png, sources):
        entry.png = png
        return entry
    try:
        function(png)
        entry.png = png
        logger.info("QC figure %s", png.name)
    except Exception as error:  # noqa: BLE001 - one bad product must not stop the report
        logger.warning("QC figure %s failed: %s: %s", png.name, type(error).__name__, error)
        entry.note = f"figure failed: {type(error).__name__}: {error}"
        Path(png).unlink(missing_ok=True)
    return entry


def make_figures(area, products: dict | None = None, *, figures_dir=None, overwrite: bool = False,
                 tags=None) -> list:
    """Draw every figure whose products exist; returns one FigureEntry per figure (or per skipped section).

    Parameters
    ----------
    area : PointingLayout or NightLayout
    products : dict, optional
        :func:`find_products` output (found again when not given).
    figures_dir : Path, optional
        Default: the area's ``Figures`` folder.
    overwrite : bool
        Redraw figures that are newer than their products.
    tags : sequence of str, optional
        Only the figure kinds of these tags (default: all).
    """
    products = find_products(area) if products is None else products
    figures_dir = Path(figures_dir) if figures_dir is not None else area.folder("figures")
    figures_dir.mkdir(parents=True, exist_ok=True)
    entries, used_names = [], set()
    where = "night" if getattr(area, "kind", "") == "night" else "pointing"
    for kind in FIGURE_KINDS:
        if tags is not None and kind.tag not in tags:
            continue
        items = products.get(kind.tag, [])
        if not items:
            entries.append(FigureEntry(kind.section, kind.tag, note=f"skipped: no {kind.tag} product in this {where}"))
            continue
        for product in items:
            name = f"{product.path.stem}{'_overlay' if kind.partner_required else ''}.png"
            if name in used_names:  # same file name in two folders
                name = f"{product.path.parent.name}_{name}"
            used_names.add(name)
            entries.append(_draw_kind(kind, product, products, figures_dir / name, overwrite))
    return entries


def _draw_kind(kind: _FigureKind, product: ProductFile, products: dict, png: Path, overwrite: bool) -> FigureEntry:
    partner = _partner(product, kind, products) if kind.partner else None
    if kind.partner_required and partner is None:
        return FigureEntry(kind.section, product.path.name, None, [product.path],
                           note=f"skipped: no {kind.partner} of the same job as {product.path.name} to draw it on")
    sources = [product.path] + ([partner] if partner else [])
    if kind.partner_required:  # drawn ON the partner: (partner, product)
        function = lambda target: kind.function(partner, product.path, target)  # noqa: E731
    elif kind.partner:
        function = lambda target: kind.function(product.path, target, partner)  # noqa: E731
    else:
        function = lambda target: kind.function(product.path, target)  # noqa: E731
    entry = draw(kind.section, product.path.name, png, sources, function, overwrite=overwrite)
    if kind.partner and partner is None and entry.png is not None:
        entry.caption = f"no {kind.partner} of the same job: drawn without it"
    return entry


# ---------------------------------------------------------------------- tables read for the pages
_QC_CACHE_NAME = ".qc_keywords.json"


def qc_keywords(path: Path, cache: dict | None = None) -> list:
    """(keyword, value) of the ``ESO QC`` cards of a file's primary header.

    ``cache`` maps a path to ``[size, mtime_ns, keywords]``: a header is read again only when its file changed
    (a refresh after a run that changed nothing reads no header).
    """
    from astropy.io import fits

    try:
        stat = os.stat(path)
    except OSError as error:
        return [("(unreadable header)", str(error))]
    key = str(path)
    if cache is not None and key in cache and cache[key][:2] == [stat.st_size, stat.st_mtime_ns]:
        return [tuple(item) for item in cache[key][2]]
    try:
        header = fits.getheader(path)
    except (OSError, ValueError) as error:
        return [("(unreadable header)", str(error))]
    keywords = [(key_, header[key_]) for key_ in header if key_.startswith("ESO QC ")]
    if cache is not None:
        cache[key] = [stat.st_size, stat.st_mtime_ns, [[name, value] for name, value in keywords]]
    return keywords


def load_qc_cache(page_dir: Path) -> dict:
    try:
        return json.loads((Path(page_dir) / _QC_CACHE_NAME).read_text())
    except (OSError, ValueError):
        return {}


def save_qc_cache(page_dir: Path, cache: dict):
    try:
        text = json.dumps(cache)
        write_atomically(Path(page_dir) / _QC_CACHE_NAME, lambda temporary: temporary.write_text(text))
    except (OSError, PipelineError, TypeError, ValueError) as error:  # a value JSON cannot hold: no cache
        logger.debug("QC keyword cache not written: %s", error)


def job_tables(area) -> list:
    """(recipe, list of JobRecord) of every ``<recipe>_jobs.fits`` of an area, in the order the steps ran."""
    from ..status import read_records

    tables = []
    folder = area.folder("astro_tables")
    for path in sorted(folder.glob("*_jobs.fits")) if folder.is_dir() else []:
        try:
            tables.append((path.name[:-len("_jobs.fits")], read_records(path, "job", area.root)))
        except (OSError, ValueError) as error:
            logger.warning("step table %s unreadable: %s", path, error)
    return sorted(tables, key=lambda item: min((record.started for record in item[1] if record.started),
                                                default="~"))


def job_records(area) -> list:
    """Every JobRecord of an area (paths absolute), read once per version of each table."""
    from ..status import area_records

    return area_records(area, "job")


def steps_section(tables, title="Jobs", anchor="jobs") -> str:
    parts = [f"<h2 id='{anchor}'>{escape(title)}</h2>",
             "<p>The job tables of <code>Astro_Tables/</code>: one row per esorex run (or Python step).</p>"]
    if not tables:
        parts.append("<p class='note'>no job table: nothing was run here yet</p>")
    for recipe, records in tables:
        rows = [[getattr(record, name) if name != "duration" else f"{record.duration:.1f} s"
                 for name in _JOB_COLUMNS] for record in records]
        classes = [record.status if record.status in ("failed", "skipped") else "" for record in records]
        parts.append(f"<h3>{escape(recipe)} ({len(records)} job(s))</h3>" + table_html(list(_JOB_COLUMNS), rows,
                                                                                       row_classes=classes))
    return "\n".join(parts)


def qc_section(products: dict, page_dir: Path) -> str:
    rows = ["<h2 id='qc-keywords'>QC keywords</h2>",
            "<p>The <code>ESO QC</code> keywords of each product's primary header (click to open).</p>"]
    cache = load_qc_cache(page_dir)
    for tag in sorted(products):
        for product in products[tag]:
            keywords = qc_keywords(product.path, cache)
            link = f"<a href='{href(product.path, page_dir)}'>{escape(product.path.name)}</a>"
            if not keywords:
                rows.append(f"<p>{link}: no QC keyword</p>")
                continue
            body = "".join(f"<tr><td>{escape(key)}</td><td>{escape(value)}</td></tr>" for key, value in keywords)
            rows.append(f"<details><summary>{link} ({escape(tag)}, {len(keywords)} keywords)</summary>"
                        f"<table><tr><th>keyword</th><th>value</th></tr>{body}</table></details>")
    save_qc_cache(page_dir, cache)
    return "\n".join(rows)


def figure_sections(entries, page_dir: Path, *, intro: dict | None = None) -> list:
    """The figures grouped by section, each section introduced by ``intro[section]`` (HTML) if given."""
    parts, current = [], None
    for entry in entries:
        if entry.section != current:
            current = entry.section
            parts.append(f"<h2 id='{anchor(current)}'>{escape(current)}</h2>")
            if intro and current in intro:
                parts.append(intro[current])
        parts.append(figure_html(entry, page_dir))
    return parts


def anchor(text: str) -> str:
    return "".join(character if character.isalnum() else "-" for character in text.lower())


def contents(sections) -> str:
    items = "".join(f"<li><a href='#{anchor(section)}'>{escape(section)}</a></li>" for section in sections)
    return f"<ul>{items}</ul>"


# ---------------------------------------------------------------------- pointing page
def _status_section(layout, page_dir: Path, status) -> str:
    from ..status import _size

    parts = ["<h2 id='status'>Status</h2>",
             f"<p>Overall: {status_badge(status.overall)}. Read from the tables (no checksum): "
             "<code>pymusepipe status</code> prints the same.</p>"]
    rows, classes = [], []
    for view in status.steps:
        rows.append([view.step, view.where, status_badge(view.status), view.jobs, _size(view.disk), view.finished,
                     escape(view.detail) + "".join(
                         f"<br>log: <a href='{href(log, page_dir)}'>{escape(Path(log).name)}</a>"
                         for _, _, log in view.failed if log)])
        classes.append(view.status)
    parts.append(table_html(["step", "where", "status", "jobs", "disk", "finished", "detail"], rows,
                            row_classes=classes, raw_columns=("status", "detail")))
    for news in status.new_raw:
        parts.append(f"<p class='note'>new raw frame {escape(news.path.name)} ({escape(news.tag)}) not reduced "
                     f"yet: {escape(', '.join(news.steps) or 'no step uses this type')}</p>")
    return "\n".join(parts)


def _sky_table(layout, page_dir: Path, products: dict) -> str:
    """Which sky each OBJECT exposure used: from the scipost jobs' notes and SKY_LINES calibration."""
    jobs = [record for record in job_records(layout) if record.step == "scipost"]
    if not jobs:
        return "<p class='note'>no scipost job yet: no sky used</p>"
    sky_jobs = {record.job: record for record in job_records(layout) if record.step == "sky"}
    by_path = {str(item.path): item for items in products.values() for item in items}
    rows = []
    for record in sorted(jobs, key=lambda record: record.job):
        calibrations = json.loads(record.calibrations or "{}")
        lines = calibrations.get("SKY_LINES", {}).get("paths", [])
        note = record.note.removeprefix("sky: ").split("; OFFSET_LIST")[0].split("; no OFFSET_LIST")[0]
        made = by_path.get(lines[0]) if lines else None
        if made is not None and made.job in sky_jobs:
            spectrum = next((item for item in products.get("SKY_SPECTRUM", []) if item.job == made.job), None)
            kind = sky_jobs[made.job].note or "sky job"
            link = f"<a href='#{escape(spectrum.path.stem)}'>{escape(spectrum.path.name)}</a>" if spectrum else \
                escape(Path(lines[0]).name)
            used = f"{escape(kind)}: {link}"
        elif lines:
            used = f"static {escape(Path(lines[0]).name)} (no sky model of this reduction)"
        else:
            used = "none"
        inputs = json.loads(record.inputs or "[]")
        pixtable = by_path.get(inputs[0]) if inputs else None
        exposure = pixtable.date_obs if pixtable is not None and pixtable.date_obs else \
            (Path(inputs[0]).name if inputs else "")
        rows.append([record.job, escape(exposure), escape(note or "(no note)"), used])
    return ("<p>The sky subtracted from each OBJECT exposure (muse_scipost), as planned: an offset-sky exposure "
            "of the same night, or the sky measured on the exposure itself.</p>"
            + table_html(["scipost job", "exposure (DATE-OBS)", "sky (planning note)", "sky model used"], rows,
                         raw_columns=("exposure (DATE-OBS)", "sky model used")))


def _final_cubes(products: dict) -> list:
    """The pointing's final cube(s): the combined cube, else each exposure's scipost cube."""
    cubes = products.get("DATACUBE_FINAL", [])
    combined = [item for item in cubes if item.step == "combine_pointing"]
    if combined:
        return combined
    return [item for item in cubes if item.step == "scipost" and item.qualifier != "unaligned"]


def _residual_entries(layout, products: dict, page_dir: Path, overwrite: bool) -> list:
    section = "Sky residuals"
    cubes = _final_cubes(products)
    if not cubes:
        return [FigureEntry(section, "sky residuals", note="skipped: no final cube (combine_pointing or scipost) "
                                                           "registered in this pointing yet")]
    entries = []
    for cube in cubes:
        mode = _mode_of(cube.path)
        notch = figures.NAD_NOTCH.get(mode.upper())
        caption = (f"mode {mode}: NaD notch of {mode} ({notch[0]:.0f}-{notch[1]:.0f} Angstrom) shaded" if notch
                   else f"mode {mode or 'unknown'}: no laser notch") + "; grey: planes with no data (NaN)"
        entries.append(draw(section, cube.path.name, page_dir / f"{cube.path.stem}_skyresidual.png", [cube.path],
                            lambda png, path=cube.path, mode=mode: figures.sky_residuals(path, png, mode=mode),
                            overwrite=overwrite, caption=caption))
    return entries


def _mode_of(path) -> str:
    from astropy.io import fits

    try:
        return str(fits.getheader(path).get("ESO INS MODE", ""))
    except (OSError, ValueError):
        return ""


def _nav(layout, page_dir: Path, nights) -> list:
    """Links to the sample, target and night pages that exist (refresh_report writes them after this one)."""
    from .target import sample_page_path, target_page_path

    pages = [("sample", sample_page_path(layout.root, layout.names)),
             (f"target {layout.target}", target_page_path(layout.root, layout.target, layout.names))]
    pages += [(f"night {night}", layout.night_layout(night).folder("figures") / REPORT_NAME) for night in nights]
    return [(label, href(path, page_dir)) for label, path in pages if page_exists(path)]


def _pointing_naming(layout) -> tuple:
    """(str_pointing, ndigits) of a pointing layout, from its folder name (``P01`` -> ('P', 2))."""
    name = layout.pointing_name
    prefix = name.rstrip("0123456789")
    return prefix, len(name) - len(prefix)


def build_report(layout, *, figures_dir=None, overwrite: bool = False, title: str | None = None,
                 status=None) -> Path:
    """Draw the figures and write the HTML report of one pointing.

    Parameters
    ----------
    layout : PointingLayout
        The pointing (only read, apart from ``Figures/``).
    figures_dir : Path, optional
        Where the PNGs and ``index.html`` go (default: the pointing's ``Figures`` folder).
    overwrite : bool
        Redraw every figure.
    title : str, optional
        Page title (default: target and pointing folder).
    status : PointingStatus, optional
        Computed already (default: computed here).

    Returns
    -------
    Path
        The ``index.html`` written.
    """
    from ..status import pointing_status

    if not layout.pointing_dir.is_dir():
        raise FileNotFoundError(f"pointing folder {layout.pointing_dir} does not exist")
    page_dir = Path(figures_dir) if figures_dir is not None else layout.folder("figures")
    status = status if status is not None else pointing_status(layout)
    products = find_products(layout)
    entries = make_figures(layout, products, figures_dir=page_dir, overwrite=overwrite,
                           tags=[kind.tag for kind in FIGURE_KINDS if kind.tag not in NIGHT_TAGS
                                 or products.get(kind.tag)])
    entries += _residual_entries(layout, products, page_dir, overwrite)
    title = title or f"pymusepipe QC: {layout.target} {layout.pointing_name}"
    parts = [page_head(title, _nav(layout, page_dir, status.nights))]
    drawn = sum(entry.png is not None for entry in entries)
    parts.append(f"<p>{drawn} figure(s) from {sum(len(v) for v in products.values())} product file(s) in "
                 f"<code>{escape(layout.pointing_dir)}</code>; written {now_utc()}. The master calibrations are on "
                 "the night pages linked above.</p>")
    sections = list(dict.fromkeys(entry.section for entry in entries))
    parts.append(contents(["Status"] + sections + ["QC keywords", "Jobs"]))
    parts.append(_status_section(layout, page_dir, status))
    parts.extend(figure_sections(entries, page_dir, intro={"Sky spectrum": _sky_table(layout, page_dir, products)}))
    parts.append(_other_figures(entries, page_dir))
    parts.append(qc_section(products, page_dir))
    parts.append(steps_section(job_tables(layout)))
    page = write_page(page_dir / REPORT_NAME, parts)
    logger.info("QC report: %s (%d figures)", page, drawn)
    return page


def _other_figures(entries, page_dir: Path) -> str:
    """PNGs in the report folder that the report did not draw (e.g. the alignment module's diagnostics)."""
    ours = {entry.png for entry in entries if entry.png is not None}
    others = [path for path in sorted(page_dir.glob("*.png")) if path not in ours]
    if not others:
        return ""
    items = "".join(f"<li><a href='{href(path, page_dir)}'>{escape(path.name)}</a></li>" for path in others)
    return (f"<h2 id='other-figures'>Other figures</h2><p>Figures in this folder not drawn by this page "
            f"(the alignment diagnostics, or figures of products that no longer exist):</p><ul>{items}</ul>")


# ---------------------------------------------------------------------- after every run
def refresh_report(layout, *, overwrite: bool = False, nights: bool = True, target: bool = True,
                   sample: bool = True) -> Path:
    """Bring the pages of a pointing up to date after a run: its page, the pages of the nights it uses, its
    target's page and the sample page. Only figures whose products changed are redrawn, so a refresh after a
    run that changed nothing costs the reading of the tables and headers only.

    Parameters
    ----------
    layout : PointingLayout
    overwrite : bool
        Redraw every figure.
    nights, target, sample : bool
        Also refresh those pages.

    Returns
    -------
    Path
        The pointing's ``index.html``.
    """
    from ..status import pointing_status, sample_status, target_status
    from .target import sample_page_path, target_page_path

    str_pointing, ndigits = _pointing_naming(layout)
    naming = {"folders": layout._renamed(), "str_pointing": str_pointing, "ndigits": ndigits}
    # One status computation serves every page: the sample's holds the target's, which holds the pointing's.
    sample_view = target_view = None
    if sample:
        sample_view = sample_status(layout.root, **naming)
        target_view = next((item for item in sample_view.targets if item.target == layout.target), None)
    if target_view is None and (target or sample):
        target_view = target_status(layout.root, layout.target, **naming)
    status = next((item for item in target_view.pointings if item.base_dir == layout.base_dir), None) \
        if target_view is not None else None
    status = status if status is not None else pointing_status(layout)
    pages = [layout.night_layout(night).folder("figures") / REPORT_NAME for night in status.nights] * nights
    pages += [target_page_path(layout.root, layout.target, layout.names)] * target
    pages += [sample_page_path(layout.root, layout.names)] * sample
    pages.append(layout.folder("figures") / REPORT_NAME)
    with planned_pages(pages):  # every page links the others written in this refresh
        page = build_report(layout, overwrite=overwrite, status=status)
        if nights:
            from .night import build_night_report

            for night in status.nights:
                build_night_report(layout.night_layout(night), overwrite=overwrite)
        if target or sample:
            from .target import build_sample_report, build_target_report

            if target:
                build_target_report(layout.root, layout.target, overwrite=overwrite, status=target_view, **naming)
            if sample:
                build_sample_report(layout.root, status=sample_view, **naming)
    return page


def refresh_after_run(layout, *, enabled: bool = True, **options) -> Path | None:
    """:func:`refresh_report` for the end of a run: a report that cannot be written never fails the reduction
    (the problem is logged as a warning and None returned). ``enabled=False`` does nothing (the option to turn
    the report off)."""
    if not enabled:
        return None
    try:
        page = refresh_report(layout, **options)
    except Exception as error:  # noqa: BLE001 - the reduction's result matters more than its report
        logger.warning("QC report of %s not refreshed: %s: %s", layout.name, type(error).__name__, error)
        return None
    logger.info("QC report: %s", page)
    return page


def refresh_after_runs(layouts, *, enabled: bool = True) -> list:
    """:func:`refresh_after_run` for a target's or a sample's run: every pointing's page (each with its
    nights' pages, whose figures are drawn once and then found up to date), each target's page once after
    its last pointing, and the sample page once at the end.

    Returns
    -------
    list of Path
        The pointing pages written (a page that could not be written is left out, with a warning).
    """
    layouts = list(layouts)
    pages = []
    for index, layout in enumerate(layouts):
        last_of_target = index == len(layouts) - 1 or layouts[index + 1].target != layout.target
        page = refresh_after_run(layout, enabled=enabled, target=last_of_target,
                                 sample=index == len(layouts) - 1)
        if page is not None:
            pages.append(page)
    return pages
