"""Synthetic MUSE data that the real ESO recipes reduce: observing programmes, their calibration kit, archive
master calibrations, reference images and the truth to check a reduction against.

>>> from pymusepipe.simulate import simulate_run, simulate_programme, example_programme
>>> run = simulate_run("/tmp/simdata")                               # doctest: +SKIP
>>> run.rc_file, run.cal_file, run.truth["point_sources"][0]         # doctest: +SKIP
>>> result = simulate_programme("/tmp/programme", example_programme())   # doctest: +SKIP
>>> result.targets["MOSAIC"]["reference_image"]["filter"]           # doctest: +SKIP

One :class:`InstrumentModel` (``model.py``) drives everything written: raw frames (``detector.py``,
``render.py``, ``scene.py``, ``observing.py``), the calibration kit (``calibkit.py``) and the truth
(``run.py``). ``programme.py`` describes programmes, ``schedule.py`` lays them out in time,
``archive.py`` turns masters made by the recipes into archive-delivered calibrations, ``reference.py``
writes reference images.
"""
from .archive import write_archive_masters
from .errors import SimulationError
from .model import DetectorModel, InstrumentModel
from .programme import (NightPlan, ObservingBlock, Programme, ReferenceImagePlan, TargetPlan, demo_programme,
                        example_programme, load_programme, survey_programme)
from .run import SimulatedProgramme, SimulatedRun, data_checksums, simulate_programme, simulate_run

__all__ = ["simulate_run", "simulate_programme", "SimulatedRun", "SimulatedProgramme", "SimulationError",
           "Programme", "NightPlan", "TargetPlan", "ObservingBlock", "ReferenceImagePlan", "load_programme",
           "demo_programme", "survey_programme", "example_programme", "write_archive_masters",
           "InstrumentModel", "DetectorModel", "data_checksums"]
