"""The steps of the reduction chain, declared once.

Each :class:`StepSpec` says which recipe a step runs, what it takes, what it makes, what it needs from earlier
steps, and where its jobs work: in the shared calibration area of the night the data were taken
(:class:`~pymusepipe.layout.NightLayout`: masters and the standard star, reused by every pointing and target of
that night) or in the pointing. Its *planner* is a plain function ``(context, **options) -> StepPlan`` that
chooses which frames go together and which options differ from the recipe's defaults; the engine does the rest
(association, SOFs, products, resume). :data:`STEPS` lists them in the seed's order; ``MusePipe.run_<step>``
plans one step and runs it, ``run_all_recipes`` plans every step first and runs them as one graph.

Planning sees the products of steps planned before it in the same run (status ``planned``) as well as those made
in earlier sessions (``done``): that is what lets a whole chain be planned before anything runs.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from . import instrument
from .association import InputFrame
from .engine import Job
from .errors import StepInputError
from .layout import NightLayout, PointingLayout
from .memory import memory_need
from .products import PlannedProduct

__all__ = ["StepSpec", "StepPlan", "StepTable", "STEPS", "StepContext", "StepInputError", "NARROW_FIELD_IFUS",
           "NIGHT", "POINTING"]

logger = logging.getLogger(__name__)

NIGHT = "night"          # jobs work in the shared calibration area of their night
POINTING = "pointing"    # jobs work in the pointing

#: Below this many IFUs the field is a strip of 2.5" per IFU: muse_standard's Moffat fit window (~10") does not
#: fit, so the standard star needs ``--profile=circle`` and an aperture correction (pymusepipe.stdcorrection).
NARROW_FIELD_IFUS = 4

#: Tags of master calibrations an archive download may hold instead of the raw frames they are made from.
ARCHIVE_MASTERS = {"bias": ("MASTER_BIAS",), "flat": ("MASTER_FLAT", "TRACE_TABLE"), "wave": ("WAVECAL_TABLE",),
                   "lsf": ("LSF_PROFILE",), "twilight": ("TWILIGHT_CUBE",),
                   "standard": ("STD_RESPONSE", "STD_TELLURIC")}


@dataclass(frozen=True)
class StepSpec:
    """One step of the chain.

    Attributes
    ----------
    name : str
        ``bias``, ``flat`` ... (``MusePipe.run_<name>``).
    recipe : str
        The esorex recipe it runs.
    description : str
    takes : str
        What it takes, in words.
    makes : tuple of str
        Product tags it makes.
    needs : tuple of str
        Product tags it needs from earlier steps.
    area : str
        :data:`NIGHT` or :data:`POINTING` (``scibasic_all`` puts the standard star's tables in the night).
    planner : callable
        ``(StepContext, **options) -> StepPlan``.
    """

    name: str
    recipe: str
    description: str
    takes: str
    makes: tuple
    needs: tuple
    area: str
    planner: Callable


@dataclass
class StepPlan:
    """The jobs a step planned, and what it decided."""

    step: str
    jobs: list = field(default_factory=list)
    note: str = ""
    skipped: str = ""


class StepTable(Mapping):
    """Step name -> :class:`StepSpec`, in chain order."""

    def __init__(self, specs):
        self._specs = OrderedDict((spec.name, spec) for spec in specs)

    def __getitem__(self, name) -> StepSpec:
        key = str(name).removeprefix("run_")
        try:
            return self._specs[key]
        except KeyError:
            raise KeyError(f"unknown step {name!r}; steps are {', '.join(self._specs)}") from None

    def __iter__(self):
        return iter(self._specs)

    def __len__(self):
        return len(self._specs)

    def producer_of(self, tag: str) -> str | None:
        """The step that makes a product tag (for "run ... first" hints)."""
        for spec in self._specs.values():
            if tag in spec.makes:
                return spec.name
        return None

    def between(self, first=None, last=None) -> list:
        """Step names from ``first`` to ``last`` included (names or ``run_<name>``)."""
        names = list(self._specs)
        try:
            start = names.index(self[first].name) if first is not None else 0
            stop = names.index(self[last].name) if last is not None else len(names) - 1
        except KeyError as error:
            raise ValueError(error.args[0]) from None
        if start > stop:
            raise ValueError(f"first step {first!r} comes after last step {last!r}")
        return names[start:stop + 1]


# ---------------------------------------------------------------------------------------------- context
class StepContext:
    """What planners see of a pointing: its raw frames, the products so far, its state and settings.

    Built by :class:`~pymusepipe.musepipe.MusePipe`; one per pointing. ``offset_list_in_force`` starts as the
    state's and is updated by the alignment planners when a run plans them, so the science steps planned after
    them in the same graph use the OFFSET_LIST the alignment will write.
    """

    def __init__(self, *, layout: PointingLayout, engine, raw_table, state, targetname: str, musemode: str,
                 filter_list: str, filter_for_alignment: str, ifu_mode: str, parameters: Mapping | None = None,
                 fakemode: bool = False, steps: StepTable | None = None):
        self.layout = layout
        self.engine = engine
        self.raw_table = raw_table
        self.state = state
        self.targetname = targetname
        self.musemode = musemode
        self.filter_list = filter_list
        self.filter_for_alignment = filter_for_alignment
        self.ifu_mode = ifu_mode
        self.parameters = {str(key).removeprefix("run_"): dict(value) for key, value in (parameters or {}).items()}
        self.fakemode = fakemode
        self.steps = steps if steps is not None else STEPS
        self.offset_list_in_force = state.get_path("offset_list")
        self.sky_mask = state.get_path("sky_mask")

    # --- areas
    def night_area(self, night: str) -> NightLayout:
        return self.engine.add_area(self.layout.night_layout(night))

    def area_for(self, frame_night: str, where: str):
        return self.night_area(frame_night) if where == NIGHT else self.layout

    # --- raw frames
    def raw_rows(self, tag: str):
        return [row for row in self.raw_table if str(row["tag"]) == tag]

    def raw_templates(self, tag: str) -> list:
        """Raw frames of a tag grouped by template (TPL START), in time order: [(night, [rows])]."""
        groups = OrderedDict()
        for row in self.raw_rows(tag):
            key = str(row["tpl_start"]) or str(row["date_obs"])
            groups.setdefault(key, []).append(row)
        return [(str(rows[0]["night"]), rows) for rows in groups.values()]

    def raw_exposures(self, tag: str) -> list:
        return [(str(row["night"]), [row]) for row in self.raw_rows(tag)]

    def archive_masters(self, tags) -> list:
        """Master calibrations delivered with the data (archive downloads) of the given tags."""
        return [row for row in self.raw_table if str(row["tag"]) in tags and str(row["pro_catg"])]

    # --- products
    def products(self, tag: str, *, step: str | None = None, qualifier: str | None = None,
                 area=None) -> list:
        """Registered products (made, or planned in this run) as input frames, in time then IFU order."""
        records = self.engine.catalogue.select(tag=tag, step=step, qualifier=qualifier,
                                               area=area.base_dir if area is not None else None,
                                               statuses=("done", "planned", "cleaned"))
        frames = [InputFrame.from_product(record) for record in records]
        return sorted(frames, key=lambda frame: (frame.mjd, frame.ifu))

    def products_by_exposure(self, tag: str, *, as_tag: str | None = None, **selection) -> list:
        """Products grouped per exposure (all IFUs of one DATE-OBS together)."""
        groups = OrderedDict()
        for frame in self.products(tag, **selection):
            if as_tag:
                frame = InputFrame(**{**frame.__dict__, "tag": as_tag})
            groups.setdefault(frame.date_obs or frame.path, []).append(frame)
        return list(groups.values())

    def require(self, groups, tag: str, step: str):
        if not groups:
            producer = self.steps.producer_of(tag)
            hint = f"run run_{producer}() first" if producer else "put the raw frames in the Raw folder"
            raise StepInputError(f"{step}: no {tag} for {self.targetname} {self.layout.pointing_name}; {hint}")
        return groups

    # --- planning
    def parameters_for(self, step: str, recipe: str, defaults: Mapping | None = None) -> dict:
        """The step's own parameters, then the user's overrides by recipe, then by step (the user wins)."""
        return {**(defaults or {}), **self.parameters.get(recipe, {}), **self.parameters.get(step, {})}

    def plan(self, step: str, recipe: str, groups, *, area, parameters=None, decided=None, **options) -> list:
        """Plan a recipe's jobs with the step's ``parameters`` under the user's overrides; ``decided``: values
        the step derived from the overrides themselves (muse_scipost's ``skymethod='auto'``), which stand."""
        return self.engine.plan(recipe, groups, area=area, step=step, ifu_mode=self.ifu_mode,
                                parameters={**self.parameters_for(step, recipe, parameters), **(decided or {})},
                                **options)

    def ifus_of_raw(self, date_obs: str, tag: str) -> tuple:
        """IFUs present in the raw file of an exposure (its CHANnn extensions)."""
        for row in self.raw_rows(tag):
            if str(row["date_obs"]) == date_obs:
                return self.engine.raw_ifus(str(row["filename"]))
        return ()


def exposure_label(frame) -> str:
    expno = frame.expno if frame.expno >= 0 else 1
    return f"{frame.tpl_start or frame.date_obs}_{expno:04d}"


# ---------------------------------------------------------------------------------------------- planners
def _plan_raw_templates(ctx: StepContext, step: str, recipe: str, tags, *, parameters=None, **options) -> StepPlan:
    """One job per template of raw frames, in the calibration area of its night; archive masters can stand
    in for a missing type."""
    templates = []
    for tag in tags:
        templates = ctx.raw_templates(tag)
        if templates:
            break
    if not templates:
        masters = ctx.archive_masters(ARCHIVE_MASTERS.get(step, ()))
        if masters:
            names = ", ".join(sorted({str(row["tag"]) for row in masters}))
            return StepPlan(step, skipped=f"archive master used ({names} delivered with the data)")
        ctx.require([], tags[0], f"run_{step}")
    jobs = []
    by_night = OrderedDict()
    for night, rows in templates:
        by_night.setdefault(night, []).append(rows)
    for night, groups in by_night.items():
        jobs.extend(ctx.plan(step, recipe, groups, area=ctx.night_area(night), parameters=parameters, **options))
    return StepPlan(step, jobs)


def plan_bias(ctx, **_):
    return _plan_raw_templates(ctx, "bias", "muse_bias", ("BIAS",))


def plan_flat(ctx, **_):
    return _plan_raw_templates(ctx, "flat", "muse_flat", ("FLAT",))


def plan_wave(ctx, **_):
    # The residuals let the report show the quality of the wavelength solution.
    return _plan_raw_templates(ctx, "wave", "muse_wavecal", ("ARC",), parameters={"residuals": True})


def plan_lsf(ctx, **_):
    # Dedicated LSF templates when there are some, else the arcs.
    return _plan_raw_templates(ctx, "lsf", "muse_lsf", ("ARC_LSF", "ARC"))


def plan_twilight(ctx, illum=True, **_):
    return _plan_raw_templates(ctx, "twilight", "muse_twilight", ("SKYFLAT",),
                               skip_calibrations=() if illum else ("ILLUM",))


def plan_scibasic_all(ctx, illum=True, expotypes=("OBJECT", "SKY", "STD"), required=True, **_):
    jobs = []
    for tag in expotypes:
        exposures = ctx.raw_exposures(tag)
        for night, rows in exposures:
            area = ctx.night_area(night) if tag == "STD" else ctx.layout
            label = exposure_label(InputFrame.from_raw_row(rows[0]))
            jobs.extend(ctx.plan("scibasic_all", "muse_scibasic", [rows], area=area, labels=[label],
                                 skip_calibrations=() if illum else ("ILLUM",)))
    if not jobs:
        if not required:
            return StepPlan("scibasic_all", skipped=f"no {', '.join(expotypes)} exposure")
        ctx.require([], "OBJECT", "run_scibasic_all")
    return StepPlan("scibasic_all", jobs)


def plan_standard(ctx, profile=None, aperture_correction=None, **_):
    groups = ctx.products_by_exposure("PIXTABLE_STD")
    if not groups:
        masters = ctx.archive_masters(ARCHIVE_MASTERS["standard"])
        if masters:
            return StepPlan("standard", skipped="archive master used (STD_RESPONSE delivered with the data)")
        ctx.require(groups, "PIXTABLE_STD", "run_standard")
    jobs, notes = [], []
    for group in groups:
        first = group[0]
        ifus = ctx.ifus_of_raw(first.date_obs, "STD") or tuple(sorted({frame.ifu for frame in group if frame.ifu}))
        narrow = bool(ifus) and len(ifus) < NARROW_FIELD_IFUS
        job_profile = profile or ("circle" if narrow else None)
        area = ctx.night_area(_night_of(first))
        planned = ctx.plan("standard", "muse_standard", [group], area=area, labels=[exposure_label(first)],
                           parameters={"profile": job_profile} if job_profile else None)
        correct = narrow if aperture_correction is None else bool(aperture_correction)
        for job in planned:
            if narrow:
                job.note = (f"narrow field ({len(ifus)} IFU(s) in the raw standard exposure, fewer than "
                            f"{NARROW_FIELD_IFUS}): --profile={job_profile}"
                            + ("; response aperture-corrected (pymusepipe.stdcorrection)" if correct else ""))
            else:
                job.note = f"{len(ifus) or 'all'} IFUs: ESO's defaults"
            if correct:
                _add_aperture_correction(job)
            notes.append(job.note)
        jobs.extend(planned)
    return StepPlan("standard", jobs, note="; ".join(dict.fromkeys(notes)))


def _add_aperture_correction(job: Job):
    paths = {product.tag: product.destination for product in job.products}
    response, cube, fluxes = (paths.get(tag) for tag in ("STD_RESPONSE", "DATACUBE_STD", "STD_FLUXES"))
    if not (response and cube and fluxes):
        return

    def correct():
        from .stdcorrection import correct_response

        magnitude = correct_response(response, cube, fluxes)
        logger.warning("standard: %s observed on a narrow field: response raised by %.2f mag for the flux "
                       "muse_standard left out (see pymusepipe.stdcorrection)", job.name, magnitude)
        return f"narrow-field aperture correction: response raised by {magnitude:.2f} mag"

    job.postprocess = correct
    job.postprocess_argv = ("python3", "-m", "pymusepipe.stdcorrection", str(response), str(cube), str(fluxes))


def _night_of(frame) -> str:
    from .engine import _night_of_mjd

    return _night_of_mjd(frame.mjd)


def plan_sky(ctx, fraction=0.8, sky_mask=None, **_):
    """Sky of every OBJECT exposure: from the SKY exposures of its night when there are some (muse_create_sky
    on each SKY exposure), else measured on the object exposure itself (its pixel tables given to
    muse_create_sky as PIXTABLE_SKY: the ``fraction`` darkest spaxels are the sky)."""
    if sky_mask is not None:
        path = Path(sky_mask).absolute()
        if not path.is_file():
            raise FileNotFoundError(f"run_sky(sky_mask={sky_mask!r}): file does not exist")
        if not ctx.fakemode:
            ctx.state.set("sky_mask", path, step="sky", note="user SKY_MASK")
        ctx.sky_mask = path
    objects = ctx.products_by_exposure("PIXTABLE_OBJECT", area=ctx.layout)
    skies = ctx.products_by_exposure("PIXTABLE_SKY", area=ctx.layout)
    ctx.require(objects or skies, "PIXTABLE_OBJECT", "run_sky")
    sky_nights = {_night_of(group[0]) for group in skies}
    calibrations = {"SKY_MASK": [str(ctx.sky_mask)]} if ctx.sky_mask else None
    parameters = {"fraction": fraction}
    jobs, notes = [], []
    for group in skies:
        planned = ctx.plan("sky", "muse_create_sky", [group], area=ctx.layout, labels=[exposure_label(group[0])],
                           parameters=parameters, calibrations=calibrations)
        for job in planned:
            job.note = "offset-sky exposure"
        jobs.extend(planned)
    if skies:
        notes.append(f"{len(skies)} offset-sky exposure(s)")
    on_object = [group for group in objects if _night_of(group[0]) not in sky_nights]
    for group in on_object:
        as_sky = [InputFrame(**{**frame.__dict__, "tag": "PIXTABLE_SKY"}) for frame in group]
        planned = ctx.plan("sky", "muse_create_sky", [as_sky], area=ctx.layout,
                           labels=[f"{exposure_label(group[0])}_objectsky"], parameters=parameters,
                           calibrations=calibrations)
        for job in planned:
            job.note = (f"sky measured on the object exposure itself (darkest {fraction:g} of the field): no SKY "
                        f"exposure in night {_night_of(group[0])}")
        jobs.extend(planned)
    if on_object:
        nights = sorted({_night_of(group[0]) for group in on_object})
        notes.append(f"sky measured on {len(on_object)} object exposure(s) (no SKY exposure in night "
                     f"{', '.join(nights)})")
    note = "; ".join(notes)
    if not ctx.fakemode:
        ctx.state.set("sky_method", note, step="sky")
    return StepPlan("sky", jobs, note=note)


def _sky_for_exposure(ctx, frame) -> tuple:
    """SKY_LINES and SKY_CONTINUUM for one OBJECT exposure, why (in short, then the details), and whether the
    sky is its own: its own sky (measured on it), else the SKY exposure of the same night nearest in time, else
    none (muse_scipost then fits the sky on the exposure with the static SKY_LINES)."""
    own = {}
    same_night = {}
    night = _night_of(frame)
    for tag in ("SKY_LINES", "SKY_CONTINUUM"):
        for product in ctx.products(tag, step="sky", area=ctx.layout):
            if product.date_obs == frame.date_obs:
                own[tag] = product
            elif _night_of(product) == night:
                best = same_night.get(tag)
                if best is None or abs(product.mjd - frame.mjd) < abs(best.mjd - frame.mjd):
                    same_night[tag] = product
    if len(own) == 2:
        return {tag: [own[tag].path] for tag in own}, "its own sky (measured on the exposure)", "", True
    if len(same_night) == 2:
        delta = abs(same_night["SKY_LINES"].mjd - frame.mjd) * 24 * 60
        return ({tag: [same_night[tag].path] for tag in same_night},
                "the SKY exposure of its night nearest in time",
                f": {same_night['SKY_LINES'].date_obs}, {delta:.0f} min away", False)
    static = ctx.engine.static_calibrations.get("SKY_LINES")
    if static:
        return {"SKY_LINES": [static]}, "no sky model: fitted on the exposure with the static SKY_LINES", "", False
    return {}, "no sky model", "", False


#: Band of the images the exposures are aligned with when nothing decides otherwise (a reference image's own
#: band is preferred when the FILTER_LIST has it: see :func:`pymusepipe.target.alignment_band`).
DEFAULT_ALIGNMENT_FILTER = "Cousins_R"


def plan_prep_align(ctx, skymethod="none", filter_for_alignment=None, **_):
    """One muse_scipost per OBJECT exposure, without offsets, giving its image through the alignment filter.

    The cube is only resampled over the filter's wavelength range (the image is all that is needed), which
    saves most of the recipe's time and disk."""
    filter_name = filter_for_alignment or ctx.filter_for_alignment
    groups = ctx.require(ctx.products_by_exposure("PIXTABLE_OBJECT", area=ctx.layout), "PIXTABLE_OBJECT",
                         "run_prep_align")
    labels = [f"{exposure_label(group[0])}_prealign" for group in groups]
    parameters = {"save": "cube", "filter": filter_name, "skymethod": skymethod}
    span = filter_range(ctx.engine.static_calibrations.get("FILTER_LIST"), filter_name)
    if span is not None:
        parameters.update(lambdamin=span[0], lambdamax=span[1])
    jobs = ctx.plan("prep_align", "muse_scipost", groups, area=ctx.layout, labels=labels, parameters=parameters)
    return StepPlan("prep_align", jobs)


def filter_range(filter_list, filter_name, threshold=1e-3, margin=10.0):
    """Wavelength range [Angstrom] where a filter of a MUSE FILTER_LIST transmits more than ``threshold`` of
    its peak, widened by ``margin``; None when unknown (the white light, a missing or unreadable list)."""
    if not filter_list or str(filter_name).lower() == "white":
        return None
    from astropy.io import fits

    try:
        with fits.open(filter_list) as hdul:
            table = hdul[filter_name].data
            wavelength = np.asarray(table["lambda"], dtype=float)
            throughput = np.asarray(table["throughput"], dtype=float)
    except (OSError, KeyError, TypeError, ValueError, IndexError):
        return None
    passing = wavelength[throughput > threshold * np.nanmax(throughput)]
    if not passing.size:
        return None
    return round(float(passing.min()) - margin, 1), round(float(passing.max()) + margin, 1)


def _alignment_images(ctx):
    return ctx.products("IMAGE_FOV", step="prep_align", qualifier=ctx.filter_for_alignment, area=ctx.layout)


def exp_align_parameters(ctx, images) -> dict:
    """muse_exp_align options set from the data rather than the defaults (exp-align-and-sky.md): a narrow
    first search (pointing errors are < 4"), bad-pixel distance and minimum source count that work on narrow
    fields as on the full field, and the FWHM from the raw headers' seeing in the mode's spaxels (so a
    fakemode run plans the same command as a real one)."""
    from astropy.io import fits

    parameters = {"srcmin": 1, "bpixdistance": 2, "rsearch": "5.,2.,1.,0.5", "nbins": 20}
    dates = {frame.date_obs for frame in images}
    seeing = []
    for row in ctx.raw_rows("OBJECT"):
        if dates and str(row["date_obs"]) not in dates:
            continue
        try:
            header = fits.getheader(str(row["filename"]))
        except OSError:
            continue
        for key in ("ESO TEL IA FWHM", "ESO TEL AMBI FWHM START", "ESO TEL AMBI FWHM END"):
            value = header.get(key)
            if isinstance(value, (int, float)) and value > 0:
                seeing.append(float(value))
                break
    if seeing:
        parameters["fwhm"] = round(float(np.median(seeing)) / instrument.spaxel_scale(ctx.musemode), 2)
    return parameters


def plan_align_bypointing(ctx, **_):
    """One muse_exp_align over every OBJECT exposure of the pointing, then the pointing's OFFSET_LIST in force
    (its offsets if its QC can be trusted, else zero offsets, with the reason)."""
    images = _alignment_images(ctx)
    if len(images) < 2:
        if not images:
            ctx.require(images, "IMAGE_FOV", "run_align_bypointing")
        return StepPlan("align_bypointing", skipped="one exposure: nothing to align")
    name = f"{ctx.targetname}_{ctx.layout.pointing_name}_bypointing"
    jobs = ctx.plan("align_bypointing", "muse_exp_align", [images], area=ctx.layout, labels=[name],
                    parameters=exp_align_parameters(ctx, images))
    exp_align = next(p.destination for p in jobs[0].products if p.tag == "OFFSET_LIST")
    output = ctx.layout.folder("object") / f"OFFSET_LIST_{ctx.targetname}_{ctx.layout.pointing_name}.fits"
    exposures = [(image.date_obs, image.mjd) for image in images]
    state = ctx.state

    def choose():
        from .tasks import choose_offsets

        message = choose_offsets(output, exposures, exp_align)
        state.set("offset_list", output, step="align_bypointing", note=message)
        return message

    argv = ["python3", "-m", "pymusepipe.tasks", "choose-offsets", "--output", str(output),
            "--exp-align", str(exp_align)]
    for date_obs, mjd in exposures:
        argv += ["--exposure", date_obs, repr(mjd)]
    # Its input is recorded: its fingerprint then follows the content of muse_exp_align's OFFSET_LIST, so a new
    # alignment makes it choose again.
    choose_job = ctx.engine.python_job(
        f"offsets_{name}", step="align_bypointing", area=ctx.layout, function=choose, log_argv=argv,
        frames=[InputFrame(str(exp_align), "OFFSET_LIST", images[0].mjd)],
        products=[PlannedProduct("OFFSET_LIST", output.name, output, qualifier="in_force")],
        depends_on=[jobs[0].name])
    ctx.offset_list_in_force = output
    return StepPlan("align_bypointing", jobs + [choose_job])


def plan_align_bygroup(ctx, **_):
    """muse_exp_align within each template of several exposures: diagnostics of the alignment inside each OB
    (the pointing's OFFSET_LIST comes from run_align_bypointing, which covers every exposure)."""
    images = _alignment_images(ctx)
    by_template = OrderedDict()
    for frame in images:
        by_template.setdefault(frame.tpl_start, []).append(frame)
    groups = [group for group in by_template.values() if len(group) >= 2]
    if len(by_template) <= 1:
        return StepPlan("align_bygroup", skipped="one template: same as align_bypointing")
    if not groups:
        return StepPlan("align_bygroup", skipped="no template with two exposures")
    labels = [f"{ctx.targetname}_{group[0].tpl_start}_bygroup" for group in groups]
    jobs = []
    for group, label in zip(groups, labels):
        jobs.extend(ctx.plan("align_bygroup", "muse_exp_align", [group], area=ctx.layout, labels=[label],
                             parameters=exp_align_parameters(ctx, group), qualifiers={"OFFSET_LIST": "diagnostic"}))
    return StepPlan("align_bygroup", jobs, note="diagnostics per template; the pointing's OFFSET_LIST comes "
                                                "from align_bypointing")


def resolve_offset_list(ctx, offset_list):
    """The OFFSET_LIST a science step uses: True -> the one in force (if any), a path -> that file (validated:
    the recipes silently ignore a malformed table), False/None -> none."""
    if offset_list is True:
        return ctx.offset_list_in_force
    if offset_list in (False, None):
        return None
    path = Path(offset_list).absolute()
    if not path.is_file():
        raise FileNotFoundError(f"offset_list={offset_list}: file does not exist")
    from .alignment.offset_list import read_offset_list

    read_offset_list(path)
    return path


def scipost_sky_method(ctx, group, requested: str, own_sky: bool) -> tuple:
    """muse_scipost's ``--skymethod`` for one exposure, and why when it is not the one requested.

    ``auto`` fits the sky on the exposure (``model``) unless that does not fit in the memory budget while the
    exposure has its own sky from muse_create_sky: that sky, measured on the same exposure, is then subtracted as
    it is (``subtract-model``), which needs no intermediate white-light cube (on 24 IFUs: 15.5 GB against more
    than 24 GB, docs/benchmarks.md). A sky from another exposure is always refitted: the sky changes in time.
    """
    if requested != "auto":
        return requested, ""
    if not own_sky:
        return "model", ""
    ifus = len(ctx.engine.ifus_of(group)) or 1
    budget = ctx.engine.memory_budget()
    fit = memory_need("muse_scipost", ifus=ifus, parameters={"skymethod": "model"})
    if fit <= budget:
        return "model", ""
    return "subtract-model", (f"; subtracted as measured (--skymethod=subtract-model): refitting it on {ifus} "
                              f"IFUs (model) needs {fit:.1f} GB, over the {budget:.1f} GB memory budget")


def plan_scipost(ctx, expotype="OBJECT", offset_list=True, skymethod="auto", filter_list=None, save=None,
                 output_wcs=None, **_):
    step = "scipost" if expotype == "OBJECT" else f"scipost_{expotype.lower()}"
    pixtable = f"PIXTABLE_{expotype}"
    offsets = resolve_offset_list(ctx, offset_list)
    groups = ctx.require(ctx.products_by_exposure(pixtable, as_tag="PIXTABLE_OBJECT", area=ctx.layout), pixtable,
                         f"run_scipost(expotype={expotype!r})")
    unaligned = offsets is None and expotype == "OBJECT" and ctx.offset_list_in_force is not None
    save = save or ("cube,individual" if expotype == "OBJECT" else "cube")
    # A user's override by recipe or step wins over the step's own choice, as for every parameter.
    skymethod = ctx.parameters_for(step, "muse_scipost", {"skymethod": skymethod})["skymethod"]
    by_method = OrderedDict()   # skymethod -> (groups, labels, calibrations)
    notes, note_of = [], {}
    for group in groups:
        explicit = {"OFFSET_LIST": [str(offsets)]} if offsets is not None else {}
        if output_wcs is not None:
            explicit["OUTPUT_WCS"] = [str(output_wcs)]
        note = detail = ""
        method = skymethod
        if skymethod != "none":
            sky, note, detail, own = _sky_for_exposure(ctx, group[0])
            method, why = scipost_sky_method(ctx, group, skymethod, own)
            detail += why
            explicit.update(sky)
            if ctx.sky_mask is not None:
                explicit["SKY_MASK"] = [str(ctx.sky_mask)]
        label = exposure_label(group[0]) + ("_unaligned" if unaligned else "")
        entry = by_method.setdefault(method, ([], [], []))
        entry[0].append(group)
        entry[1].append(label)
        entry[2].append(explicit)
        notes.append(note + (" (subtracted as measured)" if method == "subtract-model" else ""))
        note_of[label] = note + detail if skymethod != "none" else "no sky subtraction"
    qualifiers = {tag: "unaligned" for tag in ("DATACUBE_FINAL", "PIXTABLE_REDUCED")} if unaligned else None
    jobs = []
    for method, (method_groups, labels, calibrations) in by_method.items():
        jobs += ctx.plan(step, "muse_scipost", method_groups, area=ctx.layout, labels=labels,
                         calibrations=calibrations, qualifiers=qualifiers,
                         parameters={"save": save, "filter": filter_list or ctx.filter_list},
                         decided={"skymethod": method})
    offset_note = f"OFFSET_LIST {offsets.name}" if offsets is not None else "no OFFSET_LIST"
    for job in jobs:
        job.note = f"sky: {note_of[job.label]}; {offset_note}"
    summary = "; ".join(f"{count} exposure(s) with {what}" for what, count in
                        sorted(_count(notes).items())) if skymethod != "none" else "no sky subtraction"
    if unaligned:
        summary += "; unaligned products kept apart from the aligned ones (offset_list=False)"
    return StepPlan(step, jobs, note=summary)


def _count(items) -> dict:
    out = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def plan_scipost_sky(ctx, **options):
    if not ctx.raw_rows("SKY") and not ctx.products_by_exposure("PIXTABLE_SKY", area=ctx.layout):
        return StepPlan("scipost_sky", skipped="no offset-sky exposure in this pointing")
    options = {"offset_list": False, "skymethod": "none", **options, "expotype": "SKY"}
    plan = plan_scipost(ctx, **options)
    plan.step = "scipost_sky"
    return plan


def plan_combine_pointing(ctx, offset_list=True, filter_list=None, output_wcs=None, **_):
    frames = [frame for frame in ctx.products("PIXTABLE_REDUCED", step="scipost", area=ctx.layout)]
    records = {record.path: record for record in ctx.engine.catalogue.select(
        tag="PIXTABLE_REDUCED", step="scipost", area=ctx.layout.base_dir, statuses=("done", "planned", "cleaned"))}
    frames = [frame for frame in frames if records[frame.path].qualifier != "unaligned"]
    ctx.require(frames, "PIXTABLE_REDUCED", "run_combine_pointing")
    if len(frames) < 2:
        return StepPlan("combine_pointing", skipped="one exposure: its scipost cube is the final cube")
    offsets = resolve_offset_list(ctx, offset_list)
    explicit = {"OFFSET_LIST": [str(offsets)]} if offsets is not None else {}
    if output_wcs is not None:
        explicit["OUTPUT_WCS"] = [str(output_wcs)]
    jobs = ctx.plan("combine_pointing", "muse_exp_combine", [frames], area=ctx.layout,
                    labels=[f"{ctx.targetname}_{ctx.layout.pointing_name}"],
                    parameters={"filter": filter_list or ctx.filter_list}, calibrations=explicit)
    return StepPlan("combine_pointing", jobs,
                    note=f"{len(frames)} exposures" + (f", OFFSET_LIST {offsets.name}" if offsets else ""))


STEPS = StepTable([
    StepSpec("bias", "muse_bias", "master bias per template", "raw BIAS frames, one job per template",
             ("MASTER_BIAS",), (), NIGHT, plan_bias),
    StepSpec("flat", "muse_flat", "master flat and trace table", "raw FLAT frames, one job per template",
             ("MASTER_FLAT", "TRACE_TABLE"), ("MASTER_BIAS",), NIGHT, plan_flat),
    StepSpec("wave", "muse_wavecal", "wavelength calibration", "raw ARC frames, one job per template",
             ("WAVECAL_TABLE", "WAVECAL_RESIDUALS"), ("MASTER_BIAS", "TRACE_TABLE"), NIGHT, plan_wave),
    StepSpec("lsf", "muse_lsf", "line-spread function", "raw ARC_LSF templates, else the ARC ones",
             ("LSF_PROFILE",), ("MASTER_BIAS", "TRACE_TABLE", "WAVECAL_TABLE"), NIGHT, plan_lsf),
    StepSpec("twilight", "muse_twilight", "twilight-flat illumination correction",
             "raw SKYFLAT frames (+ ILLUM), one job per template", ("TWILIGHT_CUBE", "DATACUBE_SKYFLAT"),
             ("MASTER_BIAS", "MASTER_FLAT", "TRACE_TABLE", "WAVECAL_TABLE"), NIGHT, plan_twilight),
    StepSpec("scibasic_all", "muse_scibasic", "pixel tables of every OBJECT, SKY and STD exposure",
             "raw OBJECT, SKY, STD exposures, one job per exposure",
             ("PIXTABLE_OBJECT", "PIXTABLE_SKY", "PIXTABLE_STD"),
             ("MASTER_BIAS", "MASTER_FLAT", "TRACE_TABLE", "WAVECAL_TABLE", "TWILIGHT_CUBE"), POINTING,
             plan_scibasic_all),
    StepSpec("standard", "muse_standard", "flux response and telluric correction from the standard star",
             "PIXTABLE_STD per exposure", ("STD_RESPONSE", "STD_TELLURIC", "DATACUBE_STD", "STD_FLUXES"),
             ("PIXTABLE_STD",), NIGHT, plan_standard),
    StepSpec("sky", "muse_create_sky", "sky lines and continuum (offset-sky exposures, else on the object)",
             "PIXTABLE_SKY per exposure, or PIXTABLE_OBJECT of nights without SKY exposure",
             ("SKY_LINES", "SKY_CONTINUUM", "SKY_MASK", "SKY_SPECTRUM", "SKY_IMAGE"),
             ("PIXTABLE_SKY", "PIXTABLE_OBJECT", "STD_RESPONSE", "LSF_PROFILE"), POINTING, plan_sky),
    StepSpec("prep_align", "muse_scipost", "one image per exposure for the alignment",
             "PIXTABLE_OBJECT per exposure", ("IMAGE_FOV",), ("PIXTABLE_OBJECT", "STD_RESPONSE"), POINTING,
             plan_prep_align),
    StepSpec("align_bypointing", "muse_exp_align", "offsets of every exposure of the pointing, and the "
             "pointing's OFFSET_LIST in force", "IMAGE_FOV of prep_align", ("OFFSET_LIST",), ("IMAGE_FOV",),
             POINTING, plan_align_bypointing),
    StepSpec("align_bygroup", "muse_exp_align", "offsets within each template (diagnostics)",
             "IMAGE_FOV of prep_align per template", (), ("IMAGE_FOV",), POINTING, plan_align_bygroup),
    StepSpec("scipost", "muse_scipost", "reduced pixel tables, cube and images per OBJECT exposure",
             "PIXTABLE_OBJECT per exposure", ("PIXTABLE_REDUCED", "DATACUBE_FINAL"),
             ("PIXTABLE_OBJECT", "STD_RESPONSE", "SKY_LINES", "OFFSET_LIST"), POINTING, plan_scipost),
    StepSpec("scipost_sky", "muse_scipost", "cube and images per SKY exposure, no offsets, no sky subtraction",
             "PIXTABLE_SKY per exposure", (), ("PIXTABLE_SKY", "STD_RESPONSE"), POINTING, plan_scipost_sky),
    StepSpec("combine_pointing", "muse_exp_combine", "combined cube of the pointing with the OFFSET_LIST",
             "PIXTABLE_REDUCED of scipost", (), ("PIXTABLE_REDUCED", "OFFSET_LIST"), POINTING,
             plan_combine_pointing),
])


def describe(steps: StepTable = STEPS) -> str:
    """A table of the steps (name, recipe, where, what), for the docs and ``--help``."""
    return "\n".join(f"{spec.name:<17} {spec.recipe:<17} {spec.area:<9} {spec.description}"
                     for spec in steps.values())

