"""Compare pipeline products of a simulated run with its truth (``truth.json``).

These helpers are used by the simulator's tests and by end-to-end tests of the pipeline wrapper:
trace centres (TRACE_TABLE), wavelength solution (WAVECAL_TABLE), bias levels and read noise
(MASTER_BIAS QC keywords).
"""
from __future__ import annotations

import re

import numpy as np
from astropy.io import fits

from .model import TRIMMED_NY, SliceLayout


def layout_from_truth(truth: dict, ifu: int) -> SliceLayout:
    """The :class:`SliceLayout` of ``ifu`` recorded in ``truth['instrument']``."""
    try:
        entry = truth["instrument"]["ifus"][str(ifu)]
    except KeyError:
        raise KeyError(f"truth has no slice layout for IFU {ifu} (simulated IFUs: "
                       f"{sorted(truth.get('instrument', {}).get('ifus', {}))})") from None
    return SliceLayout(centre=np.asarray(entry["centre"]), width=np.asarray(entry["width"]),
                       row_offset=np.asarray(entry["row_offset"]), tilt=entry["tilt"], bend=entry["bend"])


def _polynomial_columns(names, prefix):
    pattern = re.compile(rf"^{prefix}(\d+)$")
    found = sorted((int(m.group(1)), name) for name in names if (m := pattern.match(name)))
    return [name for _, name in found]


def trace_residuals(trace_table, truth: dict, ifu: int, step=16) -> dict:
    """Maximum |traced - true| slice centre and edges [pix] per slice, over all rows.

    Returns
    -------
    dict
        ``centre``, ``left``, ``right``: arrays (48,) of max absolute residuals; ``width``: traced minus
        true width; ``nslices``: number of slices in the table.
    """
    layout = layout_from_truth(truth, ifu)
    table = fits.getdata(trace_table, 1)
    names = table.columns.names
    rows1 = np.arange(1, TRIMMED_NY + 1, step, dtype=float)   # 1-based rows
    out = {"centre": [], "left": [], "right": [], "width": []}
    for record in table:
        k = int(record["SliceNo"]) - 1
        true_centre = layout.trace_centre(k, rows1 - 1) + 1
        for key, prefix, shift in (("centre", "tc0_", 0.0), ("left", "tc1_", -0.5), ("right", "tc2_", 0.5)):
            coeffs = [record[c] for c in _polynomial_columns(names, prefix)]
            fitted = np.polynomial.polynomial.polyval(rows1, coeffs)
            out[key].append(np.max(np.abs(fitted - (true_centre + shift * layout.width[k]))))
        out["width"].append(float(record["Width"]) - layout.width[k])
    result = {key: np.asarray(values) for key, values in out.items()}
    result["nslices"] = len(table)
    return result


def wavecal_residuals(wavecal_table, truth: dict, ifu: int, wavelengths=None, dxs=None) -> dict:
    """Fitted minus true wavelength [A] at the true positions of ``wavelengths`` across every slice.

    Returns
    -------
    dict
        ``rms`` and ``max`` over all slices, ``rms_per_slice`` (48,), ``nslices``.
    """
    layout = layout_from_truth(truth, ifu)
    wavelengths = np.arange(4750.0, 9301.0, 50.0) if wavelengths is None else np.asarray(wavelengths)
    dxs = np.linspace(-30.0, 30.0, 7) if dxs is None else np.asarray(dxs)
    table = fits.getdata(wavecal_table, 1)
    terms = []
    for name in table.columns.names:
        match = re.match(r"^wlc(\d)(\d)$", name)
        if match:
            terms.append((name, int(match.group(1)), int(match.group(2))))
    residuals, per_slice = [], []
    for record in table:
        k = int(record["SliceNo"]) - 1
        slice_res = []
        for dx in dxs:
            row = layout.row_of_wavelength(k, wavelengths, dx)
            column = layout.trace_centre(k, row) + dx
            x1, y1 = column + 1.0, row + 1.0      # the table's polynomials use 1-based pixels
            fitted = sum(record[name] * x1 ** i * y1 ** j for name, i, j in terms)
            slice_res.append(fitted - wavelengths)
        slice_res = np.concatenate(slice_res)
        per_slice.append(np.sqrt(np.mean(slice_res ** 2)))
        residuals.append(slice_res)
    residuals = np.concatenate(residuals)
    return {"rms": float(np.sqrt(np.mean(residuals ** 2))), "max": float(np.max(np.abs(residuals))),
            "rms_per_slice": np.asarray(per_slice), "nslices": len(table)}


def bias_qc(master_bias) -> dict:
    """Per-port (1..4) bias level [adu] (``ESO QC BIAS LEVELn MEAN``: the raw level) and read noise [e-]
    (``ESO QC BIAS MASTERn RON``) of a MASTER_BIAS."""
    header = fits.getheader(master_bias, 0)
    try:
        level = [float(header[f"ESO QC BIAS LEVEL{port} MEAN"]) for port in range(1, 5)]
        ron = [float(header[f"ESO QC BIAS MASTER{port} RON"]) for port in range(1, 5)]
    except KeyError as exc:
        raise KeyError(f"{master_bias}: QC keyword {exc} missing (not a MASTER_BIAS of muse_bias?)") from None
    return {"level": np.asarray(level), "ron": np.asarray(ron)}


