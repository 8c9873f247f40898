"""Files written whole or not at all.

Every file pymusepipe writes that another step, a later session or a colleague reads (tables, offset lists,
the mosaic grid, report pages, caches) is written under a temporary name in the same folder, then renamed
onto its path: a reader never sees half a file, and a crash, a kill or a full disk leaves the previous
version (or nothing), never a truncated file counted as a product.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from .errors import from_os_error

__all__ = ["write_atomically", "atomic_move"]


def _temporary_name(path: Path) -> Path:
    # Hidden, unique per process and call (parallel jobs may write the same folder), same file system.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomically(path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file onto ``path``.

    Parameters
    ----------
    path : str or Path
        The file to write; its folder is created.
    write : callable
        Writes the whole content to the path it is given (e.g. ``lambda tmp: table.write(tmp, format="fits")``).
        The temporary file is created with the process's umask, so colleagues can read it as they could
        read a file written in place.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DiskFullError, PermissionDeniedError, MissingPathError, PipelineError
        From :func:`pymusepipe.errors.from_os_error`, naming ``path``; the temporary file is removed and
        ``path`` keeps its previous content. Other exceptions of ``write`` pass through, with the same
        clean-up.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise from_os_error(error, path.parent, "creating") from error
    temporary = _temporary_name(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise from_os_error(error, path, "writing") from error
        raise
    return path


def atomic_move(source, destination) -> Path:
    """Move a finished product into place in one step: a rename, or across file systems a copy next to the
    destination then a rename (so no half file is ever visible under the destination's name)."""
    source, destination = Path(source), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, destination)
    except OSError:
        write_atomically(destination, lambda temporary: shutil.copy2(source, temporary))
        source.unlink()
    return destination
