"""Folder layout of a reduction: names (overridable) and absolute paths.

Per pointing, under ``<root>/<target>/P01/``: ``Raw`` (given by the user) and the working folders the steps
need; per target, ``Alignment`` and ``Combined``. Folders are created on demand, never by changing the
working directory: every path handed out is absolute.
"""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

__all__ = ["DEFAULT_FOLDERS", "TARGET_FOLDERS", "PointingLayout", "pointing_folder_name"]

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
})

#: Layout keys that live at the target level (shared by all pointings) rather than per pointing.
TARGET_FOLDERS = frozenset({"alignment", "combined"})


def pointing_folder_name(pointing: int, str_pointing: str = "P", ndigits: int = 2) -> str:
    """Folder name of a pointing: ``P01`` for pointing 1 with the defaults."""
    if int(pointing) != pointing or pointing < 0:
        raise ValueError(f"pointing={pointing!r}: expected a non-negative integer")
    return f"{str_pointing}{int(pointing):0{ndigits}d}"


class PointingLayout:
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

    def __init__(self, root, target, pointing=1, *, str_pointing="P", ndigits=2, folders=None):
        if not target or "/" in str(target):
            raise ValueError(f"targetname={target!r}: expected a folder name under the data root")
        unknown = set(folders or {}) - set(DEFAULT_FOLDERS)
        if unknown:
            raise ValueError(f"unknown folder key(s) {', '.join(sorted(unknown))}; "
                             f"expected some of {', '.join(DEFAULT_FOLDERS)}")
        self.root = Path(root).absolute()
        self.target = str(target)
        self.pointing = int(pointing)
        self.names = {**DEFAULT_FOLDERS, **dict(folders or {})}
        self.pointing_name = pointing_folder_name(self.pointing, str_pointing, ndigits)

    def __repr__(self):
        return f"PointingLayout({str(self.pointing_dir)!r})"

    @property
    def target_dir(self) -> Path:
        return self.root / self.target

    @property
    def pointing_dir(self) -> Path:
        return self.target_dir / self.pointing_name

    def folder(self, key: str, create: bool = False) -> Path:
        """Absolute path of a layout folder (e.g. ``'sof'``), created if ``create``."""
        if key not in self.names:
            raise KeyError(f"unknown layout folder '{key}'; expected one of {', '.join(self.names)}")
        base = self.target_dir if key in TARGET_FOLDERS else self.pointing_dir
        path = base / self.names[key]
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def master_folder(self, kind: str, create: bool = False) -> Path:
        """``Master/<Kind>`` folder (e.g. ``Master/Bias``)."""
        path = self.folder("master") / (kind[:1].upper() + kind[1:])
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def create_working_folders(self):
        """Create every working folder of the pointing and target (never touches ``Raw``)."""
        for key in self.names:
            if key != "raw":
                self.folder(key, create=True)
