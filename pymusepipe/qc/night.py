"""The page of one observing night: ``<root>/Calibrations/<night>/Figures/index.html``.

A night's calibration area holds the master calibrations and the standard star of that night, shared by every
pointing and target observed then. Its page shows each master (figure and ``ESO QC`` keywords), and who used
it: the jobs of the night itself and of every pointing under the data root, read from the ``calibrations``
column of their job tables (which master, by which association rule, how far in time).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .pages import REPORT_NAME, escape, href, now_utc, page_exists, page_head, table_html, write_page
from .report import (NIGHT_TAGS, contents, figure_sections, find_products, job_records, job_tables,
                     load_qc_cache, make_figures, qc_keywords, steps_section)

__all__ = ["build_night_report", "calibration_users"]

logger = logging.getLogger(__name__)

#: QC keywords shown in the summary table of the masters (the full list is in the collapsible tables).
_SUMMARY_KEYWORDS = 4


def _pointing_areas(root: Path, names) -> list:
    """Every pointing area under the data root (folders holding an Astro_Tables folder below a target)."""
    from ..layout import AreaLayout

    areas = []
    tables_name = names["astro_tables"]
    for tables in sorted(Path(root).glob(f"*/*/{tables_name}")):
        base = tables.parent
        if base.parent.name == names["calibrations"]:
            continue
        areas.append(AreaLayout(root, base, f"{base.parent.name}/{base.name}", folders=_renamed(names)))
    return areas


def _renamed(names) -> dict:
    from ..layout import DEFAULT_FOLDERS

    return {key: value for key, value in names.items() if DEFAULT_FOLDERS.get(key) != value}


def calibration_users(night_layout) -> dict:
    """path of a product of this night -> list of (area, job, step, tag, rule, delta_days) of the jobs using it.

    Reads the job tables of the night and of every area under the data root (pointings, targets).
    """
    prefix = str(night_layout.base_dir) + "/"
    users = {}
    areas = [night_layout] + _pointing_areas(night_layout.root, night_layout.names)
    for area in areas:
        for record in job_records(area):
            try:
                calibrations = json.loads(record.calibrations or "{}")
                inputs = json.loads(record.inputs or "[]")
            except ValueError:
                continue
            uses = [(tag, entry.get("rule", ""), entry.get("delta_days"), path)
                    for tag, entry in calibrations.items() for path in entry.get("paths", [])]
            uses += [("input", "input of the job", None, path) for path in inputs]
            for tag, rule, delta, path in uses:
                if str(path).startswith(prefix):
                    users.setdefault(str(path), []).append((area.name, record.job, record.step, tag, rule, delta))
    return users


def build_night_report(night_layout, *, overwrite: bool = False, figures_dir=None) -> Path:
    """Draw the figures of a night's master calibrations and write its page.

    Parameters
    ----------
    night_layout : NightLayout
    overwrite : bool
        Redraw every figure.
    figures_dir : Path, optional
        Default: the night's ``Figures`` folder.

    Returns
    -------
    Path
        The page written.
    """
    from .target import sample_page_path

    page_dir = Path(figures_dir) if figures_dir is not None else night_layout.folder("figures")
    products = find_products(night_layout)
    entries = make_figures(night_layout, products, figures_dir=page_dir, overwrite=overwrite, tags=NIGHT_TAGS)
    users = calibration_users(night_layout)
    title = f"pymusepipe QC: night {night_layout.night}"
    areas = sorted({user[0] for uses in users.values() for user in uses if not user[0].startswith("night")})
    candidates = [("sample", sample_page_path(night_layout.root, night_layout.names))] + \
        [(name, night_layout.root / name / night_layout.names["figures"] / REPORT_NAME) for name in areas]
    nav = [(label, href(path, page_dir)) for label, path in candidates if page_exists(path)]
    parts = [page_head(title, nav)]
    parts.append(f"<p>The master calibrations and standard star of the night starting on {escape(night_layout.night)}"
                 f" (<code>{escape(night_layout.base_dir)}</code>), shared by every pointing observed that night; "
                 f"written {now_utc()}.</p>")
    sections = list(dict.fromkeys(entry.section for entry in entries))
    parts.append(contents(["Calibrations made", "Used by"] + sections + ["QC keywords", "Jobs"]))
    parts.append(_made_section(products, users, page_dir))
    parts.append(_users_section(products, users, page_dir))
    parts.extend(figure_sections(entries, page_dir))
    parts.append(_qc_details(products, page_dir))
    parts.append(steps_section(job_tables(night_layout)))
    page = write_page(page_dir / REPORT_NAME, parts)
    logger.info("QC night page: %s", page)
    return page


def _made_section(products: dict, users: dict, page_dir: Path) -> str:
    rows = []
    cache = load_qc_cache(page_dir)
    for tag in sorted(products):
        for product in products[tag]:
            # The masters' own figures first (BIAS MASTER1 RON...), the statistics of each input frame last.
            keywords = sorted(qc_keywords(product.path, cache),
                              key=lambda item: (" MASTER" not in item[0], " INPUT" in item[0]))
            shown = "<br>".join(f"{escape(key[7:])} = {escape(value)}" for key, value in keywords[:_SUMMARY_KEYWORDS])
            if len(keywords) > _SUMMARY_KEYWORDS:
                shown += f"<br>... {len(keywords)} in all (QC keywords below)"
            used = len({(user[0], user[1]) for user in users.get(str(product.path), [])})
            rows.append([escape(tag), f"<a href='{href(product.path, page_dir)}'>{escape(product.path.name)}</a>",
                         escape(product.job or "(found by name)"), shown or "no QC keyword", used])
    if not rows:
        return "<h2 id='calibrations-made'>Calibrations made</h2><p class='note'>no product in this night yet</p>"
    return ("<h2 id='calibrations-made'>Calibrations made</h2>"
            + table_html(["tag", "file", "job", "QC keywords (first)", "jobs using it"], rows,
                         raw_columns=("file", "QC keywords (first)")))


def _users_section(products: dict, users: dict, page_dir: Path) -> str:
    parts = ["<h2 id='used-by'>Used by</h2>",
             "<p>Every job (of this night or of a pointing) whose SOF held a product of this night, with the "
             "association rule that chose it and its distance in time.</p>"]
    rows = []
    for tag in sorted(products):
        for product in products[tag]:
            for area, job, step, as_tag, rule, delta in sorted(users.get(str(product.path), [])):
                delta_text = f"{delta:.3f}" if isinstance(delta, (int, float)) else ""
                rows.append([escape(product.path.name), escape(area), escape(job), escape(step), escape(as_tag),
                             escape(rule), delta_text])
    if not rows:
        parts.append("<p class='note'>no job uses the products of this night yet</p>")
    else:
        parts.append(table_html(["product", "area", "job", "step", "as", "rule", "delta [days]"], rows,
                                raw_columns=("product", "area", "job", "step", "as", "rule")))
    return "\n".join(parts)


def _qc_details(products: dict, page_dir: Path) -> str:
    from .report import qc_section

    return qc_section(products, page_dir)
