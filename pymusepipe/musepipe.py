"""``MusePipe``: the reduction of one target and pointing, step by step or in one call.

The class holds the state (configuration, folder layout, raw table, products, step status); everything it
does is delegated to the plain modules under it: :mod:`~pymusepipe.rawdata` says what the raw frames are,
:mod:`~pymusepipe.engine` plans, runs and records the esorex jobs of a step. Each ``run_*`` method only
decides *which* frames go into which recipe with which options.

Example
-------
>>> from pymusepipe import musepipe
>>> mypipe = musepipe.MusePipe(targetname="NGC1000", pointing=1, rc_filename="rc.dic",
...                            cal_filename="calib_tables.dic", logfile="NGC1000_v01.log",
...                            filter_list="white,Cousins_R", filter_for_alignment="Cousins_R")
>>> mypipe.run_all_recipes()                                    # doctest: +SKIP
"""
from __future__ import annotations

import logging
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import instrument
from .association import InputFrame, MissingCalibrationError, ValidityTable
from .config import PipelineConfig
from .engine import IFU_AUTO, RecipeEngine, StepReport
from .executors import Executor, FakeExecutor, LocalExecutor
from .layout import PointingLayout
from .rawdata import scan_pointing
from .recipes import default_recipe_table

__all__ = ["MusePipe", "STEPS", "StepInputError", "StepFailedError"]

logger = logging.getLogger(__name__)

#: The steps of ``run_all_recipes``, in order: name -> what the step does.
STEPS = OrderedDict([
    ("bias", "master bias per template (muse_bias)"),
    ("flat", "master flat and trace table (muse_flat)"),
    ("wave", "wavelength calibration (muse_wavecal)"),
    ("lsf", "line-spread function (muse_lsf)"),
    ("twilight", "twilight-flat illumination correction (muse_twilight)"),
    ("scibasic_all", "pixel tables of every OBJECT, SKY and STD exposure (muse_scibasic)"),
    ("standard", "flux response from the standard star (muse_standard)"),
    ("sky", "sky spectrum and continuum from the SKY exposures (muse_create_sky)"),
    ("prep_align", "one image per exposure for the alignment (muse_scipost)"),
    ("align_bypointing", "relative offsets of all exposures of the pointing (muse_exp_align)"),
    ("align_bygroup", "relative offsets within each template (muse_exp_align)"),
    ("scipost", "reduced pixel tables, cube and images per OBJECT exposure (muse_scipost)"),
    ("scipost_sky", "cube and images per SKY exposure, no offsets, no sky subtraction (muse_scipost)"),
    ("combine_pointing", "combined cube of the pointing with the OFFSET_LIST (muse_exp_combine)"),
])

#: Which step makes a product, to tell the user what to run when a step lacks its inputs.
PRODUCED_BY = {
    "MASTER_BIAS": "run_bias", "MASTER_FLAT": "run_flat", "TRACE_TABLE": "run_flat",
    "WAVECAL_TABLE": "run_wave", "LSF_PROFILE": "run_lsf", "TWILIGHT_CUBE": "run_twilight",
    "PIXTABLE_OBJECT": "run_scibasic_all", "PIXTABLE_SKY": "run_scibasic_all", "PIXTABLE_STD": "run_scibasic_all",
    "STD_RESPONSE": "run_standard", "STD_TELLURIC": "run_standard", "SKY_LINES": "run_sky",
    "SKY_CONTINUUM": "run_sky", "IMAGE_FOV": "run_prep_align", "PIXTABLE_REDUCED": "run_scipost",
}

#: muse_exp_align's OFFSET_LIST is trusted only with this many matched sources in every pair and no unmatched
#: exposure (exp-align-and-sky.md: 309/309 runs right with these cuts, wrong offsets of up to 25" below).
EXPALIGN_MIN_MATCHES = 5

#: Below this many IFUs the field is a narrow strip (2.5" per IFU) and some recipe defaults do not hold.
NARROW_FIELD_IFUS = 4


class StepInputError(RuntimeError):
    """A step lacks the products of an earlier step; the message says which step makes them."""


class StepFailedError(RuntimeError):
    """A step had failed jobs; the message gives each job's esorex log tail."""


@dataclass
class StepStatus:
    """What the last call of a step did."""

    name: str
    status: str
    summary: str
    seconds: float
    report: StepReport | None = None


def _exposure_label(frame) -> str:
    expno = frame.expno if frame.expno >= 0 else 1
    return f"{frame.tpl_start or frame.date_obs}_{expno:04d}"


class MusePipe:
    """Reduce the MUSE data of one target and pointing with the ESO pipeline.

    Parameters
    ----------
    targetname : str
        Target folder under ``root``.
    pointing : int
        Pointing number (folder ``P01`` for 1 with the default ``str_pointing``/``ndigits``).
    rc_filename, cal_filename : str or Path, optional
        ``rc.dic`` and ``calib_tables.dic``; or give ``config`` (a :class:`PipelineConfig`) or the settings
        ``musecalib``, ``root`` (and optionally ``musecalib_time``, ``calib_tables``) as keyword arguments.
    logfile : str
        Name of the replay log in ``Log/`` (a shell script of every command run).
    reset_log : bool
        Start the replay log afresh instead of appending.
    fakemode : bool
        Plan everything, write SOFs and the log, print the commands, run nothing.
    overwrite_astropy_table : bool
        Overwrite the tables in ``Astro_Tables/`` (else keep existing ones).
    filter_list : str
        Filters of the images reconstructed from the final cubes (comma separated, in FILTER_LIST).
    filter_for_alignment : str
        Filter of the images used for the alignment.
    musemode : str
        Observing mode; frames of other modes are left out (see :func:`~pymusepipe.rawdata.scan_raw`).
    time_astrometry : bool
        Take GEOMETRY_TABLE and ASTROMETRY_WCS by date from ``musecalib_time/validity_table.txt`` instead of
        the ``geo_table`` / ``astro_table`` of ``calib_tables.dic``.
    pinning : str
        ``likwid`` (default when installed), ``taskset`` or ``none``.
    cpus : sequence of int, optional
        CPUs to use (default: all this process may use).
    memory_gb : float, optional
        Memory budget of concurrent jobs (default: 80% of the available memory).
    executor : str or Executor
        ``'local'`` (default), ``'dask'`` (jobs sent to a Dask cluster: give ``client`` or ``scheduler``) or an
        :class:`~pymusepipe.executors.Executor` instance.
    client, scheduler : optional
        With ``executor='dask'``: a ``dask.distributed.Client`` (e.g. on a dask-jobqueue SLURMCluster), or the
        scheduler address.
    ifu_mode : str
        ``'auto'`` (ESO's ``--nifu=-1 --merge`` with all 24 IFUs, else one job per IFU), ``'fanout'`` or
        ``'merged'``.
    overwrite : bool
        Re-run jobs whose products are up to date.
    folders : dict, optional
        Folder renamings (see :mod:`pymusepipe.layout`).
    verbose : bool
        Show pymusepipe's messages on the terminal when logging is not configured.
    """

    def __init__(self, targetname, pointing=1, rc_filename=None, cal_filename=None, *, config=None,
                 logfile="MusePipe.log", reset_log=False, fakemode=False, overwrite_astropy_table=True,
                 filter_list="white", filter_for_alignment="Cousins_R", musemode=instrument.DEFAULT_MODE,
                 time_astrometry=False, pinning=None, cpus=None, memory_gb=None, executor="local",
                 ifu_mode=IFU_AUTO, overwrite=False, folders=None, verbose=True, esorex="esorex", client=None,
                 scheduler=None, **settings):
        if verbose:
            _show_messages()
        self.config = self._make_config(config, rc_filename, cal_filename, folders, settings)
        self.targetname = str(targetname)
        self.pointing = int(pointing)
        self.musemode = instrument.check_mode(musemode)
        self.fakemode = bool(fakemode)
        self.overwrite_astropy_table = bool(overwrite_astropy_table)
        self.filter_list = str(filter_list)
        self.filter_for_alignment = str(filter_for_alignment)
        self.time_astrometry = bool(time_astrometry)
        self.ifu_mode = ifu_mode
        self.layout = PointingLayout(self.config.root, self.targetname, self.pointing,
                                     str_pointing=self.config.str_pointing, ndigits=self.config.ndigits,
                                     folders=self.config.folders)
        if not self.layout.folder("raw").is_dir():
            raise FileNotFoundError(f"raw folder {self.layout.folder('raw')} does not exist: put the raw files of "
                                    f"target {self.targetname}, pointing {self.pointing} there")
        self.layout.create_working_folders()
        for source in (rc_filename, cal_filename):
            if source is not None:
                # A copy of the configuration beside the products, for the record.
                shutil.copy2(Path(source).expanduser(), self.layout.folder("config") / Path(source).name)
        self.scan = scan_pointing(self.layout, self.musemode, overwrite_tables=self.overwrite_astropy_table)
        logger.info("%s", self.scan.summary())
        self.recipes = default_recipe_table()
        self.engine = RecipeEngine(
            self.layout, recipes=self.recipes, static_calibrations=self._static_calibrations(),
            validity=self._validity_table(), raw_table=self.scan.table,
            executor=self._make_executor(executor, pinning, cpus, memory_gb, client, scheduler), fakemode=self.fakemode,
            logfile=logfile, reset_log=reset_log, overwrite=overwrite, esorex=esorex)
        self.steps = OrderedDict()
        #: OFFSET_LIST used by run_scipost / run_combine_pointing (set by the alignment steps or the user).
        self.offset_list = None
        #: Recipe parameter overrides of the current run_all_recipes call (step or recipe -> parameters).
        self._parameter_overrides = {}

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _make_config(config, rc_filename, cal_filename, folders, settings):
        if config is not None:
            return config
        if rc_filename is not None or cal_filename is not None:
            if rc_filename is None or cal_filename is None:
                raise ValueError("give both rc_filename and cal_filename (or neither, with musecalib= and root=)")
            return PipelineConfig.from_files(rc_filename, cal_filename, folders=folders, **settings)
        unknown = set(settings) - {"musecalib", "root", "musecalib_time", "calib_tables", "str_pointing", "ndigits"}
        if unknown:
            raise TypeError(f"MusePipe got unexpected argument(s) {', '.join(sorted(unknown))}")
        if "musecalib" not in settings or "root" not in settings:
            raise ValueError("MusePipe needs rc_filename and cal_filename, or the settings musecalib= and root=")
        return PipelineConfig.from_settings(folders=folders, **settings)

    def _static_calibrations(self) -> dict:
        statics = self.config.static_calibrations()
        if self.time_astrometry:
            # Chosen per job by date from the validity table instead.
            statics.pop("GEOMETRY_TABLE", None)
            statics.pop("ASTROMETRY_WCS", None)
        return statics

    def _validity_table(self):
        if not self.time_astrometry:
            return None
        if self.config.musecalib_time is None:
            raise ValueError("time_astrometry=True needs musecalib_time in rc.dic (the folder of the "
                             "time-dependent geometry/astrometry tables)")
        return ValidityTable.read(self.config.musecalib_time / "validity_table.txt")

    def _make_executor(self, executor, pinning, cpus, memory_gb, client=None, scheduler=None):
        if self.fakemode:
            return FakeExecutor()
        if isinstance(executor, Executor):
            return executor
        if executor == "local":
            return LocalExecutor(cpus=cpus, memory_gb=memory_gb, pinning=pinning)
        if executor == "dask":
            from .dask_executor import DaskExecutor

            return DaskExecutor(client, scheduler=scheduler, pinning=pinning or "none")
        raise ValueError(f"executor={executor!r}: expected 'local', 'dask' or an Executor instance")

    # ------------------------------------------------------------------ selections
    @property
    def raw_table(self):
        """The raw table of this pointing (one row per accepted frame)."""
        return self.scan.table

    def _raw_templates(self, tag) -> list:
        """Raw frames of a tag, grouped by template (TPL START), in time order."""
        rows = self.raw_table[self.raw_table["tag"] == tag]
        groups = OrderedDict()
        for row in rows:
            groups.setdefault(str(row["tpl_start"]) or str(row["date_obs"]), []).append(row)
        return list(groups.values())

    def _raw_exposures(self, tag) -> list:
        return [[row] for row in self.raw_table[self.raw_table["tag"] == tag]]

    def _products(self, tag, recipe=None) -> list:
        """Registered products of a tag (planned ones too in fakemode), as input frames."""
        wanted = {"done", "planned"} if self.fakemode else {"done"}
        frames = []
        for record in self.engine.catalogue.records:
            if record.tag != tag or record.status not in wanted:
                continue
            if recipe and record.recipe != recipe:
                continue
            frames.append(InputFrame.from_product(record))
        return sorted(frames, key=lambda frame: (frame.mjd, frame.ifu))

    def _products_by_exposure(self, tag, as_tag=None, **selection) -> list:
        """Products of a tag grouped per exposure (all IFUs of one DATE-OBS together)."""
        groups = OrderedDict()
        for frame in self._products(tag, **selection):
            if as_tag:
                frame = InputFrame(**{**frame.__dict__, "tag": as_tag})
            groups.setdefault(frame.date_obs or frame.path, []).append(frame)
        return list(groups.values())

    def _require(self, groups, tag, step):
        if not groups:
            producer = PRODUCED_BY.get(tag, "an earlier step")
            raise StepInputError(f"{step}: no {tag} product for {self.targetname} pointing {self.pointing}; "
                                 f"run {producer}() first")
        return groups

    # ------------------------------------------------------------------ running
    def _run_jobs(self, step, recipe, groups, *, labels=None, parameters=None, calibrations=None,
                  skip_calibrations=()):
        """Plan and run one recipe over groups of frames; record the step's status and summary."""
        start = time.monotonic()
        # The user's overrides win over the step's own choices (e.g. run_standard's profile).
        parameters = {**(parameters or {}), **self._parameter_overrides.get(recipe, {}),
                      **self._parameter_overrides.get(step, {})}
        try:
            jobs = self.engine.plan(recipe, groups, labels=labels, parameters=parameters,
                                    ifu_mode=self.ifu_mode, calibrations=calibrations,
                                    skip_calibrations=skip_calibrations)
        except MissingCalibrationError as error:
            hints = sorted({PRODUCED_BY[item.tag] for item in error.missing if item.tag in PRODUCED_BY})
            hint = f" (made by {', '.join(h + '()' for h in hints)})" if hints else ""
            raise StepInputError(f"{step}: {error}{hint}") from error
        report = self.engine.run(jobs, step=step)
        seconds = time.monotonic() - start
        status = "done" if report.ok else "failed"
        if self.fakemode:
            status = "planned"
        self.steps[step] = StepStatus(step, status, report.summary(), seconds, report)
        line = (f"{step}: {len(jobs)} job(s) of {recipe}: {report.summary()} in {seconds:.1f} s")
        (logger.info if report.ok else logger.error)(line)
        self.engine.log.comment(line)
        if not report.ok:
            details = []
            for name in report.failed:
                result = report.results[name]
                details.append(f"--- {name}: {result.message}")
                if result.log_tail:
                    details.append("    tail of the esorex log:")
                    details.extend(f"    {line}" for line in result.log_tail)
            raise StepFailedError(f"step {step} failed ({report.summary()}):\n" + "\n".join(details))
        return report

    # ------------------------------------------------------------------ calibration steps
    def run_bias(self):
        """Master bias of every BIAS template (muse_bias)."""
        return self._run_jobs("bias", "muse_bias", self._require(self._raw_templates("BIAS"), "BIAS", "run_bias"))

    def run_flat(self):
        """Master flat and trace table of every FLAT template (muse_flat)."""
        return self._run_jobs("flat", "muse_flat", self._require(self._raw_templates("FLAT"), "FLAT", "run_flat"))

    def run_wave(self):
        """Wavelength solution of every ARC template (muse_wavecal)."""
        return self._run_jobs("wave", "muse_wavecal", self._require(self._raw_templates("ARC"), "ARC", "run_wave"))

    def run_lsf(self):
        """Line-spread function from the dedicated ARC_LSF templates, or else from the arcs (muse_lsf)."""
        groups = self._raw_templates("ARC_LSF") or self._raw_templates("ARC")
        return self._run_jobs("lsf", "muse_lsf", self._require(groups, "ARC", "run_lsf"))

    def run_twilight(self, illum=True):
        """Twilight-flat correction cube of every SKYFLAT template (muse_twilight)."""
        groups = self._require(self._raw_templates("SKYFLAT"), "SKYFLAT", "run_twilight")
        return self._run_jobs("twilight", "muse_twilight", groups, skip_calibrations=() if illum else ("ILLUM",))

    def run_scibasic_all(self, illum=True, expotypes=("OBJECT", "SKY", "STD")):
        """Pixel tables of every exposure of the given types, one esorex per exposure (muse_scibasic)."""
        groups = [group for tag in expotypes for group in self._raw_exposures(tag)]
        self._require(groups, "OBJECT", "run_scibasic_all")
        labels = [_exposure_label(InputFrame.from_raw_row(group[0])) for group in groups]
        return self._run_jobs("scibasic_all", "muse_scibasic", groups, labels=labels,
                              skip_calibrations=() if illum else ("ILLUM",))

    def run_standard(self, profile=None, aperture_correction=None):
        """Flux response and telluric correction from each standard-star exposure (muse_standard).

        Parameters
        ----------
        profile : str, optional
            muse_standard's flux-integration profile: by default ``auto`` (a Moffat fit), or ``circle`` when the
            standard was observed on fewer than :data:`NARROW_FIELD_IFUS` IFUs (a 2.5"-wide strip cannot hold
            the Moffat fit window; the recipe then stops with "no valid data").
        aperture_correction : bool, optional
            Correct the response for the flux muse_standard misses on narrow fields
            (:mod:`pymusepipe.stdcorrection`); by default on fewer than :data:`NARROW_FIELD_IFUS` IFUs.
        """
        groups = self._require(self._products_by_exposure("PIXTABLE_STD"), "PIXTABLE_STD", "run_standard")
        labels = [_exposure_label(group[0]) for group in groups]
        narrow = max(len({frame.ifu for frame in group}) for group in groups) < NARROW_FIELD_IFUS
        if profile is None:
            profile = "circle" if narrow else "auto"
        report = self._run_jobs("standard", "muse_standard", groups, labels=labels, parameters={"profile": profile})
        if aperture_correction is None:
            aperture_correction = narrow
        if aperture_correction and not self.fakemode:
            self._correct_standard_responses(report)
        return report

    def _correct_standard_responses(self, report):
        """Narrow-field aperture correction of each STD_RESPONSE, recorded as a runnable line of the log."""
        import sys

        from .stdcorrection import correct_response

        for job in report.jobs:
            paths = {product.tag: product.destination for product in job.products}
            response, cube, fluxes = (paths.get(tag) for tag in ("STD_RESPONSE", "DATACUBE_STD", "STD_FLUXES"))
            if not (response and cube and fluxes):
                continue
            magnitude = correct_response(response, cube, fluxes)
            self.engine.log.command([sys.executable, "-m", "pymusepipe.stdcorrection", str(response), str(cube),
                                     str(fluxes)])
            if magnitude:
                logger.warning("standard: %s observed on a narrow field: response raised by %.2f mag for the "
                               "flux muse_standard left out (see pymusepipe.stdcorrection)", job.name, magnitude)

    def run_sky(self, fraction=0.8):
        """Sky spectrum, lines and continuum of each SKY exposure (muse_create_sky)."""
        groups = self._require(self._products_by_exposure("PIXTABLE_SKY"), "PIXTABLE_SKY", "run_sky")
        labels = [_exposure_label(group[0]) for group in groups]
        return self._run_jobs("sky", "muse_create_sky", groups, labels=labels, parameters={"fraction": fraction})

    # ------------------------------------------------------------------ science steps
    def _science_groups(self, expotype, step):
        pixtable = f"PIXTABLE_{expotype}"
        return self._require(self._products_by_exposure(pixtable, as_tag="PIXTABLE_OBJECT"), pixtable, step)

    def _sky_model_calibrations(self, mjd):
        """SKY_LINES and SKY_CONTINUUM of the SKY exposure closest in time (run_sky), if any."""
        chosen = {}
        for tag in ("SKY_LINES", "SKY_CONTINUUM"):
            products = self._products(tag, recipe="muse_create_sky")
            if products:
                chosen[tag] = [min(products, key=lambda frame: abs(frame.mjd - mjd)).path]
        return chosen

    def run_prep_align(self, skymethod="none", filter_for_alignment=None):
        """One muse_scipost per OBJECT exposure, without offsets, with an image through the alignment filter.

        The images are copied to the target's ``Alignment/`` folder. ``skymethod='none'`` by default:
        muse_exp_align subtracts its own background and the images only serve to measure positions.
        """
        filter_name = filter_for_alignment or self.filter_for_alignment
        groups = self._science_groups("OBJECT", "run_prep_align")
        labels = [f"{_exposure_label(group[0])}_prealign" for group in groups]
        report = self._run_jobs("prep_align", "muse_scipost", groups, labels=labels,
                                parameters={"save": "cube", "filter": filter_name, "skymethod": skymethod})
        if not self.fakemode:
            alignment = self.layout.folder("alignment", create=True)
            self.engine.log.mkdir(alignment)
            for path in report.products("IMAGE_FOV"):
                target = alignment / f"{self.layout.pointing_name}_{Path(path).name}"
                shutil.copy2(path, target)
                self.engine.log.command(["cp", str(path), str(target)])
        return report

    def _alignment_images(self):
        images = [frame for frame in self._products("IMAGE_FOV", recipe="muse_scipost")
                  if frame.path.endswith("_prealign.fits") and
                  f"_{self.filter_for_alignment}_" in Path(frame.path).name]
        return images

    def _exp_align_parameters(self, images):
        """muse_exp_align options set from the data rather than the defaults (exp-align-and-sky.md).

        The seeing comes from the raw OBJECT headers (DIMM/image-analysis FWHM), so a fakemode run plans the
        same command as a real one.
        """
        parameters = {"srcmin": 1, "bpixdistance": 2, "rsearch": "5.,2.,1.,0.5", "nbins": 20}
        dates = {frame.date_obs for frame in images}
        seeing = []
        for row in self.raw_table[self.raw_table["tag"] == "OBJECT"]:
            if dates and str(row["date_obs"]) not in dates:
                continue
            header = fits.getheader(str(row["filename"]))
            for key in ("ESO TEL IA FWHM", "ESO TEL AMBI FWHM START", "ESO TEL AMBI FWHM END"):
                value = header.get(key)
                if isinstance(value, (int, float)) and value > 0:
                    seeing.append(float(value))
                    break
        if seeing:
            parameters["fwhm"] = round(float(np.median(seeing)) / instrument.SPAXEL_SCALE_WFM, 2)
        return parameters

    def _run_exp_align(self, step, groups, labels):
        if not groups:
            logger.info("%s: fewer than 2 exposures to align: skipped", step)
            self.steps[step] = StepStatus(step, "skipped", "fewer than 2 exposures", 0.0)
            return None
        images = [frame for group in groups for frame in group]
        report = self._run_jobs(step, "muse_exp_align", groups, labels=labels,
                                parameters=self._exp_align_parameters(images))
        for path in report.products("OFFSET_LIST"):
            if self.fakemode:
                self.offset_list = Path(path)
            elif offset_list_is_trusted(path):
                self.offset_list = Path(path)
                logger.info("%s: OFFSET_LIST %s accepted", step, path)
            else:
                logger.warning("%s: muse_exp_align's OFFSET_LIST %s has too few matched sources (QC EXPALIGN "
                               "NMATCH MIN < %d or NOMATCH > 0): not used; %s", step, path,
                               EXPALIGN_MIN_MATCHES,
                               f"keeping {self.offset_list}" if self.offset_list else
                               "exposures will be combined without offsets")
        return report

    def run_align_bypointing(self):
        """Relative offsets of all the pointing's exposures (muse_exp_align); skipped with one exposure."""
        images = self._alignment_images()
        groups = [images] if len(images) >= 2 else []
        return self._run_exp_align("align_bypointing", groups, [f"{self.layout.pointing_name}_bypointing"])

    def run_align_bygroup(self):
        """Relative offsets within each template of exposures (muse_exp_align)."""
        by_template = OrderedDict()
        for frame in self._alignment_images():
            by_template.setdefault(frame.tpl_start, []).append(frame)
        groups = [group for group in by_template.values() if len(group) >= 2]
        if len(groups) == 1 and len(groups[0]) == len(self._alignment_images()):
            # One template holds every exposure: the same alignment as run_align_bypointing.
            logger.info("align_bygroup: one template holds every exposure: same as align_bypointing, skipped")
            self.steps["align_bygroup"] = StepStatus("align_bygroup", "skipped", "same as align_bypointing", 0.0)
            return None
        return self._run_exp_align("align_bygroup", groups, [f"{group[0].tpl_start}_bygroup" for group in groups])

    def run_align_to_reference(self, reference, *, filter_name=None, output=None, merge_with_exp_align=False,
                               **align_options):
        """Offsets and flux scales of the ``run_prep_align`` images against an external reference image.

        Uses :func:`pymusepipe.alignment.align_images`; the OFFSET_LIST written (in the target's
        ``Alignment/`` folder) becomes :attr:`offset_list`, used by :meth:`run_scipost` and
        :meth:`run_combine_pointing`. Images the fit flags as doubtful are left unmoved and unscaled.

        Parameters
        ----------
        reference : str or Path
            Reference image (its own WCS, pixel scale, PSF, BUNIT and FILTER).
        filter_name : str, optional
            Band of the reference when its header does not say.
        output : str or Path, optional
            OFFSET_LIST to write (default ``Alignment/OFFSET_LIST_<pointing>_reference.fits``).
        merge_with_exp_align : bool
            Fill exposures the reference fit flags with muse_exp_align's relative offsets.
        **align_options
            Passed to :func:`~pymusepipe.alignment.align_images`.

        Returns
        -------
        astropy.table.Table
            One row per image: offsets, flux scale, background, errors and quality.
        """
        from .alignment import align_images, merge_offset_lists, write_alignment_offset_list, write_offset_list

        images = [frame.path for frame in self._alignment_images()]
        self._require(images, "IMAGE_FOV", "run_align_to_reference")
        alignment = self.layout.folder("alignment", create=True)
        output = Path(output) if output else alignment / f"OFFSET_LIST_{self.layout.pointing_name}_reference.fits"
        table = align_images(images, reference, filter_name=filter_name,
                             figure_folder=self.layout.folder("figures", create=True), **align_options)
        write_alignment_offset_list(table, output)
        if merge_with_exp_align and self.offset_list is not None:
            write_offset_list(merge_offset_lists(relative=self.offset_list, absolute=output), output)
        logger.info("align_to_reference: %d image(s) aligned to %s -> %s", len(table), reference, output)
        self.engine.log.comment(f"align_to_reference: OFFSET_LIST {output} from reference {reference}")
        self.offset_list = output
        return table

    def run_scipost(self, expotype="OBJECT", offset_list=True, skymethod="model", filter_list=None, save=None):
        """Reduced pixel table, cube and images of each exposure of ``expotype`` (muse_scipost).

        Parameters
        ----------
        expotype : str
            ``OBJECT`` or ``SKY``.
        offset_list : bool or str or Path
            True: the OFFSET_LIST of the alignment steps (if any); a path: that file; False: none.
        skymethod : str
            muse_scipost's ``--skymethod``; with ``model`` the SKY_LINES/SKY_CONTINUUM of the closest SKY
            exposure (``run_sky``) are used when there are some.
        """
        step = "scipost" if expotype == "OBJECT" else f"scipost_{expotype.lower()}"
        offsets = self._resolve_offset_list(offset_list)
        groups = self._science_groups(expotype, f"run_scipost(expotype={expotype!r})")
        labels = [_exposure_label(group[0]) for group in groups]
        explicit = {}
        if offsets is not None:
            explicit["OFFSET_LIST"] = [str(offsets)]
        if skymethod != "none":
            explicit.update(self._sky_model_calibrations(groups[0][0].mjd))
        save = save or ("cube,individual" if expotype == "OBJECT" else "cube")
        parameters = {"save": save, "skymethod": skymethod, "filter": filter_list or self.filter_list}
        return self._run_jobs(step, "muse_scipost", groups, labels=labels, parameters=parameters,
                              calibrations=explicit)

    def _resolve_offset_list(self, offset_list):
        if offset_list is True:
            if self.offset_list is None:
                logger.warning("no trusted OFFSET_LIST (alignment skipped or rejected): exposures are not corrected")
            return self.offset_list
        if offset_list in (False, None):
            return None
        path = Path(offset_list).absolute()
        if not path.is_file():
            raise FileNotFoundError(f"offset_list={offset_list}: file does not exist")
        from .alignment.offset_list import read_offset_list

        read_offset_list(path)  # validates: the recipes would silently ignore a malformed table
        return path

    def run_combine_pointing(self, offset_list=True, filter_list=None):
        """Combined cube of the pointing's OBJECT exposures with the OFFSET_LIST (muse_exp_combine)."""
        frames = [frame for frame in self._products("PIXTABLE_REDUCED", recipe="muse_scipost")
                  if not frame.path.endswith("_prealign.fits")]
        self._require(frames, "PIXTABLE_REDUCED", "run_combine_pointing")
        if len(frames) < 2:
            logger.info("combine_pointing: one exposure only: its scipost cube is the final cube, skipped")
            self.steps["combine_pointing"] = StepStatus("combine_pointing", "skipped", "one exposure", 0.0)
            return None
        explicit = {}
        offsets = self._resolve_offset_list(offset_list)
        if offsets is not None:
            explicit["OFFSET_LIST"] = [str(offsets)]
        return self._run_jobs("combine_pointing", "muse_exp_combine", [frames],
                              labels=[f"{self.targetname}_{self.layout.pointing_name}"],
                              parameters={"filter": filter_list or self.filter_list}, calibrations=explicit)

    # ------------------------------------------------------------------ the whole chain
    def _step_calls(self, illum, fraction):
        return OrderedDict([
            ("bias", lambda: self.run_bias()),
            ("flat", lambda: self.run_flat()),
            ("wave", lambda: self.run_wave()),
            ("lsf", lambda: self.run_lsf()),
            ("twilight", lambda: self.run_twilight(illum=illum)),
            ("scibasic_all", lambda: self.run_scibasic_all(illum=illum)),
            ("standard", lambda: self.run_standard()),
            ("sky", lambda: self.run_sky(fraction=fraction)),
            ("prep_align", lambda: self.run_prep_align()),
            ("align_bypointing", lambda: self.run_align_bypointing()),
            ("align_bygroup", lambda: self.run_align_bygroup()),
            ("scipost", lambda: self.run_scipost(expotype="OBJECT", offset_list=True, skymethod="model")),
            ("scipost_sky", lambda: self.run_scipost(expotype="SKY", offset_list=False, skymethod="none")),
            ("combine_pointing", lambda: self.run_combine_pointing()),
        ])

    def run_all_recipes(self, illum=True, fraction=0.8, first=None, last=None, parameters=None):
        """Run the steps of :data:`STEPS` in order, stopping at the first that fails.

        Parameters
        ----------
        illum : bool
            Use the raw ILLUM flats in muse_twilight and muse_scibasic.
        fraction : float
            muse_create_sky's ``--fraction`` of darkest spaxels used for the sky.
        first, last : str, optional
            Names of the first and last steps to run (``'bias'`` or ``'run_bias'``...).
        parameters : dict, optional
            Recipe parameter overrides, keyed by step (``{'scipost': {'pixfrac': 0.6}}``) or by recipe
            (``{'muse_scipost': {...}}``).

        Returns
        -------
        OrderedDict
            step name -> :class:`StepStatus`.
        """
        names = list(STEPS)

        def index(name, default):
            if name is None:
                return default
            key = str(name).removeprefix("run_")
            if key not in STEPS:
                raise ValueError(f"unknown step {name!r}; steps are {', '.join(STEPS)}")
            return names.index(key)

        start, stop = index(first, 0), index(last, len(names) - 1)
        if start > stop:
            raise ValueError(f"first step {first!r} comes after last step {last!r}")
        self._parameter_overrides = {str(key).removeprefix("run_"): dict(value)
                                     for key, value in (parameters or {}).items()}
        calls = self._step_calls(illum, fraction)
        chain_start = time.monotonic()
        selected = names[start:stop + 1]
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # disable=None: no bar when the output is not a terminal (batch logs stay clean).
        with logging_redirect_tqdm(), tqdm(total=len(selected), unit="step", disable=None,
                                           desc=f"{self.targetname} {self.layout.pointing_name}") as bar:
            try:
                for name in selected:
                    bar.set_postfix_str(name)
                    calls[name]()
                    bar.update(1)
            finally:
                self._parameter_overrides = {}
        logger.info("run_all_recipes: %d step(s) in %.0f s", stop - start + 1, time.monotonic() - chain_start)
        return self.steps

    def make_report(self, overwrite=False):
        """QC figures and the HTML report of this pointing (``Figures/index.html``)."""
        from .qc.report import build_report

        return build_report(self.layout, overwrite=overwrite)

    def status(self) -> str:
        """One line per step run so far."""
        return "\n".join(f"{name:<17} {step.status:<8} {step.summary} ({step.seconds:.0f} s)"
                         for name, step in self.steps.items())


def offset_list_is_trusted(path) -> bool:
    """Whether muse_exp_align's QC says enough sources matched for its OFFSET_LIST to be right."""
    header = fits.getheader(path)
    nomatch = header.get("ESO QC EXPALIGN NOMATCH")
    nmatch_min = header.get("ESO QC EXPALIGN NMATCH MIN")
    if nomatch is None or nmatch_min is None:
        return False
    return int(nomatch) == 0 and int(nmatch_min) >= EXPALIGN_MIN_MATCHES


def _show_messages():
    """Send pymusepipe's INFO messages to the terminal when the application configured no logging."""
    package_logger = logging.getLogger("pymusepipe")
    if package_logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
