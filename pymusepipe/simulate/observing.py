"""Telescope, time and template bookkeeping of simulated exposures: sidereal time, airmass, altitude,
parallactic angle, and the primary header of a raw MUSE file.

The airmass, LST and position keywords are mutually consistent (the recipes recompute the airmass
from RA/DEC/LST/GEOLAT), and computed without network access (no IERS tables).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.time import Time

from ..instrument import AO_MODES, DEFAULT_MODE, field_of_mode
from .spectra import ARC_LAMP_NUMBER, FLAT_LAMP_NUMBERS

#: Paranal (VLT UT4): latitude, longitude [deg], elevation [m].
GEOLAT, GEOLON, GEOELEV = -24.6270, -70.4045, 2648.0
#: Ambient conditions written into the headers (used by the pipeline's refraction model).
AMBIENT = {"TEMP": 12.0, "RHUM": 15.0, "PRES": 744.0}
#: Calibration-unit lamps (ESO INS LAMPi); names decode to lamp names in muse_wavecal.
LAMP_NAMES = {1: "CU-LAMP1", 2: "CU-LAMP2", 3: "CU-LAMP3", 4: "CU-LAMP4", 5: "CU-LAMP5", 6: "CU-LAMP6"}


def lst_degrees(mjd) -> float:
    """Local mean sidereal time at Paranal [deg] (IAU 1982 GMST, good to ~0.1 s)."""
    days = np.asarray(mjd, dtype=float) + 2400000.5 - 2451545.0
    gmst_hours = 18.697374558 + 24.06570982441908 * days
    return np.mod(gmst_hours * 15.0 + GEOLON, 360.0)


def horizontal(ra, dec, mjd):
    """(altitude [deg], airmass, parallactic angle [deg], hour angle [deg]) of (ra, dec) at ``mjd``."""
    hour_angle = np.radians(lst_degrees(mjd) - ra)
    lat, dec_r = np.radians(GEOLAT), np.radians(dec)
    sin_alt = np.sin(lat) * np.sin(dec_r) + np.cos(lat) * np.cos(dec_r) * np.cos(hour_angle)
    altitude = np.degrees(np.arcsin(sin_alt))
    zenith = np.radians(90.0 - altitude)
    airmass = 1.0 / np.cos(zenith) - 0.0012 * (1.0 / np.cos(zenith) ** 2 - 1.0)
    parang = np.degrees(np.arctan2(np.sin(hour_angle),
                                   np.tan(lat) * np.cos(dec_r) - np.sin(dec_r) * np.cos(hour_angle)))
    return float(altitude), float(airmass), float(parang), float(np.degrees(hour_angle))


def transit_mjd(ra, near_mjd) -> float:
    """MJD of the meridian transit of right ascension ``ra`` closest to ``near_mjd``."""
    sidereal_day = 0.99726957
    delta = ((ra - lst_degrees(near_mjd) + 180.0) % 360.0 - 180.0) / 360.0
    return near_mjd + delta * sidereal_day


def isot(mjd) -> str:
    """ISO time with milliseconds, as in DATE-OBS."""
    return Time(mjd, format="mjd", scale="utc").isot[:23]


@dataclass
class Exposure:
    """One raw exposure as the observatory would record it.

    Attributes
    ----------
    kind : str
        SOF-like kind: BIAS, FLAT, ARC, SKYFLAT, ILLUM, STD, SKY, OBJECT.
    mjd : float
        Start of the exposure.
    exptime : float
        [s].
    ra, dec : float
        Header (commanded) pointing [deg], i.e. true pointing plus pointing error for on-sky frames.
    object_name : str
    tpl_start : str
        Start of the template the exposure belongs to.
    tpl_nexp, tpl_expno : int
    obs_id : int
    lamps : tuple of int
        Calibration lamps on (shutters open).
    """

    kind: str
    mjd: float
    exptime: float
    ra: float
    dec: float
    object_name: str
    tpl_start: str
    tpl_nexp: int
    tpl_expno: int
    obs_id: int
    lamps: tuple = ()
    extra: dict = field(default_factory=dict)
    mode: str = DEFAULT_MODE

    @property
    def date_obs(self) -> str:
        return isot(self.mjd)

    @property
    def file_name(self) -> str:
        """Archive-style name ``MUSE.<DATE-OBS>.fits``."""
        return f"MUSE.{self.date_obs}.fits"

    @property
    def on_sky(self) -> bool:
        """Whether the light comes from the sky (through the telescope and, in AO modes, GALACSI)."""
        return self.kind in _ON_SKY


#: DPR keywords and template id pattern of each kind (ESO conventions); ``{field}`` is wfm or nfm, ``{ao}``
#: ao or noao, ``{lgs}`` LGS for templates that use the laser guide stars.
DPR = {
    "BIAS": ("CALIB", "BIAS", "MUSE_{field}_cal_bias"),
    "FLAT": ("CALIB", "FLAT,LAMP", "MUSE_{field}_cal_specflat"),
    "ILLUM": ("CALIB", "FLAT,LAMP,ILLUM", "MUSE_{field}_cal_illum"),
    "ARC": ("CALIB", "WAVE", "MUSE_{field}_cal_wave"),
    "SKYFLAT": ("CALIB", "FLAT,SKY", "MUSE_{field}_cal_skyflat"),
    "STD": ("CALIB", "STD", "MUSE_{field}-{ao}_obs_std{lgs}"),
    "SKY": ("SCIENCE", "SKY", "MUSE_{field}-{ao}_obs_genericoffset{lgs}"),
    "OBJECT": ("SCIENCE", "OBJECT", "MUSE_{field}-{ao}_obs_genericoffset{lgs}"),
}


def template_id(kind: str, mode: str) -> str:
    """``ESO TPL ID`` of an exposure ``kind`` taken in ``mode``."""
    ao = mode in AO_MODES
    return DPR[kind][2].format(field=field_of_mode(mode).lower(), ao="ao" if ao else "noao",
                               lgs="LGS" if ao else "")


_ON_SKY = ("SKYFLAT", "STD", "SKY", "OBJECT")


def primary_header(exposure: Exposure, sequence: int) -> fits.Header:
    """The primary header of a raw MUSE file for ``exposure``.

    Parameters
    ----------
    sequence : int
        Running number of the file in the run (for ORIGFILE).
    """
    if exposure.kind not in DPR:
        raise ValueError(f"unknown exposure kind {exposure.kind!r}; expected one of {sorted(DPR)}")
    catg, dpr_type, _ = DPR[exposure.kind]
    tpl_id = template_id(exposure.kind, exposure.mode)
    field_name = field_of_mode(exposure.mode)
    end_mjd = exposure.mjd + exposure.exptime / 86400.0
    alt, airm_start, parang_start, _ = horizontal(exposure.ra, exposure.dec, exposure.mjd)
    _, airm_end, parang_end, _ = horizontal(exposure.ra, exposure.dec, end_mjd)
    h = fits.Header()
    h["SIMPLE"] = True
    h["ORIGIN"] = ("ESO-PARANAL", "European Southern Observatory")
    h["DATE"] = isot(end_mjd + 30.0 / 86400.0)[:19]
    h["TELESCOP"] = "ESO-VLT-U4"
    h["INSTRUME"] = "MUSE"
    h["OBJECT"] = exposure.object_name
    h["RA"] = (float(exposure.ra), "[deg] telescope pointing")
    h["DEC"] = (float(exposure.dec), "[deg] telescope pointing")
    h["EQUINOX"] = 2000.0
    h["RADESYS"] = "FK5"
    h["EXPTIME"] = (float(exposure.exptime), "[s] integration time")
    h["MJD-OBS"] = (float(exposure.mjd), "[d] start of observation")
    h["DATE-OBS"] = exposure.date_obs
    h["UTC"] = (round(float((exposure.mjd % 1.0) * 86400.0), 3), "[s] UTC at start")
    h["LST"] = (round(float(lst_degrees(exposure.mjd) / 15.0 * 3600.0), 3), "[s] LST at start")
    h["PI-COI"] = "SIMULATED"
    h["OBSERVER"] = "pymusepipe.simulate"
    h["ARCFILE"] = exposure.file_name
    h["ORIGFILE"] = f"MUSE_{field_name}_{exposure.kind}{sequence:03d}_{exposure.tpl_expno:04d}.fits"
    h["HIERARCH ESO DPR CATG"] = catg
    h["HIERARCH ESO DPR TYPE"] = dpr_type
    h["HIERARCH ESO DPR TECH"] = "IFU"
    h["HIERARCH ESO OBS ID"] = int(exposure.obs_id)
    h["HIERARCH ESO OBS NAME"] = f"{exposure.object_name}_{exposure.kind.lower()}"
    h["HIERARCH ESO OBS TARG NAME"] = exposure.object_name
    h["HIERARCH ESO OBS PROG ID"] = "60.A-9100(A)" if exposure.kind in _ON_SKY else "60.A-9800(A)"
    h["HIERARCH ESO TPL ID"] = tpl_id
    h["HIERARCH ESO TPL START"] = exposure.tpl_start
    h["HIERARCH ESO TPL NEXP"] = int(exposure.tpl_nexp)
    h["HIERARCH ESO TPL EXPNO"] = int(exposure.tpl_expno)
    h["HIERARCH ESO INS MODE"] = exposure.mode
    h["HIERARCH ESO INS DROT MODE"] = "SKY"
    h["HIERARCH ESO INS DROT POSANG"] = (0.0, "[deg] position angle on the sky")
    h["HIERARCH ESO INS OPTI1 NAME"] = "Extended" if exposure.mode.endswith("-E") else "Nominal"
    h["HIERARCH ESO INS OPTI2 NAME"] = field_name
    h["HIERARCH ESO INS LAMPNUM"] = len(LAMP_NAMES)
    for number, name in LAMP_NAMES.items():
        on = number in exposure.lamps
        h[f"HIERARCH ESO INS LAMP{number} NAME"] = name
        h[f"HIERARCH ESO INS LAMP{number} ST"] = bool(on)
        h[f"HIERARCH ESO INS SHUT{number} NAME"] = f"CU-SHUT{number}"
        h[f"HIERARCH ESO INS SHUT{number} ST"] = bool(on)
    h["HIERARCH ESO DET READ CURID"] = 1
    h["HIERARCH ESO DET READ CURNAME"] = "SCI1.0"
    h["HIERARCH ESO DET BINX"] = 1
    h["HIERARCH ESO DET BINY"] = 1
    h["HIERARCH ESO TEL AIRM START"] = round(airm_start, 4)
    h["HIERARCH ESO TEL AIRM END"] = round(airm_end, 4)
    h["HIERARCH ESO TEL ALT"] = (round(alt, 4), "[deg] altitude at start")
    h["HIERARCH ESO TEL PARANG START"] = (round(parang_start, 4), "[deg]")
    h["HIERARCH ESO TEL PARANG END"] = (round(parang_end, 4), "[deg]")
    h["HIERARCH ESO TEL GEOLAT"] = GEOLAT
    h["HIERARCH ESO TEL GEOLON"] = GEOLON
    h["HIERARCH ESO TEL GEOELEV"] = GEOELEV
    h["HIERARCH ESO TEL AMBI TEMP"] = AMBIENT["TEMP"]
    h["HIERARCH ESO TEL AMBI RHUM"] = AMBIENT["RHUM"]
    h["HIERARCH ESO TEL AMBI PRES START"] = AMBIENT["PRES"]
    h["HIERARCH ESO TEL AMBI PRES END"] = AMBIENT["PRES"]
    for key, value in exposure.extra.items():
        h[key] = value
    return h


def lamps_of(kind: str, lamp: str | None = None) -> tuple:
    """Lamp numbers switched on (shutter open) for an exposure kind (``lamp`` for arcs)."""
    if kind in ("FLAT", "ILLUM"):
        return FLAT_LAMP_NUMBERS
    if kind == "ARC":
        if lamp not in ARC_LAMP_NUMBER:
            raise ValueError(f"arc lamp {lamp!r} unknown; expected one of {sorted(ARC_LAMP_NUMBER)}")
        return (ARC_LAMP_NUMBER[lamp],)
    return ()
