"""Targets and samples without running recipes (fakemode): calibrations planned once per night whatever folder
holds them, every exposure on the target OFFSET_LIST, one mosaic on one grid, one graph for a sample."""
import pytest

from pymusepipe.sample import MuseSample, read_sample
from pymusepipe.target import MuseTarget, discover_pointings

from rawframes import empty_calibration_kit, primary_header, write_raw

CALIBRATIONS = [  # (stem, DPR CATG, DPR TYPE, count, TPL START)
    ("bias", "CALIB", "BIAS", 3, "2025-03-16T14:00:00"),
    ("flat", "CALIB", "FLAT,LAMP", 3, "2025-03-16T14:10:00"),
    ("arc", "CALIB", "WAVE", 3, "2025-03-16T14:20:00"),
    ("skyflat", "CALIB", "FLAT,SKY", 3, "2025-03-16T23:00:00"),
    ("std", "CALIB", "STD", 1, "2025-03-16T23:40:00"),
]


@pytest.fixture
def survey(tmp_path):
    """NGC1000 with three pointings (calibrations only in P01's Raw) and NGC2000 with one, same night."""
    calib, raw = empty_calibration_kit(tmp_path)
    root = tmp_path / "data"
    mjd = 60750.6
    for stem, catg, dpr_type, count, tpl in CALIBRATIONS:
        for i in range(count):
            mjd += 0.002
            write_raw(raw / f"{stem}{i}.fits", primary_header(catg, dpr_type, mjd=mjd, tpl_start=tpl, nexp=count,
                                                              expno=i + 1))
    for target, pointings in (("NGC1000", (1, 2, 3)), ("NGC2000", (1,))):
        for pointing in pointings:
            folder = root / target / f"P{pointing:02d}" / "Raw"
            folder.mkdir(parents=True, exist_ok=True)
            mjd += 0.02
            tpl = f"2025-03-17T0{pointing}:{len(target) + pointing:02d}:00"
            for i in range(2):
                mjd += 0.008
                write_raw(folder / f"obj{i}.fits", primary_header("SCIENCE", "OBJECT", mjd=mjd, tpl_start=tpl,
                                                                   nexp=2, expno=i + 1, obj=target))
    return calib, root


def _target(survey, name="NGC1000", **kwargs):
    calib, root = survey
    return MuseTarget(name, musecalib=calib, root=root, fakemode=True, filter_list="white,Cousins_R", **kwargs)


def test_pointings_are_discovered_and_each_has_its_pipe(survey):
    calib, root = survey
    assert discover_pointings(root, "NGC1000") == [1, 2, 3]
    with pytest.raises(FileNotFoundError, match="NGC3000"):
        discover_pointings(root, "NGC3000")
    target = _target(survey)
    assert list(target.pipes) == [1, 2, 3]


def test_a_target_is_one_graph_with_calibrations_once_and_one_mosaic(survey):
    target = _target(survey, pointing_cubes=True)
    target.run_all_recipes()
    steps = {step: [] for step in ("bias", "scibasic_all", "scipost", "mosaic", "align_target")}
    for pipe in target.pipes.values():
        for name in steps:
            if name in pipe.steps and pipe.steps[name].report is not None:
                steps[name].extend(job.name for job in pipe.steps[name].report.jobs)
    # Calibrations in P01's Raw only, made once, in the night's area, used by every pointing.
    bias_jobs = set(steps["bias"])
    assert len(bias_jobs) == 1
    night = target.pipes[1].layout.night_layout("2025-03-16")
    scibasic = [job for pipe in target.pipes.values() for job in pipe.steps["scibasic_all"].report.jobs
                if job.frames[0].tag == "OBJECT"]
    assert len(scibasic) == 6
    assert all(association.paths[0].startswith(str(night.base_dir)) for job in scibasic
               for association in job.associations if association.tag == "MASTER_BIAS")
    # Every science exposure uses the target's OFFSET_LIST and the common grid.
    offsets = target.layout.folder("alignment") / "OFFSET_LIST_NGC1000.fits"
    scipost = [job for pipe in target.pipes.values() for job in pipe.steps["scipost"].report.jobs]
    assert len(scipost) == 6
    for job in scipost:
        calibrations = job.calibration_paths()
        assert calibrations["OFFSET_LIST"] == (str(offsets),)
        assert calibrations["OUTPUT_WCS"] == (str(target.layout.folder("object") / "OUTPUT_WCS_NGC1000.fits"),)
        assert f"align_NGC1000" in job.depends_on or any("output_wcs" in name for name in job.depends_on)
    # The grid and the alignment record what they read: the OFFSET_LIST in force; the exposures' images.
    (grid,) = [job for job in target.steps["mosaic"].report.jobs if job.name == "output_wcs_NGC1000"]
    assert str(offsets) in [frame.path for frame in grid.frames]
    (align,) = target.steps["align_target"].report.jobs
    assert len(align.frames) == 6 and {frame.tag for frame in align.frames} == {"IMAGE_FOV"}
    (mosaic,) = [job for job in target.steps["mosaic"].report.jobs if job.recipe == "muse_exp_combine"]
    assert len(mosaic.frames) == 6 and mosaic.area == target.layout
    assert mosaic.calibration_paths()["OFFSET_LIST"] == (str(offsets),)
    assert set(mosaic.depends_on) == {job.name for job in scipost} | {"output_wcs_NGC1000", "align_NGC1000"}
    # Each pointing's cube on the same grid.
    combined = [job for pipe in target.pipes.values() for job in pipe.steps["combine_pointing"].report.jobs]
    assert len(combined) == 3 and all("OUTPUT_WCS" in job.calibration_paths() for job in combined)
    assert target.steps["align_target"].status == "planned"


def test_a_sample_plans_each_night_once_for_every_target(survey):
    calib, root = survey
    sample = MuseSample({"NGC1000": None, "NGC2000": [1]}, musecalib=calib, root=root, fakemode=True)
    report = sample.run_all_recipes()
    names = [job.name for job in report.jobs]
    assert len(names) == len(set(names))
    assert sum(job.recipe == "muse_bias" for job in report.jobs) == 1
    # NGC2000's Raw holds no calibration: its exposures use the night's masters made from NGC1000's frames.
    ngc2000 = sample.targets["NGC2000"].pipes[1]
    (scibasic, *_) = [job for job in ngc2000.steps["scibasic_all"].report.jobs]
    assert "MASTER_FLAT" in scibasic.calibration_paths()
    # NGC1000's three pointings make a mosaic; NGC2000, one pointing and no reference, is reduced as its pointing.
    assert [job.area.name for job in report.jobs if job.step == "mosaic" and job.recipe == "muse_exp_combine"] == [
        "NGC1000 (target)"]
    assert [job.area.name for job in report.jobs if job.step == "combine_pointing"] == ["NGC2000/P01"]
    assert not any(job.step == "align_target" and job.area.name.startswith("NGC2000") for job in report.jobs)


def test_sample_descriptions(tmp_path):
    from astropy.table import Table

    table = Table(rows=[("NGC1", "1,3", "ref1.fits"), ("NGC2", "", "")], names=("target", "pointings", "reference"))
    assert read_sample(table) == {"NGC1": ([1, 3], "ref1.fits"), "NGC2": (None, None)}
    assert read_sample(["A", "B"], references={"B": "r.fits"}) == {"A": (None, None), "B": (None, "r.fits")}
    with pytest.raises(ValueError, match="'target' column"):
        read_sample(Table(rows=[("x",)], names=("name",)))


def test_exposures_are_aligned_through_the_reference_band_when_the_filter_list_has_it(tmp_path, caplog):
    import numpy as np
    from astropy.io import fits

    from pymusepipe.alignment import match_filter_name
    from pymusepipe.target import alignment_band

    assert match_filter_name("SDSS r", ["Cousins_R", "SDSS_r"]) == "SDSS_r"
    assert match_filter_name("Rc", ["Johnson_V", "Cousins_R"]) == "Cousins_R"
    assert match_filter_name("F814W", ["Cousins_R", "ACS_F814W"]) == "ACS_F814W"
    assert match_filter_name("F814W", ["Cousins_R"]) is None and match_filter_name(None, ["Cousins_R"]) is None
    filter_list = tmp_path / "filter_list.fits"
    extensions = []
    for name in ("Johnson_V", "Cousins_R", "SDSS_r"):
        extension = fits.BinTableHDU.from_columns([fits.Column(name="lambda", format="D", array=np.arange(3.0))])
        extension.header["EXTNAME"] = name   # mixed case, as in ESO's FILTER_LIST
        extensions.append(extension)
    fits.HDUList([fits.PrimaryHDU()] + extensions).writeto(filter_list)
    reference = tmp_path / "reference.fits"
    header = fits.Header()
    header["FILTER"] = "sdssr"
    fits.PrimaryHDU(np.zeros((4, 4)), header=header).writeto(reference)
    assert alignment_band(reference, None, filter_list) == "SDSS_r"          # the header's band
    assert alignment_band(reference, "V", filter_list) == "Johnson_V"        # the user's word wins
    assert alignment_band(None, None, filter_list) == "Cousins_R"            # no reference: the default
    assert alignment_band(reference, "F814W", filter_list) == "Cousins_R"    # not in the list: said, and default
    assert "F814W is not in the FILTER_LIST" in caplog.text
