"""MUSE ``OFFSET_LIST`` tables: write, read, validate and merge.

Sign convention (the one place it is defined in pymusepipe)
-----------------------------------------------------------
``RA_OFFSET`` and ``DEC_OFFSET`` are, in degrees, **the position an exposure's own astrometry gives to a
source minus its true (reference) position**::

    RA_OFFSET  = RA_measured  - RA_true     (plain difference of RA, NOT multiplied by cos(dec))
    DEC_OFFSET = DEC_measured - DEC_true

The MUSE pipeline (muse_scipost, muse_exp_combine, muse_scipost_combine_pixtables) corrects each exposure as
``RA_pointing -= RA_OFFSET`` and ``DEC_pointing -= DEC_OFFSET``, so after correction the source sits at its
true position. It multiplies the exposure's data by ``FLUX_SCALE`` when that is a normal number (NaN or 0
means "no scaling"). The extra column ``BACKGROUND`` follows ``reference = FLUX_SCALE * MUSE + BACKGROUND``
(MUSE units per MUSE pixel); the pipeline ignores it.

Format accepted by the recipes (MUSE 2.8.7, ``muse_cpltable_check``): primary HDU + one unnamed BINTABLE
with ``DATE_OBS`` (string), ``RA_OFFSET``, ``DEC_OFFSET`` (double) required, ``MJD_OBS`` and ``FLUX_SCALE``
(double) optional; column *types* must be exact. A table failing that check is silently ignored by the
recipes (a warning, then no offsets at all), which is why :func:`validate_offset_list` runs before every
write. Rows are matched to exposures on the first 23 characters of DATE-OBS.
"""
import logging
import math
from collections.abc import Mapping

import numpy as np
from astropy.io import fits
from astropy.table import Table

logger = logging.getLogger(__name__)

#: Columns the recipes read, with the FITS binary-table format they require.
REQUIRED_COLUMNS = ("DATE_OBS", "RA_OFFSET", "DEC_OFFSET")
PIPELINE_FLOAT_COLUMNS = ("MJD_OBS", "RA_OFFSET", "DEC_OFFSET", "FLUX_SCALE")
#: Extra float columns written by pymusepipe (ignored by the recipes).
EXTRA_FLOAT_COLUMNS = ("RA_OFFSET_ERR", "DEC_OFFSET_ERR", "FLUX_SCALE_ERR", "BACKGROUND", "BACKGROUND_ERR",
                       "ROTANGLE", "ROTANGLE_ERR")
#: The pipeline compares DATE_OBS and DATE-OBS on this many characters.
DATE_OBS_MATCH_LENGTH = 23
#: muse_xcombine refuses DATE-OBS strings outside this length range.
DATE_OBS_MIN_LENGTH, DATE_OBS_MAX_LENGTH = 19, 68
#: Offsets larger than this are almost certainly a unit mistake (arcsec written as degrees).
SUSPICIOUS_OFFSET_DEG = 60.0 / 3600.0

# lower-case names produced by align_images -> OFFSET_LIST column names
_ALIGN_TABLE_TO_OFFSET_COLUMNS = {
    "date_obs": "DATE_OBS", "mjd_obs": "MJD_OBS", "ra_offset": "RA_OFFSET", "dec_offset": "DEC_OFFSET",
    "flux_scale": "FLUX_SCALE", "ra_offset_err": "RA_OFFSET_ERR", "dec_offset_err": "DEC_OFFSET_ERR",
    "flux_scale_err": "FLUX_SCALE_ERR", "background": "BACKGROUND", "background_err": "BACKGROUND_ERR",
    "rotation": "ROTANGLE", "rotation_err": "ROTANGLE_ERR", "quality": "QUALITY", "filename": "FILENAME",
    "source": "SOURCE",
}


class OffsetListError(ValueError):
    """An OFFSET_LIST that the MUSE recipes would silently ignore (or misapply)."""


def date_obs_key(date_obs):
    """Return the part of a DATE-OBS string the pipeline uses to match an OFFSET_LIST row.

    Parameters
    ----------
    date_obs : str
        DATE-OBS of an exposure.

    Returns
    -------
    str
        Its first 23 characters, stripped of trailing blanks.
    """
    return str(date_obs).strip()[:DATE_OBS_MATCH_LENGTH]


def _as_offset_table(table_or_rows):
    """Turn an align_images table, a Table with OFFSET_LIST names, or a list of dicts into a Table."""
    if isinstance(table_or_rows, Table):
        table = table_or_rows.copy(copy_data=True)
    elif isinstance(table_or_rows, Mapping):
        table = Table({key: [value] for key, value in table_or_rows.items()})
    else:
        rows = list(table_or_rows)
        if not rows:
            raise OffsetListError("cannot build an OFFSET_LIST from an empty list of rows")
        table = Table(rows=rows)
    renames = {}
    for name in table.colnames:
        target = _ALIGN_TABLE_TO_OFFSET_COLUMNS.get(name.lower(), name.upper())
        if target != name:
            renames[name] = target
    for old, new in renames.items():
        if new in table.colnames:  # e.g. both 'ra_offset' and 'RA_OFFSET': keep the upper-case one
            table.remove_column(old)
        else:
            table.rename_column(old, new)
    # align_images carries extra human-facing columns (arcsec, pixels) that do not belong in the table
    keep = [name for name in table.colnames
            if name in _ALIGN_TABLE_TO_OFFSET_COLUMNS.values() or name in PIPELINE_FLOAT_COLUMNS]
    table.keep_columns(keep)
    return table


def _coerce_types(table):
    """Give every known column the exact type the recipes check (string / float64 / int32)."""
    for name in table.colnames:
        if name in ("DATE_OBS", "FILENAME", "SOURCE"):
            table[name] = np.asarray([str(value).strip() for value in table[name]], dtype=str)
        elif name in PIPELINE_FLOAT_COLUMNS or name in EXTRA_FLOAT_COLUMNS:
            values = np.ma.filled(np.ma.asarray(table[name], dtype=np.float64), np.nan)
            table[name] = np.asarray(values, dtype=np.float64)
        elif name == "QUALITY":
            table[name] = np.asarray(table[name], dtype=np.int32)
    if "FLUX_SCALE" not in table.colnames:
        table["FLUX_SCALE"] = np.full(len(table), np.nan)
    return table


def validate_offset_list(table_or_path, *, expected_date_obs=None):
    """Check that an OFFSET_LIST will be accepted and applied by the MUSE recipes.

    Parameters
    ----------
    table_or_path : astropy.table.Table or str or path-like
        The table (OFFSET_LIST column names) or a FITS file to check (its first table extension).
    expected_date_obs : iterable of str, optional
        DATE-OBS of the exposures the table is meant for; each must match exactly one row.

    Returns
    -------
    list of str
        Non-fatal remarks (e.g. rows with non-finite offsets, which the pipeline leaves unmoved).

    Raises
    ------
    OffsetListError
        Listing every problem that would make the recipes ignore the table or misapply it.
    """
    if isinstance(table_or_path, Table):
        table, source = table_or_path, "OFFSET_LIST table"
    else:
        source = str(table_or_path)
        table = _read_first_table(source)
    problems, remarks = [], []
    for name in REQUIRED_COLUMNS:
        if name not in table.colnames:
            problems.append(f"missing required column {name}")
    if "DATE_OBS" in table.colnames and table["DATE_OBS"].dtype.kind not in "SU":
        problems.append(f"column DATE_OBS must be a string column, not {table['DATE_OBS'].dtype}")
    for name in PIPELINE_FLOAT_COLUMNS:
        if name in table.colnames and not (table[name].dtype.kind == "f" and table[name].dtype.itemsize == 8):
            problems.append(f"column {name} must be float64 (FITS 'D'), not {table[name].dtype}: the recipes "
                            "check column types exactly and ignore the whole table otherwise")
    if len(table) == 0:
        problems.append("the table has no rows")
    keys = []
    if "DATE_OBS" in table.colnames and table["DATE_OBS"].dtype.kind in "SU":
        for row_index, value in enumerate(table["DATE_OBS"]):
            text = value.decode() if isinstance(value, bytes) else str(value)
            text = text.strip()
            if not DATE_OBS_MIN_LENGTH <= len(text) <= DATE_OBS_MAX_LENGTH:
                problems.append(f"row {row_index}: DATE_OBS {text!r} has {len(text)} characters, expected "
                                f"{DATE_OBS_MIN_LENGTH}..{DATE_OBS_MAX_LENGTH} (e.g. 2014-09-13T01:23:45.678)")
            keys.append(date_obs_key(text))
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            problems.append(f"DATE_OBS not unique in their first {DATE_OBS_MATCH_LENGTH} characters: "
                            f"{duplicates}")
    if not problems:
        for name in ("RA_OFFSET", "DEC_OFFSET"):
            values = np.asarray(table[name], dtype=float)
            for row_index in np.flatnonzero(~np.isfinite(values)):
                remarks.append(f"row {row_index} ({keys[row_index]}): {name} is not finite, the pipeline will "
                               "not move that exposure")
            for row_index in np.flatnonzero(np.abs(values) > SUSPICIOUS_OFFSET_DEG):
                problems.append(f"row {row_index} ({keys[row_index]}): {name} = {values[row_index]:.6g} deg "
                                f"exceeds {SUSPICIOUS_OFFSET_DEG * 3600:.0f} arcsec; offsets are in degrees")
        if "FLUX_SCALE" in table.colnames:
            scales = np.asarray(table["FLUX_SCALE"], dtype=float)
            for row_index in np.flatnonzero(np.isfinite(scales) & (scales < 0)):
                problems.append(f"row {row_index} ({keys[row_index]}): negative FLUX_SCALE {scales[row_index]}")
    if expected_date_obs is not None and keys:
        for date_obs in expected_date_obs:
            count = keys.count(date_obs_key(date_obs))
            if count != 1:
                problems.append(f"exposure DATE-OBS {date_obs!r} matches {count} rows (expected exactly 1)")
    if problems:
        raise OffsetListError(f"{source}: " + "; ".join(problems))
    for remark in remarks:
        logger.warning("%s: %s", source, remark)
    return remarks


def write_offset_list(table_or_rows, path, *, overwrite=True, header=None, expected_date_obs=None):
    """Validate and write an OFFSET_LIST FITS file that muse_scipost / muse_exp_combine apply.

    Parameters
    ----------
    table_or_rows : astropy.table.Table or list of dict or dict
        Either the table returned by :func:`pymusepipe.alignment.align_images` (lower-case names) or rows
        with OFFSET_LIST names (``DATE_OBS``, ``MJD_OBS``, ``RA_OFFSET``, ``DEC_OFFSET`` in degrees,
        ``FLUX_SCALE``; optional extras). Missing ``FLUX_SCALE`` is written as NaN (no scaling).
    path : str or path-like
        Output FITS file.
    overwrite : bool, optional
        Replace an existing file.
    header : dict or astropy.io.fits.Header, optional
        Extra primary-header cards (e.g. provenance).
    expected_date_obs : iterable of str, optional
        Passed to :func:`validate_offset_list`.

    Returns
    -------
    astropy.table.Table
        The table as written.
    """
    table = _coerce_types(_as_offset_table(table_or_rows))
    validate_offset_list(table, expected_date_obs=expected_date_obs)
    ordered = [name for name in ("DATE_OBS", "MJD_OBS", "RA_OFFSET", "DEC_OFFSET", "FLUX_SCALE")
               if name in table.colnames]
    table = table[ordered + [name for name in table.colnames if name not in ordered]]
    table_hdu = fits.BinTableHDU.from_columns([_fits_column(table, name) for name in table.colnames])
    primary = fits.PrimaryHDU()
    primary.header["HIERARCH ESO PRO CATG"] = "OFFSET_LIST"
    primary.header["COMMENT"] = "RA/DEC_OFFSET = measured - true position (deg, no cos(dec)); " \
                                "the pipeline applies pointing -= offset and data *= FLUX_SCALE"
    for key, value in dict(header or {}).items():
        primary.header[key] = value
    fits.HDUList([primary, table_hdu]).writeto(path, overwrite=overwrite)
    logger.info("wrote OFFSET_LIST %s (%d rows)", path, len(table))
    return table


_COLUMN_UNITS = {"RA_OFFSET": "deg", "DEC_OFFSET": "deg", "RA_OFFSET_ERR": "deg", "DEC_OFFSET_ERR": "deg",
                 "MJD_OBS": "d", "ROTANGLE": "deg", "ROTANGLE_ERR": "deg"}


def _fits_column(table, name):
    """One FITS column with the exact type the recipes expect ('A' strings, 'D' doubles)."""
    values = table[name]
    if values.dtype.kind in "SU":
        # at least 23 wide, like muse_exp_align writes DATE_OBS
        width = max([DATE_OBS_MATCH_LENGTH] + [len(str(value)) for value in values])
        return fits.Column(name=name, format=f"{width}A", array=np.asarray(values, dtype=str))
    if values.dtype == np.int32:
        return fits.Column(name=name, format="J", array=np.asarray(values))
    return fits.Column(name=name, format="D", unit=_COLUMN_UNITS.get(name),
                       array=np.asarray(values, dtype=np.float64))


def _read_first_table(path):
    try:
        with fits.open(path) as hdul:
            for hdu in hdul[1:]:
                if isinstance(hdu, fits.BinTableHDU):
                    return Table(hdu.data, masked=False)
    except OSError as exc:
        raise OffsetListError(f"{path}: cannot be read as FITS ({exc})") from exc
    raise OffsetListError(f"{path}: no binary table extension (an OFFSET_LIST has its table in HDU 1)")


def read_offset_list(path, *, validate=True):
    """Read an OFFSET_LIST (from pymusepipe, muse_exp_align or written by hand).

    Parameters
    ----------
    path : str or path-like
        FITS file.
    validate : bool, optional
        Run :func:`validate_offset_list` and raise :class:`OffsetListError` on a table the recipes would ignore.

    Returns
    -------
    astropy.table.Table
        OFFSET_LIST column names; ``DATE_OBS`` as stripped strings. The primary header is in ``table.meta``.
    """
    table = _read_first_table(path)
    for name in table.colnames:
        if table[name].dtype.kind == "S":
            table[name] = np.char.strip(np.char.decode(table[name]))
        elif table[name].dtype.kind == "U":
            table[name] = np.char.strip(table[name])
    with fits.open(path) as hdul:
        table.meta.update({key: value for key, value in hdul[0].header.items() if key not in ("COMMENT", "")})
    if validate:
        validate_offset_list(table)
    return table


def exp_align_is_reliable(table_or_path, *, min_matches=5):
    """Whether a muse_exp_align OFFSET_LIST can be trusted, from its QC keywords.

    muse_exp_align exits 0 even when its offsets are wrong by arcseconds (too few common sources, noise
    peaks, a random histogram peak). On ~1600 synthetic runs every wrong table had ``ESO QC EXPALIGN NMATCH
    MIN`` <= 4 or ``ESO QC EXPALIGN NOMATCH`` > 0 (exp-align-and-sky.md).

    Parameters
    ----------
    table_or_path : astropy.table.Table or str or path-like
        The table from :func:`read_offset_list` (primary header in ``meta``) or the file.
    min_matches : int, optional
        Smallest acceptable number of matched sources between any two exposures.

    Returns
    -------
    reliable : bool
    reason : str
        Why not (or the QC values when reliable).
    """
    meta = table_or_path.meta if isinstance(table_or_path, Table) else read_offset_list(table_or_path).meta
    nmatch = meta.get("ESO QC EXPALIGN NMATCH MIN", meta.get("HIERARCH ESO QC EXPALIGN NMATCH MIN"))
    nomatch = meta.get("ESO QC EXPALIGN NOMATCH", meta.get("HIERARCH ESO QC EXPALIGN NOMATCH"))
    if nmatch is None or nomatch is None:
        return False, "no ESO QC EXPALIGN NMATCH MIN / NOMATCH keywords (not a muse_exp_align product?)"
    if int(nomatch) > 0:
        return False, f"ESO QC EXPALIGN NOMATCH = {nomatch}: some exposures matched no other"
    if int(nmatch) < min_matches:
        return False, f"ESO QC EXPALIGN NMATCH MIN = {nmatch} < {min_matches} matched sources"
    return True, f"NMATCH MIN = {nmatch}, NOMATCH = {nomatch}"


def merge_offset_lists(relative=None, absolute=None, *, overrides=None, prefer="absolute",
                       min_quality=0):
    """Combine a relative OFFSET_LIST (muse_exp_align), absolute offsets and manual overrides.

    muse_exp_align measures every exposure against the first one of its SOF (whose offset is exactly 0).
    Absolute offsets (from :func:`~pymusepipe.alignment.align_images`, against a reference image) fix where
    that first exposure really is: its absolute offset is the mean of ``absolute_j - relative_j`` over the
    exposures that have both (and an acceptable quality flag). Every exposure of the relative table then gets
    ``anchor + relative_i``.

    Parameters
    ----------
    relative : astropy.table.Table or path, optional
        muse_exp_align OFFSET_LIST (relative offsets, FLUX_SCALE usually NaN).
    absolute : astropy.table.Table or path, optional
        Absolute OFFSET_LIST (or the align_images table).
    overrides : dict or astropy.table.Table, optional
        Manual values per exposure, applied last: ``{DATE_OBS: {"RA_OFFSET": deg, "DEC_OFFSET": deg,
        "FLUX_SCALE": x}}`` (any subset of keys), or a table with a DATE_OBS column and any of those columns.
    prefer : {"absolute", "relative"}, optional
        For exposures in both tables: keep the directly measured absolute offset ("absolute"), or keep the
        internal consistency of muse_exp_align and only use the absolute table as an anchor ("relative").
    min_quality : int, optional
        Absolute rows with a ``QUALITY`` flag above this value are not trusted (neither used as anchor nor
        preferred).

    Returns
    -------
    astropy.table.Table
        OFFSET_LIST names plus a ``SOURCE`` column (absolute, relative+anchor, relative, manual).
    """
    if prefer not in ("absolute", "relative"):
        raise ValueError(f"prefer={prefer!r}: expected 'absolute' or 'relative'")
    relative = _load_for_merge(relative, "relative")
    absolute = _load_for_merge(absolute, "absolute")
    if relative is None and absolute is None:
        raise OffsetListError("merge_offset_lists needs at least one of relative / absolute")

    merged = {}   # key -> dict of OFFSET_LIST values
    trusted_absolute = {}
    if absolute is not None:
        for row in absolute:
            key = date_obs_key(row["DATE_OBS"])
            values = {name: row[name] for name in absolute.colnames}
            quality = int(values.get("QUALITY", 0)) if "QUALITY" in absolute.colnames else 0
            usable = quality <= min_quality and np.isfinite(values["RA_OFFSET"]) \
                and np.isfinite(values["DEC_OFFSET"])
            if usable:
                trusted_absolute[key] = values
            merged[key] = dict(values, SOURCE="absolute" if usable else "absolute-flagged")

    if relative is not None:
        relative_by_key = {date_obs_key(row["DATE_OBS"]): row for row in relative}
        common = [key for key in relative_by_key if key in trusted_absolute]
        if common:
            anchor_ra = float(np.mean([trusted_absolute[k]["RA_OFFSET"] - relative_by_key[k]["RA_OFFSET"]
                                       for k in common]))
            anchor_dec = float(np.mean([trusted_absolute[k]["DEC_OFFSET"] - relative_by_key[k]["DEC_OFFSET"]
                                        for k in common]))
            relative_source = "relative+anchor"
            logger.info("anchoring %d relative offsets on %d absolute ones: (%.4f, %.4f) arcsec",
                        len(relative_by_key), len(common), anchor_ra * 3600, anchor_dec * 3600)
        else:
            anchor_ra = anchor_dec = 0.0
            relative_source = "relative"
            if absolute is not None:
                logger.warning("no exposure has both a relative and a trusted absolute offset: "
                               "relative offsets are kept unanchored")
        for key, row in relative_by_key.items():
            if prefer == "absolute" and key in trusted_absolute:
                continue
            values = dict(merged.get(key, {}))
            values.update(DATE_OBS=str(row["DATE_OBS"]).strip(),
                          RA_OFFSET=float(row["RA_OFFSET"]) + anchor_ra,
                          DEC_OFFSET=float(row["DEC_OFFSET"]) + anchor_dec,
                          SOURCE=relative_source)
            if "MJD_OBS" in relative.colnames:
                values["MJD_OBS"] = float(row["MJD_OBS"])
            if not np.isfinite(values.get("FLUX_SCALE", np.nan)) and "FLUX_SCALE" in relative.colnames:
                values["FLUX_SCALE"] = float(row["FLUX_SCALE"])
            merged[key] = values

    for key, changes in _normalise_overrides(overrides).items():
        if key not in merged:
            merged[key] = {"DATE_OBS": changes.get("DATE_OBS", key)}
        merged[key].update({name: value for name, value in changes.items() if name != "DATE_OBS"})
        merged[key]["SOURCE"] = "manual"
        logger.info("manual OFFSET_LIST override for %s: %s", key, changes)

    columns = ["DATE_OBS", "MJD_OBS", "RA_OFFSET", "DEC_OFFSET", "FLUX_SCALE"]
    for values in merged.values():
        columns += [name for name in values if name not in columns]
    rows = []
    for key in sorted(merged):
        values = merged[key]
        rows.append({name: values.get(name, _missing_value(name)) for name in columns})
    table = _coerce_types(Table(rows=rows, names=columns))
    return table


def _missing_value(name):
    if name in ("DATE_OBS", "FILENAME", "SOURCE"):
        return ""
    if name == "QUALITY":
        return 0
    return math.nan


def _load_for_merge(table_or_path, role):
    if table_or_path is None:
        return None
    if isinstance(table_or_path, Table):
        table = _coerce_types(_as_offset_table(table_or_path))
    else:
        table = read_offset_list(table_or_path, validate=False)
    missing = [name for name in REQUIRED_COLUMNS if name not in table.colnames]
    if missing:
        raise OffsetListError(f"{role} offset table lacks column(s) {missing}")
    return table


def _normalise_overrides(overrides):
    if overrides is None:
        return {}
    allowed = {"DATE_OBS", "MJD_OBS", "RA_OFFSET", "DEC_OFFSET", "FLUX_SCALE", "BACKGROUND"}
    result = {}
    if isinstance(overrides, Table):
        items = [(row["DATE_OBS"], {name: row[name] for name in overrides.colnames}) for row in overrides]
    else:
        items = list(overrides.items())
    for date_obs, changes in items:
        changes = {str(name).upper(): value for name, value in dict(changes).items()}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise OffsetListError(f"override for {date_obs!r}: unknown column(s) {unknown}, "
                                  f"expected some of {sorted(allowed - {'DATE_OBS'})}")
        changes["DATE_OBS"] = str(date_obs).strip()
        result[date_obs_key(date_obs)] = {name: (value if name == "DATE_OBS" else float(value))
                                          for name, value in changes.items()}
    return result
