"""Expected electrons on one CCD for each kind of exposure: lamp flat, arc lamp, twilight flat and
a sky scene (night sky, point sources, emission-line disc).

Every frame is built slice by slice on the cached :class:`~pymusepipe.simulate.model.SliceMaps`
(wavelength, pixel width in wavelength, focal-plane position and illumination of each pixel), so the
CCD layout, the wavelength solution and the sky mapping are the model's and nothing else.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

from ..instrument import NAD_NOTCH
from . import spectra
from .model import SLICES_PER_CCD, TRIMMED_NX, TRIMMED_NY, InstrumentModel

#: Rows either side of a line centre that receive its flux (+/- 8 sigma for the default LSF).
LINE_HALF_WINDOW = 8
_SQRT2 = np.float32(np.sqrt(2.0))


def _add_lines(box, model, ifu, k, columns, wavelengths, areas, sigmas_pix):
    """Add pixel-integrated Gaussian lines to the slice box (rows x columns).

    Parameters
    ----------
    wavelengths, areas, sigmas_pix : ndarray (nlines, ncol)
        Line centre [A], area [e-] and Gaussian sigma [rows] of every line in every column.
    """
    layout = model.layout(ifu)
    ncol = columns.size
    col_index = np.arange(ncol)
    offsets = np.arange(-LINE_HALF_WINDOW, LINE_HALF_WINDOW + 1)
    for wavelength, area, sigma in zip(wavelengths, areas, np.asarray(sigmas_pix, dtype=float)):
        # row of the line: the tilt terms depend on dx, which depends on the row through the trace
        dx = columns - layout.trace_centre(k, layout.row_of_wavelength(k, wavelength, 0.0))
        centre_row = layout.row_of_wavelength(k, wavelength, dx)
        dx = columns - layout.trace_centre(k, centre_row)
        centre_row = layout.row_of_wavelength(k, wavelength, dx)
        base = np.floor(centre_row).astype(int)
        # cumulative Gaussian at the pixel boundaries, differenced: one erf per boundary
        edges = base[None, :] + np.arange(-LINE_HALF_WINDOW, LINE_HALF_WINDOW + 2)[:, None] - 0.5
        cumulative = erf((edges - centre_row[None, :]) / (_SQRT2 * sigma))
        fractions = 0.5 * np.diff(cumulative, axis=0) * area[None, :]
        for index, offset in enumerate(offsets):
            rows = base + offset
            ok = (rows >= 0) & (rows < TRIMMED_NY)
            if ok.all():
                box[rows, col_index] += fractions[index]
            elif ok.any():
                box[rows[ok], col_index[ok]] += fractions[index][ok]


def _apply_notch(box, maps, notch):
    """Multiply the slice box by the NaD notch filter of mode ``notch`` (only the rows near the notch)."""
    low, high = NAD_NOTCH[notch]
    centre = maps.wavelength[:, maps.wavelength.shape[1] // 2]
    margin = spectra.NOTCH_EDGE + 5.0          # > the wavelength spread across a slice row
    rows = np.nonzero((centre > low - margin) & (centre < high + margin))[0]
    if rows.size:
        rows = slice(rows[0], rows[-1] + 1)
        box[rows] *= spectra.notch_transmission(maps.wavelength[rows], notch).astype(np.float32)


def _assemble(model, ifu, slice_electrons, floor=0.0, response=None, notch=None):
    """Build the full CCD image by adding each slice's box times its illumination profile.

    ``notch``: observing mode whose NaD notch filter the light passed (None: no notch filter in the beam).
    The floor (scattered light) is not filtered: it is light scattered inside the spectrograph.
    """
    image = np.full((TRIMMED_NY, TRIMMED_NX), floor, dtype=np.float32)
    for k in range(SLICES_PER_CCD):
        maps = model.slice_maps(ifu, k)
        box = slice_electrons(k, maps)
        box *= maps.illumination
        if notch in NAD_NOTCH:
            _apply_notch(box, maps, notch)
        image[:, maps.columns[0]:maps.columns[-1] + 1] += box
    if response is not None:
        image *= response
    return image


def lamp_flat(model: InstrumentModel, ifu: int, peak=30000.0, scattered=20.0, response=None, notch=None):
    """Continuum-lamp flat field (FLAT or ILLUM): halogen spectrum, ``peak`` e- at its maximum."""
    def slice_electrons(k, maps):
        # smooth spectrum: evaluate on the central column, broadcast across the slice
        centre = maps.wavelength[:, maps.wavelength.shape[1] // 2]
        column = (peak * spectra.lamp_continuum(centre)).astype(np.float32)
        return np.repeat(column[:, None], maps.wavelength.shape[1], axis=1)
    return _assemble(model, ifu, slice_electrons, floor=scattered, response=response, notch=notch)


def twilight_flat(model: InstrumentModel, ifu: int, peak=20000.0, response=None, notch=None):
    """Twilight sky flat (SKYFLAT): solar-like spectrum, uniform over the field (as the science sky)."""
    def slice_electrons(k, maps):
        # the few absorption lines move by < 2 A across a slice; irrelevant for an illumination flat
        centre = maps.wavelength[:, maps.wavelength.shape[1] // 2]
        column = (peak * spectra.twilight_spectrum(centre)).astype(np.float32)
        return np.repeat(column[:, None], maps.wavelength.shape[1], axis=1)
    return _assemble(model, ifu, slice_electrons, floor=10.0, response=response, notch=notch)


def arc(model: InstrumentModel, ifu: int, lamp: str, response=None, notch=None):
    """Arc exposure of one lamp: its lines, LSF sigma ``model.lsf_sigma_pix`` rows, on a faint floor."""
    lines = spectra.arc_lines(lamp)

    def slice_electrons(k, maps):
        box = np.zeros(maps.wavelength.shape, dtype=np.float32)
        ncol = maps.columns.size
        wavelengths = np.array([[w] * ncol for w, _, _, _ in lines])
        areas = np.array([[a] * ncol for _, a, _, _ in lines])
        sigmas = np.full(wavelengths.shape, model.lsf_sigma_pix)
        _add_lines(box, model, ifu, k, maps.columns, wavelengths, areas, sigmas)
        return box
    return _assemble(model, ifu, slice_electrons, floor=5.0, response=response, notch=notch)


def scene(model: InstrumentModel, ifu: int, sky_scene, exposure, response=None, notch=None):
    """Science-like exposure (OBJECT, SKY, STD) of ``sky_scene`` as seen in ``exposure``.

    Parameters
    ----------
    sky_scene : pymusepipe.simulate.scene.SkyScene
        What is on the sky (sources, disc, night sky).
    exposure : pymusepipe.simulate.scene.ExposureConditions
        Pointing, exposure time, airmass, seeing and transparency.
    notch : str or None
        Mode whose NaD notch filter the light passed.
    """
    def slice_electrons(k, maps):
        return sky_scene.slice_electrons(model, ifu, k, maps, exposure, _add_lines)
    return _assemble(model, ifu, slice_electrons, floor=0.0, response=response, notch=notch)
