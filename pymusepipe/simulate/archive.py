"""Master calibrations as an ESO archive "processed calibrations" download holds them.

The archive ships master calibrations made by ESO's own runs of the recipes, with all IFUs merged in one file
(what ``--merge`` writes for a 24-IFU run), under technical names ``M.MUSE.<timestamp>.fits``, with the
original name in ``ORIGFILE`` (``MU_...``). :func:`write_archive_masters` turns products made by the real
recipes (per IFU, e.g. ``MASTER_BIAS-01.fits`` ... ``-24.fits``, or already merged) into such files.

File structure (checked with muse_flat, muse_wavecal and muse_scibasic 2.8.7 ``--nifu=1``; see
``docs/simulator.md``):

* primary HDU: no data, no ``EXTNAME``; the keywords common to all IFUs (``ESO PRO CATG``, DATE-OBS, MJD-OBS,
  ``ESO TPL START``, ``ESO INS MODE``, ``ESO DET READ CURNAME`` ...), ``ARCFILE``, ``ORIGFILE``;
* per IFU ``n``, the product's extensions renamed ``CHANnn.<EXTNAME>`` (images: ``CHANnn.DATA``,
  ``CHANnn.DQ``, ``CHANnn.STAT``; ``LSF_PROFILE``: ``CHANnn.LSF_PROFILE``) or ``CHANnn`` for an unnamed
  extension (tables: TRACE_TABLE, WAVECAL_TABLE). The IFU's own keywords (``ESO QC``, ``ESO DRS MUSE``,
  ``ESO DET CHIP``, ``ESO DET OUT``) go into the header of its first extension: the recipes read e.g.
  ``ESO QC BIAS MASTERn RON`` from ``CHANnn.DATA`` (with them left in the primary header muse_flat logs
  "Data not found: ESO QC BIAS MASTER1 RON").

Products that are not per IFU (TWILIGHT_CUBE, STD_RESPONSE, STD_TELLURIC ...) are copied with the archive
keywords added.
"""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.time import Time

from .errors import SimulationError

logger = logging.getLogger(__name__)

#: Product codes in ORIGFILE. MBIA, MDRK, MFLA, PFTT, MFLS, PWCT, MDCS are ESO's (QC pages); the others are
#: this simulator's assumption (ESO's codes for them were not found).
PRODUCT_CODES = {
    "MASTER_BIAS": "MBIA", "MASTER_DARK": "MDRK", "MASTER_FLAT": "MFLA", "TRACE_TABLE": "PFTT",
    "MASTER_SKYFLAT": "MFLS", "WAVECAL_TABLE": "PWCT", "DATACUBE_STD": "MDCS",
    "LSF_PROFILE": "PLSF", "TWILIGHT_CUBE": "MTWC", "STD_RESPONSE": "PRSP", "STD_TELLURIC": "PTEL",
    "STD_FLUXES": "PSTF", "GEOMETRY_TABLE": "PGEO", "ASTROMETRY_WCS": "PAST",
}
#: Keywords that belong to one IFU (moved from the primary header into the IFU's first extension).
IFU_KEYWORDS = re.compile(r"^ESO (QC|DRS MUSE|DET CHIP|DET OUT)")
#: Keywords that must describe the data the master was made from.
SOURCE_KEYWORDS = ("DATE-OBS", "MJD-OBS", "ESO TPL START", "ESO INS MODE", "ESO DET READ CURNAME")
#: The archive processes calibrations the day after they were taken (used for deterministic archive names).
PROCESSING_DELAY_DAYS = 0.75
_CHAN = re.compile(r"^CHAN(\d{2})$")


def _ifu_of(header):
    match = _CHAN.match(str(header.get("EXTNAME", "")).strip())
    return int(match.group(1)) if match else None


def write_archive_masters(raw_dir, products, *, source_header=None, overwrite: bool = False) -> list:
    """Write master calibrations made by the recipes into ``raw_dir`` the way the ESO archive delivers them.

    Parameters
    ----------
    raw_dir : path-like
        Destination (a pointing's ``Raw`` folder); created if needed.
    products : iterable of path-like
        Products of the recipes: per-IFU files (primary ``EXTNAME = CHANnn``, e.g. ``MASTER_BIAS-01.fits``),
        merged files or IFU-less ones (TWILIGHT_CUBE, STD_RESPONSE, ...). Per-IFU files of the same
        ``ESO PRO CATG``, ``ESO TPL START`` and ``DATE-OBS`` are merged into one archive file.
    source_header : fits.Header or dict, optional
        Keywords of the raw data the masters were made from; overrides DATE-OBS, MJD-OBS, ``ESO TPL START``,
        ``ESO INS MODE`` and ``ESO DET READ CURNAME`` (by default the products' own, which the recipes copy
        from their first raw input).
    overwrite : bool
        Replace existing archive files of the same name.

    Returns
    -------
    list of Path
        The archive files written, in the order of their groups.

    Raises
    ------
    SimulationError
        A product without ``ESO PRO CATG``, a group with two files of the same IFU, or missing source
        keywords.
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    groups = {}
    for path in products:
        path = Path(path)
        header = fits.getheader(path, 0)
        catg = str(header.get("ESO PRO CATG", "")).strip()
        if not catg:
            raise SimulationError(f"products: {path} has no ESO PRO CATG (not a pipeline product)")
        key = (catg, str(header.get("ESO TPL START", "")), str(header.get("DATE-OBS", "")))
        groups.setdefault(key, []).append((_ifu_of(header), path))
    written, used = [], set()
    for (catg, _, _), members in sorted(groups.items()):
        ifus = [ifu for ifu, _ in members]
        if None in ifus and len(members) > 1:
            raise SimulationError(f"products: several {catg} files without IFU (EXTNAME=CHANnn) for the same "
                                  f"template: {[str(p) for _, p in members]}")
        if len(set(ifus)) != len(ifus):
            raise SimulationError(f"products: two {catg} files for the same IFU: {[str(p) for _, p in members]}")
        members.sort(key=lambda m: (m[0] or 0))
        first = fits.getheader(members[0][1], 0)
        primary = first.copy()
        if source_header is not None:
            for key in SOURCE_KEYWORDS:
                if key in source_header:
                    primary[_card(key)] = source_header[key]
        missing = [key for key in SOURCE_KEYWORDS if key not in primary]
        if missing:
            raise SimulationError(f"products: {catg} lacks {missing}; pass source_header= (the header of a raw "
                                  "frame it was made from)")
        name = _archive_name(primary["MJD-OBS"], used)
        used.add(name)
        primary["ARCFILE"] = name
        code = PRODUCT_CODES.get(catg, catg[:4].upper())
        primary["ORIGFILE"] = f"MU_{code}_{str(primary['DATE-OBS'])[:19].replace(':', '')}.fits"
        primary.pop("EXTNAME", None)
        if members[0][0] is not None:
            for key in [k for k in primary if IFU_KEYWORDS.match(k)]:
                del primary[key]
        path = raw_dir / name
        if path.exists() and not overwrite:
            raise SimulationError(f"{path} exists; pass overwrite=True")
        fits.PrimaryHDU(header=primary).writeto(path, overwrite=True, checksum=True)
        for ifu, source in members:
            with fits.open(source, memmap=True) as hdul:
                ifu_cards = [(k, v, c) for k, v, c in hdul[0].header.cards if IFU_KEYWORDS.match(k)]
                for number, hdu in enumerate(hdul[1:]):
                    header = hdu.header.copy()
                    if ifu is not None:
                        extname = str(header.get("EXTNAME", "")).strip()
                        header["EXTNAME"] = f"CHAN{ifu:02d}.{extname}" if extname else f"CHAN{ifu:02d}"
                        if number == 0:
                            with warnings.catch_warnings():
                                # long HIERARCH cards lose the end of their comment, as in the product
                                warnings.simplefilter("ignore", VerifyWarning)
                                for key, value, comment in ifu_cards:
                                    header[_card(key)] = (value, comment)
                    fits.append(path, hdu.data, header=header, checksum=True)
        written.append(path)
        logger.info("archive master %s: %s (%s) from %d file(s)", path.name, catg, primary["ORIGFILE"],
                    len(members))
    return written


def _card(key):
    return f"HIERARCH {key}" if key.startswith("ESO ") else key


def _archive_name(mjd_obs, used):
    """``M.MUSE.<timestamp>.fits``: processed the next day, one millisecond apart when two would collide."""
    mjd = float(mjd_obs) + PROCESSING_DELAY_DAYS
    while True:
        name = f"M.MUSE.{Time(mjd, format='mjd', scale='utc').isot[:23]}.fits"
        if name not in used:
            return name
        mjd += 0.001 / 86400.0
