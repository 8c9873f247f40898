"""From expected electrons on the trimmed CCD to a raw MUSE file: photon noise, per-port gain, bias and
read noise, pre/overscans, uint16 storage and the detector keywords the recipes check.

Raw layout (0-based numpy ``[row, column]``, 4240 x 4224): columns ``[0:32]`` prescan, ``[32:2080]``
data of the left ports, ``[2080:2144]`` overscans, ``[2144:4192]`` data of the right ports,
``[4192:4224]`` prescan; rows likewise. Ports: OUT1 bottom-left, OUT2 bottom-right, OUT3 top-right,
OUT4 top-left (muse_quadrants.c).
"""
from __future__ import annotations

import io
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..instrument import N_IFUS
from .model import (OVERSCAN, PORT_NX, PORT_NY, PRESCAN, RAW_NX, RAW_NY, TRIMMED_NX, TRIMMED_NY,
                    DetectorModel)

logger = logging.getLogger(__name__)

#: Highest value a raw pixel can take.
ADU_MAX = 65535
#: Port corner positions in the trimmed image (ESO DET OUTn X/Y), which the recipes check exactly.
PORT_CORNERS = ((1, 1), (TRIMMED_NX, 1), (TRIMMED_NX, TRIMMED_NY), (1, TRIMMED_NY))
#: Size of the data-less primary HDU astropy writes before an extension (one 2880-byte header block).
_EMPTY_PRIMARY_BYTES = len(fits.PrimaryHDU().header.tostring())


def _port_regions():
    """Per port: (raw region incl. pre/overscans, trimmed data region, raw data region)."""
    half_x, half_y = RAW_NX // 2, RAW_NY // 2
    left = slice(PRESCAN, PRESCAN + PORT_NX)
    right = slice(RAW_NX - PRESCAN - PORT_NX, RAW_NX - PRESCAN)
    bottom = slice(PRESCAN, PRESCAN + PORT_NY)
    top = slice(RAW_NY - PRESCAN - PORT_NY, RAW_NY - PRESCAN)
    t_left, t_right = slice(0, PORT_NX), slice(PORT_NX, TRIMMED_NX)
    t_bottom, t_top = slice(0, PORT_NY), slice(PORT_NY, TRIMMED_NY)
    return (
        ((slice(0, half_y), slice(0, half_x)), (t_bottom, t_left), (bottom, left)),
        ((slice(0, half_y), slice(half_x, RAW_NX)), (t_bottom, t_right), (bottom, right)),
        ((slice(half_y, RAW_NY), slice(half_x, RAW_NX)), (t_top, t_right), (top, right)),
        ((slice(half_y, RAW_NY), slice(0, half_x)), (t_top, t_left), (top, left)),
    )


PORT_REGIONS = _port_regions()


def electrons_to_raw(electrons, detector: DetectorModel, rng: np.random.Generator) -> np.ndarray:
    """Read out a CCD: Poisson noise on ``electrons``, then per-port gain, bias and read noise.

    Parameters
    ----------
    electrons : ndarray (4112, 4096) or None
        Expected electrons per trimmed pixel (None: a bias, no light).
    detector : DetectorModel
    rng : numpy Generator

    Returns
    -------
    ndarray (4240, 4224) uint16
    """
    raw = np.empty((RAW_NY, RAW_NX), dtype=np.float32)
    for port, (region, _, _) in enumerate(PORT_REGIONS):
        shape = raw[region].shape
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise *= detector.read_noise[port] / detector.gain[port]
        noise += detector.bias_level[port]
        raw[region] = noise
    if electrons is not None:
        if electrons.shape != (TRIMMED_NY, TRIMMED_NX):
            raise ValueError(f"electrons image has shape {electrons.shape}; expected "
                             f"({TRIMMED_NY}, {TRIMMED_NX}) (trimmed CCD)")
        # photon noise as a Gaussian of variance = mean: the same first two moments as Poisson, at a
        # fraction of the cost (what the recipes use: gain check, variance propagation, RON on biases)
        detected = np.maximum(electrons, np.float32(0.0), dtype=np.float32)
        noise = rng.standard_normal(detected.shape, dtype=np.float32)
        noise *= np.sqrt(detected)
        detected += noise
        for port, (_, trimmed, data) in enumerate(PORT_REGIONS):
            raw[data] += detected[trimmed] * np.float32(1.0 / detector.gain[port])
    np.rint(raw, out=raw)
    np.clip(raw, 0, ADU_MAX, out=raw)
    return raw.astype(np.uint16)


def chip_keywords(ifu: int, detector: DetectorModel) -> fits.Header:
    """Header of the ``CHANnn`` extension: chip identity, binning and the port layout."""
    header = fits.Header()
    header["EXTNAME"] = (f"CHAN{ifu:02d}", "IFU channel")
    header["HIERARCH ESO DET CHIP NAME"] = f"SIMCCD{ifu:02d}"
    header["HIERARCH ESO DET CHIP ID"] = f"ESO-SIM-{ifu:02d}"
    header["HIERARCH ESO DET CHIP DATE"] = "2014-01-01"
    header["HIERARCH ESO DET CHIP LIVE"] = True
    header["HIERARCH ESO DET CHIP INDEX"] = ifu
    header["HIERARCH ESO DET BINX"] = 1
    header["HIERARCH ESO DET BINY"] = 1
    for port, (x, y) in enumerate(PORT_CORNERS, start=1):
        prefix = f"HIERARCH ESO DET OUT{port}"
        header[f"{prefix} X"] = x
        header[f"{prefix} Y"] = y
        header[f"{prefix} NX"] = PORT_NX
        header[f"{prefix} NY"] = PORT_NY
        header[f"{prefix} PRSCX"] = PRESCAN
        header[f"{prefix} PRSCY"] = PRESCAN
        header[f"{prefix} OVSCX"] = OVERSCAN
        header[f"{prefix} OVSCY"] = OVERSCAN
        header[f"{prefix} GAIN"] = (detector.gain[port - 1], "[e-/adu]")
        header[f"{prefix} RON"] = (detector.read_noise[port - 1], "[e-]")
    return header


@lru_cache(maxsize=N_IFUS)
def _chip_keywords_cached(ifu, detector):
    return chip_keywords(ifu, detector)


def extension_header(ifu: int, detector: DetectorModel, primary_header: fits.Header) -> fits.Header:
    """Header of the ``CHANnn`` extension of ``ifu``: chip keywords plus the read-out mode of the file."""
    header = _chip_keywords_cached(ifu, detector).copy()
    # the common DET keywords the pipeline compares across frames are also in the extension
    for key in ("HIERARCH ESO DET READ CURID", "HIERARCH ESO DET READ CURNAME"):
        short = key[len("HIERARCH "):]
        if short in primary_header:
            header[key] = primary_header[short]
    return header


def create_raw_file(path, primary_header: fits.Header) -> Path:
    """Start a raw file: the header-only primary HDU (``CHANnn`` extensions are appended one by one)."""
    path = Path(path)
    fits.PrimaryHDU(header=primary_header).writeto(path, overwrite=True)
    return path


def append_ccd(path, ifu: int, data: np.ndarray, detector: DetectorModel, primary_header: fits.Header,
               compress: bool = False) -> None:
    """Append the ``CHANnn`` extension of ``ifu`` to a raw file started by :func:`create_raw_file`.

    Parameters
    ----------
    data : ndarray
        uint16 raw CCD (4240 x 4224), or a tiny stand-in for header-only files.
    compress : bool
        Write a RICE tile-compressed HDU (rows as tiles, as fpack does), as in the archive's ``.fits.fz``.
    """
    header = extension_header(ifu, detector, primary_header)
    if compress:
        hdu = fits.CompImageHDU(data=data, header=header, compression_type="RICE_1")
    else:
        hdu = fits.ImageHDU(data=data, header=header)
    # astropy's append mode re-reads (and re-verifies) every HDU already in the file, which makes 24-IFU
    # files quadratic in time: serialise the extension on its own and add its bytes at the end instead
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    with open(path, "ab") as stream:
        stream.write(buffer.getbuffer()[_EMPTY_PRIMARY_BYTES:])


def write_raw_file(path, primary_header: fits.Header, ccds: dict, detector: DetectorModel,
                   compress: bool = False) -> Path:
    """Write a raw MUSE file: header-only primary HDU plus one uint16 ``CHANnn`` image per IFU.

    Parameters
    ----------
    ccds : dict
        IFU number -> raw uint16 image (4240 x 4224).
    """
    path = create_raw_file(path, primary_header)
    for ifu in sorted(ccds):
        append_ccd(path, ifu, ccds[ifu], detector, primary_header, compress=compress)
    return path
