"""The engine's edge cases with a fake esorex (tests/fake_esorex.py): fan-out, failures, timeout, resume,
missing calibrations, fakemode, merged mode."""
import json
import os
import sys
from pathlib import Path

import pytest
from astropy.table import Table

from pymusepipe.association import InputFrame, MissingCalibrationError
from pymusepipe.engine import RecipeEngine
from pymusepipe.esorex import read_sof
from pymusepipe.executors import FakeExecutor, LocalExecutor
from pymusepipe.layout import PointingLayout
from pymusepipe.products import JobTable, PlannedProduct, ProductCatalogue
from pymusepipe.replaylog import ReplayLog

FAKE_ESOREX = Path(__file__).with_name("fake_esorex.py")


@pytest.fixture
def fake_esorex(tmp_path):
    wrapper = tmp_path / "bin" / "esorex"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_ESOREX}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture
def layout(tmp_path):
    return PointingLayout(tmp_path / "data", "NGC0001", 1)


def _frames(raw_dir, tag, tpl_mjd, count=3, mode="WFM-NOAO-N"):
    raw_dir.mkdir(parents=True, exist_ok=True)
    tpl = f"2024-01-01T{int(tpl_mjd * 100) % 24:02d}:00:00"
    frames = []
    # Written in reverse time order, to check that SOFs come out sorted by MJD.
    for number in reversed(range(1, count + 1)):
        path = raw_dir / f"{tag}_{tpl_mjd}_{number}.fits"
        path.write_text("raw")
        frames.append(InputFrame(str(path), tag, tpl_mjd + number * 0.001, f"2024-01-01T00:00:0{number}", tpl,
                                 number, mode, "SCI1.0"))
    return frames


def _engine(layout, fake_esorex, **kwargs):
    badpix = layout.root / "badpix.fits"
    if not badpix.exists():  # rewriting it would change every fingerprint
        badpix.parent.mkdir(parents=True, exist_ok=True)
        badpix.write_text("static")
    kwargs.setdefault("executor", LocalExecutor(cpus=[0, 1], pinning="none", timeout=60))
    engine = RecipeEngine(layout.root, esorex=fake_esorex, version="fake-1.0", check_parameters=False,
                          static_calibrations={"BADPIX_TABLE": str(layout.root / "badpix.fits")},
                          log=ReplayLog(layout.folder("log") / "test.log"), **kwargs)
    return _bound(engine, layout)


def _bound(engine, layout):
    """Plan in the pointing area by default (the tests plan everything there)."""
    plan = engine.plan

    def plan_in_pointing(recipe, groups, **options):
        options.setdefault("area", layout)
        return plan(recipe, groups, **options)

    engine.plan = plan_in_pointing
    return engine


def test_fanout_runs_one_job_per_ifu_and_moves_products(layout, fake_esorex, tmp_path, monkeypatch):
    record = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_ESOREX_RECORD", str(record))
    engine = _engine(layout, fake_esorex)
    frames = _frames(layout.folder("raw"), "BIAS", 60000.5)
    jobs = engine.plan("muse_bias", [frames], ifus=[1, 2])
    assert [job.parameters["nifu"] for job in jobs] == [1, 2]
    report = engine.run(jobs)
    assert report.ok and report.with_status("done") == [job.name for job in jobs]
    calls = record.read_text().splitlines()
    assert sorted(call.split()[0] for call in calls) == ["1", "1"]  # OMP_NUM_THREADS: 2 cores / 2 jobs
    for ifu, job in zip((1, 2), jobs):
        destination = layout.master_folder("Bias") / f"MASTER_BIAS_{frames[0].tpl_start}-{ifu:02d}.fits"
        assert destination.is_file() and not (job.output_dir / f"MASTER_BIAS-{ifu:02d}.fits").exists()
        sof = read_sof(job.sof)
        assert [tag for _, tag in sof[:3]] == ["BIAS"] * 3
        assert [Path(path).name for path, _ in sof[:3]] == sorted(Path(f.path).name for f in frames)
        assert all(Path(path).is_absolute() for path, _ in sof)
    catalogue = ProductCatalogue(layout.folder("astro_tables"), root=layout.root)
    assert sorted(record.ifu for record in catalogue.records) == [1, 2]
    assert {record.path for record in catalogue.records} == {
        str(layout.master_folder("Bias") / f"MASTER_BIAS_{frames[0].tpl_start}-{ifu:02d}.fits") for ifu in (1, 2)}
    stored = Table.read(layout.folder("astro_tables") / "muse_bias_products.fits")
    assert all(not path.startswith("/") for path in stored["path"])   # relative to the data root
    assert all(checksum.startswith("crc32:") for checksum in stored["checksum"])
    log = engine.log.path.read_text()
    assert "pymusepipe_run " in log and log.count("mv -f ") == 2


def test_failed_ifu_does_not_stop_others_and_dependents_are_skipped(layout, fake_esorex, monkeypatch):
    monkeypatch.setenv("FAKE_ESOREX_FAIL_IFU", "2")
    engine = _engine(layout, fake_esorex)
    bias_jobs = engine.plan("muse_bias", [_frames(layout.folder("raw"), "BIAS", 60000.5)], ifus=[1, 2])
    flat_jobs = engine.plan("muse_flat", [_frames(layout.folder("raw"), "FLAT", 60000.6)], ifus=[1, 2],
                            include_planned=True)
    assert flat_jobs[1].depends_on == (bias_jobs[1].name,)
    report = engine.run(bias_jobs + flat_jobs)
    status = {name: result.status for name, result in report.results.items()}
    assert status == {bias_jobs[0].name: "done", bias_jobs[1].name: "failed",
                      flat_jobs[0].name: "done", flat_jobs[1].name: "skipped"}
    failed = report.results[bias_jobs[1].name]
    assert "exited with code 255" in failed.message and "simulated failure" in failed.message
    assert any("simulated failure" in line for line in failed.log_tail)
    assert bias_jobs[1].name in report.results[flat_jobs[1].name].message
    table = JobTable(layout.folder("astro_tables"), "muse_bias")
    assert table.get(bias_jobs[1].name).status == "failed"
    assert f"FAILED {bias_jobs[1].name}" in engine.log.path.read_text()


def test_exit_zero_without_products_is_a_failure_and_stale_files_do_not_count(layout, fake_esorex, monkeypatch):
    monkeypatch.setenv("FAKE_ESOREX_BEHAVIOUR", "noproduct")
    engine = _engine(layout, fake_esorex)
    (job,) = engine.plan("muse_bias", [_frames(layout.folder("raw"), "BIAS", 60000.5)], ifus=[3])
    # A product left by an interrupted earlier run must not pass for this run's product.
    job.output_dir.mkdir(parents=True)
    (job.output_dir / "MASTER_BIAS-03.fits").write_text("stale")
    result = engine.run([job]).results[job.name]
    assert result.status == "failed" and result.returncode == 0
    assert "expected product(s) missing: MASTER_BIAS-03.fits" in result.message
    assert not job.products[0].destination.exists()
    assert ProductCatalogue(layout.folder("astro_tables")).of_job(job.name) == []


def test_timeout_kills_the_job(layout, fake_esorex, monkeypatch):
    monkeypatch.setenv("FAKE_ESOREX_BEHAVIOUR", "hang")
    engine = _engine(layout, fake_esorex, executor=LocalExecutor(cpus=[0], pinning="none", timeout=1.0))
    (job,) = engine.plan("muse_bias", [_frames(layout.folder("raw"), "BIAS", 60000.5)], ifus=[1])
    result = engine.run([job]).results[job.name]
    assert result.status == "failed" and "timed out after 1 s" in result.message
    assert result.duration < 20


def test_resume_skips_unchanged_jobs_and_reruns_changed_ones(layout, fake_esorex, tmp_path, monkeypatch):
    record = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_ESOREX_RECORD", str(record))
    engine = _engine(layout, fake_esorex)
    frames = _frames(layout.folder("raw"), "BIAS", 60000.5)

    def run(**kwargs):
        parameters = kwargs.pop("parameters", None)
        jobs = engine.plan("muse_bias", [frames], ifus=[1], parameters=parameters)
        return engine.run(jobs, **kwargs).results[jobs[0].name].status

    assert run() == "done"
    assert run() == "uptodate"
    assert run(overwrite=True) == "done"
    assert run(parameters={"combine": "median"}) == "done"
    assert run(parameters={"combine": "median"}) == "uptodate"
    os.utime(frames[0].path, ns=(1, 1))  # a copied raw frame (new time, same content) changes nothing
    assert run(parameters={"combine": "median"}) == "uptodate"
    Path(frames[0].path).write_text("raw frame downloaded again, different")  # an input changed
    assert run(parameters={"combine": "median"}) == "done"
    product = layout.master_folder("Bias") / f"MASTER_BIAS_{frames[0].tpl_start}-01.fits"
    product.unlink()  # a product was deleted
    assert run(parameters={"combine": "median"}) == "done"
    assert len(record.read_text().splitlines()) == 5
    # A fresh engine (new session) reads the tables back and still knows the job is up to date.
    assert _engine(layout, fake_esorex).run(
        _engine(layout, fake_esorex).plan("muse_bias", [frames], ifus=[1], parameters={"combine": "median"})
    ).with_status("uptodate")


def test_all_missing_calibrations_reported_at_once(layout, fake_esorex):
    engine = _engine(layout, fake_esorex)
    groups = [_frames(layout.folder("raw"), "FLAT", 60000.5), _frames(layout.folder("raw"), "FLAT", 60001.5)]
    with pytest.raises(MissingCalibrationError) as error:
        engine.plan("muse_flat", groups, ifus=[1, 2])
    assert len(error.value.missing) == 4  # 2 templates x 2 IFUs, MASTER_BIAS each
    message = str(error.value)
    assert message.count("no MASTER_BIAS available") == 4
    assert all(f"muse_flat_{group[0].tpl_start}_ifu0{ifu}: MASTER_BIAS" in message for group in groups for ifu in (1, 2))


def test_master_outside_time_window_is_not_used(layout, fake_esorex):
    engine = _engine(layout, fake_esorex)
    engine.run(engine.plan("muse_bias", [_frames(layout.folder("raw"), "BIAS", 60000.5)], ifus=[1]))
    with pytest.raises(MissingCalibrationError, match=r"outside \+-3 d"):
        engine.plan("muse_flat", [_frames(layout.folder("raw"), "FLAT", 60004.0)], ifus=[1])
    (flat,) = engine.plan("muse_flat", [_frames(layout.folder("raw"), "FLAT", 60002.0)], ifus=[1])
    (bias,) = [a for a in flat.associations if a.tag == "MASTER_BIAS"]
    assert bias.delta_days == pytest.approx(1.5, abs=0.01) and "within +-3 d" in bias.rule


def test_fakemode_runs_nothing_and_names_planned_files(layout, fake_esorex, tmp_path, monkeypatch):
    record = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_ESOREX_RECORD", str(record))
    engine = _bound(RecipeEngine(layout.root, fakemode=True, esorex=fake_esorex, version="fake-1.0",
                                 log=ReplayLog(layout.folder("log") / "fake.log", fakemode=True),
                                 check_parameters=False), layout)
    assert isinstance(engine.executor, FakeExecutor)
    bias_frames = _frames(layout.folder("raw"), "BIAS", 60000.5)
    bias = engine.run(engine.plan("muse_bias", [bias_frames], ifus=[1]))
    assert bias.with_status("planned")
    (flat,) = engine.plan("muse_flat", [_frames(layout.folder("raw"), "FLAT", 60000.6)], ifus=[1])
    planned_bias = layout.master_folder("Bias") / f"MASTER_BIAS_{bias_frames[0].tpl_start}-01.fits"
    engine.run([flat])
    log = engine.log.path.read_text()
    # fakemode writes nothing a real run reads: the SOF is only in the (commented) log.
    assert not flat.sof.exists() and f"# [fakemode] {planned_bias} MASTER_BIAS" in log
    assert not record.exists() and not planned_bias.exists()
    assert not any(layout.folder("astro_tables").glob("*.fits"))
    assert "# [fakemode] " in log and "\nesorex " not in log
    assert any(line.startswith("# At :") and "[fakemode]" in line for line in log.splitlines())
    # A step whose earlier step was never planned: warned about, not a crash.
    (wave,) = engine.plan("muse_wavecal", [_frames(layout.folder("raw"), "ARC", 60000.7, count=1)], ifus=[1])
    assert {m.tag for m in wave.missing} == {"LINE_CATALOG"}  # TRACE_TABLE: the planned flat product
    assert engine.run([wave]).ok


def test_merged_mode_uses_eso_in_process_options(layout, fake_esorex):
    engine = _engine(layout, fake_esorex)
    frames = _frames(layout.folder("raw"), "BIAS", 60000.5)
    (job,) = engine.plan("muse_bias", [frames], ifus=range(1, 25))
    assert job.parameters["nifu"] == -1 and job.parameters["merge"] is True and job.threads == 2
    assert [p.esorex_name for p in job.products] == ["MASTER_BIAS.fits"]
    assert engine.run([job]).ok
    assert (layout.master_folder("Bias") / f"MASTER_BIAS_{frames[0].tpl_start}.fits").is_file()
    with pytest.raises(ValueError, match="ifu_mode='fanout'"):
        engine.plan("muse_bias", [frames], ifus=[1, 2], ifu_mode="merged")


def test_bad_groups_are_refused_with_a_clear_message(layout, fake_esorex):
    engine = _engine(layout, fake_esorex)
    with pytest.raises(ValueError, match="needs at least 3"):
        engine.plan("muse_bias", [_frames(layout.folder("raw"), "BIAS", 60000.5, count=2)], ifus=[1])
    with pytest.raises(ValueError, match="input tag.*FLAT"):
        engine.plan("muse_bias", [_frames(layout.folder("raw"), "FLAT", 60000.5)], ifus=[1])


def test_ifus_are_those_common_to_all_raw_files(layout, fake_esorex):
    import numpy as np
    from astropy.io import fits

    raw = layout.folder("raw", create=True)
    frames = []
    for number, ifus in enumerate(((3, 5, 9), (3, 9), (9, 3, 5)), start=1):
        path = raw / f"bias{number}.fits"
        fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(np.zeros((2, 2), np.uint16), name=f"CHAN{ifu:02d}")
                                            for ifu in ifus]).writeto(path)
        frames.append(InputFrame(str(path), "BIAS", 60000.5 + number * 0.001, "", "2024-01-01T00:00:00", number,
                                 "WFM-NOAO-N", "SCI1.0"))
    jobs = _engine(layout, fake_esorex).plan("muse_bias", [frames])
    assert [job.parameters["nifu"] for job in jobs] == [3, 9]
    missing = InputFrame(str(raw / "absent.fits"), "BIAS", 60000.6, "", "tpl", 1, "WFM-NOAO-N", "SCI1.0")
    with pytest.raises(FileNotFoundError, match="absent.fits"):
        _engine(layout, fake_esorex).plan("muse_bias", [[missing] * 3])


def test_fakemode_chain_fanout_masters_feed_an_all_ifu_recipe(layout, fake_esorex):
    engine = _bound(RecipeEngine(
        layout.root, fakemode=True, version="fake-1.0", log=ReplayLog(layout.folder("log") / "chain.log"),
        check_parameters=False, static_calibrations={"LINE_CATALOG": "/cal/lc.fits", "GEOMETRY_TABLE": "/cal/geo.fits",
                                                     "EXTINCT_TABLE": "/cal/ext.fits", "STD_FLUX_TABLE": "/cal/std.fits"}),
        layout)
    raw = layout.folder("raw")
    for recipe, tag, mjd, count in (("muse_bias", "BIAS", 60000.5, 3), ("muse_flat", "FLAT", 60000.6, 3),
                                    ("muse_wavecal", "ARC", 60000.7, 1)):
        engine.run(engine.plan(recipe, [_frames(raw, tag, mjd, count)], ifus=[1, 2]))
    (twilight,) = engine.plan("muse_twilight", [_frames(raw, "SKYFLAT", 60000.8)], ifus=[1, 2])
    used = twilight.calibration_paths()
    # muse_twilight has no --nifu: it gets the per-IFU masters of both IFUs of each fanned-out set.
    assert [Path(p).name[-8:] for p in used["MASTER_BIAS"]] == ["-01.fits", "-02.fits"]
    assert len(used["TRACE_TABLE"]) == len(used["WAVECAL_TABLE"]) == 2 and "nifu" not in twilight.parameters
    assert [p.destination.name for p in twilight.products] == [
        f"DATACUBE_SKYFLAT_{twilight.label}.fits", f"TWILIGHT_CUBE_{twilight.label}.fits"]
    engine.run([twilight])
    (std_exposure,) = _frames(raw, "STD", 60000.9, count=1)
    (scibasic,) = engine.plan("muse_scibasic", [[std_exposure]], ifus=[1])
    assert "TWILIGHT_CUBE" in scibasic.calibration_paths() and scibasic.label.endswith("_0001")
    (pixtable,) = scibasic.products
    assert pixtable.esorex_name == "PIXTABLE_STD_0001-01.fits"
    assert pixtable.destination == layout.folder("std") / f"PIXTABLE_STD_{scibasic.label}-01.fits"
    engine.run([scibasic])
    records = [r for r in engine.catalogue.records if r.tag == "PIXTABLE_STD"]
    (standard,) = engine.plan("muse_standard", [[InputFrame.from_product(r) for r in records]])
    assert standard.ifus == (1,) and standard.frames[0].path == str(pixtable.destination)
    assert layout.master_folder("Std") / f"STD_RESPONSE_{scibasic.label}.fits" in [
        p.destination for p in standard.products]


@pytest.mark.esorex
def test_parameter_typos_are_caught_when_planning(layout):
    engine = _bound(RecipeEngine(layout.root, fakemode=True), layout)  # real esorex: version and parameters
    assert engine.check_parameters and engine.version.count(".") == 2
    frames = _frames(layout.folder("raw"), "BIAS", 60000.5)
    with pytest.raises(ValueError, match="muse_bias has no parameter 'ovrscan'; did you mean 'overscan'"):
        engine.plan("muse_bias", [frames], ifus=[1], parameters={"ovrscan": "none"})
    assert engine.plan("muse_bias", [frames], ifus=[1], parameters={"overscan": "none"})


def test_cleaned_products_keep_resume_and_are_remade_only_when_a_reader_runs_again(layout, fake_esorex, tmp_path,
                                                                                  monkeypatch):
    record = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_ESOREX_RECORD", str(record))
    engine = _engine(layout, fake_esorex)
    raw = layout.folder("raw")
    bias_frames, flat_frames = _frames(raw, "BIAS", 60000.5), _frames(raw, "FLAT", 60000.6)

    def run(**flat_parameters):
        fresh = _engine(layout, fake_esorex)   # a new session each time: everything from the tables
        jobs = fresh.plan("muse_bias", [bias_frames], ifus=[1]) + fresh.plan(
            "muse_flat", [flat_frames], ifus=[1], parameters=flat_parameters or None)
        report = fresh.run(jobs)
        return fresh, [report.results[job.name].status for job in jobs]

    engine, statuses = run()
    assert statuses == ["done", "done"]
    (master,) = [r for r in engine.catalogue.records if r.tag == "MASTER_BIAS"]
    assert engine.clean([master], reason="test") == (1, master.size)
    assert not Path(master.path).exists()
    assert "rm -f" in engine.log.path.read_text()
    # Nothing needs the master again: both jobs stay up to date, the master is reported cleaned, not missing.
    engine, statuses = run()
    assert statuses == ["uptodate", "uptodate"]
    assert [r.status for r in engine.catalogue.records if r.tag == "MASTER_BIAS"] == ["cleaned"]
    # The flat must run again (new parameter): the cleaned master is made again first.
    engine, statuses = run(nsum=16)
    assert statuses == ["done", "done"] and Path(master.path).is_file()


def test_a_python_step_records_its_inputs_and_runs_again_only_when_their_content_changes(layout, fake_esorex,
                                                                                         monkeypatch):
    frames = _frames(layout.folder("raw"), "BIAS", 60000.5)
    summary = layout.folder("object") / "bias_summary.txt"
    read = []

    def run(stamp, **bias_parameters):
        monkeypatch.setenv("FAKE_ESOREX_STAMP", stamp)
        engine = _engine(layout, fake_esorex)   # a new session each time: everything from the tables
        (bias,) = engine.plan("muse_bias", [frames], ifus=[1], parameters=bias_parameters or None)
        master = next(product.destination for product in bias.products if product.tag == "MASTER_BIAS")

        def summarise():
            text = Path(master).read_text()
            read.append(text)
            summary.parent.mkdir(parents=True, exist_ok=True)
            summary.write_text(text.upper())
            return "summarised"

        python = engine.python_job("bias_summary", step="bias", area=layout, function=summarise,
                                   log_argv=["python3", "-m", "pymusepipe.tasks", "summarise", str(master)],
                                   frames=[InputFrame(str(master), "MASTER_BIAS", 60000.5)],
                                   products=[PlannedProduct("SUMMARY", summary.name, summary)])
        assert python.depends_on == (bias.name,)
        report = engine.run([bias, python])
        return engine, [report.results[job.name].status for job in (bias, python)]

    engine, statuses = run("first")
    assert statuses == ["done", "done"]
    record = engine.job_table(layout, "python:bias").get("bias_summary")
    master = layout.master_folder("Bias") / f"MASTER_BIAS_{frames[0].tpl_start}-01.fits"
    assert json.loads(record.inputs) == [str(master)]
    assert run("first")[1] == ["uptodate", "uptodate"]
    # The master is made again, identical: its reader stays up to date (content, not time, decides).
    assert run("first", combine="median")[1] == ["done", "uptodate"]
    # The master is made again, different: its reader runs again on the new master.
    assert run("second", combine="mean")[1] == ["done", "done"]
    assert read[-1].endswith("second") and len(read) == 2


def test_a_merged_product_holds_the_ifus_of_the_job_that_made_it_also_in_a_new_session(layout, fake_esorex):
    # A reader of merged products (muse_exp_combine of whole exposures' PIXTABLE_REDUCED) needs memory for every
    # IFU they hold, which only the job that made them knows: this session's plan, else its job table.
    engine = _engine(layout, fake_esorex)
    raw = layout.folder("raw")
    engine.run(engine.plan("muse_bias", [_frames(raw, "BIAS", 60000.5)], ifus=[1, 2]))
    engine.run(engine.plan("muse_flat", [_frames(raw, "FLAT", 60000.6)], ifus=[1, 2]))
    (twilight,) = engine.plan("muse_twilight", [_frames(raw, "SKYFLAT", 60000.8)], ifus=[1, 2],
                              skip_calibrations=("WAVECAL_TABLE", "GEOMETRY_TABLE"))

    def cube_of(some_engine):
        (record,) = [r for r in some_engine.catalogue.records if r.tag == "TWILIGHT_CUBE"]
        assert record.ifu == 0          # merged: no IFU of its own
        return [record.path]

    assert engine.ifus_held(cube_of(engine)) == 2
    assert engine.run([twilight]).results[twilight.name].status == "done"
    fresh = _engine(layout, fake_esorex)
    fresh.add_area(layout)
    assert fresh.ifus_held(cube_of(fresh)) == 2
    # Inputs no job made (raw files, static calibrations) hold one as far as anyone knows.
    assert fresh.ifus_held(frame.path for frame in _frames(raw, "BIAS", 60001.5)) == 1
