"""Synthetic MUSE data that the real ESO recipes reduce: an observing run, its calibration kit and the
truth to check a reduction against.

>>> from pymusepipe.simulate import simulate_run
>>> run = simulate_run("/tmp/simdata")            # doctest: +SKIP
>>> run.rc_file, run.cal_file, run.truth["point_sources"][0]   # doctest: +SKIP

One :class:`InstrumentModel` (``model.py``) drives everything written: raw frames (``detector.py``,
``render.py``, ``scene.py``, ``observing.py``), the calibration kit (``calibkit.py``) and the truth
(``run.py``).
"""
from .model import DetectorModel, InstrumentModel
from .run import SimulatedRun, SimulationError, data_checksums, simulate_run

__all__ = ["simulate_run", "SimulatedRun", "SimulationError", "InstrumentModel", "DetectorModel",
           "data_checksums"]
