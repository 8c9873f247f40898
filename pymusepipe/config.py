"""The two configuration files of pymusepipe, or the same settings given as Python arguments.

``rc.dic`` says where things are: the static calibration folder (``musecalib``), the time-dependent
geometry/astrometry folder (``musecalib_time``) and the data root (``root``); optionally the pointing
folder prefix (``str_pointing``, default ``P``), its number of digits (``ndigits``, default 2) and
folder renamings (``folder_<name> <new name>``, see :mod:`pymusepipe.layout`).

``calib_tables.dic`` names the static calibration files inside ``musecalib``.

Both files have one ``key value`` entry per line; a line starting with ``#`` or ``%`` is a comment and blank
lines are allowed. Values may use ``~`` and ``$VARIABLES``. Unlike the original tool, an unknown key is an
error naming the file, the line and the closest valid key, and a missing key or a path that does not exist
is an error too.
"""
from __future__ import annotations

import difflib
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .errors import PipelineError
from .layout import DEFAULT_FOLDERS

__all__ = ["ConfigError", "PipelineConfig", "read_key_value_file", "read_rc_file", "read_calib_file",
           "RC_KEYS", "CALIB_KEYS", "render_rc_template", "render_calib_template"]


class ConfigError(PipelineError, ValueError):
    """A configuration file or setting is wrong; the message names the file, line or setting at fault."""


_WHITESPACE = re.compile(r"\s")


def _link_suggestion(path: Path) -> Path:
    """Where a link without white space to ``path`` could go: the home folder, else /tmp."""
    name = re.sub(r"\s+", "_", path.name) or "muse_link"
    for base in (Path.home(), Path("/tmp")):
        if not _WHITESPACE.search(str(base)):
            return base / name
    return Path("/tmp") / name


def refuse_whitespace(key: str, value, where: str, *, name: bool = False):
    """Raise :class:`ConfigError` if a path (or, with ``name=True``, a file or folder name) has white space.

    esorex reads its SOF files as ``<path> <TAG>`` lines split on white space, so a file under such a path
    can never reach a recipe, whatever the pinning: better to say so when the configuration is read than
    after hours of reduction. For a path the hint gives the exact ``ln -s`` command of the way out.
    """
    text = str(value)
    match = _WHITESPACE.search(text)
    if not match:
        return
    what = {" ": "a space", "\t": "a tab"}.get(match.group(), "white space")
    problem = (f"{key} = {text!r} (from {where}) contains {what}: esorex reads SOF files as 'path TAG' lines split "
               "on white space, so no recipe could read a file ")
    if name:
        raise ConfigError(problem + "with this name", "choose (or rename the file to) a name without white space")
    link = _link_suggestion(Path(text))
    setting = f"set '{key} {link}' in {where}" if where != "argument" else f"pass {key}={str(link)!r}"
    raise ConfigError(problem + "under this path",
                      f"make a link without spaces and use it: ln -s {shlex.quote(text)} {shlex.quote(str(link))}, "
                      f"then {setting}")


#: Keys of ``rc.dic``: key -> (required, description).
RC_KEYS = MappingProxyType({
    "musecalib": (True, "folder of the static MUSE calibration files (the kit's muse-calib-x.y.z/cal folder)"),
    "musecalib_time": (False, "folder of the time-dependent geometry/astrometry tables and their "
                              "validity_table.txt (needed with time_astrometry=True)"),
    "root": (True, "data root: the raw files of target T, pointing N are in <root>/T/P0N/Raw"),
    "str_pointing": (False, "prefix of pointing folder names (default P)"),
    "ndigits": (False, "number of digits of pointing folder numbers (default 2: P01)"),
})

#: Keys of ``calib_tables.dic``: key -> (SOF tag, required, default file name).
CALIB_KEYS = MappingProxyType({
    "geo_table": ("GEOMETRY_TABLE", True, "geometry_table_wfm.fits"),
    "astro_table": ("ASTROMETRY_WCS", True, "astrometry_wcs_wfm.fits"),
    "badpix_table": ("BADPIX_TABLE", True, "badpix_table.fits"),
    "vignetting_mask": ("VIGNETTING_MASK", False, "vignetting_mask.fits"),
    "std_flux_table": ("STD_FLUX_TABLE", True, "std_flux_table.fits"),
    "extinct_table": ("EXTINCT_TABLE", True, "extinct_table.fits"),
    "line_catalog": ("LINE_CATALOG", True, "line_catalog.fits"),
    "sky_lines": ("SKY_LINES", True, "sky_lines.fits"),
    "filter_list": ("FILTER_LIST", True, "filter_list.fits"),
    # Laser-induced Raman lines, cleaned by muse_scipost in the AO modes only.
    "raman_lines": ("RAMAN_LINES", False, "raman_lines.fits"),
})

FOLDER_KEY_PREFIX = "folder_"


def _closest_hint(key, valid):
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def expand_path(value) -> Path:
    """Expand ``~`` and ``$VARIABLES`` and return an absolute path."""
    text = os.path.expandvars(os.path.expanduser(str(value)))
    if "$" in text:
        raise ConfigError(f"path {value!r} uses an environment variable that is not set")
    return Path(text).absolute()


def read_key_value_file(path, valid_keys) -> dict:
    """Read a ``key value`` file, rejecting unknown and repeated keys.

    Parameters
    ----------
    path : str or Path
        The file.
    valid_keys : iterable of str
        Accepted keys; ``folder_<name>`` keys are also accepted when ``<name>`` is a folder of the layout.

    Returns
    -------
    dict
        key -> (value, line number).
    """
    path = expand_path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    valid = set(valid_keys)
    entries = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text[0] in "#%":
                continue
            parts = text.split(None, 1)
            key = parts[0]
            value = parts[1].strip() if len(parts) > 1 else ""
            folder_key = key.startswith(FOLDER_KEY_PREFIX) and key[len(FOLDER_KEY_PREFIX):] in DEFAULT_FOLDERS
            if key not in valid and not folder_key:
                all_valid = valid | {FOLDER_KEY_PREFIX + name for name in DEFAULT_FOLDERS}
                raise ConfigError(f"{path}, line {lineno}: unknown key '{key}'{_closest_hint(key, all_valid)}; "
                                  f"valid keys are {', '.join(sorted(valid))}")
            if not value:
                raise ConfigError(f"{path}, line {lineno}: key '{key}' has no value")
            if key in entries:
                raise ConfigError(f"{path}, line {lineno}: key '{key}' repeats line {entries[key][1]}")
            entries[key] = (value, lineno)
    return entries


def read_rc_file(path) -> dict:
    """Read ``rc.dic`` into a dict of settings (paths expanded; ``folder_*`` keys under ``folders``)."""
    entries = read_key_value_file(path, RC_KEYS)
    missing = [key for key, (required, _) in RC_KEYS.items() if required and key not in entries]
    if missing:
        raise ConfigError(f"{expand_path(path)}: missing required key(s) {', '.join(missing)}")
    settings = {"folders": {}}
    for key, (value, lineno) in entries.items():
        if key.startswith(FOLDER_KEY_PREFIX):
            settings["folders"][key[len(FOLDER_KEY_PREFIX):]] = value
        elif key == "ndigits":
            try:
                settings[key] = int(value)
            except ValueError:
                raise ConfigError(f"{expand_path(path)}, line {lineno}: ndigits must be an integer, "
                                  f"got {value!r}") from None
        else:
            settings[key] = value
    return settings


def read_calib_file(path) -> dict:
    """Read ``calib_tables.dic``: key -> file name inside ``musecalib``."""
    entries = read_key_value_file(path, CALIB_KEYS)
    missing = [key for key, (_, required, _) in CALIB_KEYS.items() if required and key not in entries]
    if missing:
        raise ConfigError(f"{expand_path(path)}: missing required key(s) {', '.join(missing)}")
    return {key: value for key, (value, _) in entries.items()}


@dataclass
class PipelineConfig:
    """Where the data and calibrations are: the content of ``rc.dic`` and ``calib_tables.dic``.

    Build it with :meth:`from_files` or :meth:`from_settings`; both check that every folder and file
    exists.

    Attributes
    ----------
    musecalib : Path
        Static calibration folder.
    root : Path
        Data root.
    musecalib_time : Path or None
        Time-dependent geometry/astrometry folder.
    calib_tables : dict
        ``calib_tables.dic`` key -> file name inside ``musecalib``.
    str_pointing : str
        Pointing folder prefix.
    ndigits : int
        Pointing folder digits.
    folders : dict
        Folder renamings (layout key -> name).
    sources : dict
        Where each setting came from (a file name or ``'argument'``), to name it in error messages.
    """

    musecalib: Path
    root: Path
    musecalib_time: Path | None = None
    calib_tables: dict = field(default_factory=dict)
    str_pointing: str = "P"
    ndigits: int = 2
    folders: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    @classmethod
    def from_files(cls, rc_filename, cal_filename, **overrides) -> "PipelineConfig":
        """Read ``rc.dic`` and ``calib_tables.dic``; keyword arguments override their entries."""
        rc = read_rc_file(rc_filename)
        calib = read_calib_file(cal_filename)
        sources = {key: str(expand_path(rc_filename)) for key in rc}
        sources["calib_tables"] = str(expand_path(cal_filename))
        folders = dict(rc.pop("folders"))
        folders.update(overrides.pop("folders", None) or {})
        calib.update(overrides.pop("calib_tables", None) or {})
        for key in overrides:
            sources[key] = "argument"
        rc.update({key: value for key, value in overrides.items() if value is not None})
        # An optional file named in calib_tables.dic must exist (the vignetting mask is checked when used).
        return cls._build(rc, calib, folders, sources, given=set(calib) - {"vignetting_mask"})

    @classmethod
    def from_settings(cls, *, musecalib, root, musecalib_time=None, calib_tables=None, str_pointing="P",
                      ndigits=2, folders=None) -> "PipelineConfig":
        """Build the configuration from Python arguments, with no file at all.

        ``calib_tables`` defaults to the usual file names (:data:`CALIB_KEYS`) inside ``musecalib``.
        """
        calib = {key: default for key, (_, _, default) in CALIB_KEYS.items()}
        unknown = set(calib_tables or {}) - set(CALIB_KEYS)
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(f"calib_tables: unknown key '{key}'{_closest_hint(key, CALIB_KEYS)}")
        calib.update(calib_tables or {})
        settings = {"musecalib": musecalib, "root": root, "musecalib_time": musecalib_time,
                    "str_pointing": str_pointing, "ndigits": ndigits}
        sources = {key: "argument" for key in settings}
        sources["calib_tables"] = "argument"
        return cls._build(settings, calib, dict(folders or {}), sources, given=set(calib_tables or {}))

    @classmethod
    def _build(cls, settings, calib, folders, sources, given=frozenset()) -> "PipelineConfig":
        def where(key):
            return sources.get(key, "argument")

        def folder(key):
            path = expand_path(settings[key])
            refuse_whitespace(key, path, where(key))
            if not path.is_dir():
                raise ConfigError(f"{key} = {path} (from {where(key)}) is not an existing folder")
            return path

        unknown_folders = set(folders) - set(DEFAULT_FOLDERS)
        if unknown_folders:
            key = sorted(unknown_folders)[0]
            raise ConfigError(f"folder renaming '{key}' is not a layout folder{_closest_hint(key, DEFAULT_FOLDERS)}")
        musecalib = folder("musecalib")
        root = folder("root")
        musecalib_time = folder("musecalib_time") if settings.get("musecalib_time") else None
        for key, name in folders.items():
            refuse_whitespace(f"folder_{key}", name, where("folders"), name=True)
        for key, name in calib.items():
            refuse_whitespace(key, name, where("calib_tables"), name=True)
            if not CALIB_KEYS[key][1] and key not in given and not (musecalib / name).exists():
                continue  # optional (vignetting mask for data before 2017-03, Raman lines for AO): checked when used
            if not (musecalib / name).is_file():
                raise ConfigError(f"{key} = {name} (from {where('calib_tables')}): file {musecalib / name} "
                                  "does not exist")
        ndigits = int(settings.get("ndigits") or 2)
        if not 1 <= ndigits <= 6:
            raise ConfigError(f"ndigits = {ndigits} (from {where('ndigits')}): expected 1 to 6")
        return cls(musecalib=musecalib, root=root, musecalib_time=musecalib_time, calib_tables=dict(calib),
                   str_pointing=str(settings.get("str_pointing") or "P"), ndigits=ndigits,
                   folders=dict(folders), sources=dict(sources))

    def static_calibration(self, key) -> Path:
        """Absolute path of a static calibration file given its ``calib_tables.dic`` key."""
        if key not in CALIB_KEYS:
            raise ConfigError(f"unknown calibration key '{key}'{_closest_hint(key, CALIB_KEYS)}")
        return self.musecalib / self.calib_tables.get(key, CALIB_KEYS[key][2])

    def static_calibrations(self) -> dict:
        """SOF tag -> absolute path of every static calibration file that exists."""
        found = {}
        for key, (tag, _, _) in CALIB_KEYS.items():
            path = self.static_calibration(key)
            if path.is_file():
                found[tag] = path
        return found


def render_rc_template(musecalib="/path/to/muse-calib/cal", musecalib_time="/path/to/muse-calib-time",
                       root="/path/to/my_data/MUSE") -> str:
    """Text of a commented ``rc.dic``."""
    lines = ["# pymusepipe rc.dic: where calibrations and data live.",
             "# One 'key value' per line; '#' or '%' starts a comment line; ~ and $VARIABLES are expanded.",
             "# Optional: folder_<name> <new name> renames a working folder "
             f"(names: {', '.join(DEFAULT_FOLDERS)}).", ""]
    values = {"musecalib": musecalib, "musecalib_time": musecalib_time, "root": root,
              "str_pointing": "P", "ndigits": "2"}
    for key, (required, description) in RC_KEYS.items():
        lines.append(f"# {description}{'' if required else ' [optional]'}")
        lines.append(f"{key} {values[key]}")
        lines.append("")
    return "\n".join(lines)


def render_calib_template(names=None) -> str:
    """Text of a commented ``calib_tables.dic`` (file names inside ``musecalib``)."""
    names = dict(names or {})
    lines = ["# pymusepipe calib_tables.dic: static calibration files, as names inside the musecalib folder.",
             "# One 'key value' per line; '#' or '%' starts a comment line.", ""]
    for key, (tag, required, default) in CALIB_KEYS.items():
        note = "" if required else f" [optional: {_OPTIONAL_NOTES[key]}]"
        lines.append(f"# {tag}{note}")
        # Raman lines are for AO data only: listed, a missing file would be an error for everyone else.
        prefix = "# " if key == "raman_lines" and key not in names else ""
        lines.append(f"{prefix}{key} {names.get(key, default)}")
        lines.append("")
    return "\n".join(lines)


_OPTIONAL_NOTES = {
    "vignetting_mask": "only used for twilight flats taken before 2017-03",
    "raman_lines": "the laser-induced Raman lines muse_scipost cleans in the AO modes (WFM-AO-N/E, NFM-AO-N)",
}
