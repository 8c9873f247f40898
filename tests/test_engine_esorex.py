"""The engine driving the REAL muse_bias: products, tables, resume, and the replay log run with bash.

Three full-size BIAS frames holding two IFUs, 3 and 7 (4224 x 4240 uint16 each, written with
``pymusepipe.simulate``), are reduced once per module with the per-IFU fan-out: two muse_bias jobs
(``--nifu=3``, ``--nifu=7``) run in parallel. Big files are removed at the end.
"""
import hashlib
import shutil
import subprocess

import numpy as np
import pytest
from astropy.io import fits

from pymusepipe.association import InputFrame
from pymusepipe.engine import RecipeEngine
from pymusepipe.executors import LocalExecutor
from pymusepipe.layout import PointingLayout
from pymusepipe.products import JobTable, ProductCatalogue
from pymusepipe.replaylog import ReplayLog
from pymusepipe.simulate.detector import electrons_to_raw, write_raw_file
from pymusepipe.simulate.model import DetectorModel
from pymusepipe.simulate.observing import Exposure, isot, primary_header

pytestmark = pytest.mark.esorex

TPL_MJD = 60000.9
DETECTOR = DetectorModel()
IFUS = (3, 7)


def _write_biases(raw_dir):
    """Three biases of one template with CCDs of IFUS; returns the raw-table-like InputFrames."""
    rng = np.random.default_rng(42)
    tpl_start = isot(TPL_MJD)[:19]
    frames = []
    for number in range(1, 4):
        exposure = Exposure(kind="BIAS", mjd=TPL_MJD + number * 0.0005, exptime=0.0, ra=0.0, dec=-30.0,
                            object_name="BIAS", tpl_start=tpl_start, tpl_nexp=3, tpl_expno=number, obs_id=1)
        path = raw_dir / exposure.file_name
        ccds = {ifu: electrons_to_raw(None, DETECTOR, rng) for ifu in IFUS}
        write_raw_file(path, primary_header(exposure, number), ccds, DETECTOR)
        frames.append(InputFrame(str(path), "BIAS", exposure.mjd, exposure.date_obs, tpl_start, number,
                                 "WFM-NOAO-N", "SCI1.0"))
    return frames


def _data_digest(path):
    """Hash of the pixel extensions (headers carry dates, pixels must be identical)."""
    digest = hashlib.sha256()
    with fits.open(path) as hdus:
        for name in ("DATA", "DQ", "STAT"):
            digest.update(np.ascontiguousarray(hdus[name].data).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def bias_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_esorex")
    layout = PointingLayout(root, "BIASTEST", 1)
    raw_dir = layout.folder("raw", create=True)
    frames = _write_biases(raw_dir)
    engine = RecipeEngine(layout.root, executor=LocalExecutor(),
                          log=ReplayLog(layout.folder("log") / "bias_test.log", reset=True))
    jobs = engine.plan("muse_bias", [frames], area=layout, step="bias")
    report = engine.run(jobs, label="bias")
    yield layout, engine, frames, jobs, report
    shutil.rmtree(root, ignore_errors=True)  # 3 x 36 MB raw + 200 MB master


def test_real_bias_fanout_products_moved_and_registered(bias_run):
    layout, engine, frames, jobs, report = bias_run
    assert report.ok, report.results
    # IFUs read from the CHANnn extensions; fewer than 24 -> one job per IFU (nifu=0/-1 would fail).
    assert [(job.ifus, job.parameters["nifu"]) for job in jobs] == [((3,), 3), ((7,), 7)]
    catalogue = ProductCatalogue(layout.folder("astro_tables"), root=layout.root)
    for job, ifu in zip(jobs, IFUS):
        (product,) = job.products
        assert product.destination == layout.master_folder("Bias") / f"MASTER_BIAS_{frames[0].tpl_start}-{ifu:02d}.fits"
        assert product.destination.is_file()
        assert not (job.output_dir / f"MASTER_BIAS-{ifu:02d}.fits").exists()  # moved, not copied
        with fits.open(product.destination) as hdus:
            assert hdus[0].header["HIERARCH ESO PRO CATG"] == "MASTER_BIAS"
            assert hdus["DATA"].header["EXTNAME"] == "DATA" and hdus["DATA"].shape == (4112, 4096)
            assert abs(float(np.median(hdus["DATA"].data))) < 1.0  # overscan-corrected bias ~ 0
        # Tables on disk: the job and the product, with what association needs.
        record = JobTable(layout.folder("astro_tables"), "muse_bias").get(job.name)
        assert record.status == "done" and record.duration > 1.0 and len(record.fingerprint) == 64
        (product_record,) = catalogue.of_job(job.name)
        assert (product_record.tag, product_record.ifu, product_record.read_mode, product_record.path) == \
            ("MASTER_BIAS", ifu, "SCI1.0", str(product.destination))
        assert product_record.mjd == pytest.approx(np.mean([frame.mjd for frame in frames]))
        assert (layout.folder("esorex_log") / job.log_name).is_file()
    # Both masters form one set for association (a later all-IFU job gets both files).
    assert len({record.batch for record in catalogue.records}) == 1


def test_real_bias_resume_skips_unchanged_jobs(bias_run):
    layout, engine, frames, jobs, report = bias_run
    again = engine.run(engine.plan("muse_bias", [frames], area=layout, step="bias"), label="bias again")
    assert again.with_status("uptodate") == [job.name for job in jobs]
    assert "up to date" in engine.log.path.read_text()


def test_replaying_the_log_with_bash_reproduces_the_products(bias_run):
    layout, engine, frames, jobs, report = bias_run
    products = [job.products[0].destination for job in jobs]
    originals = [_data_digest(path) for path in products]
    for job, path in zip(jobs, products):
        path.unlink()
        shutil.rmtree(job.output_dir, ignore_errors=True)
    result = subprocess.run(["bash", str(engine.log.path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [_data_digest(path) for path in products] == originals
