"""Apply a measured rotation to MUSE pixel tables through ``ESO INS DROT POSANG``.

The DRS OFFSET_LIST has no rotation column: muse_scipost orients an exposure on the sky from the derotator
position angle in its pixel table's primary header (``ESO INS DROT POSANG``), so a rotation is corrected by
changing that keyword before muse_scipost runs, as the original pymusepipe did. The value first found is
kept in ``ESO INS DROT POSANG ORIG`` and every correction is applied to it, never to the current value, so
applying the same rotation twice gives the same header (``angle=0`` restores the original).

Sign: ``angle`` is the ``rotation`` measured by :func:`~pymusepipe.alignment.align_images` with
``fit_rotation=True`` (the ``ROTANGLE`` column): the angle by which the header orientation must be turned to
give the true one; the keyword becomes ``POSANG_ORIG + angle`` (the original tool's sign).
``tests/test_alignment_esorex.py`` checks with the real muse_scipost 2.8.7 that a rotated exposure then
lands on its true coordinates (the opposite sign doubles the rotation: 0.6 deg became -1.21 deg).
"""
import logging

from astropy.io import fits

logger = logging.getLogger(__name__)

POSANG_KEYWORD = "HIERARCH ESO INS DROT POSANG"
ORIGINAL_POSANG_KEYWORD = "HIERARCH ESO INS DROT POSANG ORIG"
#: Sense in which muse_scipost applies POSANG relative to the measured rotation (checked with the recipe).
POSANG_SIGN = 1.0


class PixtableRotationError(ValueError):
    """A file that must not, or cannot, be rotated (raw data, already projected tables, missing keywords)."""


def _check_pixtable(path, header, table_header):
    catg = str(header.get("HIERARCH ESO PRO CATG", ""))
    if not catg.startswith("PIXTABLE_") or "HIERARCH ESO DRS MUSE PIXTABLE TYPE" not in header:
        # raw exposures have no PRO CATG: they are never edited
        raise PixtableRotationError(f"{path}: not a MUSE pixel table (ESO PRO CATG = {catg!r}); only pipeline "
                                    "products are rotated, never raw data")
    if POSANG_KEYWORD not in header:
        raise PixtableRotationError(f"{path}: no ESO INS DROT POSANG keyword")
    unit = None
    if table_header is not None:
        for index in range(1, int(table_header.get("TFIELDS", 0)) + 1):
            if str(table_header.get(f"TTYPE{index}", "")).strip().lower() == "xpos":
                unit = str(table_header.get(f"TUNIT{index}", "")).strip()
    if unit is not None and unit != "pix":
        # 'rad'/'deg': muse_scipost already projected the table with the old angle; POSANG is not read again
        raise PixtableRotationError(f"{path}: xpos is in {unit!r}, i.e. already projected on the sky; rotate the "
                                    "PIXTABLE_OBJECT tables that muse_scipost reads")


def rotate_pixtable(path, angle):
    """Set a pixel table's position angle to its original value corrected by ``angle`` (degrees).

    Parameters
    ----------
    path : str or path-like
        A PIXTABLE_OBJECT (per IFU or merged) written by muse_scibasic; updated in place (header only).
    angle : float
        Rotation to correct (deg), as measured by ``align_images(..., fit_rotation=True)`` (``rotation``
        column, OFFSET_LIST ``ROTANGLE``). It replaces any earlier correction: 0 restores the original.

    Returns
    -------
    float
        The new ``ESO INS DROT POSANG``.

    Raises
    ------
    PixtableRotationError
        Raw data, a table already projected on the sky, or a missing POSANG keyword.
    """
    path = str(path)
    with fits.open(path, mode="update") as hdul:
        header = hdul[0].header
        table_header = hdul[1].header if len(hdul) > 1 else None
        _check_pixtable(path, header, table_header)
        if ORIGINAL_POSANG_KEYWORD in header:
            original = float(header[ORIGINAL_POSANG_KEYWORD])
        else:
            original = float(header[POSANG_KEYWORD])
            header[ORIGINAL_POSANG_KEYWORD] = (original, "[deg] before rotation")
        new = original + POSANG_SIGN * float(angle)
        header[POSANG_KEYWORD] = new
        header["HIERARCH PYMUSEPIPE ROTANGLE"] = (float(angle), "[deg] rotation corrected")
    logger.info("%s: ESO INS DROT POSANG %.4f -> %.4f (rotation %.4f deg)", path, original, new, angle)
    return new


def rotate_pixtables(paths, angle):
    """:func:`rotate_pixtable` on each of ``paths`` (e.g. the 24 IFU tables of one exposure).

    Returns
    -------
    list of float
        The new position angles.
    """
    return [rotate_pixtable(path, angle) for path in paths]


__all__ = ["rotate_pixtable", "rotate_pixtables", "PixtableRotationError", "POSANG_KEYWORD",
           "ORIGINAL_POSANG_KEYWORD"]
