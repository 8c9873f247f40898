"""MusePipe without running recipes: set-up errors, step order and slicing, parameters, fakemode."""
import logging
from pathlib import Path

import pytest

from pymusepipe.executors import DEFAULT_MEMORY_FRACTION
from pymusepipe.memory import memory_need
from pymusepipe.errors import StepFailedError
from pymusepipe.musepipe import STEPS, MusePipe, StepInputError

from rawframes import empty_calibration_kit, primary_header, write_raw

TEMPLATES = [  # (stem, DPR CATG, DPR TYPE, count, TPL START)
    ("bias", "CALIB", "BIAS", 3, "2025-03-16T14:00:00"),
    ("flat", "CALIB", "FLAT,LAMP", 3, "2025-03-16T14:10:00"),
    ("arc", "CALIB", "WAVE", 3, "2025-03-16T14:20:00"),
    ("skyflat", "CALIB", "FLAT,SKY", 3, "2025-03-16T23:00:00"),
    ("illum", "CALIB", "FLAT,LAMP,ILLUM", 1, "2025-03-16T23:30:00"),
    ("std", "CALIB", "STD", 1, "2025-03-16T23:40:00"),
    ("obj", "SCIENCE", "OBJECT", 2, "2025-03-17T01:00:00"),
    ("sky", "SCIENCE", "SKY", 1, "2025-03-17T01:30:00"),
]


def _write_dataset(tmp_path, ifus=(1,), templates=TEMPLATES):
    calib, raw = empty_calibration_kit(tmp_path)
    mjd = 60750.6
    for stem, catg, dpr_type, count, tpl in templates:
        for i in range(count):
            mjd += 0.002
            write_raw(raw / f"{stem}{i}.fits", primary_header(catg, dpr_type, mjd=mjd, tpl_start=tpl, nexp=count,
                                                              expno=i + 1), ifus=ifus)
    return tmp_path


@pytest.fixture
def dataset(tmp_path):
    return _write_dataset(tmp_path)


def _sof_tags(job):
    return {tag for _, tag, _ in job.sof_entries()}


def _fake(dataset, **kwargs):
    return MusePipe("NGC1000", 1, musecalib=dataset / "cal", root=dataset / "data", fakemode=True,
                    filter_list="white,Cousins_R", **kwargs)


def test_fakemode_plans_every_step_in_order(dataset):
    pipe = _fake(dataset)
    pipe.run_all_recipes()
    assert list(pipe.steps) == list(STEPS)
    assert pipe.steps["scibasic_all"].report is not None
    assert len(pipe.steps["scibasic_all"].report.jobs) == 4      # 2 OBJECT + 1 SKY + 1 STD, one job each
    scipost = pipe.steps["scipost"].report.jobs
    assert len(scipost) == 2
    tags = _sof_tags(scipost[0])
    for tag in ("PIXTABLE_OBJECT", "STD_RESPONSE", "EXTINCT_TABLE", "OFFSET_LIST", "SKY_LINES", "SKY_CONTINUUM",
                "LSF_PROFILE"):
        assert tag in tags, tag
    assert "RAMAN_LINES" not in tags   # not an AO mode
    # The OFFSET_LIST in force is chosen from muse_exp_align's, recorded as its input (resume follows its content).
    (exp_align, choose) = pipe.steps["align_bypointing"].report.jobs
    assert [frame.path for frame in choose.frames] == [
        str(product.destination) for product in exp_align.products if product.tag == "OFFSET_LIST"]
    assert choose.depends_on == (exp_align.name,)
    # Calibrations and the standard star go to the night's shared area; science stays in the pointing.
    night = pipe.layout.night_layout("2025-03-16")
    assert all(job.area == night for name in ("bias", "flat", "wave", "lsf", "twilight", "standard")
               for job in pipe.steps[name].report.jobs)
    assert {job.area.kind for job in pipe.steps["scibasic_all"].report.jobs} == {"night", "pointing"}
    # fakemode writes nothing a real run reads: no product, no SOF, no table.
    assert not any(pipe.layout.folder("object").glob("*.fits"))
    assert not any(pipe.layout.folder("sof").glob("*.sof"))
    assert not any(pipe.layout.folder("astro_tables").glob("PIPE_*.fits"))
    assert "esorex" in pipe.engine.log.path.read_text()


def test_first_last_and_parameter_overrides(dataset):
    pipe = _fake(dataset)
    pipe.run_all_recipes(first="run_bias", last="wave")
    assert list(pipe.steps) == ["bias", "flat", "wave"]
    pipe = _fake(dataset)
    pipe.run_all_recipes(parameters={"scipost": {"pixfrac": 0.6}, "muse_exp_combine": {"pixfrac": 0.5}})
    assert all(job.parameters["pixfrac"] == 0.6 for job in pipe.steps["scipost"].report.jobs)
    assert "pixfrac" not in pipe.steps["prep_align"].report.jobs[0].parameters
    assert pipe.steps["combine_pointing"].report.jobs[0].parameters["pixfrac"] == 0.5
    with pytest.raises(ValueError, match="unknown step 'sciposte'"):
        pipe.run_all_recipes(first="sciposte")
    with pytest.raises(ValueError, match="comes after"):
        pipe.run_all_recipes(first="sky", last="bias")


def test_illum_false_leaves_illum_out(dataset):
    pipe = _fake(dataset)
    pipe.run_all_recipes(last="twilight", illum=False)
    assert "ILLUM" not in _sof_tags(pipe.steps["twilight"].report.jobs[0])
    pipe = _fake(dataset)
    pipe.run_all_recipes(last="twilight")
    assert "ILLUM" in _sof_tags(pipe.steps["twilight"].report.jobs[0])


def test_setup_errors_name_what_is_wrong(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="P02/Raw does not exist"):
        MusePipe("NGC1000", 2, musecalib=dataset / "cal", root=dataset / "data", fakemode=True)
    with pytest.raises(ValueError, match="both rc_filename and cal_filename"):
        MusePipe("NGC1000", 1, rc_filename="rc.dic")
    with pytest.raises(TypeError, match="unexpected argument.*colour"):
        MusePipe("NGC1000", 1, musecalib=dataset / "cal", root=dataset / "data", colour="blue")
    with pytest.raises(ValueError, match="musemode"):
        _fake(dataset, musemode="WFM")
    pipe = _fake(dataset)
    with pytest.raises(FileNotFoundError, match="offset_list=.*does not exist"):
        pipe.run_scipost(offset_list=tmp_path / "nothere.fits")


@pytest.mark.esorex
def test_step_without_inputs_names_the_step_that_makes_them(dataset):
    pipe = MusePipe("NGC1000", 1, musecalib=dataset / "cal", root=dataset / "data", pinning="none")
    with pytest.raises(StepInputError, match="PIXTABLE_STD.*run_scibasic_all"):
        pipe.run_standard()
    with pytest.raises(StepInputError, match="PIXTABLE_REDUCED.*run_scipost"):
        pipe.run_combine_pointing()


def test_full_field_runs_in_eso_merged_mode_and_the_standard_keeps_eso_defaults(tmp_path):
    """24 IFUs (headers and 24 small CHANnn extensions): ESO's in-process mode, one job per template or exposure,
    merged products, and no narrow-field rule anywhere."""
    _write_dataset(tmp_path, ifus=range(1, 25))
    pipe = _fake(tmp_path)
    pipe.run_all_recipes()
    for step in ("bias", "flat", "wave", "lsf", "scibasic_all"):
        for job in pipe.steps[step].report.jobs:
            assert job.parameters["nifu"] == -1 and job.parameters["merge"] is True, job.name
            assert len(job.ifus) == 24, job.name
            merged = [product for product in job.products if not product.tag.startswith("PIXTABLE")]
            assert all(product.ifu == 0 for product in merged), job.name
    assert len(pipe.steps["scibasic_all"].report.jobs) == 4
    # --merge merges masters, not pixel tables: MUSE 2.8.7's muse_scibasic writes one per IFU (measured)
    for job in pipe.steps["scibasic_all"].report.jobs:
        pixtables = sorted(p.esorex_name for p in job.products if p.tag.startswith("PIXTABLE"))
        assert pixtables == [f"PIXTABLE_{job.frames[0].tag}_0001-{ifu:02d}.fits" for ifu in range(1, 25)], job.name
    (standard,) = pipe.steps["standard"].report.jobs
    assert "profile" not in standard.parameters and standard.postprocess is None
    assert "narrow" not in pipe.steps["standard"].summary
    assert "postprocess" not in pipe.engine.log.path.read_text() and "stdcorrection" not in \
        pipe.engine.log.path.read_text()


def test_a_pointing_without_offset_sky_measures_the_sky_on_each_object_exposure(tmp_path):
    _write_dataset(tmp_path, templates=[t for t in TEMPLATES if t[0] != "sky"])
    pipe = _fake(tmp_path)
    pipe.run_all_recipes()
    sky_jobs = pipe.steps["sky"].report.jobs
    assert len(sky_jobs) == 2 and all(job.frames[0].tag == "PIXTABLE_SKY" for job in sky_jobs)
    # Each object exposure's own pixel tables, given to muse_create_sky as PIXTABLE_SKY.
    assert {frame.path for job in sky_jobs for frame in job.frames} == {
        str(product.destination) for job in pipe.steps["scibasic_all"].report.jobs if job.frames[0].tag == "OBJECT"
        for product in job.products if product.tag == "PIXTABLE_OBJECT"}
    assert "measured on 2 object exposure(s)" in pipe.steps["sky"].summary
    assert pipe.steps["scipost_sky"].status == "skipped"
    for job, sky in zip(pipe.steps["scipost"].report.jobs, sky_jobs):
        lines = {Path(path) for path in job.calibration_paths()["SKY_LINES"]}
        assert lines == {p.destination for p in sky.products if p.tag == "SKY_LINES"}
        assert "its own sky" in job.note


def test_ao_and_nfm_modes_use_their_calibrations_and_spaxel_scale(tmp_path):
    """NFM-AO-N (headers only): NFM's astrometry, its 0.025" spaxel in muse_exp_align's FWHM, RAMAN_LINES
    for the AO mode; the same plan in WFM-NOAO-N has no RAMAN_LINES and the WFM spaxel."""
    from pymusepipe.simulate import simulate_programme, survey_programme

    fwhm = {}
    for mode in ("NFM-AO-N", "WFM-NOAO-N"):
        run = simulate_programme(tmp_path / mode, survey_programme(mode=mode, header_only=True, seed=3))
        pipe = MusePipe("SIMGAL", 1, run.rc_file, run.cal_file, musemode=mode, fakemode=True,
                        time_astrometry=True, filter_list="white,Cousins_R")
        pipe.run_all_recipes()
        (scipost, *_) = pipe.steps["scipost"].report.jobs
        tags = _sof_tags(scipost)
        assert ("RAMAN_LINES" in tags) == (mode == "NFM-AO-N"), mode
        (astrometry,) = scipost.calibration_paths()["ASTROMETRY_WCS"]
        assert ("_nfm_" in Path(astrometry).name) == (mode == "NFM-AO-N"), astrometry
        (align, *_) = [job for job in pipe.steps["align_bypointing"].report.jobs if job.recipe == "muse_exp_align"]
        fwhm[mode] = align.parameters["fwhm"]
    # The same seeing in NFM spaxels (0.025") and WFM spaxels (0.2"): eight times as many.
    assert fwhm["NFM-AO-N"] == pytest.approx(8 * fwhm["WFM-NOAO-N"], rel=0.05)


def test_a_full_field_goes_through_the_default_budget_of_a_24_gib_machine_up_to_the_combination(tmp_path, caplog):
    # 80 % of the 23 GiB a 24 GiB machine has available: muse_standard, muse_create_sky and muse_scipost on 24 IFUs
    # are above it with the memory model's margin (20-21 GB) but not without it (15.5-16.2 GB measured): each runs
    # alone instead of being refused. Combining two full exposures (34 GB without the margin) still cannot run.
    _write_dataset(tmp_path, ifus=range(1, 25), templates=[t for t in TEMPLATES if t[0] != "sky"])
    pipe = _fake(tmp_path, memory_gb=DEFAULT_MEMORY_FRACTION * 23.0)
    with caplog.at_level(logging.WARNING, logger="pymusepipe.scheduler"):
        pipe.run_all_recipes(last="scipost")
    alone = {job.recipe for step in ("standard", "sky", "prep_align", "scipost")
             for job in pipe.steps[step].report.jobs if f"{job.name}: needs" in caplog.text}
    assert alone == {"muse_standard", "muse_create_sky", "muse_scipost"}
    assert caplog.text.count("runs alone") == 1 + 2 + 2 + 2
    assert {job.parameters["skymethod"] for job in pipe.steps["scipost"].report.jobs} == {"subtract-model"}
    with pytest.raises(StepFailedError, match="without the safety margin"):
        pipe.run_combine_pointing()


@pytest.mark.parametrize("offset_sky", [False, True])
def test_a_full_field_subtracts_its_own_sky_as_measured_when_refitting_it_would_not_fit(tmp_path, offset_sky):
    templates = TEMPLATES if offset_sky else [t for t in TEMPLATES if t[0] != "sky"]
    _write_dataset(tmp_path, ifus=range(1, 25), templates=templates)
    refit = memory_need("muse_scipost", ifus=24, parameters={"skymethod": "model"})
    subtract = memory_need("muse_scipost", ifus=24, parameters={"skymethod": "subtract-model"})
    assert subtract < refit
    for budget, expected in ((refit + 1, "model"), ((refit + subtract) / 2, "subtract-model")):
        pipe = _fake(tmp_path, memory_gb=budget)
        # A sky from another exposure (the offset sky) is always refitted: the sky changes in time. Where that
        # does not fit, the job is refused before it starts, and the message says what else would let it run.
        refused = offset_sky and expected == "subtract-model"
        if refused:
            with pytest.raises(StepFailedError, match=r"needs 31.5 GB.*skymethod='subtract-model'"):
                pipe.run_all_recipes(last="scipost")
        else:
            pipe.run_all_recipes(last="scipost")
        jobs = pipe.steps["scipost"].report.jobs
        assert len(jobs) == 2
        for job in jobs:
            assert job.parameters["skymethod"] == ("model" if offset_sky else expected), job.name
            assert ("subtracted as measured" in job.note) == (job.parameters["skymethod"] == "subtract-model")
        subtracted = expected == "subtract-model" and not offset_sky
        assert ("subtracted as measured" in pipe.steps["scipost"].summary) == subtracted
        # The command lines of the replay log carry the choice.
        assert ("--skymethod=subtract-model" in pipe.engine.log.path.read_text()) == subtracted
