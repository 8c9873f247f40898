"""The static HTML quality-control report of one pointing: ``Figures/index.html`` and its PNGs.

The report is built from what is on disk only: the products catalogue of ``Astro_Tables/`` (plus products
found by name in the layout folders, e.g. an OFFSET_LIST written by the alignment module), so it works on
any reduced pointing without running anything. A figure whose products are missing is skipped with a note
on the page; a figure that fails is reported on the page too, and never stops the others. Every link is
relative (and percent-encoded: product names hold ISO dates with colons), so the folder can be copied.

A PNG newer than all its products is reused unless ``overwrite=True``.
"""
from __future__ import annotations

import datetime
import html
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from . import figures

__all__ = ["FigureEntry", "ProductFile", "find_products", "make_figures", "build_report", "REPORT_NAME"]

logger = logging.getLogger(__name__)

REPORT_NAME = "index.html"

#: Layout folders searched for products by name (tag prefix) when the catalogue does not list them.
_PRODUCT_FOLDERS = ("object", "sky", "std", "alignment", "combined")
_MASTER_KINDS = ("Bias", "Flat", "Trace", "Wave", "Lsf", "Twilight", "Std")

#: Job-table columns shown in the step tables, in order.
_JOB_COLUMNS = ("job", "ifus", "status", "duration", "started", "message")


@dataclass
class ProductFile:
    """A product file of the pointing: its tag, path, and the recipe that made it ('' when found by name)."""

    tag: str
    path: Path
    recipe: str = ""


@dataclass
class FigureEntry:
    """One figure of the report: where it is, from what, or why it is absent."""

    section: str
    title: str
    png: Path | None = None
    products: list = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class _FigureKind:
    section: str
    tag: str
    function: object
    partner: str = ""           # tag of a second product of the same name (same job, same IFU)
    partner_folder: tuple = ()  # layout folder of that partner (default: the product's own folder)
    partner_required: bool = False


#: The figures, in page order: section, product tag drawn, function and an optional partner product.
FIGURE_KINDS = (
    _FigureKind("Master bias", "MASTER_BIAS", figures.master_image),
    _FigureKind("Master flat", "MASTER_FLAT", figures.master_image),
    _FigureKind("Trace", "TRACE_TABLE", figures.trace_overlay, "MASTER_FLAT", ("master", "Flat"), True),
    _FigureKind("Wavelength calibration", "WAVECAL_TABLE", figures.wavecal_residuals, "WAVECAL_RESIDUALS"),
    _FigureKind("Line-spread function", "LSF_PROFILE", figures.lsf_width),
    _FigureKind("Twilight correction", "TWILIGHT_CUBE", figures.twilight_correction),
    _FigureKind("Sky spectrum", "SKY_SPECTRUM", figures.sky_spectrum, "SKY_LINES"),
    _FigureKind("Reconstructed images", "IMAGE_FOV", figures.exposure_image),
    _FigureKind("Alignment", "OFFSET_LIST", figures.alignment_offsets),
    _FigureKind("Cubes", "DATACUBE_FINAL", figures.cube_overview),
)


# ---------------------------------------------------------------------- finding products
def find_products(layout) -> dict:
    """tag -> list of ProductFile: the catalogue's done products that exist, then files found by name.

    Parameters
    ----------
    layout : PointingLayout
    """
    from ..products import ProductCatalogue

    found, seen = {}, set()
    areas = [layout] + _night_areas(layout)
    for area in areas:
        catalogue = ProductCatalogue(area.folder("astro_tables"), root=area.root)
        for record in sorted(catalogue.records, key=lambda record: (record.tag, record.path)):
            path = Path(record.path)
            if record.status == "done" and path.is_file() and path not in seen:
                seen.add(path)
                found.setdefault(record.tag, []).append(ProductFile(record.tag, path, record.recipe))
    folders = [area.master_folder(kind) for area in areas for kind in _MASTER_KINDS] + \
        [layout.folder(key) for key in _PRODUCT_FOLDERS]
    tags = {kind.tag for kind in FIGURE_KINDS} | {kind.partner for kind in FIGURE_KINDS if kind.partner}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.fits")):
            tag = _tag_of_name(path.name, tags)
            if tag and path not in seen:
                seen.add(path)
                found.setdefault(tag, []).append(ProductFile(tag, path))
    return found


def _night_areas(layout) -> list:
    """The shared calibration areas (one per observing night) under the data root."""
    calibrations = layout.folder("calibrations")
    if not calibrations.is_dir():
        return []
    nights = sorted(path.name for path in calibrations.iterdir() if path.is_dir() and len(path.name) == 10
                    and path.name[4] == "-")
    return [layout.night_layout(night) for night in nights]


def _tag_of_name(name: str, tags) -> str:
    """The longest tag that ``name`` starts with, followed by ``_``, ``-`` or ``.`` ('' if none)."""
    matches = [tag for tag in tags if name.startswith(tag) and name[len(tag):len(tag) + 1] in ("_", ".", "-")]
    return max(matches, key=len) if matches else ""


def _partner(product: ProductFile, kind: _FigureKind, layout) -> Path | None:
    """The product of tag ``kind.partner`` named like ``product`` (same label and IFU), if it exists."""
    # Masters sit in Master/<Kind>/ of their area (the pointing or a night): the partner is beside.
    folder = product.path.parent.parent / kind.partner_folder[1] if kind.partner_folder else product.path.parent
    candidate = folder / (kind.partner + product.path.name[len(product.tag):])
    return candidate if candidate.is_file() else None


# ---------------------------------------------------------------------- figures
def _is_fresh(png: Path, sources) -> bool:
    if not png.is_file():
        return False
    newest = max(os.stat(path).st_mtime for path in sources)
    return os.stat(png).st_mtime >= newest and png.stat().st_size > 0


def make_figures(layout, products: dict | None = None, *, figures_dir=None, overwrite: bool = False) -> list:
    """Draw every figure whose products exist; returns one FigureEntry per figure (or per skipped section).

    Parameters
    ----------
    layout : PointingLayout
    products : dict, optional
        :func:`find_products` output (found again when not given).
    figures_dir : Path, optional
        Default: the pointing's ``Figures`` folder.
    overwrite : bool
        Redraw figures that are newer than their products.
    """
    products = find_products(layout) if products is None else products
    figures_dir = Path(figures_dir) if figures_dir is not None else layout.folder("figures")
    figures_dir.mkdir(parents=True, exist_ok=True)
    entries, used_names = [], set()
    for kind in FIGURE_KINDS:
        items = products.get(kind.tag, [])
        if not items:
            entries.append(FigureEntry(kind.section, kind.tag, note=f"skipped: no {kind.tag} product in this "
                                                                     "pointing"))
            continue
        for product in items:
            name = f"{product.path.stem}{'_overlay' if kind.partner_required else ''}.png"
            if name in used_names:  # same file name in two folders (e.g. Object/ and Combined/)
                name = f"{product.path.parent.name}_{name}"
            used_names.add(name)
            entries.append(_draw(kind, product, layout, figures_dir / name, overwrite))
    return entries


def _draw(kind: _FigureKind, product: ProductFile, layout, png: Path, overwrite: bool) -> FigureEntry:
    entry = FigureEntry(kind.section, product.path.name, None, [product.path])
    partner = _partner(product, kind, layout) if kind.partner else None
    if kind.partner_required and partner is None:
        entry.note = f"skipped: no {kind.partner} named like {product.path.name} to draw it on"
        return entry
    sources = [product.path] + ([partner] if partner else [])
    entry.products = sources
    if not overwrite and _is_fresh(png, sources):
        entry.png = png
        return entry
    try:
        if kind.partner_required:  # drawn ON the partner: (partner, product)
            kind.function(partner, product.path, png)
        elif kind.partner:
            kind.function(product.path, png, partner)
        else:
            kind.function(product.path, png)
        entry.png = png
        logger.info("QC figure %s", png.name)
    except Exception as error:  # noqa: BLE001 - one bad product must not stop the report
        logger.warning("QC figure of %s failed: %s: %s", product.path.name, type(error).__name__, error)
        entry.note = f"figure failed: {type(error).__name__}: {error}"
        png.unlink(missing_ok=True)
    return entry


# ---------------------------------------------------------------------- page
def _href(target: Path, page_dir: Path) -> str:
    """Relative, percent-encoded link (``a:b.png`` would otherwise read as a URL scheme ``a:``)."""
    return quote(os.path.relpath(target, page_dir).replace(os.sep, "/"))


def _qc_keywords(path: Path) -> list:
    from astropy.io import fits

    try:
        header = fits.getheader(path)
    except (OSError, ValueError) as error:
        return [("(unreadable header)", str(error))]
    return [(key, header[key]) for key in header if key.startswith("ESO QC ")]


def _job_tables(layout) -> list:
    """(recipe, astropy Table) of every ``<recipe>_jobs.fits``."""
    from astropy.table import Table

    tables = []
    folder = layout.folder("astro_tables")
    for path in sorted(folder.glob("*_jobs.fits")) if folder.is_dir() else []:
        try:
            tables.append((path.name[:-len("_jobs.fits")], Table.read(path)))
        except (OSError, ValueError) as error:
            logger.warning("step table %s unreadable: %s", path, error)

    def first_start(item):  # the order the steps ran in, which is the reduction's order
        table = item[1]
        starts = [str(value) for value in table["started"] if value is not np.ma.masked] \
            if "started" in table.colnames else []
        return min(starts) if starts else "~"
    return sorted(tables, key=first_start)


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1400px; }
h2 { border-bottom: 1px solid #999; margin-top: 1.8em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 640px; border: 1px solid #ccc; }
figcaption { font-size: 0.85em; }
.note { color: #a33; font-style: italic; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
.failed { background: #fdd; } .skipped { background: #ffd; }
"""


def build_report(layout, *, figures_dir=None, overwrite: bool = False, title: str | None = None) -> Path:
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

    Returns
    -------
    Path
        The ``index.html`` written.
    """
    if not layout.pointing_dir.is_dir():
        raise FileNotFoundError(f"pointing folder {layout.pointing_dir} does not exist")
    page_dir = Path(figures_dir) if figures_dir is not None else layout.folder("figures")
    products = find_products(layout)
    entries = make_figures(layout, products, figures_dir=page_dir, overwrite=overwrite)
    title = title or f"pymusepipe QC: {layout.target} {layout.pointing_name}"
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    drawn = sum(entry.png is not None for entry in entries)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    parts.append(f"<p>{drawn} figure(s) from {sum(len(v) for v in products.values())} product file(s) in "
                 f"<code>{html.escape(str(layout.pointing_dir))}</code>; written {now}.</p>")
    parts.append(_contents(entries))
    parts.extend(_figure_sections(entries, page_dir))
    parts.append(_other_figures(entries, page_dir))
    parts.append(_qc_section(products, page_dir))
    parts.append(_steps_section(_job_tables(layout)))
    parts.append("</body></html>\n")
    page = page_dir / REPORT_NAME
    temporary = page.with_name(f".{page.name}.tmp")
    temporary.write_text("\n".join(parts), encoding="utf-8")
    os.replace(temporary, page)  # a browser never sees half a page
    logger.info("QC report: %s (%d figures)", page, drawn)
    return page


def _anchor(text: str) -> str:
    return "".join(character if character.isalnum() else "-" for character in text.lower())


def _contents(entries) -> str:
    sections = list(dict.fromkeys(entry.section for entry in entries))
    items = "".join(f"<li><a href='#{_anchor(section)}'>{html.escape(section)}</a></li>" for section in sections)
    return (f"<ul>{items}<li><a href='#qc-keywords'>QC keywords</a></li>"
            "<li><a href='#steps'>Steps</a></li></ul>")


def _figure_sections(entries, page_dir: Path) -> list:
    parts, current = [], None
    for entry in entries:
        if entry.section != current:
            current = entry.section
            parts.append(f"<h2 id='{_anchor(current)}'>{html.escape(current)}</h2>")
        if entry.png is not None:
            link = _href(entry.png, page_dir)
            sources = ", ".join(f"<a href='{_href(path, page_dir)}'>{html.escape(path.name)}</a>"
                                for path in entry.products)
            parts.append(f"<figure><a href='{link}'><img src='{link}' alt='{html.escape(entry.title)}'></a>"
                         f"<figcaption>{sources}</figcaption></figure>")
        else:
            parts.append(f"<p class='note'>{html.escape(entry.title)}: {html.escape(entry.note)}</p>")
    return parts


def _other_figures(entries, page_dir: Path) -> str:
    """PNGs in the report folder that the report did not draw (e.g. the alignment module's diagnostics)."""
    ours = {entry.png for entry in entries if entry.png is not None}
    others = [path for path in sorted(page_dir.glob("*.png")) if path not in ours]
    if not others:
        return ""
    items = "".join(f"<li><a href='{_href(path, page_dir)}'>{html.escape(path.name)}</a></li>" for path in others)
    return (f"<h2 id='other-figures'>Other figures</h2><p>Figures in this folder made by other tools "
            f"(e.g. the alignment diagnostics):</p><ul>{items}</ul>")


def _qc_section(products: dict, page_dir: Path) -> str:
    rows = ["<h2 id='qc-keywords'>QC keywords</h2>",
            "<p>The <code>ESO QC</code> keywords of each product's primary header (click to open).</p>"]
    for tag in sorted(products):
        for product in products[tag]:
            keywords = _qc_keywords(product.path)
            link = f"<a href='{_href(product.path, page_dir)}'>{html.escape(product.path.name)}</a>"
            if not keywords:
                rows.append(f"<p>{link}: no QC keyword</p>")
                continue
            body = "".join(f"<tr><td>{html.escape(key)}</td><td>{html.escape(str(value))}</td></tr>"
                           for key, value in keywords)
            rows.append(f"<details><summary>{link} ({html.escape(tag)}, {len(keywords)} keywords)</summary>"
                        f"<table><tr><th>keyword</th><th>value</th></tr>{body}</table></details>")
    return "\n".join(rows)


def _steps_section(tables) -> str:
    parts = ["<h2 id='steps'>Steps</h2>",
             "<p>The job tables of <code>Astro_Tables/</code>: one row per esorex run.</p>"]
    if not tables:
        parts.append("<p class='note'>no step table: nothing was run in this pointing yet</p>")
    for recipe, table in tables:
        columns = [name for name in _JOB_COLUMNS if name in table.colnames]
        header = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
        rows = []
        for row in table:
            status = str(row["status"]) if "status" in table.colnames else ""
            cells = []
            for name in columns:
                value = row[name]
                if value is np.ma.masked:  # FITS stores empty strings as masked entries
                    text = ""
                else:
                    text = f"{float(value):.1f} s" if name == "duration" else str(value)
                cells.append(f"<td>{html.escape(text)}</td>")
            css = f" class='{status}'" if status in ("failed", "skipped") else ""
            rows.append(f"<tr{css}>{''.join(cells)}</tr>")
        parts.append(f"<h3>{html.escape(recipe)} ({len(table)} job(s))</h3><table><tr>{header}</tr>"
                     f"{''.join(rows)}</table>")
    return "\n".join(parts)
