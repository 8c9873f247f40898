"""Folder layout of a reduction: names (overridable) and absolute paths of each working area.

A reduction writes into *areas*, each with the same working folders (``Sof``, ``Esorex_log``,
``Pipe_products``, ``Astro_Tables``, ``Master`` ...):

- a **pointing**: ``<root>/<target>/P01/`` beside its ``Raw`` folder (:class:`PointingLayout`), for the science
  exposures of that pointing;
- a **night**: ``<root>/Calibrations/<YYYY-MM-DD>/`` (:class:`NightLayout`), for the master calibrations and the
  standard star of one observing night, shared by every pointing and target observed that night. Raw
  calibration frames may also be dropped in ``<root>/Calibrations/Raw/``.

Folders are created on demand, never by changing the working directory: every path handed out is absolute.
Paths recorded in tables are relative to the data root (:meth:`AreaLayout.relative`), so that a reduction folder
can be moved or copied and reopened.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

__all__ = ["DEFAULT_FOLDERS", "TARGET_FOLDERS", "ROOT_FOLDERS", "AreaLayout", "PointingLayout", "NightLayout",
           "TargetLayout",
           "pointing_folder_name", "relative_to_root", "resolve_from_root"]

#: Default folder names (layout key -> folder name), as in the original pymusepipe.
DEFAULT_FOLDERS = MappingProxyType({
    "raw": "Raw",
    "config": "Config",
    "astro_tables": "Astro_Tables",
    "esorex_log": "Esorex_log",
    "pipe_products": "Pipe_products",
    "log": "Log",
    "master": "Master",
    "object": "Object",
    "sky": "Sky",
    "std": "Std",
    "sof": "Sof",
    "figures": "Figures",
    "alignment": "Alignment",
    "combined": "Combined",
    "calibrations": "Calibrations",
})

#: Layout keys that live at the target level (shared by all pointings) rather than per pointing.
TARGET_FOLDERS = frozenset({"alignment", "combined"})

#: Layout keys that live directly under the data root (shared by all targets).
ROOT_FOLDERS = frozenset({"calibrations"})

#: Working folders of a night's calibration area (no science folders there).
NIGHT_FOLDERS = ("astro_tables", "esorex_log", "pipe_products", "log", "master", "std", "sof", "figures")


def pointing_folder_name(pointing: int, str_pointing: str = "P", ndigits: int = 2) -> str:
    """Folder name of a pointing: ``P01`` for pointing 1 with the defaults."""
    if int(pointing) != pointing or pointing < 0:
        raise ValueError(f"pointing={pointing!r}: expected a non-negative integer")
    return f"{str_pointing}{int(pointing):0{ndigits}d}"


def _check_folder_names(folders):
    unknown = set(folders or {}) - set(DEFAULT_FOLDERS)
    if unknown:
        raise ValueError(f"unknown folder key(s) {', '.join(sorted(unknown))}; "
                         f"expected some of {', '.join(DEFAULT_FOLDERS)}")


def relative_to_root(path, root) -> str:
    """``path`` relative to the data root when it lies under it (what tables store), else absolute."""
    path, root = os.path.abspath(path), os.path.abspath(root)
    if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, root)
    return path


def resolve_from_root(text, root) -> str:
    """Inverse of :func:`relative_to_root`: an absolute path from a stored (relative or absolute) one."""
    text = str(text)
    if not text or os.path.isabs(text):
        return text
    return os.path.join(os.path.abspath(root), text)


class AreaLayout:
    """Absolute paths of the working folders of one area (a pointing or a night's calibrations).

    Parameters
    ----------
    root : str or Path
        Data root (``root`` in ``rc.dic``).
    base_dir : str or Path
        Folder of the area.
    name : str
        Short, unique name of the area (``NGC1000/P01``, ``night 2026-03-14``), for messages and job tables.
    folders : dict, optional
        Renamings: layout key (see :data:`DEFAULT_FOLDERS`) -> folder name.
    """

    kind = "area"

    def __init__(self, root, base_dir, name, *, folders=None):
        _check_folder_names(folders)
        self.root = Path(root).absolute()
        self.base_dir = Path(base_dir).absolute()
        self.name = str(name)
        self.names = {**DEFAULT_FOLDERS, **dict(folders or {})}

    def __repr__(self):
        return f"{type(self).__name__}({str(self.base_dir)!r})"

    def __eq__(self, other):
        return isinstance(other, AreaLayout) and self.base_dir == other.base_dir

    def __hash__(self):
        return hash(self.base_dir)

    def folder(self, key: str, create: bool = False) -> Path:
        """Absolute path of a layout folder (e.g. ``'sof'``), created if ``create``."""
        if key not in self.names:
            raise KeyError(f"unknown layout folder '{key}'; expected one of {', '.join(self.names)}")
        path = self._base_of(key) / self.names[key]
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _base_of(self, key: str) -> Path:
        if key in ROOT_FOLDERS:
            return self.root
        return self.base_dir

    def master_folder(self, kind: str, create: bool = False) -> Path:
        """``Master/<Kind>`` folder (e.g. ``Master/Bias``)."""
        path = self.folder("master") / (kind[:1].upper() + kind[1:])
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path) -> str:
        """A path as tables store it: relative to the data root when under it."""
        return relative_to_root(path, self.root)

    def absolute(self, text) -> str:
        """A stored path back as an absolute one."""
        return resolve_from_root(text, self.root)

    def night_layout(self, night: str) -> "NightLayout":
        """The calibration area of an observing night under the same data root and folder names."""
        return NightLayout(self.root, night, folders=self._renamed())

    def _renamed(self) -> dict:
        return {key: value for key, value in self.names.items() if DEFAULT_FOLDERS[key] != value}


class PointingLayout(AreaLayout):
    """Absolute paths of the folders of one target and pointing.

    Parameters
    ----------
    root : str or Path
        Data root (``root`` in ``rc.dic``).
    target : str
        Target name: the folder under ``root``.
    pointing : int
        Pointing number.
    str_pointing, ndigits : str, int
        Pointing folder prefix and digits.
    folders : dict, optional
        Renamings: layout key (see :data:`DEFAULT_FOLDERS`) -> folder name.
    """

    kind = "pointing"

    def __init__(self, root, target, pointing=1, *, str_pointing="P", ndigits=2, folders=None):
        if not target or "/" in str(target):
            raise ValueError(f"targetname={target!r}: expected a folder name under the data root")
        self.target = str(target)
        self.pointing = int(pointing)
        self.pointing_name = pointing_folder_name(self.pointing, str_pointing, ndigits)
        root = Path(root).absolute()
        super().__init__(root, root / self.target / self.pointing_name, f"{self.target}/{self.pointing_name}",
                         folders=folders)

    @property
    def target_dir(self) -> Path:
        return self.root / self.target

    @property
    def pointing_dir(self) -> Path:
        return self.base_dir

    def _base_of(self, key: str) -> Path:
        if key in TARGET_FOLDERS:
            return self.target_dir
        return super()._base_of(key)

    def create_working_folders(self):
        """Create every working folder of the pointing and target (never touches ``Raw``)."""
        for key in self.names:
            if key not in ("raw", "calibrations"):
                self.folder(key, create=True)

    def shared_calibration_raw(self) -> Path:
        """``<root>/Calibrations/Raw``: raw calibration frames shared by every target (may not exist)."""
        return self.folder("calibrations") / self.names["raw"]


class TargetLayout(AreaLayout):
    """The target-level area: ``<root>/<target>/Combined/`` holds the mosaic (cubes and images directly inside,
    the working folders ``Sof``, ``Esorex_log``, ``Pipe_products``, ``Astro_Tables``, ``Log``, ``Figures``
    below it), ``<root>/<target>/Alignment/`` the alignment to the reference image and the target OFFSET_LIST.
    """

    kind = "target"

    def __init__(self, root, target, *, folders=None):
        if not target or "/" in str(target):
            raise ValueError(f"targetname={target!r}: expected a folder name under the data root")
        self.target = str(target)
        root = Path(root).absolute()
        names = {**DEFAULT_FOLDERS, **dict(folders or {})}
        super().__init__(root, root / self.target / names["combined"], f"{self.target} (target)", folders=folders)

    @property
    def target_dir(self) -> Path:
        return self.root / self.target

    def _base_of(self, key: str) -> Path:
        if key == "alignment":
            return self.target_dir
        return super()._base_of(key)

    def folder(self, key: str, create: bool = False) -> Path:
        # The mosaic's cubes and images sit in Combined/ itself.
        if key in ("object", "combined"):
            path = self.base_dir
            if create:
                path.mkdir(parents=True, exist_ok=True)
            return path
        return super().folder(key, create)

    def pointing_layout(self, pointing: int, str_pointing="P", ndigits=2) -> PointingLayout:
        return PointingLayout(self.root, self.target, pointing, str_pointing=str_pointing, ndigits=ndigits,
                              folders=self._renamed())


class NightLayout(AreaLayout):
    """The shared calibration area of one observing night: ``<root>/Calibrations/<YYYY-MM-DD>/``.

    ``night`` is the date of the evening the night started (the raw table's ``night`` column).
    """

    kind = "night"

    def __init__(self, root, night, *, folders=None):
        night = str(night)
        if len(night) != 10 or night[4] != "-" or night[7] != "-":
            raise ValueError(f"night={night!r}: expected the evening's date as YYYY-MM-DD")
        self.night = night
        root = Path(root).absolute()
        names = {**DEFAULT_FOLDERS, **dict(folders or {})}
        super().__init__(root, root / names["calibrations"] / night, f"night {night}", folders=folders)

    def create_working_folders(self):
        for key in NIGHT_FOLDERS:
            self.folder(key, create=True)
