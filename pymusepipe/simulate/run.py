"""Writing a simulated programme: raw frames of every night, the calibration kit, configuration files, the
reference images and the truth of every target.

Layout written under ``outdir``::

    <target>/P0N/Raw/MUSE.<DATE-OBS>.fits[.fz] ...  science (and, calibration_raw="pointing", the calibrations
                                                    of the nights the pointing was observed, hard-linked)
    Calibrations/Raw/...                            calibrations (calibration_raw="shared")
    <target>/truth.json                             the truth of each target
    <target>/reference_<filter>.fits                reference image (targets that ask for one)
    calib/musecalib/...   calib/musecalib_time/...  the calibration kit
    Config/rc.dic         Config/calib_tables.dic
    programme.json                                  the programme, as :meth:`Programme.to_dict`

Raw files are written one IFU at a time: every file is started with its primary header, then for each IFU
the ``CHANnn`` extension of every file is rendered and appended, and the IFU's caches (slice maps, flat
fields, pixel response) are released. Peak memory is therefore that of one IFU whatever the number of IFUs
(times the number of worker processes: the frames of one IFU are drawn side by side, each into its own file,
every frame from its own random stream, so the bytes do not depend on the number of workers).
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..instrument import AO_MODES, DEFAULT_MODE, NAD_NOTCH, field_of_mode
from . import render, spectra
from .calibkit import CALIB_KEYS, KIT_FILES, NFM_ASTROMETRY_FILE, write_calibration_kit
from .detector import append_ccd, create_raw_file, electrons_to_raw
from .errors import SimulationError
from .model import RAW_NX, RAW_NY, InstrumentModel
from .observing import horizontal, primary_header
from .programme import Programme, demo_programme
from .scene import DISC_LINES, ExposureConditions, PointSource, SkyScene, source_to_sky_ratio
from .schedule import schedule_programme

logger = logging.getLogger(__name__)

#: Bytes of one raw CCD extension (uint16) plus headers.
BYTES_PER_CCD = RAW_NX * RAW_NY * 2 + 40_000
#: Compression ratio assumed for the free-space check of ``.fits.fz`` files (measured ~3.5 on biases).
COMPRESSION_RATIO = 2.0
#: Area of one spaxel of the final WFM cube [arcsec2]: sky-line fluxes per spaxel = per arcsec2 x this.
CUBE_SPAXEL_AREA = 0.2 * 0.2
#: Thresholds of the source-to-sky ratio that define "sky-dominated" and "clean sky" spaxels.
SKY_DOMINATED, CLEAN_SKY = 1.0, 0.1


@dataclass
class SimulatedProgramme:
    """What :func:`simulate_programme` wrote.

    Attributes
    ----------
    root : Path
        Data root; raw files of target T, pointing N are in ``root/T/P0N/Raw``.
    programme : Programme
        The (checked) programme.
    rc_file, cal_file : Path
        Ready ``rc.dic`` and ``calib_tables.dic``.
    musecalib, musecalib_time : Path
    targets : dict
        Target name -> its truth (the content of ``<root>/<target>/truth.json``).
    truth_files : dict
        Target name -> Path of its ``truth.json``.
    reference_images : dict
        Target name -> Path of its reference image (targets that have one).
    raw_files : list of Path
        Every raw file, hard links included.
    calibration_kit : dict
        Tag -> Path of the kit files.
    programme_file : Path
        ``programme.json``.
    """

    root: Path
    programme: Programme
    rc_file: Path
    cal_file: Path
    musecalib: Path
    musecalib_time: Path
    targets: dict
    truth_files: dict
    reference_images: dict = field(default_factory=dict)
    raw_files: list = field(default_factory=list)
    calibration_kit: dict = field(default_factory=dict)
    programme_file: Path | None = None


@dataclass
class SimulatedRun:
    """What :func:`simulate_run` wrote (one target of a one-night programme).

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
    programme : SimulatedProgramme or None
        The full result of :func:`simulate_programme`.
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
    programme: SimulatedProgramme | None = None


# -- options -----------------------------------------------------------------------------------------------
def _check_outdir(outdir, overwrite, needed_bytes):
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise SimulationError(f"outdir {outdir} exists and is not a folder")
    if outdir.is_dir() and any(outdir.iterdir()) and not overwrite:
        raise SimulationError(f"outdir {outdir} is not empty; pass overwrite=True (--overwrite) to write "
                              "into it anyway")
    probe = outdir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise SimulationError(f"not enough free disk space in {probe}: the raw frames need "
                              f"~{needed_bytes / 1e9:.2f} GB, {free / 1e9:.2f} GB free")


def _needed_bytes(programme, n_frames):
    if programme.header_only:
        per_ccd = 30_000
    else:
        per_ccd = BYTES_PER_CCD / (COMPRESSION_RATIO if programme.compress else 1.0)
    return int(n_frames * len(programme.ifus) * per_ccd * 1.05 + 30e6)


# -- the programme ---------------------------------------------------------------------------------------------
def simulate_programme(outdir, programme: Programme, *, overwrite: bool = False, only=None,
                       workers=None) -> SimulatedProgramme:
    """Write a simulated MUSE observing programme: raw frames, calibration kit, configuration, reference
    images and the truth of every target.

    Parameters
    ----------
    outdir : path-like
        Output folder (the data root); must be empty (or absent) unless ``overwrite``.
    programme : Programme
        What was observed (nights, targets, blocks) and how files are written (IFUs, compression, where the
        calibrations go, header-only).
    overwrite : bool
        Allow writing into a non-empty ``outdir``.
    only : sequence of str, optional
        Write only the raw frames of these kinds (e.g. ``("FLAT", "OBJECT")``, for quick tests); the others
        are planned, drawn and listed in the truth (``"written": false``) exactly as in a full run, so the
        frames written are the same bytes.
    workers : int, optional
        Processes drawing the frames of an IFU side by side (each holds one IFU's images, about 1 GB); default:
        the CPUs this process may use, at most 4. The files are the same bytes whatever the number.

    Returns
    -------
    SimulatedProgramme

    Raises
    ------
    SimulationError
        Bad options (before anything is written).
    """
    if not isinstance(programme, Programme):
        raise SimulationError(f"programme: expected a Programme, got {type(programme).__name__}")
    programme = programme.check()
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SimulationError(f"workers={workers!r}: expected a positive number of processes")
    kinds = ("BIAS", "FLAT", "ARC", "SKYFLAT", "ILLUM", "STD", "SKY", "OBJECT")
    if only is not None:
        only = tuple(str(kind).upper() for kind in only)
        if not only or set(only) - set(kinds):
            raise SimulationError(f"only={only!r}: expected kinds among {', '.join(kinds)}")
    model = InstrumentModel(ifus=programme.ifus)
    schedule = schedule_programme(programme, model)
    written = [only is None or frame.exposure.kind in only for frame in schedule.frames]
    _check_outdir(outdir, overwrite, _needed_bytes(programme, sum(written)))
    root = Path(outdir).absolute()
    root.mkdir(parents=True, exist_ok=True)

    # -- kit and configuration -----------------------------------------------------------------------------
    musecalib, musecalib_time = root / "calib" / "musecalib", root / "calib" / "musecalib_time"
    kit = write_calibration_kit(musecalib, musecalib_time, model,
                                stars={star["name"]: star for star in schedule.standards})
    config = root / "Config"
    config.mkdir(parents=True, exist_ok=True)
    rc_file = config / "rc.dic"
    rc_file.write_text("# pymusepipe rc.dic written by pymusepipe.simulate\n"
                       f"musecalib {musecalib}/\nmusecalib_time {musecalib_time}/\nroot {root}/\n")
    files = dict(KIT_FILES)
    if all(field_of_mode(n.mode) == "NFM" for n in programme.nights):
        files["ASTROMETRY_WCS"] = NFM_ASTROMETRY_FILE
    cal_file = config / "calib_tables.dic"
    cal_file.write_text("# pymusepipe calib_tables.dic written by pymusepipe.simulate\n"
                        + "".join(f"{CALIB_KEYS[tag]} {files[tag]}\n" for tag in CALIB_KEYS))
    programme_file = root / "programme.json"
    programme_file.write_text(json.dumps(programme.to_dict(), indent=1))

    # -- raw frames, one IFU at a time ---------------------------------------------------------------------
    suffix = ".fits.fz" if programme.compress else ".fits"
    headers, paths = [], []
    for frame, write in zip(schedule.frames, written):
        raw = root / frame.raw_dirs[0]
        path = raw / (frame.exposure.file_name[:-len(".fits")] + suffix)
        header = primary_header(frame.exposure, frame.key + 1)
        header["ARCFILE"] = path.name
        if write:
            raw.mkdir(parents=True, exist_ok=True)
            create_raw_file(path, header)
        headers.append(header)
        paths.append(path)
    scenes = _scenes(schedule)
    jobs = [(frame, header, path) for frame, header, path, write in zip(schedule.frames, headers, paths, written)
            if write]
    draw = _FrameDrawer(programme, scenes, model)
    processes = 1 if programme.header_only else _worker_count(workers, len(jobs))
    pool = (ProcessPoolExecutor(processes, mp_context=_process_context(), initializer=_start_worker,
                                initargs=(programme, scenes)) if processes > 1 else None)
    try:
        for ifu in programme.ifus:
            if pool is None:
                for job in jobs:
                    draw(ifu, *job)
                draw.release(ifu)
            else:
                # every job of this IFU finishes before the next IFU's extensions are appended after them
                for future in [pool.submit(_draw_in_worker, ifu, *job) for job in jobs]:
                    future.result()
            logger.info("IFU %d written into %d raw files", ifu, len(paths))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    raw_files = []
    for frame, path, write in zip(schedule.frames, paths, written):
        if not write:
            continue
        raw_files.append(path)
        for other in frame.raw_dirs[1:]:
            target = root / other / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, target)
            raw_files.append(target)

    # -- reference images and truths -------------------------------------------------------------------------
    from .reference import write_reference_image
    references, truths, truth_files = {}, {}, {}
    for target in programme.targets:
        design = schedule.targets[target.name]
        reference = None
        if target.reference is not None:
            path = root / target.name / f"reference_{target.reference.filter}.fits"
            reference = write_reference_image(path, design, target.reference, seed=programme.seed,
                                              model=model)
            reference["file"] = str(path.relative_to(root))
            references[target.name] = path
        truth = _target_truth(root, programme, schedule, model, target, design, paths, written, reference)
        truth_file = root / target.name / "truth.json"
        truth_file.parent.mkdir(parents=True, exist_ok=True)
        truth_file.write_text(json.dumps(truth, indent=1))
        truths[target.name], truth_files[target.name] = truth, truth_file
    logger.info("simulated programme written to %s (%d raw files)", root, len(raw_files))
    return SimulatedProgramme(root=root, programme=programme, rc_file=rc_file, cal_file=cal_file,
                              musecalib=musecalib, musecalib_time=musecalib_time, targets=truths,
                              truth_files=truth_files, reference_images=references, raw_files=raw_files,
                              calibration_kit=kit, programme_file=programme_file)


def simulate_run(outdir, *, target="SIMGAL", ifus=(1,), pointings=1, exposures=2, seed=1, overwrite=False,
                 compress=False, header_only=False, mode=DEFAULT_MODE) -> SimulatedRun:
    """Write the one-night demo run: calibrations, a standard star, and per pointing one block of dithered
    OBJECT exposures with an offset sky; plus the calibration kit, configuration and truth.

    A thin wrapper of :func:`simulate_programme` with :func:`~pymusepipe.simulate.programme.demo_programme`.

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
    compress, header_only : bool
        See :class:`~pymusepipe.simulate.programme.Programme`.
    mode : str
        ``ESO INS MODE`` of the night.

    Returns
    -------
    SimulatedRun

    Raises
    ------
    SimulationError
        Bad options (before anything is written).
    """
    try:
        pointings, exposures = int(pointings), int(exposures)
    except (TypeError, ValueError):
        raise SimulationError(f"pointings={pointings!r}, exposures={exposures!r}: expected integers") from None
    if not 1 <= pointings <= 9:
        raise SimulationError(f"pointings={pointings!r}: expected 1 to 9")
    if exposures < 2:
        raise SimulationError(f"exposures={exposures!r}: muse_exp_align needs at least 2 per pointing")
    programme = demo_programme(target=target, ifus=ifus, pointings=pointings, exposures=exposures, seed=seed,
                               mode=mode, compress=compress, header_only=header_only)
    result = simulate_programme(outdir, programme, overwrite=overwrite)
    name = programme.targets[0].name
    return SimulatedRun(root=result.root, target=name, rc_file=result.rc_file, cal_file=result.cal_file,
                        musecalib=result.musecalib, musecalib_time=result.musecalib_time,
                        truth_file=result.truth_files[name], truth=result.targets[name],
                        raw_files=result.raw_files, calibration_kit=result.calibration_kit, programme=result)


def _link_or_copy(source, destination):
    if destination.exists():
        destination.unlink()
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


# -- rendering -----------------------------------------------------------------------------------------------
def _scenes(schedule):
    """SkyScene of every target, of every night's standard star, and the empty field of the offset skies."""
    scenes = {("OBJECT", name): SkyScene(stars=design.stars, disc=design.disc)
              for name, design in schedule.targets.items()}
    for star in schedule.standards:
        scenes[("STD", star["name"])] = SkyScene(stars=[PointSource(star["ra"], star["dec"], star["vmag"],
                                                                    star["temperature"])])
    scenes[("SKY", None)] = SkyScene()
    return scenes


def _conditions(frame, psf_beta=None) -> ExposureConditions:
    exposure, item = frame.exposure, frame.item
    return ExposureConditions(ra=item.get("true_ra", exposure.ra), dec=item.get("true_dec", exposure.dec),
                              exptime=exposure.exptime,
                              airmass=horizontal(exposure.ra, exposure.dec,
                                                 exposure.mjd + exposure.exptime / 172800.0)[1],
                              seeing=item.get("psf_fwhm", item.get("seeing", 0.8)),
                              transparency=item.get("transparency", 1.0), raman=bool(item.get("raman")),
                              psf_beta=psf_beta)


class _FrameDrawer:
    """Draws one raw frame's ``CHANnn`` extension of one IFU and appends it to the frame's file; keeps the caches
    of the IFU it last drew (slice maps, flat fields, pixel response) until another IFU comes."""

    def __init__(self, programme, scenes, model):
        self.programme = programme
        self.scenes = scenes
        self.model = model
        self.factory = None
        self.ifu = None

    def __call__(self, ifu, frame, header, path):
        programme = self.programme
        if ifu != self.ifu:
            self.release(self.ifu)
            self.factory = _FrameFactory(self.model, self.scenes, programme.seed, psf_beta=programme.psf_beta)
            self.ifu = ifu
        if programme.header_only:
            data = np.full((1, 1), int(self.model.detector.bias_level[0]), dtype=np.uint16)
        else:
            data = self.factory.raw(frame, ifu)
        append_ccd(path, ifu, data, self.model.detector, header, compress=programme.compress)

    def release(self, ifu):
        """Drop the caches of ``ifu``, returning its ~1 GB of images before the next IFU allocates its own."""
        if self.factory is not None:
            self.factory.release()
            self.factory = None
        if ifu is not None:
            self.model.release(ifu)
        self.ifu = None
        if not self.programme.header_only:
            gc.collect()


def _worker_count(workers, n_jobs):
    """Processes to draw with: ``workers``, or the CPUs this process may use (at most 4); no more than frames."""
    if workers is None:
        try:
            workers = min(4, len(os.sched_getaffinity(0)))
        except AttributeError:                      # not Linux
            workers = min(4, os.cpu_count() or 1)
    return max(1, min(workers, n_jobs))


def _process_context():
    """``fork`` from a single-threaded process (also from a script without a ``__main__`` guard); ``forkserver``
    when other threads run (Dask's, a GUI's), whose locks a fork would copy in whatever state they are: the
    workers then start from a clean process, which imports the main module as :mod:`multiprocessing` does."""
    return multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")


#: The drawer of a worker process (set when the pool starts it).
_WORKER_DRAWER = None


def _start_worker(programme, scenes):
    global _WORKER_DRAWER
    _WORKER_DRAWER = _FrameDrawer(programme, scenes, InstrumentModel(ifus=programme.ifus))


def _draw_in_worker(ifu, frame, header, path):
    _WORKER_DRAWER(ifu, frame, header, path)


class _FrameFactory:
    """Expected electrons of one IFU's CCD, cached per kind, turned into noisy raw CCDs with per-frame seeds.

    One factory serves one IFU at a time; :meth:`release` drops its caches (~0.2 GB).
    """

    def __init__(self, model, scenes, seed, psf_beta=None):
        self.model = model
        self.scenes = scenes
        self.seed = int(seed)
        self.psf_beta = psf_beta
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

    def electrons(self, frame, ifu):
        kind = frame.exposure.kind
        item = frame.item
        notch = item.get("notch")
        model, response = self.model, self.response(ifu)
        if kind == "BIAS":
            return None
        if kind in ("FLAT", "ILLUM"):
            key = ("FLAT", ifu, notch)
            if key not in self._cache:
                self._cache[key] = render.lamp_flat(model, ifu, response=response, notch=notch)
            scale = 1.0 if kind == "FLAT" else 0.5
            return self._cache[key] * np.float32(scale) if scale != 1.0 else self._cache[key]
        if kind == "ARC":
            return render.arc(model, ifu, item["lamp"], response=response, notch=notch)
        if kind == "SKYFLAT":
            key = ("SKYFLAT", ifu, notch)
            if key not in self._cache:
                self._cache[key] = render.twilight_flat(model, ifu, response=response, notch=notch)
            return self._cache[key] * np.float32(item["level"])
        if kind == "OBJECT":
            scene = self.scenes[("OBJECT", frame.target)]
        elif kind == "STD":
            scene = self.scenes[("STD", item["standard"])]
        else:
            scene = self.scenes[("SKY", None)]
        return render.scene(model, ifu, scene, _conditions(frame, self.psf_beta), response=response, notch=notch)

    def raw(self, frame, ifu):
        rng = np.random.default_rng([self.seed, frame.key, ifu])
        return electrons_to_raw(self.electrons(frame, ifu), self.model.detector, rng)

    def release(self):
        self._cache.clear()
        self._response.clear()


# -- truth ---------------------------------------------------------------------------------------------------
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


def _lines_in_cube_units(lines, airmass):
    """Injected emission lines as a flux-calibrated, extinction-corrected cube shows them per 0.2" spaxel,
    integrated over the line [1e-20 erg/s/cm2 per spaxel]: the pipeline corrects every pixel for extinction,
    also the sky light that was emitted above no air mass at all."""
    return {name: float(flux * CUBE_SPAXEL_AREA * 10 ** (0.4 * float(spectra.extinction(wavelength)) * airmass))
            for name, _, wavelength, flux in lines}


def _exposure_truth(root, frame, path, programme, schedule, design, model):
    exposure, item = frame.exposure, frame.item
    night = programme.nights[frame.night]
    files = [str((root / d / path.name).relative_to(root)) for d in frame.raw_dirs]
    mine = [f for f in files if f.startswith(f"{design.name}/")]
    entry = {"file": (mine or files)[0], "files": files, "kind": exposure.kind, "date_obs": exposure.date_obs,
             "mjd_obs": exposure.mjd, "exptime": exposure.exptime, "ra_header": exposure.ra,
             "dec_header": exposure.dec, "night": frame.night, "night_date": night.date, "mode": exposure.mode,
             "template": {"tpl_start": exposure.tpl_start, "obs_id": exposure.obs_id,
                          "tpl_nexp": exposure.tpl_nexp, "tpl_expno": exposure.tpl_expno},
             "notch_angstrom": list(NAD_NOTCH[item["notch"]]) if item.get("notch") in NAD_NOTCH else None,
             "raman": bool(item.get("raman"))}
    if exposure.kind in ("OBJECT", "SKY", "STD"):
        _, airmass, _, _ = horizontal(exposure.ra, exposure.dec, exposure.mjd + exposure.exptime / 172800.0)
        entry.update({"seeing_fwhm_arcsec": item.get("seeing"), "psf_fwhm_arcsec": item.get("psf_fwhm"),
                      "psf_profile": "gaussian" if programme.psf_beta is None else f"moffat beta={programme.psf_beta}",
                      "psf_beta": programme.psf_beta,
                      "transparency": item.get("transparency"), "airmass_mid": airmass,
                      "sky_line_flux_cube": _lines_in_cube_units(spectra.SKY_LINES, airmass)})
        if item.get("raman"):
            entry["raman_line_flux_cube"] = _lines_in_cube_units(spectra.raman_lines(), airmass)
    if frame.block is not None:
        entry.update({"target": frame.target, "pointing": frame.pointing, "block": frame.block,
                      "offset_sky": bool(programme.targets[design.index].blocks[frame.block].offset_sky)})
    if exposure.kind == "OBJECT":
        entry.update({
            "ra_true": item["true_ra"], "dec_true": item["true_dec"],
            "dither_arcsec": {"east": item["dither_east"], "north": item["dither_north"]},
            "pointing_error_arcsec": {"east": item["error_east"], "north": item["error_north"]},
            "ob_pointing_error_arcsec": {"east": item["ob_error_east"], "north": item["ob_error_north"]},
            "pointing_error_deg": {"ra": exposure.ra - item["true_ra"], "dec": exposure.dec - item["true_dec"]},
            "expected_flux_scale": item["transparency"], "alignment_anchor": item["alignment_anchor"]})
        ratio = source_to_sky_ratio(model, SkyScene(stars=design.stars, disc=design.disc),
                                    _conditions(frame, programme.psf_beta))
        entry["sky_fraction"] = {"sky_dominated": float(np.mean(ratio < SKY_DOMINATED)),
                                 "clean": float(np.mean(ratio < CLEAN_SKY))}
    if exposure.kind == "STD":
        entry["standard_star"] = item["standard"]
    if exposure.kind == "ARC":
        entry["lamp"] = item["lamp"]
    return entry


def _target_truth(root, programme, schedule, model, target, design, paths, written, reference):
    nights = sorted({f.night for f in schedule.frames if f.target == target.name})
    entries = []
    for frame, path, write in zip(schedule.frames, paths, written):
        mine = frame.target == target.name
        night_calibration = frame.target is None and frame.night in nights
        if mine or night_calibration:
            entries.append(_exposure_truth(root, frame, path, programme, schedule, design, model))
            entries[-1]["written"] = bool(write)
    standards = [s for s in schedule.standards if s["night"] in nights]
    disc = design.disc
    disc_truth = None
    if disc is not None:
        disc_truth = {
            "kind": design.disc_kind, "ra": disc.ra, "dec": disc.dec, "position_angle": disc.position_angle,
            "inclination": disc.inclination, "scale_length_arcsec": disc.scale_length,
            "continuum_central": disc.continuum, "velocity_kms": disc.velocity, "rotation_kms": disc.rotation,
            "turnover_arcsec": disc.turnover, "dispersion_kms": disc.dispersion,
            "velocity_frame": "topocentric (the pipeline's barycentric correction is not applied to the truth)",
            "line_central_flux": {name: disc.halpha * ratio for name, (_, ratio) in DISC_LINES.items()},
            "line_rest_wavelength": {name: rest for name, (rest, _) in DISC_LINES.items()}}
    ao = any(programme.nights[n].mode in AO_MODES for n in nights)
    return {
        "target": target.name, "seed": programme.seed, "ifus": list(programme.ifus),
        "night": programme.nights[nights[0]].date,
        "nights": [{"index": n, "date": programme.nights[n].date, "mode": programme.nights[n].mode,
                    "seeing_median": schedule.night_conditions[n]["seeing"],
                    "transparency_median": schedule.night_conditions[n]["transparency"],
                    "calibrations": programme.nights[n].calibrations, "standard": programme.nights[n].standard}
                   for n in nights],
        "calibration_raw": programme.calibration_raw, "compressed": programme.compress,
        "header_only": programme.header_only,
        "units": {"flux": "1e-20 erg/s/cm2/A (point sources: total; disc: per spaxel)",
                  "positions": "deg (ICRS/J2000)",
                  "sky_lines": "injected: 1e-20 erg/s/cm2/arcsec2; *_flux_cube: 1e-20 erg/s/cm2 per 0.2x0.2 "
                               "arcsec spaxel, integrated over the line, extinction-corrected at the "
                               "exposure's airmass (what a flux-calibrated cube shows)"},
        "field_centre": {"ra": design.field_ra, "dec": design.field_dec},
        "pointings": {f"P{p:02d}": {"ra": ra, "dec": dec} for p, (ra, dec) in design.pointing_centres.items()},
        "point_sources": _truth_of_stars(design.stars),
        "star_overlaps": {"minimum_required": 10, "pairs": design.overlap_counts},
        "disc": disc_truth,
        "standard_star": standards[0] if standards else None,
        "standard_stars": standards,
        "sky_lines": [{"name": n, "group": g, "lambda": w, "flux": f} for n, g, w, f in spectra.SKY_LINES],
        "raman_lines": ([{"name": n, "group": g, "lambda": w, "flux": f} for n, g, w, f in spectra.raman_lines()]
                        if ao else []),
        "reference_image": reference,
        "exposures": entries,
        "instrument": model.truth(),
    }


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


__all__ = ["simulate_programme", "simulate_run", "SimulatedProgramme", "SimulatedRun", "SimulationError",
           "data_checksums"]
