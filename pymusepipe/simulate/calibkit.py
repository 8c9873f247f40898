"""The synthetic static calibration kit (what ESO ships as ``muse-calib``), written from the same
:class:`~pymusepipe.simulate.model.InstrumentModel` and spectral lists as the raw frames.

Table formats follow the MUSE pipeline 2.8.7 readers (see ``docs/simulator.md``). Each ``write_*``
function writes one file and returns its path.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..instrument import N_IFUS, SPAXEL_SCALE_NFM_MEASURED
from . import spectra
from .model import RAW_NX, RAW_NY, InstrumentModel

logger = logging.getLogger(__name__)

#: File names of the kit inside ``musecalib`` (tag -> name), as listed in ``calib_tables.dic``.
KIT_FILES = {
    "GEOMETRY_TABLE": "geometry_table_wfm.fits",
    "ASTROMETRY_WCS": "astrometry_wcs_wfm.fits",
    "BADPIX_TABLE": "badpix_table.fits",
    "VIGNETTING_MASK": "vignetting_mask.fits",
    "STD_FLUX_TABLE": "std_flux_table.fits",
    "EXTINCT_TABLE": "extinct_table.fits",
    "LINE_CATALOG": "line_catalog.fits",
    "SKY_LINES": "sky_lines.fits",
    "FILTER_LIST": "filter_list.fits",
    "RAMAN_LINES": "raman_lines.fits",
}
#: Astrometric solution of the narrow-field mode (the NFM uses the same GEOMETRY_TABLE as the WFM, as ESO's
#: kit does: muse-pipeline notes, [MP]).
NFM_ASTROMETRY_FILE = "astrometry_wcs_nfm.fits"

#: ``calib_tables.dic`` key of each tag.
CALIB_KEYS = {
    "GEOMETRY_TABLE": "geo_table", "ASTROMETRY_WCS": "astro_table", "BADPIX_TABLE": "badpix_table",
    "VIGNETTING_MASK": "vignetting_mask", "STD_FLUX_TABLE": "std_flux_table",
    "EXTINCT_TABLE": "extinct_table", "LINE_CATALOG": "line_catalog", "SKY_LINES": "sky_lines",
    "FILTER_LIST": "filter_list", "RAMAN_LINES": "raman_lines",
}


def _primary(tag: str, **keywords) -> fits.PrimaryHDU:
    header = fits.Header()
    header["TELESCOP"] = "ESO-VLT-U4"
    header["INSTRUME"] = "MUSE"
    header["ORIGIN"] = "pymusepipe.simulate"
    header["HIERARCH ESO PRO CATG"] = tag
    for key, value in keywords.items():
        header[key] = value
    return fits.PrimaryHDU(header=header)


def _table(columns, extname=None, header=None) -> fits.BinTableHDU:
    """``columns``: list of (name, fits format, unit, array)."""
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name=n, format=f, unit=u or None, array=a) for n, f, u, a in columns], header=header)
    if extname:
        hdu.header["EXTNAME"] = extname
    return hdu


def _write(path, hdus) -> Path:
    path = Path(path)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    logger.debug("wrote %s", path)
    return path


def write_geometry_table(path, model: InstrumentModel) -> Path:
    """GEOMETRY_TABLE: 24 IFUs x 48 slices, focal-plane position/width of every slice [spaxel].

    This is the very table the simulator uses to place the sky on the slices.
    """
    cols = model.geometry_columns()
    n = cols["x"].size
    columns = [("SubField", "J", "", cols["SubField"]), ("SliceCCD", "J", "", cols["SliceCCD"]),
               ("SliceSky", "J", "", cols["SliceSky"]), ("x", "D", "pix", cols["x"]),
               ("y", "D", "pix", cols["y"]), ("angle", "D", "deg", cols["angle"]),
               ("width", "D", "pix", cols["width"]),
               ("xerr", "D", "pix", np.zeros(n)), ("yerr", "D", "pix", np.zeros(n)),
               ("angleerr", "D", "deg", np.zeros(n)), ("widtherr", "D", "pix", np.zeros(n))]
    return _write(path, [_primary("GEOMETRY_TABLE"), _table(columns)])


def write_astrometry_wcs(path, model: InstrumentModel, field: str = "WFM") -> Path:
    """ASTROMETRY_WCS: primary header with the TAN projection, spaxel scale and no zero-point shift.

    ``field="NFM"`` writes the narrow-field solution (the measured 0.02519" x 0.02542" spaxels).
    """
    hdu = _primary("ASTROMETRY_WCS")
    scale_x = scale_y = model.spaxel_scale / 3600.0
    if field == "NFM":
        scale_x, scale_y = (value / 3600.0 for value in SPAXEL_SCALE_NFM_MEASURED)
    header = hdu.header
    header["WCSAXES"] = 2
    header["CTYPE1"] = "RA---TAN"
    header["CTYPE2"] = "DEC--TAN"
    header["CUNIT1"] = "deg"
    header["CUNIT2"] = "deg"
    header["CRPIX1"] = (0.0, "[pix] zero-point correction (none)")
    header["CRPIX2"] = (0.0, "[pix] zero-point correction (none)")
    header["CRVAL1"] = 0.0
    header["CRVAL2"] = 0.0
    header["CD1_1"] = -scale_x
    header["CD1_2"] = 0.0
    header["CD2_1"] = 0.0
    header["CD2_2"] = scale_y
    return _write(path, [hdu])


def write_filter_list(path) -> Path:
    """FILTER_LIST: one table per filter (EXTNAME = filter name); ``white`` is internal to the pipeline."""
    wavelength = np.arange(3500.0, 11000.01, 5.0)
    hdus = [_primary("FILTER_LIST")]
    for name in spectra.FILTERS:
        hdus.append(_table([("lambda", "D", "Angstrom", wavelength),
                            ("throughput", "D", "", spectra.filter_curve(name, wavelength))], extname=name))
    return _write(path, hdus)


def write_extinct_table(path) -> Path:
    """EXTINCT_TABLE: the extinction curve [mag/airmass] applied to the simulated sources."""
    wavelength = np.arange(4000.0, 10500.01, 5.0)
    columns = [("lambda", "D", "Angstrom", wavelength),
               ("extinction", "D", "mag/airmass", spectra.extinction(wavelength))]
    return _write(path, [_primary("EXTINCT_TABLE"), _table(columns)])


def write_std_flux_table(path, stars) -> Path:
    """STD_FLUX_TABLE: one table per standard star, RA/DEC [deg] in each extension header.

    Parameters
    ----------
    stars : dict
        name -> dict with ``ra``, ``dec`` [deg], ``temperature`` [K] and ``vmag``.
    """
    wavelength = np.arange(3000.0, 11000.01, 1.0)
    hdus = [_primary("STD_FLUX_TABLE")]
    for name, star in stars.items():
        flux = spectra.blackbody_star(wavelength, star["temperature"], star["vmag"])
        header = fits.Header()
        header["RA"] = (float(star["ra"]), "[deg] position of the star")
        header["DEC"] = (float(star["dec"]), "[deg] position of the star")
        hdus.append(_table([("lambda", "D", "Angstrom", wavelength),
                            ("flux", "D", "erg/s/cm**2/Angstrom", flux),
                            ("fluxerr", "D", "erg/s/cm**2/Angstrom", 0.01 * flux)],
                           extname=name, header=header))
    return _write(path, hdus)


def write_sky_lines(path) -> Path:
    """SKY_LINES: exactly the night-sky lines injected into the OBJECT and SKY frames."""
    lines = spectra.SKY_LINES
    columns = [("name", "16A", "", np.array([line[0] for line in lines])),
               ("group", "J", "", np.array([line[1] for line in lines], np.int32)),
               ("lambda", "D", "Angstrom", np.array([line[2] for line in lines])),
               ("flux", "D", "10**(-20)*erg/(s cm^2 arcsec^2)", np.array([line[3] for line in lines])),
               ("dq", "J", "", np.zeros(len(lines), np.int32))]
    return _write(path, [_primary("SKY_LINES"), _table(columns, extname="LINES")])


def write_raman_lines(path) -> Path:
    """RAMAN_LINES: the laser-induced O2 (group 0) and N2 (group 1) Raman lines injected into the AO frames.

    Same format as SKY_LINES (muse_scipost reads EXTNAME ``LINES`` with the SKY_LINES column definitions).
    """
    lines = spectra.raman_lines()
    columns = [("name", "16A", "", np.array([line[0] for line in lines])),
               ("group", "J", "", np.array([line[1] for line in lines], np.int32)),
               ("lambda", "D", "Angstrom", np.array([line[2] for line in lines])),
               ("flux", "D", "10**(-20)*erg/(s cm^2 arcsec^2)", np.array([line[3] for line in lines])),
               ("dq", "J", "", np.zeros(len(lines), np.int32))]
    return _write(path, [_primary("RAMAN_LINES"), _table(columns, extname="LINES")])


def write_line_catalog(path, model: InstrumentModel) -> Path:
    """LINE_CATALOG (VERSION 3): the lines of the three arc lamps, ``flux`` in e- per CCD column."""
    rows = []
    for lamp in spectra.ARC_LAMP_NUMBER:
        for wavelength, area, ion, quality in spectra.arc_lines(lamp):
            rows.append((wavelength, area, ion, quality, f"{lamp} lamp"))
    rows.sort()
    columns = [("lambda", "E", "Angstrom", np.array([r[0] for r in rows], np.float32)),
               ("flux", "E", "", np.array([r[1] for r in rows], np.float32)),
               ("ion", "8A", "", np.array([r[2] for r in rows])),
               ("quality", "J", "", np.array([r[3] for r in rows], np.int32)),
               ("comment", "16A", "", np.array([r[4] for r in rows]))]
    primary = _primary("LINE_CATALOG", VERSION=3)
    primary.header["HIERARCH ESO DRS MUSE LSF SIGMA"] = (model.lsf_sigma_angstrom,
                                                         "[Angstrom] simulated LSF sigma")
    return _write(path, [primary, _table(columns, extname="LINE_CATALOG")])


def write_badpix_table(path, ifus=range(1, N_IFUS + 1)) -> Path:
    """BADPIX_TABLE: one (empty: the simulated CCDs are cosmetically perfect) table per IFU.

    The pipeline reads the extension ``CHANnn`` of each IFU; empty tables mean "no known bad pixel".
    Columns ``xpos``/``ypos`` are 1-based raw positions (``RAW_NX`` x ``RAW_NY``).
    """
    hdus = [_primary("BADPIX_TABLE", **{"HIERARCH ESO DRS MUSE RAW NX": RAW_NX,
                                        "HIERARCH ESO DRS MUSE RAW NY": RAW_NY})]
    for ifu in ifus:
        empty_int = np.zeros(0, np.int32)
        hdus.append(_table([("xpos", "J", "pix", empty_int), ("ypos", "J", "pix", empty_int),
                            ("status", "J", "", empty_int), ("value", "E", "", np.zeros(0, np.float32))],
                           extname=f"CHAN{int(ifu):02d}"))
    return _write(path, hdus)


def write_vignetting_mask(path) -> Path:
    """VIGNETTING_MASK: integer image in the primary HDU, non-zero = vignetted.

    Like the real WFM mask it flags one corner of the field (muse_twilight refuses a mask without a
    masked corner: "No masked quadrant found"); the simulated frames themselves are not vignetted, and
    ESO's association uses this mask only for data taken before 2017-03.
    """
    hdu = _primary("VIGNETTING_MASK")
    yy, xx = np.mgrid[0:300, 0:300]
    hdu.data = ((xx + yy) < 40).astype(np.uint8)
    return _write(path, [hdu])


def write_calibration_kit(musecalib_dir, musecalib_time_dir, model: InstrumentModel, stars=None,
                          validity=("2014-01-01", "2099-12-31")) -> dict:
    """Write the whole kit, plus date-stamped geometry/astrometry tables and their validity table.

    Parameters
    ----------
    musecalib_dir, musecalib_time_dir : path-like
        Output folders (created if needed).
    model : InstrumentModel
        The instrument the frames are simulated with.
    stars : dict, optional
        Standard stars for STD_FLUX_TABLE (see :func:`write_std_flux_table`).
    validity : (str, str)
        First and last day (inclusive) the time-stamped geometry/astrometry are valid.

    Returns
    -------
    dict
        tag -> Path of the files in ``musecalib`` (plus ``ASTROMETRY_WCS_NFM``); the time-dependent files under
        keys ``GEOMETRY_TABLE_TIME``, ``ASTROMETRY_WCS_TIME`` (and ``..._NFM``) and ``VALIDITY_TABLE``.
    """
    calib = Path(musecalib_dir)
    timed = Path(musecalib_time_dir)
    calib.mkdir(parents=True, exist_ok=True)
    timed.mkdir(parents=True, exist_ok=True)
    stars = stars or {}
    paths = {
        "GEOMETRY_TABLE": write_geometry_table(calib / KIT_FILES["GEOMETRY_TABLE"], model),
        "ASTROMETRY_WCS": write_astrometry_wcs(calib / KIT_FILES["ASTROMETRY_WCS"], model),
        "BADPIX_TABLE": write_badpix_table(calib / KIT_FILES["BADPIX_TABLE"]),
        "VIGNETTING_MASK": write_vignetting_mask(calib / KIT_FILES["VIGNETTING_MASK"]),
        "STD_FLUX_TABLE": write_std_flux_table(calib / KIT_FILES["STD_FLUX_TABLE"], stars),
        "EXTINCT_TABLE": write_extinct_table(calib / KIT_FILES["EXTINCT_TABLE"]),
        "LINE_CATALOG": write_line_catalog(calib / KIT_FILES["LINE_CATALOG"], model),
        "SKY_LINES": write_sky_lines(calib / KIT_FILES["SKY_LINES"]),
        "FILTER_LIST": write_filter_list(calib / KIT_FILES["FILTER_LIST"]),
        "RAMAN_LINES": write_raman_lines(calib / KIT_FILES["RAMAN_LINES"]),
        "ASTROMETRY_WCS_NFM": write_astrometry_wcs(calib / NFM_ASTROMETRY_FILE, model, field="NFM"),
    }
    stamp = "sim01"
    lines = ["# start       end          field  geometry_table                 astrometry_wcs"]
    for field in ("wfm", "nfm"):
        geo_name = f"geometry_table_{field}_{stamp}.fits"
        astro_name = f"astrometry_wcs_{field}_{stamp}.fits"
        suffix = "" if field == "wfm" else "_NFM"
        paths[f"GEOMETRY_TABLE_TIME{suffix}"] = write_geometry_table(timed / geo_name, model)
        paths[f"ASTROMETRY_WCS_TIME{suffix}"] = write_astrometry_wcs(timed / astro_name, model,
                                                                     field=field.upper())
        lines.append(f"{validity[0]}    {validity[1]}   {field}    {geo_name}  {astro_name}")
    validity_path = timed / "validity_table.txt"
    validity_path.write_text("\n".join(lines) + "\n")
    paths["VALIDITY_TABLE"] = validity_path
    logger.info("calibration kit written to %s and %s", calib, timed)
    return paths
