"""HTML building blocks shared by the report pages (pointing, night, target, sample).

Every page is a static file with relative, percent-encoded links (product names hold ISO dates with colons,
which a browser would read as a URL scheme), written atomically so that a browser never shows half a page.
"""
from __future__ import annotations

import contextlib
import datetime
import html
import os
from pathlib import Path
from urllib.parse import quote

from ..atomic import write_atomically

__all__ = ["STYLE", "REPORT_NAME", "href", "link", "page_exists", "planned_pages", "escape", "write_page",
           "page_head", "status_badge", "table_html",
           "now_utc", "figure_html", "note_html"]

REPORT_NAME = "index.html"

STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1400px; }
h2 { border-bottom: 1px solid #999; margin-top: 1.8em; }
nav { font-size: 0.9em; margin-bottom: 1em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 640px; border: 1px solid #ccc; }
figure.wide img { max-width: 1100px; }
figcaption { font-size: 0.85em; max-width: 640px; }
.note { color: #a33; font-style: italic; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
.failed { background: #fdd; } .skipped { background: #ffd; } .stale { background: #fec; }
.done { background: #dfd; } .not-run { background: #eee; } .incomplete { background: #eef; }
.interrupted { background: #fdf; }
"""


def escape(text) -> str:
    return html.escape(str(text))


def href(target, page_dir) -> str:
    """Relative, percent-encoded link from ``page_dir`` to ``target``."""
    return quote(os.path.relpath(Path(target), Path(page_dir)).replace(os.sep, "/"))


#: Pages that the refresh under way will write: they may be linked before they exist.
_PLANNED: set = set()


@contextlib.contextmanager
def planned_pages(paths):
    """Within this block, :func:`page_exists` is true for ``paths`` (pages written later in the same refresh)."""
    added = {Path(path).absolute() for path in paths} - _PLANNED
    _PLANNED.update(added)
    try:
        yield
    finally:
        _PLANNED.difference_update(added)


def page_exists(path) -> bool:
    return Path(path).absolute() in _PLANNED or Path(path).exists()


def link(target, page_dir, label) -> str:
    """A link to ``target`` if it exists, else the label alone with "(no page yet)": pages never link nowhere."""
    if page_exists(target):
        return f"<a href='{href(target, page_dir)}'>{escape(label)}</a>"
    return f"{escape(label)} <span class='note'>(no page yet)</span>"


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def page_head(title: str, nav=()) -> str:
    """Start of a page: title, style, and a navigation line of (label, relative link) pairs."""
    links = " | ".join(f"<a href='{target}'>{escape(label)}</a>" for label, target in nav)
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>" + (f"<nav>{links}</nav>" if links else "")
            + f"<h1>{escape(title)}</h1>")


def write_page(path: Path, parts) -> Path:
    """Write the page whole or not at all (a browser never shows half a page)."""
    text = "\n".join(parts + ["</body></html>\n"])
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def status_badge(status: str) -> str:
    return f"<span class='{escape(status.replace(' ', '-'))}'>{escape(status)}</span>"


def table_html(header, rows, *, row_classes=None, raw_columns=()) -> str:
    """A table; cells are escaped except in the columns named in ``raw_columns`` (already HTML)."""
    head = "".join(f"<th>{escape(name)}</th>" for name in header)
    body = []
    for index, row in enumerate(rows):
        cells = "".join(f"<td>{value if name in raw_columns else escape(value)}</td>"
                        for name, value in zip(header, row))
        css = row_classes[index] if row_classes else ""
        body.append(f"<tr class='{escape(css.replace(' ', '-'))}'>{cells}</tr>" if css else f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def note_html(title: str, note: str) -> str:
    return f"<p class='note'>{escape(title)}: {escape(note)}</p>"


def figure_html(entry, page_dir, *, wide: bool = False) -> str:
    """A drawn figure (image linking to itself, caption linking its products), or the note saying why not."""
    if entry.png is None:
        return note_html(entry.title, entry.note)
    link = href(entry.png, page_dir)
    sources = ", ".join(f"<a href='{href(path, page_dir)}'>{escape(Path(path).name)}</a>" for path in entry.products)
    caption = sources + (f"<br>{escape(entry.caption)}" if getattr(entry, "caption", "") else "")
    css = " class='wide'" if wide else ""
    return (f"<figure{css} id='{escape(Path(entry.png).stem)}'><a href='{link}'><img src='{link}' "
            f"alt='{escape(entry.title)}'></a><figcaption>{caption}</figcaption></figure>")
