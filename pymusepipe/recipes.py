"""Each MUSE recipe's contract, as data.

A :class:`RecipeSpec` says what a recipe of the MUSE pipeline (2.8.7) reads, what it writes and which
parameters pymusepipe passes by default. The engine derives everything else from it: SOF content, the
expected product files (to detect a failure that exits 0), and where products go in the folder layout.

The table returned by :func:`default_recipe_table` is a fresh copy every time: a ``MusePipe`` keeps its own
and a user may override default parameters there (``table.override("muse_scipost", skymethod="none")``).
``tests/test_recipes.py`` checks every tag and parameter against the installed ``esorex``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping

__all__ = ["CalibrationInput", "ProductOutput", "RecipeSpec", "RecipeTable", "default_recipe_table",
           "format_parameter"]

#: Where a calibration comes from.
SOURCE_MASTER = "master"   # a product of an earlier step (the products catalogue)
SOURCE_STATIC = "static"   # a file of ``calib_tables.dic`` inside ``musecalib``
SOURCE_RAW = "raw"         # a raw frame of the raw table (ILLUM)
SOURCE_TIME = "time"       # static, or chosen by date in the validity table with ``time_astrometry``
SOURCE_USER = "user"       # only given explicitly by the step (e.g. OFFSET_LIST, OUTPUT_WCS)
_SOURCES = (SOURCE_MASTER, SOURCE_STATIC, SOURCE_RAW, SOURCE_TIME, SOURCE_USER)

#: How esorex names a product (``muse_processing_new_frame``).
NAMING_MASTER = "master"      # one file per run: TAG.fits, or TAG-NN.fits per IFU
NAMING_DATEOBS = "dateobs"    # one per input exposure, in SOF order: TAG_000k.fits / TAG_000k-NN.fits
NAMING_SEQUENCE = "sequence"  # a numbered series not tied to exposures (e.g. IMAGE_FOV per filter)
_NAMINGS = (NAMING_MASTER, NAMING_DATEOBS, NAMING_SEQUENCE)


@dataclass(frozen=True)
class CalibrationInput:
    """One calibration a recipe reads.

    Attributes
    ----------
    tag : str
        SOF tag.
    required : bool
        The recipe fails without it.
    per_ifu : bool
        The calibration exists once per IFU (e.g. ``MASTER_BIAS-05``) unless it was merged; a job handling IFU
        ``k`` then needs the file of IFU ``k`` (or a merged file).
    max_count : int or None
        Most files of this tag per IFU the recipe accepts (None: no limit, e.g. LSF_PROFILE in muse_scipost).
    source : str
        ``master``, ``static``, ``raw``, ``time`` (geometry/astrometry) or ``user`` (only given explicitly).
    """

    tag: str
    required: bool = True
    per_ifu: bool = False
    max_count: int | None = 1
    source: str = SOURCE_MASTER

    def __post_init__(self):
        if self.source not in _SOURCES:
            raise ValueError(f"calibration {self.tag}: source={self.source!r}, expected one of {_SOURCES}")


@dataclass(frozen=True)
class ProductOutput:
    """One product a recipe writes.

    Attributes
    ----------
    tag : str
        PRO.CATG, also the esorex file-name prefix.
    per_ifu : bool
        Written once per IFU (unless ``--merge`` is given and the product is ``mergeable``).
    mergeable : bool
        ``--merge`` writes one file holding every IFU. False for the pixel tables of muse_scibasic, which MUSE
        2.8.7 writes per IFU (``PIXTABLE_OBJECT_0001-NN.fits``) even with ``--nifu=-1 --merge`` (measured on 24
        IFUs, ``benchmarks/bench_full_field.py``).
    naming : str
        ``master``, ``dateobs`` or ``sequence`` (see the module constants).
    required : bool
        Its absence after a successful exit means the job failed.
    enabled_by : tuple of (str, str) or None
        ``(parameter, word)``: the product is only written when the parameter's value contains ``word``
        (e.g. ``("save", "cube")`` for DATACUBE_FINAL of muse_scipost, ``("residuals", "true")``).
    folder : tuple of str
        Destination in the layout: a layout key, optionally a ``Master`` sub-folder, e.g. ``("master", "Bias")``.
    """

    tag: str
    per_ifu: bool = False
    mergeable: bool = True
    naming: str = NAMING_MASTER
    required: bool = True
    enabled_by: tuple | None = None
    folder: tuple = ("master",)

    def __post_init__(self):
        if self.naming not in _NAMINGS:
            raise ValueError(f"product {self.tag}: naming={self.naming!r}, expected one of {_NAMINGS}")

    def is_enabled(self, parameters: Mapping) -> bool:
        """Whether the recipe writes this product with these parameters."""
        if self.enabled_by is None:
            return True
        name, word = self.enabled_by
        return word.lower() in format_parameter(parameters.get(name, "")).lower()


@dataclass(frozen=True)
class RecipeSpec:
    """The contract of one recipe.

    Attributes
    ----------
    name : str
        esorex recipe name.
    raw_tags : tuple of str
        Tags the recipe accepts as its main ("raw") input.
    min_raw : int
        Fewest main input frames per run.
    calibrations : tuple of CalibrationInput
    products : tuple of ProductOutput
    default_parameters : dict
        Parameters pymusepipe passes unless the step or the user says otherwise (``--nifu``/``--merge`` are
        handled by the engine, never listed here).
    takes_nifu, takes_merge : bool
        Whether the recipe has ``--nifu`` / ``--merge``.

    A run's memory need is modelled from measurements in :mod:`pymusepipe.memory`.
    """

    name: str
    raw_tags: tuple
    min_raw: int = 1
    calibrations: tuple = ()
    products: tuple = ()
    default_parameters: Mapping = field(default_factory=dict)
    takes_nifu: bool = False
    takes_merge: bool = False

    def calibration(self, tag) -> CalibrationInput:
        """The calibration input of this tag (KeyError naming the recipe otherwise)."""
        for calibration in self.calibrations:
            if calibration.tag == tag:
                return calibration
        raise KeyError(f"{self.name} takes no calibration tagged {tag}; it takes "
                       f"{', '.join(c.tag for c in self.calibrations) or 'none'}")

    def products_for(self, parameters: Mapping) -> tuple:
        """The products this recipe writes with these parameters."""
        return tuple(product for product in self.products if product.is_enabled(parameters))


class RecipeTable(Mapping):
    """Recipe name -> :class:`RecipeSpec`, with per-instance parameter overrides."""

    def __init__(self, specs):
        self._specs = {spec.name: spec for spec in specs}

    def __getitem__(self, name) -> RecipeSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown recipe '{name}'; known recipes: {', '.join(self._specs)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self):
        return len(self._specs)

    def copy(self) -> "RecipeTable":
        return RecipeTable(self._specs.values())

    def add(self, spec: RecipeSpec):
        """Add (or replace) a recipe."""
        self._specs[spec.name] = spec

    def override(self, recipe: str, **parameters):
        """Change default parameters of one recipe in this table (``None`` removes a default)."""
        spec = self[recipe]
        if "nifu" in parameters or "merge" in parameters:
            raise ValueError(f"{recipe}: nifu/merge are chosen by the engine's ifu_mode, not by default parameters")
        merged = {**spec.default_parameters, **parameters}
        merged = {key: value for key, value in merged.items() if value is not None}
        self._specs[recipe] = replace(spec, default_parameters=merged)


def format_parameter(value) -> str:
    """esorex spelling of a parameter value: booleans as true/false, sequences comma-joined."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(format_parameter(item) for item in value)
    return str(value)


def _calib(tag, required=True, per_ifu=False, max_count=1, source=SOURCE_MASTER):
    return CalibrationInput(tag, required=required, per_ifu=per_ifu, max_count=max_count, source=source)


def _static(tag, required=True):
    return CalibrationInput(tag, required=required, per_ifu=False, max_count=1, source=SOURCE_STATIC)


# Calibration inputs shared by the CCD-level recipes (kept as functions so every table is a fresh object).
def _badpix():
    return _static("BADPIX_TABLE", required=False)


def _bias():
    return _calib("MASTER_BIAS", per_ifu=True)


def default_recipe_table() -> RecipeTable:
    """A fresh table of the recipes of the MUSE reduction chain, with pymusepipe's default parameters."""
    product = ProductOutput
    specs = [
        RecipeSpec(
            "muse_bias", raw_tags=("BIAS",), min_raw=3,
            calibrations=(_badpix(),),
            products=(product("MASTER_BIAS", per_ifu=True, folder=("master", "Bias")),),
            takes_nifu=True, takes_merge=True),
        RecipeSpec(
            "muse_flat", raw_tags=("FLAT",), min_raw=3,
            calibrations=(_bias(), _calib("MASTER_DARK", required=False, per_ifu=True), _badpix()),
            products=(product("MASTER_FLAT", per_ifu=True, folder=("master", "Flat")),
                      product("TRACE_TABLE", per_ifu=True, folder=("master", "Trace")),
                      product("TRACE_SAMPLES", per_ifu=True, enabled_by=("samples", "true"),
                              folder=("master", "Trace"))),
            takes_nifu=True, takes_merge=True),
        RecipeSpec(
            "muse_wavecal", raw_tags=("ARC",), min_raw=1,
            calibrations=(_bias(), _calib("MASTER_DARK", required=False, per_ifu=True),
                          _calib("MASTER_FLAT", required=False, per_ifu=True),
                          _calib("TRACE_TABLE", per_ifu=True), _static("LINE_CATALOG"), _badpix()),
            products=(product("WAVECAL_TABLE", per_ifu=True, folder=("master", "Wave")),
                      product("WAVECAL_RESIDUALS", per_ifu=True, enabled_by=("residuals", "true"),
                              folder=("master", "Wave")),
                      product("ARC_RED_LAMP", per_ifu=True, required=False, enabled_by=("saveimages", "true"),
                              folder=("master", "Wave"))),
            takes_nifu=True, takes_merge=True),
        RecipeSpec(
            "muse_lsf", raw_tags=("ARC", "ARC_LSF"), min_raw=1,
            calibrations=(_bias(), _calib("MASTER_DARK", required=False, per_ifu=True),
                          _calib("MASTER_FLAT", required=False, per_ifu=True),
                          _calib("TRACE_TABLE", per_ifu=True), _calib("WAVECAL_TABLE", per_ifu=True),
                          _static("LINE_CATALOG"), _badpix()),
            products=(product("LSF_PROFILE", per_ifu=True, folder=("master", "Lsf")),
                      product("PIXTABLE_SUBTRACTED", per_ifu=True, enabled_by=("save_subtracted", "true"),
                              folder=("master", "Lsf"))),
            takes_nifu=True, takes_merge=True),
        RecipeSpec(
            # No --nifu: it loops over the IFUs itself and skips those without calibrations (IFU 1 must exist).
            "muse_twilight", raw_tags=("SKYFLAT",), min_raw=3,
            calibrations=(_bias(), _calib("MASTER_DARK", required=False, per_ifu=True),
                          _calib("MASTER_FLAT", per_ifu=True), _calib("TRACE_TABLE", per_ifu=True),
                          _calib("WAVECAL_TABLE", per_ifu=True),
                          CalibrationInput("GEOMETRY_TABLE", source=SOURCE_TIME),
                          _calib("ILLUM", required=False, source=SOURCE_RAW),
                          _static("VIGNETTING_MASK", required=False), _badpix()),
            products=(product("DATACUBE_SKYFLAT", folder=("master", "Twilight")),
                      product("TWILIGHT_CUBE", folder=("master", "Twilight")))),
        RecipeSpec(
            "muse_scibasic", raw_tags=("OBJECT", "STD", "SKY", "ASTROMETRY"), min_raw=1,
            calibrations=(_bias(), _calib("MASTER_DARK", required=False, per_ifu=True),
                          _calib("MASTER_FLAT", per_ifu=True), _calib("TRACE_TABLE", per_ifu=True),
                          _calib("WAVECAL_TABLE", per_ifu=True),
                          CalibrationInput("GEOMETRY_TABLE", source=SOURCE_TIME),
                          _calib("ILLUM", required=False, source=SOURCE_RAW),
                          _calib("TWILIGHT_CUBE", required=False), _badpix()),
            # The product tag depends on the raw tag: the engine substitutes {raw} (OBJECT, STD, SKY, ...).
            products=(product("PIXTABLE_{raw}", per_ifu=True, mergeable=False, naming=NAMING_DATEOBS,
                              folder=("{raw_folder}",)),
                      product("{raw}_RED", per_ifu=True, naming=NAMING_DATEOBS, enabled_by=("saveimage", "true"),
                              folder=("{raw_folder}",)),
                      product("{raw}_RESAMPLED", per_ifu=True, naming=NAMING_DATEOBS,
                              enabled_by=("resample", "true"), folder=("{raw_folder}",))),
            default_parameters={"saveimage": False},
            takes_nifu=True, takes_merge=True),
        RecipeSpec(
            "muse_standard", raw_tags=("PIXTABLE_STD",), min_raw=1,
            calibrations=(_static("EXTINCT_TABLE"), _static("STD_FLUX_TABLE"),
                          _static("TELLURIC_REGIONS", required=False), _static("FILTER_LIST", required=False)),
            products=tuple(product(tag, naming=NAMING_DATEOBS, folder=("master", "Std"))
                           for tag in ("DATACUBE_STD", "STD_FLUXES", "STD_RESPONSE", "STD_TELLURIC")),
            default_parameters={"filter": "white"}),
        RecipeSpec(
            "muse_create_sky", raw_tags=("PIXTABLE_SKY",), min_raw=1,
            calibrations=(_static("EXTINCT_TABLE"), _calib("STD_RESPONSE"), _calib("STD_TELLURIC", required=False),
                          _static("SKY_LINES"), _calib("SKY_CONTINUUM", required=False, source=SOURCE_USER),
                          _calib("LSF_PROFILE", per_ifu=True, max_count=None),
                          _calib("SKY_MASK", required=False, source=SOURCE_USER)),
            products=tuple(product(tag, folder=("sky",)) for tag in
                           ("SKY_MASK", "SKY_IMAGE", "SKY_SPECTRUM", "SKY_LINES", "SKY_CONTINUUM")),
            default_parameters={"fraction": 0.8}),
        RecipeSpec(
            "muse_scipost", raw_tags=("PIXTABLE_OBJECT",), min_raw=1,
            calibrations=(_static("EXTINCT_TABLE"), _calib("STD_RESPONSE"), _calib("STD_TELLURIC", required=False),
                          CalibrationInput("ASTROMETRY_WCS", required=False, source=SOURCE_TIME),
                          _calib("OFFSET_LIST", required=False, source=SOURCE_USER),
                          _static("FILTER_LIST", required=False),
                          _calib("OUTPUT_WCS", required=False, source=SOURCE_USER),
                          _calib("AUTOCAL_FACTORS", required=False, source=SOURCE_USER),
                          _static("RAMAN_LINES", required=False),
                          _calib("SKY_LINES", required=False, source=SOURCE_USER),
                          _calib("SKY_CONTINUUM", required=False, source=SOURCE_USER),
                          _calib("LSF_PROFILE", required=False, per_ifu=True, max_count=None),
                          _calib("SKY_MASK", required=False, source=SOURCE_USER)),
            products=(product("DATACUBE_FINAL", enabled_by=("save", "cube"), folder=("object",)),
                      product("IMAGE_FOV", naming=NAMING_SEQUENCE, enabled_by=("save", "cube"),
                              folder=("object",)),
                      product("PIXTABLE_REDUCED", naming=NAMING_DATEOBS, enabled_by=("save", "individual"),
                              folder=("object",)),
                      product("PIXTABLE_POSITIONED", naming=NAMING_DATEOBS, enabled_by=("save", "positioned"),
                              folder=("object",)),
                      product("PIXTABLE_COMBINED", enabled_by=("save", "combined"), folder=("object",)),
                      product("OBJECT_RESAMPLED", enabled_by=("save", "stacked"), folder=("object",)),
                      # Sky products only appear with skymethod=model; optional so skymethod=none still succeeds.
                      *(product(tag, required=False, enabled_by=("save", "skymodel"), folder=("object",))
                        for tag in ("SKY_IMAGE", "SKY_MASK", "SKY_SPECTRUM", "SKY_LINES", "SKY_CONTINUUM"))),
            default_parameters={"save": "cube,skymodel", "filter": "white"}),
        RecipeSpec(
            "muse_exp_align", raw_tags=("IMAGE_FOV",), min_raw=2,
            calibrations=(_calib("SOURCE_LIST", required=False, max_count=None, source=SOURCE_USER),),
            products=(product("OFFSET_LIST", folder=("object",)),
                      product("PREVIEW_FOV", required=False, folder=("object",)),
                      product("SOURCE_LIST", naming=NAMING_DATEOBS, required=False, folder=("object",)),
                      product("EXPOSURE_MAP", enabled_by=("expmap", "true"), folder=("object",)))),
        RecipeSpec(
            "muse_exp_combine", raw_tags=("PIXTABLE_REDUCED",), min_raw=2,
            calibrations=(_calib("OFFSET_LIST", required=False, source=SOURCE_USER),
                          _static("FILTER_LIST", required=False),
                          _calib("OUTPUT_WCS", required=False, source=SOURCE_USER)),
            products=(product("DATACUBE_FINAL", enabled_by=("save", "cube"), folder=("object",)),
                      product("IMAGE_FOV", naming=NAMING_SEQUENCE, enabled_by=("save", "cube"),
                              folder=("object",)),
                      product("PIXTABLE_COMBINED", enabled_by=("save", "combined"), folder=("object",))),
            default_parameters={"save": "cube", "filter": "white"}),
    ]
    return RecipeTable(specs)
