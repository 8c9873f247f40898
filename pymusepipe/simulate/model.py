"""The one instrument model of the simulator: detector, slices on the CCD, wavelengths, LSF and the
mapping between CCD pixels and the focal plane.

Everything the simulator writes (raw frames, GEOMETRY_TABLE, truth) is derived from one
:class:`InstrumentModel`, so the calibration kit and the frames cannot disagree.

Coordinates
-----------
* CCD: 0-based ``(row, column)`` of the *trimmed* 4096 x 4112 image (pre/overscans removed). The
  pipeline's TRACE_TABLE / WAVECAL_TABLE polynomials use 1-based positions, i.e. these plus one.
* Focal plane: the GEOMETRY_TABLE frame, in spaxels (0.2" in WFM): ``xpos`` along the slices (the long
  axis of an IFU strip), ``ypos`` across them. ``muse_scibasic`` places a CCD pixel of slice ``k`` at
  ``xpos = x_geo + (fraction across the traced slice - 1/2) * width_geo`` and ``ypos = y_geo`` (angle 0).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.special import erf

from ..instrument import N_IFUS, SPAXEL_SCALE_WFM

logger = logging.getLogger(__name__)

# Detector format (ESO raw MUSE frames): 4 ports of 2048 x 2056 data pixels, 32-px pre- and overscans.
PORT_NX, PORT_NY = 2048, 2056
PRESCAN = 32
OVERSCAN = 32
TRIMMED_NX, TRIMMED_NY = 2 * PORT_NX, 2 * PORT_NY                      # 4096 x 4112
RAW_NX = 2 * (PORT_NX + PRESCAN + OVERSCAN)                             # 4224
RAW_NY = 2 * (PORT_NY + PRESCAN + OVERSCAN)                             # 4240
SLICES_PER_CCD = 48

#: Sky slice number of each CCD slice (kMuseGeoSliceSky in the pipeline's muse_instrument.h).
CCD_TO_SKY_SLICE = (9, 8, 1, 10, 7, 2, 11, 6, 3, 12, 5, 4,
                    21, 20, 13, 22, 19, 14, 23, 18, 15, 24, 17, 16,
                    33, 32, 25, 34, 31, 26, 35, 30, 27, 36, 29, 28,
                    45, 44, 37, 46, 43, 38, 47, 42, 39, 48, 41, 40)

# Wavelength solution: row = MID_ROW + offset_k + ROWS_PER_UNIT u - ROW_CURVATURE u^2 (+ tilt terms in dx),
# u = (lambda - LAMBDA_MID) / LAMBDA_HALF_RANGE; gives 1.237-1.263 A/pix, 4650 A near row 156, 9350 A
# near row 3916 (muse_wavecal accepts 1.19-1.31 A/pix and needs lambda increasing with row).
LAMBDA_MID = 7000.0
LAMBDA_HALF_RANGE = 2350.0
MID_ROW = TRIMMED_NY / 2.0
ROWS_PER_UNIT = 1880.0
ROW_CURVATURE = 20.0
ROW_TILT = 0.02
ROW_TILT2 = 4e-4
#: Wavelength range the simulator fills (the nominal WFM-N range of MUSE).
LAMBDA_MIN, LAMBDA_MAX = 4650.0, 9350.0


@dataclass(frozen=True)
class DetectorModel:
    """Read-out properties of one CCD, per port (OUT1..OUT4: bottom-left, bottom-right, top-right,
    top-left)."""

    gain: tuple = (1.10, 1.12, 1.09, 1.11)          # e-/adu
    read_noise: tuple = (2.9, 3.0, 2.8, 3.1)        # e-
    bias_level: tuple = (1000.0, 1020.0, 990.0, 1010.0)  # adu

    def __post_init__(self):
        for name in ("gain", "read_noise", "bias_level"):
            values = getattr(self, name)
            if len(values) != 4 or min(values) <= 0:
                raise ValueError(f"DetectorModel.{name} must hold 4 positive values (one per port), "
                                 f"got {values!r}")


@dataclass(frozen=True)
class SliceLayout:
    """Where the 48 slices of one IFU fall on its CCD and how wavelength runs along them.

    Attributes
    ----------
    centre : ndarray (48,)
        Slice centre (column, 0-based trimmed) at the middle row.
    width : ndarray (48,)
        Slice width between the half-maximum edges [pix].
    row_offset : ndarray (48,)
        Per-slice shift of the wavelength solution [rows].
    tilt, bend : float
        Trace drift ``tilt * t + bend * t**2`` [pix], ``t = (row - MID_ROW) / MID_ROW``.
    """

    centre: np.ndarray
    width: np.ndarray
    row_offset: np.ndarray
    tilt: float = 2.0
    bend: float = 1.5
    edge_sigma: float = 0.7

    def trace_centre(self, k, row):
        """Column of the centre of slice ``k`` at ``row`` (both 0-based)."""
        t = (np.asarray(row, dtype=float) - MID_ROW) / MID_ROW
        return self.centre[k] + self.tilt * t + self.bend * t * t

    def row_of_wavelength(self, k, wavelength, dx):
        """Row (0-based) where ``wavelength`` [A] falls in slice ``k`` at ``dx`` columns off its centre."""
        u = (np.asarray(wavelength, dtype=float) - LAMBDA_MID) / LAMBDA_HALF_RANGE
        return (MID_ROW + self.row_offset[k] + ROWS_PER_UNIT * u - ROW_CURVATURE * u * u
                + ROW_TILT * dx + ROW_TILT2 * dx * dx)

    def wavelength_of_row(self, k, row, dx):
        """Inverse of :meth:`row_of_wavelength` (Newton iterations, converged to < 1e-6 A)."""
        row = np.asarray(row, dtype=float)
        wavelength = LAMBDA_MID + (row - MID_ROW - self.row_offset[k]) * LAMBDA_HALF_RANGE / ROWS_PER_UNIT
        for _ in range(5):
            u = (wavelength - LAMBDA_MID) / LAMBDA_HALF_RANGE
            slope = (ROWS_PER_UNIT - 2 * ROW_CURVATURE * u) / LAMBDA_HALF_RANGE
            wavelength = wavelength - (self.row_of_wavelength(k, wavelength, dx) - row) / slope
        return wavelength

    def dispersion(self, k, wavelength):
        """Local dispersion dlambda/drow [A/pix] of slice ``k`` at ``wavelength``."""
        u = (np.asarray(wavelength, dtype=float) - LAMBDA_MID) / LAMBDA_HALF_RANGE
        return LAMBDA_HALF_RANGE / (ROWS_PER_UNIT - 2 * ROW_CURVATURE * u)


@dataclass
class SliceMaps:
    """Per-pixel maps of one slice on the CCD (rows x ``columns``), computed once and reused by every
    frame.

    Attributes
    ----------
    columns : ndarray of int
        CCD columns covered (slice plus a margin for the edges).
    wavelength : ndarray (NY, ncol) float32
        Wavelength of the pixel centre [A].
    dispersion : ndarray (NY, ncol) float32
        Wavelength width of the pixel [A].
    illumination : ndarray (NY, ncol) float32
        Fraction of the pixel inside the slice (smooth edges).
    xpos : ndarray (NY, ncol) float32
        Focal-plane position along the slice [spaxel].
    ypos : float
        Focal-plane position of the slice across the strip [spaxel].
    """

    columns: np.ndarray
    wavelength: np.ndarray
    dispersion: np.ndarray
    illumination: np.ndarray
    xpos: np.ndarray
    ypos: float
    slice_height: float


@dataclass
class InstrumentModel:
    """The simulated MUSE: one detector model, a slice layout per IFU, the focal-plane geometry and the
    line-spread function.

    Parameters
    ----------
    ifus : tuple of int
        IFUs that get CCD frames (1..24). The geometry table always describes all 24.
    detector : DetectorModel
        Gain, read noise and bias levels (the same for every CCD).
    lsf_sigma_pix : float
        Gaussian sigma of the line-spread function along the rows [pix].
    instrument_seed : int
        Seed of the fixed instrument imperfections (slice positions, wavelength offsets). It is a
        property of the instrument, not of an observing run, so it does not follow the run seed.
    """

    ifus: tuple = (1,)
    detector: DetectorModel = field(default_factory=DetectorModel)
    lsf_sigma_pix: float = 1.0
    instrument_seed: int = 2014
    #: Length of a slice on the sky [spaxel]; 4 stacks of 75 make the 60" width of the field.
    slice_length: float = 75.0
    #: Pitch of the slices across the strip [spaxel]; 12 per IFU x 24 IFUs span 60".
    slice_pitch: float = 1.0 + 1.0 / 24.0

    def __post_init__(self):
        ifus = tuple(int(i) for i in self.ifus)
        bad = [i for i in ifus if not 1 <= i <= N_IFUS]
        if not ifus or bad:
            raise ValueError(f"ifus={self.ifus!r}: IFU numbers must be within 1-{N_IFUS}")
        if len(set(ifus)) != len(ifus):
            raise ValueError(f"ifus={self.ifus!r}: IFU numbers must be unique")
        self.ifus = tuple(sorted(ifus))
        self._maps = {}

    # -- CCD side -----------------------------------------------------------------------------------
    def layout(self, ifu: int) -> SliceLayout:
        """Slice layout of the CCD of ``ifu`` (deterministic from ``instrument_seed`` and the IFU)."""
        return self._layouts[ifu]

    @cached_property
    def _layouts(self):
        layouts = {}
        k = np.arange(SLICES_PER_CCD)
        for ifu in range(1, N_IFUS + 1):
            rng = np.random.default_rng([self.instrument_seed, ifu])
            # First centre ~61 (1-based) and pitch 84.5 keep every +/-55 px trace window on the CCD and the
            # first slice 72-82 px wide, as muse_flat's slice finder requires (synthetic-ccd.md section 2).
            centre = 60.0 + 84.5 * k + rng.uniform(-0.5, 0.5, SLICES_PER_CCD)
            width = 78.0 + 1.0 * np.sin(k + ifu)
            row_offset = rng.uniform(-12.0, 12.0, SLICES_PER_CCD)
            layouts[ifu] = SliceLayout(centre=centre, width=width, row_offset=row_offset)
        return layouts

    def slice_maps(self, ifu: int, k: int) -> SliceMaps:
        """Pixel maps of CCD slice ``k`` (0-based) of ``ifu``, cached."""
        key = (ifu, k)
        if key not in self._maps:
            self._maps[key] = self._compute_slice_maps(ifu, k)
        return self._maps[key]

    def release(self, ifu: int | None = None) -> None:
        """Forget the cached slice maps of ``ifu`` (all IFUs when None): ~0.3 GB per IFU."""
        for key in [key for key in self._maps if ifu is None or key[0] == ifu]:
            del self._maps[key]

    def _compute_slice_maps(self, ifu, k):
        layout = self.layout(ifu)
        half = layout.width[k] / 2.0
        # the box must hold the slice at every row (the trace drifts) plus its soft edges; boxes of
        # neighbouring slices may overlap, so frames are built by adding slices, never by assignment
        drift = layout.trace_centre(k, np.array([0.0, TRIMMED_NY - 1.0, MID_ROW * (1 - layout.tilt / (2 * layout.bend))]))
        drift = drift - layout.centre[k]
        first = max(int(np.floor(layout.centre[k] + drift.min() - half - 4)), 0)
        last = min(int(np.ceil(layout.centre[k] + drift.max() + half + 4)), TRIMMED_NX - 1)
        columns = np.arange(first, last + 1)
        rows = np.arange(TRIMMED_NY, dtype=float)[:, None]
        dx = columns[None, :] - layout.trace_centre(k, rows)
        wavelength = layout.wavelength_of_row(k, rows, dx)
        dispersion = layout.dispersion(k, wavelength)
        # blurred edges at +/- width/2 (half maximum, where muse_flat puts them); integrating over the
        # 1-px pixel adds 1/12 px^2 to the edge variance
        s2 = np.sqrt(2.0 * (layout.edge_sigma ** 2 + 1.0 / 12.0))
        illumination = 0.5 * (erf((dx + half) / s2) - erf((dx - half) / s2))
        illumination = np.clip(illumination, 0.0, 1.0)
        x_geo, y_geo, width_geo = self.slice_focal_position(ifu, k)
        # muse_scibasic: xpos runs AGAINST the CCD columns inside a slice (measured on its pixel tables)
        xpos = x_geo - dx * (width_geo / layout.width[k])
        return SliceMaps(columns=columns, wavelength=wavelength.astype(np.float32),
                         dispersion=dispersion.astype(np.float32),
                         illumination=illumination.astype(np.float32),
                         xpos=xpos.astype(np.float32), ypos=y_geo, slice_height=self.slice_pitch)

    # -- focal-plane side ---------------------------------------------------------------------------
    def slice_focal_position(self, ifu: int, k: int):
        """(x, y, width) of CCD slice ``k`` (0-based) of ``ifu`` in the focal plane [spaxel].

        Sky slices 1-12 form the stack at the largest ``x``, 37-48 the one at the smallest (stack 4 is
        read first on the CCD); IFUs are stacked in ``y``, IFU 1 at the bottom.
        """
        sky = CCD_TO_SKY_SLICE[k]
        stack = (sky - 1) // 12            # 0..3
        row_in_stack = (sky - 1) % 12      # 0..11
        x = (stack - 1.5) * self.slice_length
        y = ((ifu - (N_IFUS + 1) / 2.0) * 12 + (row_in_stack - 5.5)) * self.slice_pitch
        return x, y, self.slice_length

    def geometry_columns(self):
        """The GEOMETRY_TABLE rows (all 24 IFUs x 48 slices) as a dict of numpy arrays."""
        rows = {name: [] for name in ("SubField", "SliceCCD", "SliceSky", "x", "y", "angle", "width")}
        for ifu in range(1, N_IFUS + 1):
            for k in range(SLICES_PER_CCD):
                x, y, width = self.slice_focal_position(ifu, k)
                rows["SubField"].append(ifu)
                rows["SliceCCD"].append(k + 1)
                rows["SliceSky"].append(CCD_TO_SKY_SLICE[k])
                rows["x"].append(x)
                rows["y"].append(y)
                rows["angle"].append(0.0)
                rows["width"].append(width)
        out = {name: np.asarray(values) for name, values in rows.items()}
        for name in ("SubField", "SliceCCD", "SliceSky"):
            out[name] = out[name].astype(np.int32)
        return out

    def ifu_focal_extent(self, ifu: int):
        """(xmin, xmax, ymin, ymax) of the area ``ifu`` sees in the focal plane [spaxel]."""
        ys = [self.slice_focal_position(ifu, k)[1] for k in range(SLICES_PER_CCD)]
        half = self.slice_length * 2
        return (-half, half, min(ys) - self.slice_pitch / 2, max(ys) + self.slice_pitch / 2)

    @cached_property
    def focal_centre(self):
        """Focal-plane position [spaxel] that the pipeline puts at the header RA/DEC.

        muse_scipost projects each exposure around the middle of its pixel table's x/y limits (measured:
        a one-IFU table of IFU 1 is centred on that IFU's strip, not on the centre of the 24-IFU field).
        So the pointing falls at the centre of the bounding box of the simulated IFUs' slices.
        """
        xs, ys = [], []
        for ifu in self.ifus:
            for k in range(SLICES_PER_CCD):
                x, y, width = self.slice_focal_position(ifu, k)
                xs += [x - width / 2, x + width / 2]
                ys.append(y)
        return 0.5 * (min(xs) + max(xs)), 0.5 * (min(ys) + max(ys))

    @property
    def spaxel_scale(self) -> float:
        """Spaxel size [arcsec] (WFM)."""
        return SPAXEL_SCALE_WFM

    # -- spectral side ------------------------------------------------------------------------------
    @property
    def lsf_sigma_angstrom(self) -> float:
        """LSF sigma in Angstrom at the nominal 1.25 A/pix."""
        return self.lsf_sigma_pix * LAMBDA_HALF_RANGE / ROWS_PER_UNIT

    def truth(self) -> dict:
        """Trace and wavelength model of every simulated IFU, for ``truth.json``."""
        out = {
            "coordinates": "0-based trimmed CCD (4096x4112); TRACE_TABLE/WAVECAL_TABLE are 1-based (= +1)",
            "trace_centre": "centre[k] + tilt*t + bend*t**2, t = (row - 2056) / 2056",
            "row_of_wavelength": ("2056 + row_offset[k] + 1880*u - 20*u**2 + 0.02*dx + 4e-4*dx**2, "
                                  "u = (lambda - 7000) / 2350, dx = column - trace_centre"),
            "lsf_sigma_pix": self.lsf_sigma_pix,
            "detector": {"gain": list(self.detector.gain), "read_noise_e": list(self.detector.read_noise),
                         "bias_level_adu": list(self.detector.bias_level)},
            "ifus": {},
        }
        for ifu in self.ifus:
            lay = self.layout(ifu)
            out["ifus"][str(ifu)] = {"centre": lay.centre.tolist(), "width": lay.width.tolist(),
                                     "row_offset": lay.row_offset.tolist(), "tilt": lay.tilt,
                                     "bend": lay.bend}
        return out
