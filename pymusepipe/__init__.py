"""pymusepipe: automatic, reproducible reduction of VLT/MUSE data with the ESO MUSE pipeline.

The package is a set of small modules under one facade, :class:`pymusepipe.musepipe.MusePipe`; see
``docs/architecture.md``. Heavy dependencies (mpdaf, matplotlib) are imported only where they are used.
"""
from .version import __version__

__all__ = ["__version__"]
