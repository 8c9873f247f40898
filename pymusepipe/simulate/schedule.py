"""From a :class:`~pymusepipe.simulate.programme.Programme` to a time-ordered list of exposures.

Everything random about a programme is drawn here, from streams that depend only on the seed and on *what*
is drawn (a night's conditions, one target's sky, one target's pointing errors), so adding a target or a
night does not change the others:

* ``[seed, 1]``: the median seeing and transparency of every night;
* ``[seed, 100 + i, 0]``: the sky of target ``i`` (stars, disc);
* ``[seed, 100 + i, 1]``: its blocks' pointing errors and each exposure's seeing and transparency.

The night (UTC, ``D`` = the night's date): calibrations at D 20:00-20:30 (BIAS, FLAT, ARC) and twilight flats
at 23:36; the night's standard star at D+1 00:30, at transit; then the targets, each in its own time slot
centred on its transit (targets are placed in right ascension so that they transit in their slot), so every
exposure is within ~30 min of transit at ~1 deg from the zenith: differential atmospheric refraction, which
is not simulated, stays below ~0.1".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from astropy.time import Time

from ..instrument import AO_MODES, NOTCH_IN_CALIBRATION_LIGHT
from .errors import SimulationError
from .model import InstrumentModel
from .observing import GEOLAT, Exposure, horizontal, lamps_of, lst_degrees, transit_mjd
from .programme import Programme
from .scene import EmissionDisc, PointSource

logger = logging.getLogger(__name__)

#: Dither step between the exposures of a block, along the strips' long axis [arcsec].
DITHER_STEP = 1.6
#: Stars per 60" IFU strip and their minimum separation [arcsec] (isolated: fluxes measurable one by one).
STARS_PER_IFU = 16
MIN_STAR_SEPARATION = 3.0
#: Stars muse_exp_align needs in the overlap of every pair of exposures it aligns (exp-align-and-sky.md).
MIN_STARS_IN_OVERLAP = 10
#: Target fields are this far north of the zenith of Paranal [deg].
FIELD_ZENITH_OFFSET = 0.9
#: Seconds between exposures of a template (read-out and offsets), and between an ILLUM and its block.
OVERHEAD = 60.0
ILLUM_LEAD = 180.0
#: Gap between the time slots of two targets [s].
SLOT_GAP = 900.0
#: GLAO improvement of the image quality in WFM-AO (FWHM ratio AO / seeing), an approximation.
AO_FWHM_RATIO = 0.7


@dataclass
class PlannedFrame:
    """One raw exposure of the programme.

    Attributes
    ----------
    key : int
        Position in time order over the whole programme; seeds the frame's noise.
    exposure : Exposure
        Header content (kind, time, pointing in the header, template, mode, lamps).
    night : int
        Night index.
    item : dict
        Conditions and truth: ``seeing``, ``psf_fwhm``, ``transparency``, ``true_ra``/``true_dec``, dither and
        pointing error for OBJECT, ``lamp`` for arcs, ``level`` for twilight flats, ``raman``, ``notch``.
    target : str or None
        Target of OBJECT/SKY/ILLUM frames of a block.
    pointing : int or None
    block : int or None
        Index of the block in its target's ``blocks``.
    raw_dirs : list of str
        ``Raw`` folders (relative to the root) that hold the file; the first one is written, the others get
        hard links.
    """

    key: int
    exposure: Exposure
    night: int
    item: dict
    target: str | None = None
    pointing: int | None = None
    block: int | None = None
    raw_dirs: list = field(default_factory=list)


@dataclass
class TargetDesign:
    """What is on the sky of one target, and where its pointings are."""

    name: str
    index: int
    field_ra: float
    field_dec: float
    pointing_centres: dict
    stars: list
    disc: EmissionDisc | None
    disc_kind: str
    overlap_counts: dict = field(default_factory=dict)


@dataclass
class ProgrammeSchedule:
    """All frames of a programme in time order, the targets' skies, the nights' standards and conditions."""

    programme: Programme
    frames: list
    targets: dict
    standards: list
    night_conditions: list


def night_start_mjd(date: str) -> float:
    """MJD of 00:00 UTC of ``date``."""
    return float(Time(f"{date}T00:00:00", scale="utc").mjd)


def block_duration(block) -> float:
    """Seconds an observing block takes, from its ILLUM to the end of its last exposure."""
    seconds = ILLUM_LEAD + block.exposures * (block.exptime + OVERHEAD)
    if block.offset_sky:
        seconds += block.sky_exptime + OVERHEAD
    return seconds


def dither_offset(number: int) -> float:
    """East dither of exposure ``number`` (0-based) of a block: 0, -1.6, +1.6, -3.2, +3.2 ... arcsec."""
    return DITHER_STEP * ((number + 1) // 2) * (-1) ** number


def schedule_programme(programme: Programme, model: InstrumentModel) -> ProgrammeSchedule:
    """Draw the conditions, skies and pointing errors of ``programme`` and lay out every exposure in time.

    Parameters
    ----------
    programme : Programme
        Checked programme (:meth:`Programme.check`).
    model : InstrumentModel
        The instrument (its IFUs decide where the strips are on the sky).

    Raises
    ------
    SimulationError
        When a target's star field cannot give muse_exp_align enough stars in every overlap.
    """
    seed = programme.seed
    nights = programme.nights
    starts = [night_start_mjd(n.date) for n in nights]

    # -- the nights' conditions (always draw both values: a given value must not shift the others) ----------
    rng = np.random.default_rng([seed, 1])
    conditions = []
    for night in nights:
        seeing, transparency = float(rng.uniform(0.65, 0.95)), float(rng.uniform(0.80, 1.0))
        conditions.append({"seeing": float(night.seeing) if night.seeing is not None else seeing,
                           "transparency": (float(night.transparency) if night.transparency is not None
                                            else transparency)})

    # -- time slots of the targets: in programme order, from 00:55 UTC, each centred on its transit ---------
    slots, offset = [], 24.0 * 3600.0 + 55 * 60.0
    for target in programme.targets:
        per_night = [sum(block_duration(b) for b in target.blocks if b.night == n) for n in range(len(nights))]
        length = max(per_night)
        slots.append((offset, length))
        offset += length + SLOT_GAP
    if offset > 34.5 * 3600.0:
        raise SimulationError(f"targets: the blocks of one night take {(offset - 86400) / 3600:.1f} h after "
                              "00:55 UTC; spread them over more nights (the simulated night ends at 10:30 UTC)")

    frames = []
    obs_counter = [1_400_000 + seed % 1000 * 100]

    def new_obs_id():
        obs_counter[0] += 1
        return obs_counter[0]

    def add_template(kind, first_mjd, items, night_index, object_name, ra, dec, obs_id, mode, step=OVERHEAD,
                     **where):
        tpl_start = Time(first_mjd, format="mjd", scale="utc").isot[:19]
        mjd = first_mjd + 2.0 / 86400.0
        for number, item in enumerate(items, start=1):
            kind_here = item.get("kind", kind)
            exposure = Exposure(kind=kind_here, mjd=mjd, exptime=item["exptime"], ra=item.get("ra", ra),
                                dec=item.get("dec", dec), object_name=item.get("object", object_name),
                                tpl_start=tpl_start, tpl_nexp=len(items), tpl_expno=number, obs_id=obs_id,
                                lamps=item.get("lamps", ()), mode=mode)
            if "seeing" in item:   # DIMM seeing, as the observatory records it
                exposure.extra.update({"HIERARCH ESO TEL AMBI FWHM START": round(item["seeing"], 3),
                                       "HIERARCH ESO TEL AMBI FWHM END": round(item["seeing"], 3)})
            item = dict(item)
            item.setdefault("notch", mode if (exposure.on_sky or NOTCH_IN_CALIBRATION_LIGHT.get(mode, False))
                            and kind_here != "BIAS" else None)
            item.setdefault("raman", mode in AO_MODES and kind_here in ("OBJECT", "SKY", "STD"))
            frames.append(PlannedFrame(key=-1, exposure=exposure, night=night_index, item=item, **where))
            mjd += (item["exptime"] + step) / 86400.0
        return mjd

    # -- per night: calibrations and the standard star ---------------------------------------------------------
    standards = []
    for index, (night, start) in enumerate(zip(nights, starts)):
        mode = night.mode
        parked = (0.0, GEOLAT)   # daytime calibrations: the telescope's RA/DEC are irrelevant
        if night.calibrations:
            add_template("BIAS", start + 20.0 / 24, [{"exptime": 0.0}] * 3, index, "BIAS", *parked,
                         new_obs_id(), mode)
            add_template("FLAT", start + 20.2 / 24, [{"exptime": 8.0, "lamps": lamps_of("FLAT")}] * 3, index,
                         "FLAT", *parked, new_obs_id(), mode, step=50.0)
            arcs = [{"exptime": t, "lamps": lamps_of("ARC", lamp), "lamp": lamp}
                    for lamp, t in (("HgCd", 5.0), ("Ne", 10.0), ("Xe", 15.0))]
            add_template("ARC", start + 20.4 / 24, arcs, index, "WAVE", *parked, new_obs_id(), mode, step=45.0)
            twilight = [{"exptime": 10.0, "level": level} for level in (1.0, 0.8, 0.65)]
            add_template("SKYFLAT", start + 23.6 / 24, twilight, index, "SKYFLAT", 90.0, -30.0, new_obs_id(),
                         mode)
        if night.standard:
            std_mjd = start + 24.5 / 24
            std_ra = round(float(lst_degrees(std_mjd)), 4)
            star = {"name": f"SIM_WD{index + 1}", "ra": std_ra, "dec": round(GEOLAT + 0.6, 4),
                    "temperature": 40000.0, "vmag": 12.0, "night": index, "date": night.date}
            # The star falls on the simulated strip nearest the field's centre (the only strip of a one-IFU
            # run; a middle one of a full field, as a real standard is centred), 3" east of the strip's middle,
            # away from its edges. On an edge strip of a full field the flux integration window is cut.
            strip_middles = [0.5 * (ymin + ymax) for _, _, ymin, ymax in map(model.ifu_focal_extent, model.ifus)]
            strip_north = min(((middle - model.focal_centre[1]) * model.spaxel_scale for middle in strip_middles),
                              key=abs)
            pointing = (std_ra + 3.0 / 3600.0 / np.cos(np.radians(star["dec"])),
                        star["dec"] - strip_north / 3600.0 - 0.1 / 3600.0)
            psf = conditions[index]["seeing"] * (AO_FWHM_RATIO if mode in AO_MODES else 1.0)
            item = {"exptime": 60.0, "seeing": 0.6, "psf_fwhm": min(psf, 0.6), "transparency": 1.0,
                    "true_ra": pointing[0], "true_dec": pointing[1], "standard": star["name"]}
            add_template("STD", transit_mjd(std_ra, std_mjd) - 60.0 / 86400.0, [item], index, star["name"],
                         pointing[0], pointing[1], new_obs_id(), mode, step=0.0)
            standards.append(star)

    # -- targets: pointings, blocks, then the sky (which must suit the exposures' footprints) ---------------
    designs = {}
    for t_index, (target, (slot_start, slot_length)) in enumerate(zip(programme.targets, slots)):
        field_dec = round(GEOLAT + FIELD_ZENITH_OFFSET, 4)
        field_ra = round(float(lst_degrees(starts[0] + (slot_start + slot_length / 2) / 86400.0)), 4)
        cos_dec = np.cos(np.radians(field_dec))
        centres = {p: (field_ra + target.pointing_step * (p - 1) / 3600.0 / cos_dec, field_dec)
                   for p in range(1, target.n_pointings + 1)}
        rng_blocks = np.random.default_rng([seed, 100 + t_index, 1])
        anchored = set()
        target_frames = []
        order = sorted(range(len(target.blocks)), key=lambda b: (target.blocks[b].night, b))
        night_clock = {}
        for b_index in order:
            block = target.blocks[b_index]
            night = nights[block.night]
            mode = night.mode
            cond = conditions[block.night]
            pointing_ra, pointing_dec = centres[block.pointing]
            # acquisition error of the block (along the strips; tiny across them: a 1-IFU strip is 2.5" high)
            ob_east = float(rng_blocks.uniform(0.3, 1.2) * rng_blocks.choice([-1.0, 1.0]))
            ob_north = float(rng_blocks.uniform(-0.05, 0.05))
            anchor = not anchored
            if anchor:   # the target's first block holds the alignment reference: no acquisition error
                ob_east = ob_north = 0.0
                anchored.add(block.pointing)
            if block.night not in night_clock:
                total = sum(block_duration(b) for b in target.blocks if b.night == block.night)
                mid = transit_mjd(field_ra, starts[block.night] + (slot_start + slot_length / 2) / 86400.0)
                night_clock[block.night] = mid - total / 2 / 86400.0
            first_mjd = night_clock[block.night] + ILLUM_LEAD / 86400.0
            night_clock[block.night] += block_duration(block) / 86400.0
            obs_id = new_obs_id()
            items = []
            for number in range(block.exposures):
                jitter_east = float(rng_blocks.uniform(0.2, 0.6) * rng_blocks.choice([-1.0, 1.0]))
                jitter_north = float(rng_blocks.uniform(-0.03, 0.03))
                seeing = float(np.clip(cond["seeing"] * rng_blocks.uniform(0.9, 1.1), 0.5, 1.2))
                transparency = float(min(1.0, cond["transparency"] * rng_blocks.uniform(0.97, 1.0)))
                if anchor and number == 0:   # the reference exposure: exact pointing, flux scale 1
                    jitter_east = jitter_north = 0.0
                    transparency = 1.0
                dither_east = dither_offset(number)
                error_east, error_north = ob_east + jitter_east, ob_north + jitter_north
                true_ra = pointing_ra + dither_east / 3600.0 / cos_dec
                true_dec = pointing_dec
                items.append({
                    "kind": "OBJECT", "exptime": float(block.exptime), "pointing": block.pointing,
                    "dither_east": dither_east, "dither_north": 0.0, "error_east": error_east,
                    "error_north": error_north, "ob_error_east": ob_east, "ob_error_north": ob_north,
                    "true_ra": true_ra, "true_dec": true_dec,
                    "ra": true_ra + error_east / 3600.0 / cos_dec, "dec": true_dec + error_north / 3600.0,
                    "seeing": seeing, "psf_fwhm": seeing * (AO_FWHM_RATIO if mode in AO_MODES else 1.0),
                    "transparency": transparency, "offset_sky": bool(block.offset_sky),
                    "alignment_anchor": bool(anchor and number == 0)})
                if number == 0 and block.offset_sky:
                    sky_ra, sky_dec = pointing_ra + 0.1, pointing_dec - 0.05   # an empty field 6' away
                    sky_seeing = float(np.clip(cond["seeing"] * rng_blocks.uniform(0.9, 1.1), 0.5, 1.2))
                    items.append({"kind": "SKY", "exptime": float(block.sky_exptime), "true_ra": sky_ra,
                                  "true_dec": sky_dec, "ra": sky_ra, "dec": sky_dec, "seeing": sky_seeing,
                                  "psf_fwhm": sky_seeing, "transparency": cond["transparency"],
                                  "pointing": block.pointing, "offset_sky": True})
            where = {"target": target.name, "pointing": block.pointing, "block": b_index}
            illum = {"exptime": 5.0, "lamps": lamps_of("ILLUM"), "object": "ILLUM"}
            add_template("ILLUM", first_mjd - ILLUM_LEAD / 86400.0, [illum], block.night, "ILLUM", pointing_ra,
                         pointing_dec, obs_id, mode, step=0.0, **where)
            target_frames.append(frames[-1])
            before = len(frames)
            add_template("OBJECT", first_mjd, items, block.night, target.name, pointing_ra, pointing_dec, obs_id,
                         mode, **where)
            target_frames.extend(frames[before:])
        designs[target.name] = _design_target(target, t_index, seed, model, field_ra, field_dec, centres,
                                              [f for f in target_frames if f.exposure.kind == "OBJECT"])

    # -- time order, keys, and where every file goes -------------------------------------------------------
    frames.sort(key=lambda f: f.exposure.mjd)
    dates = [f.exposure.date_obs for f in frames]
    if len(set(dates)) != len(dates):
        raise SimulationError("programme: two exposures would start at the same DATE-OBS; check the blocks")
    observed = {}
    for frame in frames:
        if frame.target is not None:
            observed.setdefault(frame.night, set()).add((frame.target, frame.pointing))
    for key, frame in enumerate(frames):
        frame.key = key
        if frame.target is not None and (frame.exposure.kind != "ILLUM"
                                         or programme.calibration_raw == "pointing"):
            frame.raw_dirs = [raw_dir(frame.target, frame.pointing)]
        elif programme.calibration_raw == "shared":
            frame.raw_dirs = ["Calibrations/Raw"]
        else:
            frame.raw_dirs = [raw_dir(t, p) for t, p in sorted(observed.get(frame.night, ()))]
    return ProgrammeSchedule(programme=programme, frames=frames, targets=designs, standards=standards,
                             night_conditions=conditions)


def raw_dir(target: str, pointing: int) -> str:
    """``<target>/P0N/Raw`` (relative to the root)."""
    return f"{target}/P{pointing:02d}/Raw"


def _design_target(target, t_index, seed, model, field_ra, field_dec, centres, object_frames):
    """Stars over the target's strips (enough in every overlap muse_exp_align needs) and its disc."""
    cos_dec = np.cos(np.radians(field_dec))
    east_of = {id(f): (f.item["true_ra"] - field_ra) * 3600.0 * cos_dec for f in object_frames}
    half_length = model.slice_length * 2 * model.spaxel_scale          # 30" in WFM
    east_min = min(east_of.values()) - half_length + 1.0
    east_max = max(east_of.values()) + half_length - 1.0
    per_ifu = int(round(STARS_PER_IFU * (east_max - east_min + 2.0) / (2 * half_length)))
    pairs = _aligned_pairs(object_frames)
    rng = np.random.default_rng([seed, 100 + t_index, 0])
    best = None
    for attempt in range(60):
        positions = _place_stars(rng, model, east_min, east_max, per_ifu)
        counts = {(a.exposure.date_obs, b.exposure.date_obs):
                  _stars_in_overlap(positions, east_of[id(a)], east_of[id(b)], half_length) for a, b in pairs}
        worst = min(counts.values(), default=MIN_STARS_IN_OVERLAP)
        if best is None or worst > best[0]:
            best = (worst, positions, counts, attempt)
        if worst >= MIN_STARS_IN_OVERLAP:
            break
    worst, positions, counts, attempt = best
    if worst < MIN_STARS_IN_OVERLAP:
        raise SimulationError(f"target {target.name!r}: after {attempt + 1} draws some pair of exposures that "
                              f"muse_exp_align aligns overlaps on only {worst} stars (< {MIN_STARS_IN_OVERLAP}); "
                              "reduce pointing_step or the dithers")
    stars = [PointSource(ra=field_ra + east / 3600.0 / cos_dec, dec=field_dec + north / 3600.0,
                         vmag=float(rng.uniform(17.0, 20.5)), temperature=float(rng.uniform(4000.0, 9000.0)))
             for east, north, _ in positions]
    kind = target.disc_kind
    disc = None
    if kind != "none":
        _, _, ymin, ymax = model.ifu_focal_extent(model.ifus[0])
        disc_north = 0.5 * (ymin + ymax - 2 * model.focal_centre[1]) * model.spaxel_scale
        scale_length = 6.0 if kind == "extended" else 2.0
        disc = EmissionDisc(ra=field_ra + 6.0 / 3600.0 / cos_dec, dec=field_dec + disc_north / 3600.0,
                            scale_length=scale_length)
    return TargetDesign(name=target.name, index=t_index, field_ra=field_ra, field_dec=field_dec,
                        pointing_centres=centres, stars=stars, disc=disc, disc_kind=kind,
                        overlap_counts={f"{a} {b}": int(c) for (a, b), c in counts.items()})


def _aligned_pairs(object_frames):
    """Pairs of OBJECT exposures muse_exp_align is expected to align: same pointing, or adjacent pointings."""
    pairs = []
    for i, a in enumerate(object_frames):
        for b in object_frames[i + 1:]:
            if abs(a.pointing - b.pointing) <= 1:
                pairs.append((a, b))
    return pairs


def _place_stars(rng, model, east_min, east_max, per_ifu):
    """(east, north, ifu) of ``per_ifu`` stars per simulated strip, >= MIN_STAR_SEPARATION apart."""
    positions = []
    easts = np.empty(per_ifu * len(model.ifus))
    norths = np.empty(per_ifu * len(model.ifus))
    for ifu in model.ifus:
        _, _, ymin, ymax = model.ifu_focal_extent(ifu)
        # keep stars 0.75" inside the 2.5" strip: their PSF is recorded and fittable in the image
        north_lo = (ymin - model.focal_centre[1]) * model.spaxel_scale + 0.75
        north_hi = (ymax - model.focal_centre[1]) * model.spaxel_scale - 0.75
        placed = 0
        for _ in range(200 * per_ifu):
            if placed == per_ifu:
                break
            east, north = float(rng.uniform(east_min, east_max)), float(rng.uniform(north_lo, north_hi))
            if positions:
                # only stars within a separation in north can be too close (strips are 2.5" high)
                near = np.abs(norths[:len(positions)] - north) < MIN_STAR_SEPARATION
                if np.any(np.hypot(easts[:len(positions)][near] - east, norths[:len(positions)][near] - north)
                          < MIN_STAR_SEPARATION):
                    continue
            easts[len(positions)], norths[len(positions)] = east, north
            positions.append((east, north, ifu))
            placed += 1
    return positions


def _stars_in_overlap(positions, east_a, east_b, half_length, margin=1.0):
    """Stars inside both footprints (strips offset along the long axis only), ``margin`` from the edges."""
    low = max(east_a, east_b) - half_length + margin
    high = min(east_a, east_b) + half_length - margin
    return sum(1 for east, _, _ in positions if low < east < high)


def airmass_mid(exposure: Exposure) -> float:
    """Airmass at the middle of an exposure (what the truth records and the renderer uses)."""
    return horizontal(exposure.ra, exposure.dec, exposure.mjd + exposure.exptime / 172800.0)[1]


__all__ = ["schedule_programme", "ProgrammeSchedule", "PlannedFrame", "TargetDesign", "raw_dir", "airmass_mid",
           "dither_offset", "block_duration"]
