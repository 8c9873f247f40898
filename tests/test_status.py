"""``pymusepipe status``: per step done / stale / failed / not run, from the tables only.

Each test builds a small reduction the way the engine records one: a night area with a master bias, a pointing
with one OBJECT exposure taken through muse_scibasic and muse_scipost, their job and products tables (paths
relative to the data root) and the pointing's ``PIPE_steps.fits``. File times are set explicitly (``os.utime``)
so that no assertion depends on how fast the test runs.
"""
import datetime
import json
import os
from pathlib import Path

from pymusepipe import status as st
from pymusepipe.layout import PointingLayout
from pymusepipe.products import JobRecord, JobTable, ProductCatalogue, ProductRecord
from pymusepipe.state import PointingState, StepStatus

from rawframes import primary_header, write_raw

NIGHT = "2026-03-14"
RUN = datetime.datetime(2026, 3, 20, 12, 0, 0, tzinfo=datetime.timezone.utc)  # when the jobs were recorded
RUN_S = RUN.timestamp()


def _touch(path, seconds):
    os.utime(path, (seconds, seconds))
    return os.stat(path)


def _product(area_tables, root, job, recipe, step, tag, path, nbytes, made_s):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * nbytes)
    stat = _touch(path, made_s)
    catalogue = ProductCatalogue(area_tables, root=root)
    catalogue.register(job, catalogue.of_job(job) + [ProductRecord(
        tag=tag, path=str(path), mjd=61113.9, job=job, recipe=recipe, step=step, night=NIGHT, size=stat.st_size,
        mtime_ns=stat.st_mtime_ns, checksum="crc32:00000000")])
    catalogue.save(recipe)
    return path


def _job(area, recipe, name, step, inputs, calibrations, products, *, status="done", message="", log="",
         started=RUN):
    table = JobTable(area.folder("astro_tables", create=True), recipe, root=area.root)
    table.update(JobRecord(job=name, recipe=recipe, step=step, area=area.name, status=status,
                           started=started.isoformat(timespec="seconds"), inputs=json.dumps([str(p) for p in inputs]),
                           calibrations=json.dumps({tag: {"paths": [str(p) for p in paths], "delta_days": 0.1,
                                                          "rule": "closest in time"}
                                                    for tag, paths in calibrations.items()}),
                           products=json.dumps([str(p) for p in products]), message=message,
                           esorex_log=str(log)))
    table.save()


def make_reduction(root: Path, *, pointing=1, scipost_failed=False) -> PointingLayout:
    """A reduced pointing: bias (night) -> scibasic_all -> scipost; every other step never ran."""
    layout = PointingLayout(root, "STATGAL", pointing)
    layout.create_working_folders()
    night = layout.night_layout(NIGHT)
    night.create_working_folders()
    raw = layout.folder("raw", create=True)
    bias_raw = raw / "MUSE.2026-03-14T20:00:02.000.fits"
    write_raw(bias_raw, primary_header("CALIB", "BIAS", mjd=61113.834))
    object_raw = raw / "MUSE.2026-03-15T03:18:06.689.fits"
    write_raw(object_raw, primary_header("SCIENCE", "OBJECT", mjd=61114.138))
    for path in (bias_raw, object_raw):
        _touch(path, RUN_S - 86400)
    master = _product(night.folder("astro_tables"), root, "muse_bias_x", "muse_bias", "bias", "MASTER_BIAS",
                      night.master_folder("Bias") / "MASTER_BIAS_2026-03-14T20:00:00-01.fits", 4000, RUN_S - 3000)
    _job(night, "muse_bias", "muse_bias_x", "bias", [bias_raw], {}, [master])
    pixtable = _product(layout.folder("astro_tables"), root, "muse_scibasic_y", "muse_scibasic", "scibasic_all",
                        "PIXTABLE_OBJECT", layout.folder("object") / "PIXTABLE_OBJECT_0001-01.fits", 30000,
                        RUN_S - 2000)
    _job(layout, "muse_scibasic", "muse_scibasic_y", "scibasic_all", [object_raw], {"MASTER_BIAS": [master]},
         [pixtable])
    cube = layout.folder("object") / "DATACUBE_FINAL_0001.fits"
    log = layout.folder("esorex_log", create=True) / "muse_scipost_z.log"
    state = PointingState(layout.folder("astro_tables"), root)
    for step, nbytes in (("bias", 1), ("scibasic_all", 1)):
        state.set_step(StepStatus(step, "done", "1 done", 10.0, finished=RUN.isoformat(), jobs=1))
    if scipost_failed:
        log.write_text("[ ERROR ] muse_scipost: no sky lines\n")
        _job(layout, "muse_scipost", "muse_scipost_z", "scipost", [pixtable], {}, [cube], status="failed",
             message="exit code 1", log=log)
        state.set_step(StepStatus("scipost", "failed", "1 failed", 5.0, finished=RUN.isoformat(), jobs=1,
                                  failed=json.dumps([["muse_scipost_z", "exit code 1", str(log)]])))
    else:
        _product(layout.folder("astro_tables"), root, "muse_scipost_z", "muse_scipost", "scipost",
                 "DATACUBE_FINAL", cube, 50000, RUN_S - 1000)
        _job(layout, "muse_scipost", "muse_scipost_z", "scipost", [pixtable], {}, [cube])
        state.set_step(StepStatus("scipost", "done", "1 done", 10.0, finished=RUN.isoformat(), jobs=1))
    # The raw table of the last scan knows both frames (what MusePipe writes when it starts).
    from astropy.table import Table

    Table({"filename": [str(bias_raw), str(object_raw)], "tag": ["BIAS", "OBJECT"],
           "night": [NIGHT, NIGHT]}).write(layout.folder("astro_tables") / "RAW_rawfiles_list_table.fits")
    Table(names=("filename", "reason"), dtype=(str, str)).write(
        layout.folder("astro_tables") / "RAW_excluded_list_table.fits")
    return layout


def _statuses(result) -> dict:
    return {view.step: view.status for view in result.steps}


NOT_RUN_STEPS = {"flat", "wave", "lsf", "twilight", "standard", "sky", "prep_align", "align_bypointing",
                 "align_bygroup", "scipost_sky", "combine_pointing"}


def test_reduced_pointing(tmp_path):
    layout = make_reduction(tmp_path)
    result = st.pointing_status(layout)
    expected = {"bias": "done", "scibasic_all": "done", "scipost": "done",
                **{name: "not run" for name in NOT_RUN_STEPS}}
    assert _statuses(result) == expected
    assert result.overall == "incomplete" and result.nights == [NIGHT] and result.new_raw == []
    table = result.table()
    row = table[list(table["step"]).index("bias")]
    assert row["where"] == f"night {NIGHT}" and row["disk"] == 4000
    assert table[list(table["step"]).index("scipost")]["disk"] == 50000
    assert result.disk == 30000 + 50000  # the night's master is shared, not the pointing's
    text = result.format()
    assert text.splitlines()[0] == "STATGAL/P01: incomplete"
    assert "scipost           done" in text


def test_failed_step_shows_its_esorex_log(tmp_path):
    layout = make_reduction(tmp_path, scipost_failed=True)
    result = st.pointing_status(layout)
    assert _statuses(result)["scipost"] == "failed" and _statuses(result)["scibasic_all"] == "done"
    view = result.step("scipost")
    log = layout.folder("esorex_log") / "muse_scipost_z.log"
    assert view.failed == [("muse_scipost_z", "exit code 1", str(log))]
    assert f"muse_scipost_z: exit code 1 (log {log})" in result.format()
    assert result.overall == "failed"


def test_raw_frame_modified_after_the_reduction(tmp_path):
    layout = make_reduction(tmp_path)
    object_raw = layout.folder("raw") / "MUSE.2026-03-15T03:18:06.689.fits"
    _touch(object_raw, RUN_S + 3600)  # replaced an hour after the jobs ran
    result = st.pointing_status(layout)
    assert _statuses(result) == {"bias": "done", "scibasic_all": "stale", "scipost": "stale",
                                 **{name: "not run" for name in NOT_RUN_STEPS}}
    assert result.step("scibasic_all").reasons == [
        "muse_scibasic_y: input MUSE.2026-03-15T03:18:06.689.fits modified after this job ran "
        "(2026-03-20T13:00:00+00:00)"]
    assert result.step("scipost").reasons == [
        "muse_scipost_z: uses PIXTABLE_OBJECT_0001-01.fits from job muse_scibasic_y (stale)"]
    assert result.overall == "stale"


def test_new_raw_exposure_makes_the_chain_from_scibasic_stale(tmp_path):
    layout = make_reduction(tmp_path)
    new = layout.folder("raw") / "MUSE.2026-03-15T03:40:06.689.fits"
    write_raw(new, primary_header("SCIENCE", "OBJECT", mjd=61114.153))
    result = st.pointing_status(layout)
    assert [(news.path.name, news.tag, news.steps) for news in result.new_raw] == [
        (new.name, "OBJECT", ("scibasic_all",))]
    statuses = _statuses(result)
    assert statuses["bias"] == "done" and statuses["scibasic_all"] == "stale" and statuses["scipost"] == "stale"
    assert result.step("scibasic_all").reasons == [f"new raw frame {new.name} (OBJECT) not used by any job"]
    assert result.step("scipost").reasons == ["uses PIXTABLE_OBJECT, which new raw frames change"]
    assert f"new raw frame {new.name} (OBJECT) not reduced yet: scibasic_all" in result.format()
    # A frame the last scan left out (e.g. another mode) is not news.
    from astropy.table import Table

    Table({"filename": [str(new)], "reason": ["other mode"]}).write(
        layout.folder("astro_tables") / "RAW_excluded_list_table.fits", overwrite=True)
    assert st.pointing_status(layout).new_raw == []


def test_replaced_master_and_missing_product(tmp_path):
    layout = make_reduction(tmp_path)
    master = layout.night_layout(NIGHT).master_folder("Bias") / "MASTER_BIAS_2026-03-14T20:00:00-01.fits"
    master.write_bytes(b"\0" * 5000)  # another master bias copied over the one the jobs used
    (layout.folder("object") / "DATACUBE_FINAL_0001.fits").unlink()
    result = st.pointing_status(layout)
    statuses = _statuses(result)
    assert statuses["bias"] == "stale" and statuses["scibasic_all"] == "stale" and statuses["scipost"] == "stale"
    assert result.step("bias").reasons[0].startswith(
        "muse_bias_x: product MASTER_BIAS_2026-03-14T20:00:00-01.fits changed since it was made (size 5000, was 4000)")
    assert result.step("scibasic_all").reasons == [
        "muse_scibasic_y: input MASTER_BIAS_2026-03-14T20:00:00-01.fits modified since job muse_bias_x made it"]
    assert result.step("scipost").reasons == ["muse_scipost_z: product DATACUBE_FINAL_0001.fits missing"]
    assert result.step("scipost").disk == 0


def test_skipped_step_and_session_steps(tmp_path):
    layout = make_reduction(tmp_path)
    state = PointingState(layout.folder("astro_tables"), layout.root)
    state.set_step(StepStatus("align_bygroup", "skipped", "one template: same as align_bypointing"))
    session = {"sky": StepStatus("sky", "planned", "1 planned")}
    result = st.pointing_status(layout, session_steps=session)
    assert result.step("align_bygroup").status == "skipped"
    assert result.step("align_bygroup").detail == "one template: same as align_bypointing"
    assert result.step("sky").status == "not run" and result.step("sky").detail == "planned only (fakemode)"


def test_python_jobs_before_and_after_a_recipe_job_of_their_step(tmp_path):
    """A Python job that records its inputs (a mosaic's grid, made before the step's recipe job that uses it) is
    judged by those inputs; one that records none (it reads what its step's recipes made) is stale when a recipe
    job of its step ran again after it."""
    layout = make_reduction(tmp_path)
    pixtable = layout.folder("object") / "PIXTABLE_OBJECT_0001-01.fits"
    earlier = RUN - datetime.timedelta(minutes=10)
    _job(layout, "python:grid", "grid_z", "scipost", [pixtable], {}, [], started=earlier)
    assert _statuses(st.pointing_status(layout))["scipost"] == "done"
    _job(layout, "python:summary", "summary_z", "scipost", [], {}, [], started=earlier)
    view = st.pointing_status(layout).step("scipost")
    assert view.status == "stale" and any("ran again after it" in reason for reason in view.reasons), view


def test_target_and_sample_tables(tmp_path):
    make_reduction(tmp_path)
    make_reduction(tmp_path, pointing=2, scipost_failed=True)  # same night, same master bias
    (tmp_path / "STATGAL" / "P03" / "Raw").mkdir(parents=True)  # nothing done there yet
    target = st.target_status(tmp_path, "STATGAL")
    table = target.table()
    assert list(table["pointing"]) == ["P01", "P02", "P03"]
    assert list(table["status"]) == ["incomplete", "failed", "not run"]
    assert list(table["failed"]) == [0, 1, 0] and list(table["done"])[0] == 3
    assert target.overall == "failed" and target.mosaic == "not run"
    sample = st.sample_status(tmp_path)
    rows = sample.table()
    assert list(rows["target"]) == ["STATGAL"] and rows["pointings"][0] == 3 and rows["failed"][0] == 1
    assert "Calibrations" not in sample.format()


def test_status_command(tmp_path, capsys):
    from pymusepipe.cli import main
    from pymusepipe.config import CALIB_KEYS

    layout = make_reduction(tmp_path / "data")
    calib = tmp_path / "cal"
    calib.mkdir()
    for _, _, name in CALIB_KEYS.values():
        (calib / name).write_bytes(b"")
    rc = tmp_path / "rc.dic"
    rc.write_text(f"musecalib {calib}\nroot {layout.root}\n")
    cal = tmp_path / "calib_tables.dic"
    cal.write_text("".join(f"{key} {name}\n" for key, (_, _, name) in CALIB_KEYS.items()))
    assert main(["status", "--rc", str(rc), "--cal", str(cal), "--target", "STATGAL", "--pointing", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("STATGAL/P01: incomplete") and "bias              done" in out
    assert main(["status", "--rc", str(rc), "--cal", str(cal), "--target", "STATGAL"]) == 0
    assert "P01                    incomplete" in capsys.readouterr().out
    assert main(["status", "--rc", str(rc), "--cal", str(cal)]) == 0
    assert "STATGAL" in capsys.readouterr().out
    assert main(["status", "--rc", str(rc), "--cal", str(cal), "--target", "NOPE"]) == 1
    assert "no target folder" in capsys.readouterr().err
