"""MUSE facts shared by the pipeline wrapper and the simulator.

This module is the single home of what is true of the instrument and of ESO's data-classification rules,
so that the simulator (which writes frames) and the scanner (which reads them) cannot disagree. It holds
facts, not settings: nothing here is meant to be changed by a user.

Sources: ESO's MUSE pipeline 2.8.7 (Reflex/Gasgano organisation rules shipped with it) and the reference
notes of this project (``muse-pipeline.md``).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

#: Number of integral-field units (and CCDs) of MUSE.
N_IFUS = 24

#: The five observing modes of MUSE (value of ``ESO INS MODE``).
MUSE_MODES = ("WFM-AO-N", "WFM-AO-E", "WFM-NOAO-E", "WFM-NOAO-N", "NFM-AO-N")

#: Default mode: wide field, no adaptive optics, nominal wavelength range.
DEFAULT_MODE = "WFM-NOAO-N"

#: Spaxel size in arcsec in the wide-field mode.
SPAXEL_SCALE_WFM = 0.2

#: Nominal spaxel size in arcsec in the narrow-field mode (muse_scipost's default --dx/--dy for NFM).
SPAXEL_SCALE_NFM = 0.025

#: NFM spaxel size (x, y) in arcsec measured on astrometric fields (kMuseSpaxelSizeX/Y_NFM, muse_instrument.h).
SPAXEL_SCALE_NFM_MEASURED = (0.02519, 0.02542)

#: Observing modes that use the adaptive optics (and therefore the sodium laser guide stars).
AO_MODES = ("WFM-AO-N", "WFM-AO-E", "NFM-AO-N")

#: Wavelength range [Angstrom, air] in which the NaD notch filter of each AO mode absorbs significant flux, and
#: which muse_scibasic flags in the pixel tables (kMuseNa*LambdaMin/Max, muse_instrument.h).
NAD_NOTCH = MappingProxyType({
    "WFM-AO-E": (5755.0, 6008.0),
    "WFM-AO-N": (5805.0, 5966.0),
    "NFM-AO-N": (5780.0, 6050.0),   # the GALACSI notch filter
})

#: Where the notch filter sits: in the MUSE fore-optics for WFM-AO (lamp flats and arcs show the gap too), in
#: GALACSI for NFM, upstream of the calibration unit (only light from the sky shows it). The pipeline's response
#: smoothing says so: "NFM lamp flats have no NaD filter in them" (muse_utils.c, MUSE 2.8.7).
NOTCH_IN_CALIBRATION_LIGHT = MappingProxyType({"WFM-AO-E": True, "WFM-AO-N": True, "NFM-AO-N": False})

#: Useful wavelength range [Angstrom] of each mode: what ``muse_scibasic --crop`` keeps (kMuseUseful*LambdaMin,
#: kMuseUsefulLambdaMax).
USEFUL_WAVELENGTH_RANGE = MappingProxyType({
    "WFM-NOAO-N": (4750.0, 9350.0),
    "WFM-NOAO-E": (4600.0, 9350.0),
    "WFM-AO-N": (4700.0, 9350.0),
    "WFM-AO-E": (4600.0, 9350.0),
    "NFM-AO-N": (4750.0, 9350.0),
})

#: Centres [Angstrom, air] of the bands of laser light Raman-scattered by atmospheric O2 and N2 in the AO modes,
#: as muse_scipost models them (group 0 = O2, group 1 = N2 in a RAMAN_LINES table).
RAMAN_BANDS = MappingProxyType({"O2": 6484.0, "N2": 6827.0})

#: Air wavelength [Angstrom] of the light of the laser guide stars (sodium D2).
SODIUM_LASER_WAVELENGTH = 5889.95

#: Lamp names of the calibration unit as the MUSE recipes translate them (muse_utils.c).
CALIBRATION_LAMPS = MappingProxyType({
    "CU-LAMP1": "Halogen", "CU-LAMP2": "Halogen", "CU-LAMP3": "Ne", "CU-LAMP4": "Xe",
    "CU-LAMP5": "HgCd", "CU-LAMP6": "Ne",
})

#: Minimum number of raw frames per tag that the recipes enforce (muse_processing_check_input).
MINIMUM_RAW_FRAMES = MappingProxyType({"BIAS": 3, "DARK": 3, "FLAT": 3, "SKYFLAT": 3, "ARC": 1, "ARC_LSF": 1})

#: Calibration products ESO ships in archive downloads, recognised by their ``ESO PRO CATG``.
CALIBRATION_PRODUCT_TAGS = frozenset({
    "GEOMETRY_TABLE", "ASTROMETRY_WCS", "MASTER_BIAS", "MASTER_DARK", "MASTER_FLAT", "TRACE_TABLE",
    "WAVECAL_TABLE", "LSF_PROFILE", "TWILIGHT_CUBE", "STD_RESPONSE", "STD_TELLURIC", "BADPIX_TABLE",
    "LINE_CATALOG", "EXTINCT_TABLE", "STD_FLUX_TABLE", "FILTER_LIST", "SKY_LINES", "VIGNETTING_MASK",
    "ASTROMETRY_REFERENCE", "NONLINEARITY_GAIN",
})

# How much of the observing mode a frame must share with the requested ``musemode``.
MODE_MATCH_FULL = "full"     # the whole INS.MODE string (e.g. WFM-NOAO-N)
MODE_MATCH_FIELD = "field"   # only the field (WFM or NFM)
MODE_MATCH_NONE = "none"     # mode-independent (detector-only calibrations)


@dataclass(frozen=True)
class FrameRule:
    """How raw frames of one kind are recognised from their ``ESO DPR`` keywords.

    Attributes
    ----------
    tag : str
        The SOF tag the frame plays in the recipes.
    catg : tuple of str
        Accepted values of ``ESO DPR CATG``.
    dpr_type : str
        Exact value of ``ESO DPR TYPE``; a trailing ``*`` matches any type that contains the text before it.
    mode_match : str
        How the frame's ``ESO INS MODE`` must match the requested mode (``full``, ``field`` or ``none``).
    """

    tag: str
    catg: tuple
    dpr_type: str
    mode_match: str = MODE_MATCH_FULL

    def matches(self, catg: str, dpr_type: str) -> bool:
        if catg not in self.catg:
            return False
        if self.dpr_type.endswith("*"):
            return self.dpr_type[:-1] in dpr_type
        return dpr_type == self.dpr_type


#: ESO's classification of MUSE raw frames (Reflex ``muse_wkf.oca``), evaluated in order; all require
#: ``ESO DPR TECH`` to contain ``IFU``.
FRAME_RULES = (
    FrameRule("BIAS", ("CALIB",), "BIAS", MODE_MATCH_NONE),
    FrameRule("DARK", ("CALIB",), "DARK", MODE_MATCH_NONE),
    FrameRule("FLAT", ("CALIB",), "FLAT,LAMP"),
    FrameRule("ILLUM", ("CALIB",), "FLAT,LAMP,ILLUM", MODE_MATCH_FIELD),
    FrameRule("SKYFLAT", ("CALIB",), "FLAT,SKY"),
    FrameRule("ARC", ("CALIB",), "WAVE"),
    FrameRule("ARC_LSF", ("CALIB",), "WAVE,LSF"),
    FrameRule("MASK", ("CALIB",), "WAVE,MASK", MODE_MATCH_NONE),
    FrameRule("SKY", ("CALIB", "SCIENCE"), "SKY"),
    FrameRule("STD", ("CALIB",), "STD"),
    FrameRule("ASTROMETRY", ("CALIB",), "ASTROMETRY", MODE_MATCH_FIELD),
    FrameRule("OBJECT", ("SCIENCE",), "OBJECT"),
    # Telluric standards observed as CALIB are reduced as science (Reflex).
    FrameRule("OBJECT", ("CALIB",), "TELLU*"),
    FrameRule("AMPL", ("TECHNICAL",), "FLAT,LAMP,THRUPUT", MODE_MATCH_NONE),
)

#: ``ESO DPR CATG`` values of frames that are never reduced, with the reason given to the user.
IGNORED_CATEGORIES = MappingProxyType({
    "ACQUISITION": "acquisition frame (not reduced by the MUSE pipeline)",
    "TEST": "test frame (not reduced by the MUSE pipeline)",
})


@dataclass(frozen=True)
class Classification:
    """Outcome of classifying one frame: a tag, or the reason it is left out."""

    tag: str | None
    mode_match: str = MODE_MATCH_NONE
    reason: str = ""


def classify_frame(catg: str, dpr_type: str, tech: str, pro_catg: str = "") -> Classification:
    """Return the SOF tag of a frame from its DPR (or PRO) keywords, or why it has none.

    Parameters
    ----------
    catg, dpr_type, tech : str
        Values of ``ESO DPR CATG``, ``ESO DPR TYPE`` and ``ESO DPR TECH`` ('' when absent).
    pro_catg : str
        Value of ``ESO PRO CATG`` ('' when absent): set in calibration products delivered by the archive.
    """
    if pro_catg:
        if pro_catg in CALIBRATION_PRODUCT_TAGS:
            return Classification(pro_catg, MODE_MATCH_NONE)
        return Classification(None, reason=f"pipeline product ESO PRO CATG='{pro_catg}' is not a calibration "
                                           "this pipeline uses")
    if not (catg or dpr_type or tech):
        return Classification(None, reason="no ESO DPR CATG/TYPE/TECH keywords: not a raw ESO frame")
    if catg in IGNORED_CATEGORIES:
        return Classification(None, reason=IGNORED_CATEGORIES[catg])
    if "IFU" not in tech:
        return Classification(None, reason=f"ESO DPR TECH='{tech}' is not an IFU exposure "
                                           "(only IFU frames are reduced)")
    for rule in FRAME_RULES:
        if rule.matches(catg, dpr_type):
            return Classification(rule.tag, rule.mode_match)
    return Classification(None, reason=f"unknown combination ESO DPR CATG='{catg}', TYPE='{dpr_type}'")


def check_mode(musemode: str) -> str:
    """Return ``musemode`` normalised to upper case, or raise if it is not one of :data:`MUSE_MODES`."""
    mode = str(musemode).strip().upper().replace("_", "-")
    if mode not in MUSE_MODES:
        raise ValueError(f"musemode={musemode!r} is not a MUSE mode; expected one of {', '.join(MUSE_MODES)}")
    return mode


def spaxel_scale(mode: str) -> float:
    """Nominal spaxel size [arcsec] of an observing mode (``ESO INS MODE``)."""
    return SPAXEL_SCALE_NFM if field_of_mode(mode) == "NFM" else SPAXEL_SCALE_WFM


def is_ao_mode(mode: str) -> bool:
    """Whether an observing mode uses the laser-assisted adaptive optics (:data:`AO_MODES`): the sodium notch
    and the laser's Raman lines are then in the data."""
    return str(mode).upper() in AO_MODES


def field_of_mode(mode: str) -> str:
    """'WFM' or 'NFM' for an ``ESO INS MODE`` value ('' when unknown)."""
    head = str(mode).split("-")[0].upper()
    return head if head in ("WFM", "NFM") else ""


def mode_compatible(frame_mode: str, musemode: str, mode_match: str) -> bool:
    """Whether a frame taken in ``frame_mode`` may be used for a reduction in ``musemode``."""
    if mode_match == MODE_MATCH_NONE:
        return True
    if mode_match == MODE_MATCH_FIELD:
        return field_of_mode(frame_mode) == field_of_mode(musemode)
    return str(frame_mode).upper() == musemode
