"""Spectral ingredients of the simulation: arc-lamp lines, night-sky lines, atmospheric extinction,
filter curves, telescope throughput and stellar spectra.

Each list here is the single source for both the frames and the calibration tables written from it:
the arcs and the LINE_CATALOG, the night sky and SKY_LINES, the standard star and STD_FLUX_TABLE.
Wavelengths are in air [Angstrom]. Physical content is approximate (public-knowledge level).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..instrument import NAD_NOTCH, RAMAN_BANDS, SODIUM_LASER_WAVELENGTH

# -- arc lamps ----------------------------------------------------------------------------------------
# (air wavelength, relative strength, ion, quality); quality 5 = FWHM reference, 3 = good line.
_NE = [
    (5852.488, 0.9, 5), (5881.895, 0.5, 3), (5944.834, 0.6, 3), (5975.534, 0.25, 3),
    (6029.997, 0.3, 3), (6074.338, 0.5, 3), (6096.163, 0.6, 3), (6143.063, 0.8, 5),
    (6163.594, 0.4, 3), (6217.281, 0.4, 3), (6266.495, 0.6, 3), (6304.789, 0.3, 3),
    (6334.428, 0.7, 3), (6382.991, 0.7, 3), (6402.246, 1.0, 5), (6506.528, 0.8, 3),
    (6532.882, 0.4, 3), (6598.953, 0.4, 3), (6678.276, 0.6, 3), (6717.043, 0.4, 3),
    (6929.467, 0.7, 3), (7032.413, 0.9, 5), (7173.938, 0.3, 3), (7245.167, 0.6, 3),
    (7438.898, 0.3, 3), (7488.871, 0.4, 3), (7535.774, 0.4, 3), (8082.458, 0.3, 3),
    (8136.406, 0.4, 3), (8300.326, 0.5, 3), (8377.607, 0.8, 5), (8495.360, 0.6, 3),
    (8591.259, 0.3, 3), (8634.647, 0.4, 3), (8654.383, 0.6, 3), (8780.621, 0.5, 3),
    (8853.867, 0.4, 3), (9148.672, 0.4, 3), (9201.759, 0.3, 3),
]
_XE = [
    (4671.226, 0.8, 3), (4734.152, 0.4, 3), (4807.019, 0.4, 3), (4829.709, 0.3, 3),
    (4843.294, 0.3, 3), (4923.152, 0.4, 3), (5028.280, 0.2, 3), (7119.598, 0.4, 3),
    (7642.025, 0.7, 5), (7887.393, 0.3, 3), (7967.342, 0.4, 3), (8061.340, 0.3, 3),
    (8231.634, 0.9, 5), (8280.116, 0.6, 3), (8346.823, 0.4, 3), (8409.189, 0.4, 3),
    (8819.410, 1.0, 5), (8952.251, 0.5, 3), (9045.446, 0.3, 3), (9162.652, 0.5, 3),
]
_HGCD = [
    (4678.149, 0.5, "CdI", 3), (4799.912, 0.6, "CdI", 3), (5085.822, 0.7, "CdI", 5),
    (5460.735, 1.0, "HgI", 5), (5769.598, 0.5, "HgI", 3), (5790.663, 0.5, "HgI", 3),
    (6438.470, 0.8, "CdI", 5), (7081.880, 0.2, "HgI", 3), (7346.508, 0.2, "HgI", 3),
]

#: Calibration-unit lamp number (ESO INS LAMPi) of each arc lamp, as muse_wavecal names them.
ARC_LAMP_NUMBER = {"HgCd": 5, "Ne": 3, "Xe": 4}
#: Lamp numbers of the continuum (halogen) lamps of the flat field.
FLAT_LAMP_NUMBERS = (1, 2)
#: Line area [e- per CCD column] of a strength-1 line in one arc exposure.
ARC_LINE_AREA = {"HgCd": 40000.0, "Ne": 40000.0, "Xe": 30000.0}


def arc_lines(lamp: str):
    """Lines of one arc lamp as a list of ``(wavelength, area_e_per_column, ion, quality)``.

    The area is what muse_wavecal measures per CCD column, which is also the unit LINE_CATALOG's
    ``flux`` must have (the recipe compares them to choose the lines it identifies).
    """
    if lamp == "Ne":
        lines = [(w, s, "NeI", q) for w, s, q in _NE]
    elif lamp == "Xe":
        lines = [(w, s, "XeI", q) for w, s, q in _XE]
    elif lamp == "HgCd":
        lines = list(_HGCD)
    else:
        raise ValueError(f"unknown arc lamp {lamp!r}; expected one of {sorted(ARC_LAMP_NUMBER)}")
    return [(w, ARC_LINE_AREA[lamp] * s, ion, q) for w, s, ion, q in lines]


# -- night sky -------------------------------------------------------------------------------------
#: Night-sky emission lines: (name, group, air wavelength, flux [1e-20 erg/s/cm2/arcsec2]).
SKY_LINES = (
    ("[OI]5577", 0, 5577.339, 25000.0),
    ("NaD2", 1, 5889.950, 3000.0),
    ("NaD1", 1, 5895.924, 2500.0),
    ("[OI]6300", 2, 6300.304, 8000.0),
    ("[OI]6364", 2, 6363.776, 2700.0),
    ("OH6-1_6498", 3, 6498.729, 900.0),
    ("OH6-1_6553", 3, 6553.617, 800.0),
    ("OH6-1_6863", 3, 6863.955, 1500.0),
    ("OH7-2_6923", 3, 6923.220, 1200.0),
    ("OH8-3_7316", 4, 7316.282, 2500.0),
    ("OH8-3_7340", 4, 7340.885, 2400.0),
    ("OH8-3_7369", 4, 7369.248, 1500.0),
    ("OH8-3_7401", 4, 7401.690, 1200.0),
    ("OH4-0_7750", 5, 7750.640, 2200.0),
    ("OH4-0_7794", 5, 7794.112, 2100.0),
    ("OH5-1_7913", 5, 7913.708, 3000.0),
    ("OH5-1_7993", 5, 7993.332, 3500.0),
    ("OH6-2_8344", 6, 8344.602, 6000.0),
    ("OH6-2_8399", 6, 8399.170, 5000.0),
    ("OH6-2_8430", 6, 8430.174, 4500.0),
    ("OH6-2_8465", 6, 8465.208, 4200.0),
    ("OH7-3_8885", 7, 8885.850, 7000.0),
    ("OH7-3_8919", 7, 8919.533, 6000.0),
    ("OH7-3_8943", 7, 8943.395, 5000.0),
    ("OH7-3_8958", 7, 8958.246, 4500.0),
    ("OH7-3_9001", 7, 9001.115, 4000.0),
    ("OH7-3_9037", 7, 9037.952, 3500.0),
)


# -- adaptive optics: the NaD notch filter and laser-induced Raman lines ----------------------------------
#: Width [A] over which the notch filter's transmission rises from 0 to 1 outside the range the pipeline flags.
NOTCH_EDGE = 5.0


def notch_transmission(wavelength, mode: str):
    """Transmission (0..1) of the NaD notch filter of ``mode`` (1 everywhere for modes without one).

    Zero inside the range the pipeline flags (:data:`pymusepipe.instrument.NAD_NOTCH`), rising to 1 over
    :data:`NOTCH_EDGE` Angstrom outside it (a cosine taper): no light where muse_scibasic marks the NaD region,
    and the edges are as smooth as a real interference filter's, so the flat field corrects them.
    """
    wavelength = np.asarray(wavelength, dtype=float)
    if mode not in NAD_NOTCH:
        return np.ones_like(wavelength)
    low, high = NAD_NOTCH[mode]
    distance = np.maximum(low - wavelength, wavelength - high)       # > 0 outside the range
    ramp = np.clip(distance / NOTCH_EDGE, 0.0, 1.0)
    return np.where(distance <= 0.0, 0.0, 0.5 - 0.5 * np.cos(np.pi * ramp))


#: Rotational constants B [cm-1] of the Raman-scattering molecules, their vibrational Raman shift [cm-1], and
#: the rotational levels J that make lines (16O2 has only odd J; N2 has all, even J twice as populated).
_RAMAN_MOLECULES = {"O2": (1.4377, 1556.0, (1, 3, 5, 7)), "N2": (1.9896, 2330.7, (0, 1, 2, 3, 4, 5, 6))}
#: Total flux of each Raman band [1e-20 erg/s/cm2/arcsec2] (comparable to the OH lines next to them).
RAMAN_BAND_FLUX = {"O2": 900.0, "N2": 1500.0}
#: Half-width [A] of muse_scipost's Raman fit window (--raman_width=20): lines are kept inside it.
RAMAN_HALF_WINDOW = 9.5


@lru_cache(maxsize=1)
def raman_lines():
    """Laser-induced Raman lines of O2 and N2: ``(name, group, air wavelength [A], flux)`` per line.

    Each band is a strong Q branch at the vibrational shift of the laser line plus the O- and S-branch
    rotational lines (shifts ``-(4J-2)B`` and ``+(4J+6)B``) that fall inside muse_scipost's 20 A fit window,
    weighted by a 250 K Boltzmann population. Group 0 is O2, group 1 N2 (the order muse_scipost fits them in).
    Flux unit as SKY_LINES: 1e-20 erg/s/cm2/arcsec2. The same list is injected into the AO frames and written
    as RAMAN_LINES.
    """
    laser = 1e8 / SODIUM_LASER_WAVELENGTH                          # wavenumber [cm-1]
    lines = []
    for group, (molecule, (rot_b, shift, levels)) in enumerate(_RAMAN_MOLECULES.items()):
        centre = RAMAN_BANDS[molecule]
        # place the Q branch where the pipeline expects the band; the rotational lines relative to it
        scale = centre / (1e8 / (laser - shift))
        entries = [(f"{molecule}_Q", 1e8 / (laser - shift), 1.0)]
        for j in levels:
            weight = (2 if molecule == "N2" and j % 2 == 0 else 1) * (2 * j + 1) \
                * np.exp(-rot_b * j * (j + 1) * 1.4388 / 250.0)
            for branch, delta in (("S", (4 * j + 6) * rot_b), ("O", -(4 * j - 2) * rot_b)):
                if branch == "O" and j < 2:
                    continue
                entries.append((f"{molecule}_{branch}{j}", 1e8 / (laser - shift - delta), 0.05 * weight))
        inside = [(n, w * scale, f) for n, w, f in entries if abs(w * scale - centre) <= RAMAN_HALF_WINDOW]
        total = sum(f for _, _, f in inside)
        for name, wavelength, f in sorted(inside, key=lambda e: e[1]):
            lines.append((name, group, round(float(wavelength), 3),
                          float(RAMAN_BAND_FLUX[molecule] * f / total)))
    return tuple(lines)


def sky_continuum(wavelength):
    """Night-sky continuum [1e-20 erg/s/cm2/A/arcsec2]: a gently rising pseudo-continuum."""
    wavelength = np.asarray(wavelength, dtype=float)
    return 150.0 + 50.0 * (wavelength - 4650.0) / 4700.0


# -- atmosphere and telescope -------------------------------------------------------------------------
def extinction(wavelength):
    """Paranal-like extinction [mag/airmass]: Rayleigh (at 744 hPa) + aerosols + ozone Chappuis band."""
    microns = np.asarray(wavelength, dtype=float) / 1e4
    rayleigh = 0.0088 * microns ** -4.05 * (744.0 / 1013.25)
    aerosol = 0.013 * microns ** -1.3
    ozone = 0.030 * np.exp(-0.5 * ((np.asarray(wavelength, dtype=float) - 6000.0) / 700.0) ** 2)
    return rayleigh + aerosol + ozone


#: Collecting area of the VLT UT4 primary [cm2].
TELESCOPE_AREA_CM2 = 485_000.0
_PLANCK_C = 6.62607015e-27 * 2.99792458e18      # h c [erg A]


def throughput(wavelength):
    """End-to-end efficiency (telescope + MUSE + CCD) without the atmosphere."""
    wavelength = np.asarray(wavelength, dtype=float)
    return 0.12 + 0.23 * np.exp(-0.5 * ((wavelength - 7000.0) / 1800.0) ** 2)


def electrons_per_flux_unit(wavelength, exptime, dispersion):
    """e- collected per pixel for a flux density of 1e-20 erg/s/cm2/A above the atmosphere.

    Parameters
    ----------
    wavelength : array
        Wavelength [A].
    exptime : float
        Exposure time [s].
    dispersion : array
        Wavelength width of the pixel [A].
    """
    wavelength = np.asarray(wavelength, dtype=float)
    photon_energy = _PLANCK_C / wavelength
    return 1e-20 * TELESCOPE_AREA_CM2 * throughput(wavelength) * exptime * dispersion / photon_energy


# -- calibration-unit and twilight spectra (relative, peak ~ 1) ---------------------------------------
def _blackbody_shape(wavelength, temperature, normalise_at):
    metres = np.asarray(wavelength, dtype=float) * 1e-10
    ref = normalise_at * 1e-10
    c2 = 1.4388e-2
    return (ref / metres) ** 5 * np.expm1(c2 / (ref * temperature)) / np.expm1(c2 / (metres * temperature))


def lamp_continuum(wavelength):
    """Flat-field (halogen) lamp spectrum times the detector response, peak ~1."""
    wavelength = np.asarray(wavelength, dtype=float)
    qe = np.clip(1.0 - ((wavelength - 6500.0) / 4500.0) ** 2, 0.2, 1.0)
    return _blackbody_shape(wavelength, 3000.0, 9660.0) * qe


def twilight_spectrum(wavelength):
    """Twilight (scattered sunlight) spectrum, peak ~1, with a few solar/telluric absorption lines."""
    wavelength = np.asarray(wavelength, dtype=float)
    qe = np.clip(1.0 - ((wavelength - 6500.0) / 4500.0) ** 2, 0.2, 1.0)
    spectrum = _blackbody_shape(wavelength, 5800.0, 5000.0) * qe
    for centre, depth, sigma in ((5175.0, 0.3, 4.0), (5892.0, 0.4, 3.0), (6563.0, 0.5, 3.0),
                                 (7605.0, 0.6, 8.0), (8498.0, 0.3, 2.5), (8542.0, 0.4, 2.5),
                                 (8662.0, 0.35, 2.5)):
        spectrum = spectrum * (1.0 - depth * np.exp(-0.5 * ((wavelength - centre) / sigma) ** 2))
    return spectrum


# -- stars and filters --------------------------------------------------------------------------------
#: V-band flux density of a V=0 star [erg/s/cm2/A].
VEGA_FLUX_V = 3.63e-9


def blackbody_star(wavelength, temperature, vmag):
    """Flux density [erg/s/cm2/A] of a blackbody of ``temperature`` [K] with V magnitude ``vmag``."""
    shape = _blackbody_shape(wavelength, temperature, 5500.0)
    return shape * VEGA_FLUX_V * 10 ** (-0.4 * vmag)


#: Filters of the FILTER_LIST: name -> (centre [A], FWHM [A], super-Gaussian order).
FILTERS = {
    "Johnson_B": (4400.0, 980.0, 2),
    "Johnson_V": (5510.0, 880.0, 2),
    "Cousins_R": (6470.0, 1570.0, 3),
    "Cousins_I": (7880.0, 1540.0, 3),
    "SDSS_g": (4770.0, 1380.0, 4),
    "SDSS_r": (6231.0, 1240.0, 4),
    "SDSS_i": (7625.0, 1300.0, 4),
    "SDSS_z": (9134.0, 1500.0, 4),
}


def filter_curve(name: str, wavelength):
    """Throughput (0..1) of filter ``name`` at ``wavelength`` (values below 1e-4 set to 0)."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; expected one of {sorted(FILTERS)}")
    centre, fwhm, order = FILTERS[name]
    wavelength = np.asarray(wavelength, dtype=float)
    curve = np.exp(-np.log(2.0) * np.abs(2.0 * (wavelength - centre) / fwhm) ** (2 * order))
    curve[curve < 1e-4] = 0.0
    return curve


def filter_average(name: str, wavelength, flux):
    """Mean flux density through filter ``name``, the way muse_scipost weights a cube into an image
    (throughput-weighted mean over the MUSE range)."""
    wavelength = np.asarray(wavelength, dtype=float)
    weights = filter_curve(name, wavelength)
    inside = (wavelength >= 4750.0) & (wavelength <= 9350.0)
    weights = np.where(inside, weights, 0.0)
    return float(np.sum(weights * flux) / np.sum(weights))
