"""A complete synthetic observing run: raw frames of one night, the calibration kit, configuration files
and the truth to check a reduction against.

Layout written under ``outdir``::

    <target>/P01/Raw/MUSE.<DATE-OBS>.fits ...   (P02... for more pointings)
    <target>/truth.json
    calib/musecalib/...        calib/musecalib_time/...
    Config/rc.dic              Config/calib_tables.dic
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time

from ..instrument import N_IFUS
from . import render, spectra
from .calibkit import CALIB_KEYS, KIT_FILES, write_calibration_kit
from .detector import electrons_to_raw, write_raw_file
from .model import RAW_NX, RAW_NY, InstrumentModel
from .observing import Exposure, GEOLAT, horizontal, lamps_of, primary_header, transit_mjd
from .scene import DISC_LINES, EmissionDisc, ExposureConditions, PointSource, SkyScene

logger = logging.getLogger(__name__)

#: Bytes of one raw CCD extension (uint16) plus headers.
BYTES_PER_CCD = RAW_NX * RAW_NY * 2 + 40_000
#: UTC evening of the simulated night.
NIGHT = "2026-03-14"
#: Dither step between exposures of a pointing and pointing-error scale, along the strip [arcsec].
DITHER_STEP = 1.6
#: Offset of pointing P(n+1) from P(n) along the strip [arcsec].
POINTING_STEP = 20.0
#: Stars per IFU strip, and their minimum separation [arcsec] (isolated: fluxes measurable one by one).
STARS_PER_IFU = 16
MIN_STAR_SEPARATION = 3.0


class SimulationError(ValueError):
    """Bad options for a simulated run; raised before anything is written."""


@dataclass
class SimulatedRun:
    """What :func:`simulate_run` wrote.

    Attributes
    ----------
    root : Path
        Data root (``outdir``); the raw files of pointing N are in ``root/target/P0N/Raw``.
    target : str
    rc_file, cal_file : Path
        Ready ``rc.dic`` and ``calib_tables.dic``.
    musecalib, musecalib_time : Path
    truth_file : Path
    truth : dict
        Content of ``truth.json``.
    raw_files : list of Path
        Every raw file written (calibrations are in P01/Raw and linked into the other pointings).
    calibration_kit : dict
        tag -> Path of the kit files.
    """

    root: Path
    target: str
    rc_file: Path
    cal_file: Path
    musecalib: Path
    musecalib_time: Path
    truth_file: Path
    truth: dict
    raw_files: list = field(default_factory=list)
    calibration_kit: dict = field(default_factory=dict)


def _check_options(outdir, target, ifus, pointings, exposures, overwrite):
    try:
        ifus = tuple(int(i) for i in ifus)
    except (TypeError, ValueError):
        raise SimulationError(f"ifus={ifus!r}: expected a sequence of IFU numbers within 1-{N_IFUS}") from None
    bad = [i for i in ifus if not 1 <= i <= N_IFUS]
    if not ifus or bad:
        raise SimulationError(f"ifus={ifus!r}: IFU numbers must be within 1-{N_IFUS} (bad: {bad})")
    if len(set(ifus)) != len(ifus):
        raise SimulationError(f"ifus={ifus!r}: IFU numbers must be unique")
    if int(pointings) < 1 or int(pointings) > 9:
        raise SimulationError(f"pointings={pointings!r}: expected 1 to 9")
    if int(exposures) < 2:
        raise SimulationError(f"exposures={exposures!r}: muse_exp_align needs at least 2 per pointing")
    if not str(target) or any(c in str(target) for c in "/\\ "):
        raise SimulationError(f"target={target!r}: expected a non-empty name without spaces or slashes")
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise SimulationError(f"outdir {outdir} exists and is not a folder")
    if outdir.is_dir() and any(outdir.iterdir()) and not overwrite:
        raise SimulationError(f"outdir {outdir} is not empty; pass overwrite=True (--overwrite) to write "
                              "into it anyway")
    n_frames = 14 + int(pointings) * int(exposures)
    needed = int(n_frames * len(ifus) * BYTES_PER_CCD * 1.05 + 20e6)
    probe = outdir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise SimulationError(f"not enough free disk space in {probe}: {n_frames} raw frames x {len(ifus)} "
                              f"IFU(s) need ~{needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free")
    return tuple(sorted(ifus)), int(pointings), int(exposures)


def _design_scene(model, rng, ifus, field_ra, field_dec, pointings):
    """Stars over the strips of ``ifus`` (covering every pointing) and a disc in the first strip."""
    cos_dec = np.cos(np.radians(field_dec))
    stars, positions = [], []
    # the strip spans +/-30" east-west around each pointing; pointings step eastwards
    half_length = model.slice_length * 2 * model.spaxel_scale
    east_min, east_max = -half_length + 1.0, half_length + POINTING_STEP * (pointings - 1) - 1.0
    # the same density (STARS_PER_IFU per 60" strip) over the longer field of several pointings
    per_ifu = int(round(STARS_PER_IFU * (east_max - east_min + 2.0) / (2 * half_length)))
    for ifu in ifus:
        _, _, ymin, ymax = model.ifu_focal_extent(ifu)
        # keep stars 0.75" inside the 2.5" strip: their PSF is recorded and fittable in the image
        north_lo = (ymin - model.focal_centre[1]) * model.spaxel_scale + 0.75
        north_hi = (ymax - model.focal_centre[1]) * model.spaxel_scale - 0.75
        placed = 0
        for _ in range(100 * per_ifu):
            if placed == per_ifu:
                break
            east, north = rng.uniform(east_min, east_max), rng.uniform(north_lo, north_hi)
            if any(np.hypot(east - e, north - n) < MIN_STAR_SEPARATION for e, n, _ in positions):
                continue
            positions.append((east, north, ifu))
            placed += 1
    for east, north, _ in positions:
        stars.append(PointSource(ra=field_ra + east / 3600.0 / cos_dec, dec=field_dec + north / 3600.0,
                                 vmag=float(rng.uniform(17.0, 20.5)),
                                 temperature=float(rng.uniform(4000.0, 9000.0))))
    _, _, ymin, ymax = model.ifu_focal_extent(ifus[0])
    disc_north = 0.5 * (ymin + ymax - 2 * model.focal_centre[1]) * model.spaxel_scale
    disc = EmissionDisc(ra=field_ra + 6.0 / 3600.0 / cos_dec, dec=field_dec + disc_north / 3600.0)
    return stars, disc


def _truth_of_stars(stars):
    wavelength = np.arange(4600.0, 9400.0, 1.0)
    out = []
    for star in stars:
        spectrum = star.spectrum(wavelength)
        fluxes = {name: spectra.filter_average(name, wavelength, spectrum) for name in spectra.FILTERS}
        white = wavelength[(wavelength >= 4750) & (wavelength <= 9350)]
        fluxes["white"] = float(np.mean(star.spectrum(white)))
        out.append({"ra": star.ra, "dec": star.dec, "vmag": star.vmag, "temperature": star.temperature,
                    "flux": fluxes})
    return out


def simulate_run(outdir, *, target="SIMGAL", ifus=(1,), pointings=1, exposures=2, seed=1,
                 overwrite=False) -> SimulatedRun:
    """Write a complete synthetic MUSE observing run, its calibration kit, configuration and truth.

    Parameters
    ----------
    outdir : path-like
        Output folder; must be empty (or absent) unless ``overwrite``.
    target : str
        Target name (OBJECT keyword and folder name).
    ifus : sequence of int
        IFUs to simulate (1-24); each adds one 36 MB extension to every raw file.
    pointings : int
        Number of pointings (P01, P02, ...), offset by 20" along the strip.
    exposures : int
        OBJECT exposures per pointing (>= 2), dithered along the strip.
    seed : int
        Seed of the scene, the observing conditions and the noise: same seed, same files.
    overwrite : bool
        Allow writing into a non-empty ``outdir``.

    Returns
    -------
    SimulatedRun

    Raises
    ------
    SimulationError
        Bad options (before anything is written).
    """
    ifus, pointings, exposures = _check_options(outdir, target, ifus, pointings, exposures, overwrite)
    root = Path(outdir).absolute()
    rng = np.random.default_rng([int(seed), 0])
    model = InstrumentModel(ifus=ifus)

    # -- the night: the target transits at ~03:00 UTC, the standard at ~01:00 UTC (both near the zenith,
    # so differential atmospheric refraction, which the simulator does not model, stays < 0.05")
    start = Time(f"{NIGHT}T00:00:00", scale="utc").mjd
    field_ra = 156.0
    field_dec = round(GEOLAT + 0.9, 4)
    object_transit = transit_mjd(field_ra, start + 1.125)
    std_ra = 126.0
    std_transit = transit_mjd(std_ra, start + 1.04)
    std_star = {"name": "SIM_WD1", "ra": std_ra, "dec": round(GEOLAT + 0.6, 4), "temperature": 40000.0,
                "vmag": 12.0}
    stars, disc = _design_scene(model, rng, ifus, field_ra, field_dec, pointings)

    # pointing of the standard: the star must fall on the first simulated strip, away from its edges
    _, _, ymin, ymax = model.ifu_focal_extent(ifus[0])
    strip_north = 0.5 * (ymin + ymax - 2 * model.focal_centre[1]) * model.spaxel_scale
    std_pointing = (std_ra + 3.0 / 3600.0 / np.cos(np.radians(std_star["dec"])),
                    std_star["dec"] - strip_north / 3600.0 - 0.1 / 3600.0)

    plan = []   # (Exposure, kind-specific dict)
    obs_id = 1_400_000 + int(seed) % 1000 * 100
    seq = [0]

    def add_template(kind, first_mjd, items, step_s, object_name, ra, dec, obs_offset):
        tpl_start = Time(first_mjd, format="mjd", scale="utc").isot[:19]
        mjd = first_mjd + 2.0 / 86400.0
        for number, item in enumerate(items, start=1):
            exposure = Exposure(kind=item.get("kind", kind), mjd=mjd, exptime=item["exptime"],
                                ra=item.get("ra", ra), dec=item.get("dec", dec), object_name=object_name,
                                tpl_start=tpl_start, tpl_nexp=len(items), tpl_expno=number,
                                obs_id=obs_id + obs_offset, lamps=item.get("lamps", ()))
            if "seeing" in item:   # DIMM seeing, as the observatory records it
                exposure.extra.update({"HIERARCH ESO TEL AMBI FWHM START": round(item["seeing"], 3),
                                       "HIERARCH ESO TEL AMBI FWHM END": round(item["seeing"], 3)})
            plan.append((exposure, item))
            seq[0] += 1
            mjd += (item["exptime"] + step_s) / 86400.0
        return mjd

    zenith_ra = 0.0   # daytime calibrations: the telescope is parked, its RA/DEC are irrelevant
    add_template("BIAS", start + 20.0 / 24, [{"exptime": 0.0}] * 3, 60.0, "BIAS", zenith_ra, GEOLAT, 1)
    add_template("FLAT", start + 20.2 / 24, [{"exptime": 8.0, "lamps": lamps_of("FLAT")}] * 3, 50.0,
                 "FLAT", zenith_ra, GEOLAT, 2)
    arcs = [{"exptime": t, "lamps": lamps_of("ARC", lamp), "lamp": lamp}
            for lamp, t in (("HgCd", 5.0), ("Ne", 10.0), ("Xe", 15.0))]
    add_template("ARC", start + 20.4 / 24, arcs, 45.0, "WAVE", zenith_ra, GEOLAT, 3)
    twilight = [{"exptime": 10.0, "level": level} for level in (1.0, 0.8, 0.65)]
    add_template("SKYFLAT", start + 23.6 / 24, twilight, 60.0, "SKYFLAT", 90.0, -30.0, 4)
    add_template("STD", std_transit - 60.0 / 86400.0, [{"exptime": 60.0, "seeing": 0.6,
                                                        "transparency": 1.0}],
                 0.0, std_star["name"], std_pointing[0], std_pointing[1], 5)

    # science: per pointing one template (OBJECT exposures, the SKY after the first OBJECT of P01)
    obj_exptime, sky_exptime = 600.0, 300.0
    n_sci = pointings * exposures + 1
    sci_start = object_transit - (n_sci * (obj_exptime + 60.0)) / 2.0 / 86400.0
    add_template("ILLUM", sci_start - 180.0 / 86400.0, [{"exptime": 5.0, "lamps": lamps_of("ILLUM")}], 0.0,
                 "ILLUM", field_ra, field_dec, 6)
    cos_dec = np.cos(np.radians(field_dec))
    mjd = sci_start
    exposure_index = 0
    for pointing in range(1, pointings + 1):
        items = []
        for number in range(exposures):
            # dithers and pointing errors lie along the strip (east-west): a one-IFU strip is 2.5" high
            dither_east = POINTING_STEP * (pointing - 1) + DITHER_STEP * number * (-1) ** number
            if exposure_index == 0:
                error_east, error_north = 0.0, 0.0      # the alignment reference: no pointing error
            else:
                error_east = float(rng.uniform(0.3, 1.2) * rng.choice([-1, 1]))
                error_north = float(rng.uniform(-0.05, 0.05))
            true_ra = field_ra + dither_east / 3600.0 / cos_dec
            true_dec = field_dec
            item = {"kind": "OBJECT", "exptime": obj_exptime, "pointing": pointing,
                    "dither_east": dither_east, "dither_north": 0.0,
                    "error_east": error_east, "error_north": error_north,
                    "true_ra": true_ra, "true_dec": true_dec,
                    "ra": true_ra + error_east / 3600.0 / cos_dec, "dec": true_dec + error_north / 3600.0,
                    "seeing": float(rng.uniform(0.7, 1.0)), "transparency": float(rng.uniform(0.90, 1.0))}
            if exposure_index == 0:
                item["transparency"] = 1.0
            items.append(item)
            exposure_index += 1
            if pointing == 1 and number == 0:
                sky_ra, sky_dec = field_ra + 0.1, field_dec - 0.05   # an empty field 6' away
                items.append({"kind": "SKY", "exptime": sky_exptime, "true_ra": sky_ra, "true_dec": sky_dec,
                              "ra": sky_ra, "dec": sky_dec, "seeing": 0.8, "transparency": 1.0})
        mjd = add_template("OBJECT", mjd, items, 60.0, target, field_ra, field_dec, 10 + pointing)

    # -- write: kit, config, frames, truth --------------------------------------------------------------
    musecalib = root / "calib" / "musecalib"
    musecalib_time = root / "calib" / "musecalib_time"
    kit = write_calibration_kit(musecalib, musecalib_time, model,
                                stars={std_star["name"]: std_star})
    config = root / "Config"
    config.mkdir(parents=True, exist_ok=True)
    rc_file = config / "rc.dic"
    rc_file.write_text("# pymusepipe rc.dic written by pymusepipe.simulate\n"
                       f"musecalib {musecalib}/\nmusecalib_time {musecalib_time}/\nroot {root}/\n")
    cal_file = config / "calib_tables.dic"
    cal_file.write_text("# pymusepipe calib_tables.dic written by pymusepipe.simulate\n"
                        + "".join(f"{CALIB_KEYS[tag]} {KIT_FILES[tag]}\n" for tag in CALIB_KEYS))
    raw_dirs = []
    for pointing in range(1, pointings + 1):
        raw_dir = root / target / f"P{pointing:02d}" / "Raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        raw_dirs.append(raw_dir)

    frames = _FrameFactory(model, SkyScene(stars=stars, disc=disc),
                           SkyScene(stars=[PointSource(std_star["ra"], std_star["dec"], std_star["vmag"],
                                                       std_star["temperature"])]),
                           SkyScene(), seed)
    raw_files, exposures_truth = [], []
    for index, (exposure, item) in enumerate(plan):
        pointing = item.get("pointing", 1)
        path = raw_dirs[pointing - 1] / exposure.file_name
        header = primary_header(exposure, index + 1)
        ccds = {ifu: frames.raw(exposure, item, ifu, index) for ifu in ifus}
        write_raw_file(path, header, ccds, model.detector)
        raw_files.append(path)
        if exposure.kind not in ("OBJECT",) and pointings > 1:
            for other in raw_dirs[1:]:
                _link_or_copy(path, other / path.name)
                raw_files.append(other / path.name)
        logger.info("wrote %s (%s)", path.name, exposure.kind)
        exposures_truth.append(_exposure_truth(exposure, item, path, root))
    frames.release()

    truth = {
        "target": target, "seed": int(seed), "ifus": list(ifus), "night": NIGHT,
        "units": {"flux": "1e-20 erg/s/cm2/A (point sources: total; disc: per spaxel)",
                  "positions": "deg (ICRS/J2000)"},
        "field_centre": {"ra": field_ra, "dec": field_dec},
        "point_sources": _truth_of_stars(stars),
        "disc": {"ra": disc.ra, "dec": disc.dec, "position_angle": disc.position_angle,
                 "inclination": disc.inclination, "scale_length_arcsec": disc.scale_length,
                 "continuum_central": disc.continuum, "velocity_kms": disc.velocity,
                 "rotation_kms": disc.rotation, "turnover_arcsec": disc.turnover,
                 "dispersion_kms": disc.dispersion,
                 "velocity_frame": "topocentric (the pipeline's barycentric correction is not applied "
                                   "to the truth)",
                 "line_central_flux": {name: disc.halpha * ratio for name, (_, ratio) in DISC_LINES.items()},
                 "line_rest_wavelength": {name: rest for name, (rest, _) in DISC_LINES.items()}},
        "standard_star": std_star,
        "sky_lines": [{"name": n, "group": g, "lambda": w, "flux": f} for n, g, w, f in spectra.SKY_LINES],
        "exposures": exposures_truth,
        "instrument": model.truth(),
    }
    truth_file = root / target / "truth.json"
    truth_file.write_text(json.dumps(truth, indent=1))
    logger.info("simulated run written to %s (%d raw files)", root, len(raw_files))
    return SimulatedRun(root=root, target=target, rc_file=rc_file, cal_file=cal_file, musecalib=musecalib,
                        musecalib_time=musecalib_time, truth_file=truth_file, truth=truth,
                        raw_files=raw_files, calibration_kit=kit)


def _link_or_copy(source, destination):
    if destination.exists():
        destination.unlink()
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _exposure_truth(exposure, item, path, root):
    entry = {"file": str(path.relative_to(root)), "kind": exposure.kind, "date_obs": exposure.date_obs,
             "mjd_obs": exposure.mjd, "exptime": exposure.exptime, "ra_header": exposure.ra,
             "dec_header": exposure.dec}
    if exposure.kind in ("OBJECT", "SKY", "STD"):
        _, airmass, _, _ = horizontal(exposure.ra, exposure.dec, exposure.mjd + exposure.exptime / 172800.0)
        entry.update({"seeing_fwhm_arcsec": item.get("seeing"), "transparency": item.get("transparency"),
                      "airmass_mid": airmass})
    if exposure.kind == "OBJECT":
        entry.update({
            "pointing": item["pointing"], "ra_true": item["true_ra"], "dec_true": item["true_dec"],
            "dither_arcsec": {"east": item["dither_east"], "north": item["dither_north"]},
            "pointing_error_arcsec": {"east": item["error_east"], "north": item["error_north"]},
            "pointing_error_deg": {"ra": exposure.ra - item["true_ra"], "dec": exposure.dec - item["true_dec"]},
            "expected_flux_scale": item["transparency"]})
    if exposure.kind == "ARC":
        entry["lamp"] = item["lamp"]
    return entry


class _FrameFactory:
    """Expected-electron images, cached per kind, turned into noisy raw CCDs with per-frame seeds."""

    def __init__(self, model, science_scene, std_scene, sky_scene, seed):
        self.model = model
        self.scenes = {"OBJECT": science_scene, "STD": std_scene, "SKY": sky_scene}
        self.seed = int(seed)
        self._cache = {}
        self._response = {}

    def response(self, ifu):
        """Fixed pixel-response pattern of the CCD of ``ifu`` (0.5% rms), an instrument property."""
        if ifu not in self._response:
            rng = np.random.default_rng([self.model.instrument_seed, ifu, 7])
            pattern = rng.standard_normal((4112, 4096), dtype=np.float32)
            pattern *= np.float32(0.005)
            pattern += np.float32(1.0)
            self._response[ifu] = pattern
        return self._response[ifu]

    def electrons(self, exposure, item, ifu):
        kind = exposure.kind
        model, response = self.model, self.response(ifu)
        if kind == "BIAS":
            return None
        if kind in ("FLAT", "ILLUM"):
            key = ("FLAT", ifu)
            if key not in self._cache:
                self._cache[key] = render.lamp_flat(model, ifu, response=response)
            scale = 1.0 if kind == "FLAT" else 0.5
            return self._cache[key] * np.float32(scale) if scale != 1.0 else self._cache[key]
        if kind == "ARC":
            return render.arc(model, ifu, item["lamp"], response=response)
        if kind == "SKYFLAT":
            key = ("SKYFLAT", ifu)
            if key not in self._cache:
                self._cache[key] = render.twilight_flat(model, ifu, response=response)
            return self._cache[key] * np.float32(item["level"])
        conditions = ExposureConditions(
            ra=item["true_ra"] if "true_ra" in item else exposure.ra,
            dec=item["true_dec"] if "true_dec" in item else exposure.dec,
            exptime=exposure.exptime,
            airmass=horizontal(exposure.ra, exposure.dec, exposure.mjd + exposure.exptime / 172800.0)[1],
            seeing=item["seeing"], transparency=item["transparency"])
        if kind == "STD":
            # the star is at its catalogue position; the header pointing is the telescope's
            conditions = ExposureConditions(ra=exposure.ra, dec=exposure.dec, exptime=exposure.exptime,
                                            airmass=conditions.airmass, seeing=conditions.seeing,
                                            transparency=conditions.transparency)
        return render.scene(model, ifu, self.scenes[kind], conditions, response=response)

    def raw(self, exposure, item, ifu, index):
        rng = np.random.default_rng([self.seed, index, ifu])
        return electrons_to_raw(self.electrons(exposure, item, ifu), self.model.detector, rng)

    def release(self):
        self._cache.clear()
        self._response.clear()


def data_checksums(raw_files) -> dict:
    """SHA-256 of the data arrays of raw files (name -> digest), to compare runs for determinism."""
    out = {}
    for path in raw_files:
        digest = hashlib.sha256()
        with fits.open(path, memmap=False, do_not_scale_image_data=True) as hdul:
            for hdu in hdul[1:]:
                digest.update(np.ascontiguousarray(hdu.data).tobytes())
        out[Path(path).name] = digest.hexdigest()
    return out
