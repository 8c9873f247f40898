"""Declarative description of a simulated observing programme: nights, targets, observing blocks.

A :class:`Programme` says *what* was observed (which nights, in which mode, which targets, pointings and
observing blocks); :func:`pymusepipe.simulate.simulate_programme` writes it. Nothing here draws random
numbers or writes files: a programme is plain data that can be saved as JSON (:meth:`Programme.to_dict`,
:func:`load_programme`) and checked (:meth:`Programme.check`) before anything is written.

>>> from pymusepipe.simulate import Programme, NightPlan, TargetPlan, ObservingBlock
>>> programme = Programme(
...     nights=[NightPlan("2026-03-14"), NightPlan("2026-03-15", mode="WFM-AO-N")],
...     targets=[TargetPlan("DEMO", blocks=[ObservingBlock(night=0, pointing=1, exposures=2)]),
...              TargetPlan("AO", blocks=[ObservingBlock(night=1, offset_sky=False)])])
>>> programme.check().nights[1].mode
'WFM-AO-N'
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..instrument import DEFAULT_MODE, MUSE_MODES, N_IFUS
from . import spectra
from .errors import SimulationError

#: Where calibration raw files go: with the science of each pointing observed that night (as an ESO archive
#: download holds them), or once in ``<root>/Calibrations/Raw``.
CALIBRATION_RAW_CHOICES = ("pointing", "shared")
#: Disc kinds of a target: an extended disc (scale length 6"), a compact one (2"), none, or ``auto``
#: (compact when some block has no offset sky, so that the field leaves empty sky to measure the sky on).
DISC_CHOICES = ("auto", "extended", "compact", "none")
#: Units the reference image can be written in (what :func:`pymusepipe.alignment.reference.read_reference`
#: converts by ``BUNIT``), with their AB zero point [mag] where they have one.
REFERENCE_UNITS = {"nanomaggy": 22.5, "uJy": 23.9, "10**(-20)*erg/s/cm**2/Angstrom": None}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+\-.]*$")


@dataclass(frozen=True)
class NightPlan:
    """One night of the programme.

    Parameters
    ----------
    date : str
        ``YYYY-MM-DD``: the date of the evening the night starts (UTC date of the afternoon calibrations,
        the night label of ``pymusepipe.rawdata``).
    mode : str
        ``ESO INS MODE`` of everything taken that night (one of :data:`pymusepipe.instrument.MUSE_MODES`).
    calibrations : bool
        Take the night's calibration set: BIAS x3, FLAT x3, one ARC per lamp, SKYFLAT x3 (ILLUM flats are
        attached to every observing block whatever this says).
    standard : bool
        Observe the night's own spectrophotometric standard star (STD).
    seeing : float or None
        Median seeing of the night (FWHM [arcsec]); None draws it from the programme's seed.
    transparency : float or None
        Median transparency of the night (fraction of the source light that passes the clouds, 0-1];
        None draws it from the seed.
    """

    date: str
    mode: str = DEFAULT_MODE
    calibrations: bool = True
    standard: bool = True
    seeing: float | None = None
    transparency: float | None = None


@dataclass(frozen=True)
class ObservingBlock:
    """One observing block (OB): one template of OBJECT exposures of one pointing, on one night.

    Parameters
    ----------
    night : int
        Index of the night in :attr:`Programme.nights`.
    pointing : int
        Pointing number (1 = ``P01``).
    exposures : int
        OBJECT exposures, dithered along the field's long axis.
    offset_sky : bool
        Take a SKY exposure of an empty field 6' away after the first OBJECT exposure. Without it the sky
        must be measured on the object field, which then keeps enough empty sky (see ``truth.json``,
        ``sky_fraction``).
    exptime, sky_exptime : float
        Exposure times of the OBJECT and SKY exposures [s].
    """

    night: int
    pointing: int = 1
    exposures: int = 2
    offset_sky: bool = True
    exptime: float = 600.0
    sky_exptime: float = 300.0


@dataclass(frozen=True)
class ReferenceImagePlan:
    """A broad-band image of a target's sky, as a ground-based survey or HST would provide.

    Parameters
    ----------
    filter : str
        Band: one of the simulator's filters (:data:`pymusepipe.simulate.spectra.FILTERS`) that the alignment
        module knows a pivot wavelength for.
    pixel_scale : float
        [arcsec/pixel] (not MUSE's 0.2").
    fwhm : float
        Gaussian PSF FWHM [arcsec].
    bunit : str
        Unit of the pixel values (``BUNIT``): ``nanomaggy`` (AB zero point 22.5), ``uJy`` (23.9) or MUSE's
        ``10**(-20)*erg/s/cm**2/Angstrom``.
    background : float
        Constant background left in the image [bunit per pixel].
    noise : float
        Gaussian noise rms [bunit per pixel].
    margin : float
        Sky around the union of the target's pointings [arcsec].
    """

    filter: str = "SDSS_r"
    pixel_scale: float = 0.262
    fwhm: float = 1.1
    bunit: str = "nanomaggy"
    background: float = 0.05
    noise: float = 0.01
    margin: float = 8.0


@dataclass(frozen=True)
class TargetPlan:
    """A target: its observing blocks, pointings and optional reference image.

    Parameters
    ----------
    name : str
        OBJECT name and folder name (letters, digits, ``_+-.``).
    blocks : sequence of ObservingBlock
    pointings : int or None
        Number of pointings (P01..); None = the highest pointing of its blocks. Pointings overlap: each is
        offset by ``pointing_step`` arcsec east of the previous, along the strips' long axis.
    reference_image : bool or ReferenceImagePlan
        Write a reference image of the target's sky (True: the default :class:`ReferenceImagePlan`).
    disc : str
        ``auto``, ``extended``, ``compact`` or ``none`` (see :data:`DISC_CHOICES`).
    pointing_step : float
        East offset between consecutive pointings [arcsec].
    """

    name: str
    blocks: tuple = ()
    pointings: int | None = None
    reference_image: bool | ReferenceImagePlan = False
    disc: str = "auto"
    pointing_step: float = 15.0

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(self.blocks))

    @property
    def n_pointings(self) -> int:
        """Number of pointings (``pointings`` or the highest pointing observed)."""
        highest = max((block.pointing for block in self.blocks), default=1)
        return int(self.pointings) if self.pointings else int(highest)

    @property
    def reference(self) -> ReferenceImagePlan | None:
        """The reference image to write, or None."""
        if isinstance(self.reference_image, ReferenceImagePlan):
            return self.reference_image
        return ReferenceImagePlan() if self.reference_image else None

    @property
    def disc_kind(self) -> str:
        """The disc actually simulated (``auto`` resolved)."""
        if self.disc != "auto":
            return self.disc
        return "compact" if any(not block.offset_sky for block in self.blocks) else "extended"


@dataclass(frozen=True)
class Programme:
    """An observing programme: nights, targets and how the files are written.

    Parameters
    ----------
    nights : sequence of NightPlan
    targets : sequence of TargetPlan
    ifus : sequence of int
        IFUs (1-24) written in every raw file, one ``CHANnn`` extension each.
    seed : int
        Seed of everything random (scene, conditions, pointing errors, noise): same seed, same files.
    compress : bool
        Write raw files as tile-compressed ``MUSE.<DATE-OBS>.fits.fz`` (RICE, one compressed HDU per IFU).
    calibration_raw : str
        ``pointing`` (calibrations of a night hard-linked into the ``Raw`` of every pointing observed that
        night, as an archive download) or ``shared`` (one ``<root>/Calibrations/Raw``).
    header_only : bool
        Write complete headers but 1x1-pixel ``CHANnn`` images (for fake-mode tests of 24-IFU programmes).
    psf_beta : float, optional
        Moffat index of the stars' seeing PSF (the atmosphere gives about 2.5-4: extended wings that
        muse_standard's default Moffat extraction expects); None draws Gaussian stars. The truth records it.
    """

    nights: tuple
    targets: tuple
    ifus: tuple = (1,)
    seed: int = 1
    compress: bool = False
    calibration_raw: str = "pointing"
    header_only: bool = False
    psf_beta: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "nights", tuple(self.nights))
        object.__setattr__(self, "targets", tuple(self.targets))
        try:
            object.__setattr__(self, "ifus", tuple(int(i) for i in self.ifus))
        except (TypeError, ValueError):
            raise SimulationError(f"ifus={self.ifus!r}: expected a sequence of IFU numbers within "
                                  f"1-{N_IFUS}") from None

    # -- checks -------------------------------------------------------------------------------------------
    def check(self) -> "Programme":
        """Return the programme (IFUs sorted, modes upper case) or raise :class:`SimulationError` naming
        the first bad option."""
        bad = [i for i in self.ifus if not 1 <= i <= N_IFUS]
        if not self.ifus or bad:
            raise SimulationError(f"ifus={self.ifus!r}: IFU numbers must be within 1-{N_IFUS} (bad: {bad})")
        if len(set(self.ifus)) != len(self.ifus):
            raise SimulationError(f"ifus={self.ifus!r}: IFU numbers must be unique")
        if self.calibration_raw not in CALIBRATION_RAW_CHOICES:
            raise SimulationError(f"calibration_raw={self.calibration_raw!r}: expected one of "
                                  f"{', '.join(CALIBRATION_RAW_CHOICES)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise SimulationError(f"seed={self.seed!r}: expected a non-negative integer")
        if self.psf_beta is not None and (isinstance(self.psf_beta, bool) or
                                          not isinstance(self.psf_beta, (int, float)) or not 1.5 <= self.psf_beta <= 10):
            raise SimulationError(f"psf_beta={self.psf_beta!r}: expected a Moffat index within 1.5-10, or None for "
                                  "a Gaussian PSF")
        if not self.nights:
            raise SimulationError("nights: expected at least one NightPlan")
        if not self.targets:
            raise SimulationError("targets: expected at least one TargetPlan")
        nights = tuple(self._check_night(i, night) for i, night in enumerate(self.nights))
        dates = [night.date for night in nights]
        if dates != sorted(dates) or len(set(dates)) != len(dates):
            raise SimulationError(f"nights: dates must be distinct and in order, got {dates}")
        names = [getattr(t, "name", None) for t in self.targets]
        if len(set(names)) != len(names):
            raise SimulationError(f"targets: names must be unique, got {names}")
        for target in self.targets:
            self._check_target(target, nights)
        if not self.header_only and any(n.mode.startswith("NFM") for n in nights):
            raise SimulationError("nights: mode NFM-AO-N is written with header_only=True only (the pixel model "
                                  "of the narrow field is not simulated); pass header_only=True")
        if self.calibration_raw == "pointing":
            observed = {block.night for target in self.targets for block in target.blocks}
            for index, night in enumerate(nights):
                if (night.calibrations or night.standard) and index not in observed:
                    raise SimulationError(
                        f"nights[{index}] ({night.date}): calibration_raw='pointing' puts a night's "
                        "calibrations with the pointings observed that night, and no block observes on it; "
                        "add a block, set calibrations=False and standard=False, or use "
                        "calibration_raw='shared'")
        return replace(self, nights=nights, ifus=tuple(sorted(self.ifus)))

    @staticmethod
    def _check_night(index, night):
        where = f"nights[{index}]"
        if not isinstance(night, NightPlan):
            raise SimulationError(f"{where}: expected a NightPlan, got {type(night).__name__}")
        if not isinstance(night.date, str) or not _DATE.match(night.date):
            raise SimulationError(f"{where}.date={night.date!r}: expected YYYY-MM-DD")
        mode = str(night.mode).strip().upper()
        if mode not in MUSE_MODES:
            raise SimulationError(f"{where}.mode={night.mode!r}: expected one of {', '.join(MUSE_MODES)}")
        if night.seeing is not None and not 0.3 <= float(night.seeing) <= 2.0:
            raise SimulationError(f"{where}.seeing={night.seeing!r}: expected a FWHM within 0.3-2.0 arcsec "
                                  "or None")
        if night.transparency is not None and not 0.3 <= float(night.transparency) <= 1.0:
            raise SimulationError(f"{where}.transparency={night.transparency!r}: expected 0.3-1.0 or None")
        return replace(night, mode=mode)

    @staticmethod
    def _check_target(target, nights):
        if not isinstance(target, TargetPlan):
            raise SimulationError(f"targets: expected TargetPlan entries, got {type(target).__name__}")
        where = f"target {target.name!r}"
        if not isinstance(target.name, str) or not _NAME.match(target.name):
            raise SimulationError(f"{where}: name must be letters, digits or _+-. (no spaces or slashes)")
        if not target.blocks:
            raise SimulationError(f"{where}.blocks: expected at least one ObservingBlock")
        if target.disc not in DISC_CHOICES:
            raise SimulationError(f"{where}.disc={target.disc!r}: expected one of {', '.join(DISC_CHOICES)}")
        if target.pointings is not None and not 1 <= int(target.pointings) <= 9:
            raise SimulationError(f"{where}.pointings={target.pointings!r}: expected 1 to 9")
        if not 0.0 <= float(target.pointing_step) <= 40.0:
            raise SimulationError(f"{where}.pointing_step={target.pointing_step!r}: expected 0-40 arcsec "
                                  "(pointings must overlap along the 60\" strips)")
        for number, block in enumerate(target.blocks):
            at = f"{where}.blocks[{number}]"
            if not isinstance(block, ObservingBlock):
                raise SimulationError(f"{at}: expected an ObservingBlock, got {type(block).__name__}")
            if not isinstance(block.night, int) or not 0 <= block.night < len(nights):
                raise SimulationError(f"{at}.night={block.night!r}: expected a night index 0-{len(nights) - 1}")
            if not 1 <= int(block.pointing) <= target.n_pointings:
                raise SimulationError(f"{at}.pointing={block.pointing!r}: expected 1-{target.n_pointings}")
            if int(block.exposures) < 1 or int(block.exposures) > 20:
                raise SimulationError(f"{at}.exposures={block.exposures!r}: expected 1-20")
            if not 1.0 <= float(block.exptime) <= 3600.0 or not 1.0 <= float(block.sky_exptime) <= 3600.0:
                raise SimulationError(f"{at}: exptime and sky_exptime must be within 1-3600 s")
        for pointing in range(1, target.n_pointings + 1):
            count = sum(block.exposures for block in target.blocks if block.pointing == pointing)
            if count == 0:
                raise SimulationError(f"{where}: pointing {pointing} has no observing block")
            if count < 2:
                raise SimulationError(f"{where}: pointing {pointing} has {count} OBJECT exposure; muse_exp_align "
                                      "needs at least 2 per pointing")
        reference = target.reference
        if reference is not None:
            if reference.filter not in spectra.FILTERS:
                raise SimulationError(f"{where}.reference_image.filter={reference.filter!r}: expected one of "
                                      f"{', '.join(spectra.FILTERS)}")
            if reference.bunit not in REFERENCE_UNITS:
                raise SimulationError(f"{where}.reference_image.bunit={reference.bunit!r}: expected one of "
                                      f"{', '.join(REFERENCE_UNITS)}")
            if not 0.03 <= reference.pixel_scale <= 2.0 or abs(reference.pixel_scale - 0.2) < 1e-3:
                raise SimulationError(f"{where}.reference_image.pixel_scale={reference.pixel_scale!r}: expected "
                                      "0.03-2 arcsec, not MUSE's 0.2")
            if not 0.05 <= reference.fwhm <= 5.0 or reference.noise < 0 or reference.margin < 0:
                raise SimulationError(f"{where}.reference_image: fwhm must be 0.05-5 arcsec, noise and margin "
                                      ">= 0")

    # -- JSON ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-data form (JSON-serialisable); :meth:`from_dict` reads it back."""
        out = asdict(self)
        out["ifus"] = list(self.ifus)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Programme":
        """Build a programme from :meth:`to_dict`'s form (what ``--programme FILE.json`` holds).

        Raises
        ------
        SimulationError
            Unknown or missing keys, naming them.
        """
        if not isinstance(data, dict):
            raise SimulationError("programme: expected a JSON object with 'nights' and 'targets'")
        _known_keys("programme", data, cls)
        try:
            nights = [NightPlan(**_known_keys(f"nights[{i}]", n, NightPlan)) for i, n in
                      enumerate(data["nights"])]
            targets = []
            for i, t in enumerate(data["targets"]):
                t = dict(_known_keys(f"targets[{i}]", t, TargetPlan))
                t["blocks"] = [ObservingBlock(**_known_keys(f"targets[{i}].blocks[{j}]", b, ObservingBlock))
                               for j, b in enumerate(t.get("blocks", ()))]
                if isinstance(t.get("reference_image"), dict):
                    t["reference_image"] = ReferenceImagePlan(
                        **_known_keys(f"targets[{i}].reference_image", t["reference_image"], ReferenceImagePlan))
                targets.append(TargetPlan(**t))
        except KeyError as exc:
            raise SimulationError(f"programme: missing key {exc}") from None
        except TypeError as exc:
            raise SimulationError(f"programme: {exc}") from None
        rest = {k: v for k, v in data.items() if k not in ("nights", "targets")}
        return cls(nights=nights, targets=targets, **rest)


def _known_keys(where, data, cls):
    if not isinstance(data, dict):
        raise SimulationError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SimulationError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    return data


def load_programme(path) -> Programme:
    """Read a programme from a JSON file (the form of :meth:`Programme.to_dict`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SimulationError(f"programme file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SimulationError(f"programme file {path}: not valid JSON ({exc})") from None
    return Programme.from_dict(data)


# -- ready-made shapes -------------------------------------------------------------------------------------
def demo_programme(*, target="SIMGAL", ifus=(1,), pointings=1, exposures=2, seed=1, date="2026-03-14",
                   mode=DEFAULT_MODE, compress=False, header_only=False) -> Programme:
    """The one-night demo shape of :func:`pymusepipe.simulate.simulate_run`: one night with calibrations and
    a standard star, one target, per pointing one block of ``exposures`` with an offset sky."""
    blocks = [ObservingBlock(night=0, pointing=p, exposures=exposures, offset_sky=True)
              for p in range(1, pointings + 1)]
    return Programme(nights=[NightPlan(date, mode=mode)],
                     targets=[TargetPlan(target, blocks=blocks, pointings=pointings, disc="extended",
                                         pointing_step=20.0)],
                     ifus=ifus, seed=seed, compress=compress, header_only=header_only)


def survey_programme(*, nights=1, obs_per_night=1, exposures=2, offset_sky=True, mode=DEFAULT_MODE,
                     target="SIMGAL", first_date="2026-03-14", ifus=(1,), seed=1, compress=False,
                     calibration_raw="pointing", header_only=False) -> Programme:
    """One target, one pointing, ``obs_per_night`` blocks on each of ``nights`` consecutive nights (what
    ``pymusepipe simulate --nights N --obs-per-night M`` writes)."""
    if not isinstance(nights, int) or not 1 <= nights <= 30:
        raise SimulationError(f"nights={nights!r}: expected 1-30")
    if not isinstance(obs_per_night, int) or not 1 <= obs_per_night <= 6:
        raise SimulationError(f"obs_per_night={obs_per_night!r}: expected 1-6")
    if not _DATE.match(str(first_date)):
        raise SimulationError(f"first_date={first_date!r}: expected YYYY-MM-DD")
    from astropy.time import Time, TimeDelta
    start = Time(f"{first_date}T12:00:00", scale="utc")
    dates = [(start + TimeDelta(n, format="jd")).isot[:10] for n in range(nights)]
    blocks = [ObservingBlock(night=n, pointing=1, exposures=exposures, offset_sky=offset_sky)
              for n in range(nights) for _ in range(obs_per_night)]
    return Programme(nights=[NightPlan(d, mode=mode) for d in dates], targets=[TargetPlan(target, blocks=blocks)],
                     ifus=ifus, seed=seed, compress=compress, calibration_raw=calibration_raw,
                     header_only=header_only)


def example_programme(*, ifus=(1,), seed=1, compress=False, calibration_raw="pointing",
                      header_only=False) -> Programme:
    """The four programme shapes of real MUSE data in one two-night programme:

    * ``DEMO``: one block with an offset sky;
    * ``NOSKY``: one block without an offset sky (sky measured on the field);
    * ``TWONIGHTS``: one pointing observed on both nights (second night without offset sky);
    * ``MOSAIC``: three overlapping pointings over the two nights, with a reference image.
    """
    return Programme(
        nights=[NightPlan("2026-03-14"), NightPlan("2026-03-15")],
        targets=[
            TargetPlan("DEMO", blocks=[ObservingBlock(night=0, pointing=1, exposures=2, offset_sky=True)]),
            TargetPlan("NOSKY", blocks=[ObservingBlock(night=0, pointing=1, exposures=2, offset_sky=False)]),
            TargetPlan("TWONIGHTS", blocks=[ObservingBlock(night=0, pointing=1, exposures=2),
                                            ObservingBlock(night=1, pointing=1, exposures=2, offset_sky=False)]),
            TargetPlan("MOSAIC", pointings=3, reference_image=True,
                       blocks=[ObservingBlock(night=0, pointing=1, exposures=2),
                               ObservingBlock(night=0, pointing=2, exposures=2, offset_sky=False),
                               ObservingBlock(night=1, pointing=3, exposures=2)]),
        ],
        ifus=ifus, seed=seed, compress=compress, calibration_raw=calibration_raw, header_only=header_only)


__all__ = ["Programme", "NightPlan", "TargetPlan", "ObservingBlock", "ReferenceImagePlan", "load_programme",
           "demo_programme", "survey_programme", "example_programme", "CALIBRATION_RAW_CHOICES",
           "DISC_CHOICES", "REFERENCE_UNITS"]
