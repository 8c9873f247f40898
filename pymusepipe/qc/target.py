"""The target page (``<root>/<target>/Combined/Figures/index.html``) and the sample page
(``<root>/Figures/index.html``).

A target's page shows how its exposures were put together: the reference image with each exposure's footprint
once its offsets are applied, the offsets and flux scales of the target OFFSET_LIST
(``<target>/Alignment/OFFSET_LIST_<target>.fits``), the mosaic (``Combined/DATACUBE_FINAL_<target>.fits`` and its
images) with the footprint of each pointing, and a spectrum per aperture of the mosaic. The reference image is
the decision ``reference_image`` of ``Combined/Astro_Tables/PIPE_decisions.fits``.

The sample page lists every target under the data root with its status and links to every page.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import figures
from .pages import (REPORT_NAME, escape, figure_html, href, link, now_utc, page_exists, page_head, status_badge,
                    table_html, write_page)
from .report import FigureEntry, draw, job_tables, qc_section, steps_section

__all__ = ["build_target_report", "build_sample_report", "target_page_path", "sample_page_path"]

logger = logging.getLogger(__name__)


def _names(names=None) -> dict:
    from ..layout import DEFAULT_FOLDERS

    return {**DEFAULT_FOLDERS, **dict(names or {})}


def target_page_path(root, target, names=None) -> Path:
    """``<root>/<target>/Combined/Figures/index.html`` (with the folder names in use)."""
    names = _names(names)
    return Path(root).absolute() / target / names["combined"] / names["figures"] / REPORT_NAME


def sample_page_path(root, names=None) -> Path:
    """``<root>/Figures/index.html``: the overview of every target."""
    return Path(root).absolute() / _names(names)["figures"] / REPORT_NAME


def _catalogue(tables_dir: Path, root: Path):
    from ..products import ProductCatalogue

    return ProductCatalogue(tables_dir, root=root) if tables_dir.is_dir() else None


def _read_offsets(path: Path):
    from astropy.table import Table

    table = Table.read(path)
    missing = {"DATE_OBS", "RA_OFFSET", "DEC_OFFSET"} - set(table.colnames)
    if missing:
        raise figures.QCInputError(f"{path}: no column(s) {', '.join(sorted(missing))}")
    return table


def _exposure_images(table, root: Path, target: str, pointing_catalogues: dict) -> list:
    """(pointing, image path or None, row) per OFFSET_LIST row: the row's FILENAME when it exists, else the
    alignment image of the same DATE-OBS registered by a pointing (prep_align first)."""
    out = []
    for row in table:
        date = str(row["DATE_OBS"]).strip()[:23]
        image, pointing = None, ""
        if "FILENAME" in table.colnames:
            name = str(row["FILENAME"]).strip()
            candidate = Path(name) if Path(name).is_absolute() else root / name
            if name and candidate.is_file():
                image = candidate
                parts = candidate.relative_to(root).parts if candidate.is_relative_to(root) else ()
                pointing = parts[1] if len(parts) > 2 and parts[0] == target else ""
        if image is None:
            best = None
            for name, catalogue in pointing_catalogues.items():
                for record in catalogue.records:
                    if record.tag == "IMAGE_FOV" and record.status == "done" and record.date_obs[:23] == date \
                            and Path(record.path).is_file():
                        rank = 0 if record.step == "prep_align" else 1
                        if best is None or rank < best[0]:
                            best = (rank, Path(record.path), name)
            if best is not None:
                image, pointing = best[1], best[2]
        out.append((pointing, image, row))
    return out


def _pointing_footprint_source(catalogue):
    """The file giving a pointing's footprint: its combined image, else its combined cube, else an exposure's."""
    if catalogue is None:
        return None
    records = [record for record in catalogue.records if record.status == "done" and Path(record.path).is_file()]
    for step, tag in (("combine_pointing", "IMAGE_FOV"), ("combine_pointing", "DATACUBE_FINAL"),
                      ("scipost", "IMAGE_FOV"), ("scipost", "DATACUBE_FINAL")):
        chosen = sorted(record.path for record in records if record.step == step and record.tag == tag
                        and record.qualifier != "unaligned")
        if chosen:
            return Path(chosen[0])
    return None


def _mosaic_products(combined: Path, tables: Path, root: Path, target: str) -> tuple:
    """(cube, image) of the mosaic: registered with step 'mosaic', else found by name in Combined/."""
    catalogue = _catalogue(tables, root)
    cube = image = None
    if catalogue is not None:
        for record in sorted(catalogue.records, key=lambda record: record.path):
            if record.status != "done" or record.step != "mosaic" or not Path(record.path).is_file():
                continue
            if record.tag == "DATACUBE_FINAL" and cube is None:
                cube = Path(record.path)
            if record.tag == "IMAGE_FOV" and (image is None or "white" in Path(record.path).name):
                image = Path(record.path)
    if cube is None and (combined / f"DATACUBE_FINAL_{target}.fits").is_file():
        cube = combined / f"DATACUBE_FINAL_{target}.fits"
    if image is None:
        found = sorted(combined.glob(f"IMAGE_FOV_*_{target}.fits"), key=lambda path: "white" not in path.name)
        image = found[0] if found else None
    return cube, image


def build_target_report(root, target, *, folders=None, str_pointing: str = "P", ndigits: int = 2,
                        overwrite: bool = False, status=None) -> Path:
    """Draw the target's figures and write its page.

    Parameters
    ----------
    root : str or Path
        Data root.
    target : str
    folders : dict, optional
        Folder renamings.
    str_pointing, ndigits
        Pointing folder names.
    overwrite : bool
        Redraw every figure.
    status : TargetStatus, optional
        Computed already.

    Returns
    -------
    Path
    """
    from ..layout import PointingLayout
    from ..state import PointingState
    from ..status import _size, _target_area, target_status

    root = Path(root).absolute()
    names = _names(folders)
    status = status if status is not None else target_status(root, target, str_pointing=str_pointing,
                                                             ndigits=ndigits, folders=folders)
    page = target_page_path(root, target, names)
    page_dir = page.parent
    page_dir.mkdir(parents=True, exist_ok=True)
    combined = root / target / names["combined"]
    tables = combined / names["astro_tables"]
    layouts = {}
    for pointing in status.pointings:
        number = int(pointing.name.split("/")[-1][len(str_pointing):])
        layouts[pointing.name.split("/")[-1]] = PointingLayout(root, target, number, str_pointing=str_pointing,
                                                               ndigits=ndigits, folders=folders)
    catalogues = {name: _catalogue(layout.folder("astro_tables"), root) for name, layout in layouts.items()}
    catalogues = {name: catalogue for name, catalogue in catalogues.items() if catalogue is not None}
    reference = PointingState(tables, root, persist=False).get_path("reference_image") if tables.is_dir() else None
    offset_list = root / target / names["alignment"] / f"OFFSET_LIST_{target}.fits"
    entries, offsets_html = [], ""

    # --- reference image and exposure footprints
    section = "Alignment to the reference image"
    if reference is None or not reference.is_file():
        why = "no reference image decided yet (decision reference_image in Combined/Astro_Tables/PIPE_decisions.fits)" \
            if reference is None else f"the reference image {reference} does not exist"
        entries.append(FigureEntry(section, "reference image", note=f"skipped: {why}"))
    elif not offset_list.is_file():
        entries.append(FigureEntry(section, "reference image", note=f"skipped: no target OFFSET_LIST "
                                                                     f"({offset_list.name} in {offset_list.parent})"))
    else:
        entries.append(_reference_figure(reference, offset_list, root, target, catalogues, page_dir, overwrite))
    if offset_list.is_file():
        entries.append(draw("Offsets and flux scales", offset_list.name, page_dir / f"{offset_list.stem}.png",
                            [offset_list], lambda png: figures.alignment_offsets(offset_list, png),
                            overwrite=overwrite))
        offsets_html = _offsets_table(offset_list, root, target, catalogues, page_dir)
    else:
        entries.append(FigureEntry("Offsets and flux scales", "OFFSET_LIST",
                                   note=f"skipped: no target OFFSET_LIST ({offset_list.name} in {offset_list.parent})"))

    # --- mosaic
    cube, image = _mosaic_products(combined, tables, root, target)
    if image is None:
        entries.append(FigureEntry("Mosaic", "mosaic", note="skipped: no mosaic image (IMAGE_FOV_<filter>_"
                                                            f"{target}.fits in Combined/) yet"))
    else:
        entries.append(_mosaic_figure(image, layouts, catalogues, page_dir, overwrite))
    if cube is None:
        entries.append(FigureEntry("Mosaic spectra", "mosaic cube",
                                   note=f"skipped: no mosaic cube (DATACUBE_FINAL_{target}.fits in Combined/) yet"))
    else:
        entries.append(draw("Mosaic spectra", cube.name, page_dir / f"{cube.stem}_spectra.png", [cube],
                            lambda png: figures.mosaic_spectra(cube, png), overwrite=overwrite))

    # --- page
    nav = [(label, href(path, page_dir)) for label, path in
           [("sample", sample_page_path(root, names))]
           + [(name, layout.folder("figures") / REPORT_NAME) for name, layout in layouts.items()] if page_exists(path)]
    parts = [page_head(f"pymusepipe QC: target {target}", nav)]
    parts.append(f"<p>Target folder <code>{escape(root / target)}</code>; written {now_utc()}.</p>")
    parts.append("<h2 id='status'>Status</h2>" + f"<p>Overall: {status_badge(status.overall)}</p>")
    rows, classes = [], []
    for row in status.table():
        name = str(row["pointing"])
        cell = link(layouts[name].folder("figures") / REPORT_NAME, page_dir, name) if name in layouts \
            else escape(name)
        rows.append([cell, status_badge(str(row["status"])), row["done"], row["stale"], row["failed"], row["not_run"],
                     row["skipped"], _size(row["disk"]), escape(row["detail"])])
        classes.append(str(row["status"]))
    parts.append(table_html(["pointing", "status", "done", "stale", "failed", "not run", "skipped", "disk",
                             "first problem"], rows, row_classes=classes,
                            raw_columns=("pointing", "status", "first problem")))
    current = None
    for entry in entries:
        if entry.section != current:
            current = entry.section
            parts.append(f"<h2 id='{escape(current.lower().replace(' ', '-'))}'>{escape(current)}</h2>")
            if current == "Offsets and flux scales" and offsets_html:
                parts.append(offsets_html)
        parts.append(figure_html(entry, page_dir, wide=True))
    mosaic_products = {tag: [_Product(path)] for tag, path in (("DATACUBE_FINAL", cube), ("IMAGE_FOV", image))
                       if path is not None}
    parts.append(qc_section(mosaic_products, page_dir))

    parts.append(steps_section(job_tables(_target_area(root, target, folders))))
    write_page(page, parts)
    logger.info("QC target page: %s", page)
    return page


class _Product:
    def __init__(self, path):
        self.path = Path(path)


def _reference_figure(reference, offset_list, root, target, catalogues, page_dir, overwrite) -> FigureEntry:
    table = _read_offsets(offset_list)
    exposures = _exposure_images(table, root, target, catalogues)
    images = [image for _, image, _ in exposures if image is not None]
    missing = sum(image is None for _, image, _ in exposures)

    def function(png):
        outlines = []
        for number, (pointing, image, row) in enumerate(exposures, start=1):
            if image is None:
                continue
            shift = (float(row["RA_OFFSET"]), float(row["DEC_OFFSET"]))
            outlines.append((f"{pointing} {number}".strip(), figures.footprint(image, shift_deg=shift), "-"))
        if not outlines:
            raise figures.QCInputError(f"{offset_list.name}: no exposure image found (FILENAME column or a "
                                       "pointing's IMAGE_FOV of the same DATE-OBS)")
        figures.footprints_on_image(reference, png, outlines,
                                    title=f"reference {reference.name}: {len(outlines)} exposure footprint(s), "
                                          "offsets applied", label=f"offsets from {offset_list.name}")

    caption = "numbers: rows of the OFFSET_LIST" + (f"; {missing} exposure(s) without an image found" if missing
                                                    else "")
    return draw("Alignment to the reference image", reference.name, page_dir / f"{offset_list.stem}_footprints.png",
                [reference, offset_list] + images, function, overwrite=overwrite, caption=caption)


def _offsets_table(offset_list, root, target, catalogues, page_dir) -> str:
    try:
        table = _read_offsets(offset_list)
    except (OSError, ValueError) as error:
        return f"<p class='note'>{escape(offset_list.name)} unreadable: {escape(error)}</p>"
    rows = []
    for number, (pointing, image, row) in enumerate(_exposure_images(table, root, target, catalogues), start=1):
        scale = float(row["FLUX_SCALE"]) if "FLUX_SCALE" in table.colnames else np.nan
        quality = str(row["QUALITY"]) if "QUALITY" in table.colnames else ""
        link = f"<a href='{href(image, page_dir)}'>{escape(image.name)}</a>" if image is not None else "not found"
        rows.append([number, escape(str(row["DATE_OBS"]).strip()), escape(pointing), link,
                     f"{float(row['RA_OFFSET']) * 3600:.3f}", f"{float(row['DEC_OFFSET']) * 3600:.3f}",
                     "none" if not np.isfinite(scale) else f"{scale:.3f}", escape(quality)])
    return (f"<p>From <a href='{href(offset_list, page_dir)}'>{escape(offset_list.name)}</a>: the pipeline moves each "
            "exposure by minus these offsets (degrees in the file, shown in arcsec, RA without cos(dec)).</p>"
            + table_html(["#", "DATE_OBS", "pointing", "image", "RA_OFFSET [arcsec]", "DEC_OFFSET [arcsec]",
                          "FLUX_SCALE", "QUALITY"], rows, raw_columns=("#", "DATE_OBS", "pointing", "image",
                                                                       "QUALITY")))


def _mosaic_figure(image, layouts, catalogues, page_dir, overwrite) -> FigureEntry:
    sources = {name: _pointing_footprint_source(catalogues.get(name)) for name in layouts}
    found = {name: path for name, path in sources.items() if path is not None}

    def function(png):
        outlines = [(name, figures.footprint(path), "-") for name, path in found.items()]
        figures.footprints_on_image(image, png, outlines,
                                    title=f"mosaic {image.name} with the footprints of {len(outlines)} pointing(s)")

    missing = sorted(set(layouts) - set(found))
    caption = f"no final image or cube yet in {', '.join(missing)}" if missing else ""
    return draw("Mosaic", image.name, page_dir / f"{image.stem}_footprints.png", [image] + list(found.values()),
                function, overwrite=overwrite, caption=caption)


# ---------------------------------------------------------------------- sample
def build_sample_report(root, *, folders=None, str_pointing: str = "P", ndigits: int = 2, status=None) -> Path:
    """The overview page of every target under the data root, with their status and links to every page.

    Returns
    -------
    Path
        ``<root>/Figures/index.html``.
    """
    from ..layout import NightLayout, PointingLayout
    from ..status import _size, sample_status

    root = Path(root).absolute()
    names = _names(folders)
    status = status if status is not None else sample_status(root, str_pointing=str_pointing, ndigits=ndigits,
                                                             folders=folders)
    page = sample_page_path(root, names)
    page_dir = page.parent
    parts = [page_head(f"pymusepipe QC: {root.name or root}")]
    parts.append(f"<p>Data root <code>{escape(root)}</code>: {len(status.targets)} target(s); written {now_utc()}. "
                 "Status read from the tables, as <code>pymusepipe status</code> prints it.</p>")
    rows, classes, night_users = [], [], {}
    for target in status.targets:
        pointing_links = []
        for pointing in target.pointings:
            name = pointing.name.split("/")[-1]
            number = int(name[len(str_pointing):])
            layout = PointingLayout(root, target.target, number, str_pointing=str_pointing, ndigits=ndigits,
                                    folders=folders)
            pointing_links.append(f"{link(layout.folder('figures') / REPORT_NAME, page_dir, name)} "
                                  f"{status_badge(pointing.overall)}")
            for night in pointing.nights:
                night_users.setdefault(night, []).append(pointing.name)
        target_link = link(target_page_path(root, target.target, names), page_dir, target.target)
        rows.append([target_link, status_badge(target.overall), "<br>".join(pointing_links),
                     status_badge(target.mosaic), _size(sum(pointing.disk for pointing in target.pointings))])
        classes.append(target.overall)
    parts.append("<h2 id='targets'>Targets</h2>")
    parts.append(table_html(["target", "status", "pointings", "mosaic", "disk"], rows, row_classes=classes,
                            raw_columns=("target", "status", "pointings", "mosaic")) if rows else
                 "<p class='note'>no target folder with a pointing folder under the data root</p>")
    calibrations = root / names["calibrations"]
    nights = sorted(path.name for path in calibrations.iterdir() if path.is_dir() and len(path.name) == 10
                    and path.name[4] == "-") if calibrations.is_dir() else []
    night_rows = []
    for night in nights:
        layout = NightLayout(root, night, folders=folders)
        users = ", ".join(night_users.get(night, [])) or "none"
        night_rows.append([link(layout.folder("figures") / REPORT_NAME, page_dir, night), escape(users)])
    parts.append("<h2 id='nights'>Observing nights</h2><p>Master calibrations and standard stars, shared by the "
                 "pointings observed each night.</p>")
    parts.append(table_html(["night", "pointings using it"], night_rows, raw_columns=("night",)) if night_rows else
                 "<p class='note'>no calibration night yet</p>")
    write_page(page, parts)
    logger.info("QC sample page: %s", page)
    return page
