"""Calibration association by ESO's rules, and the validity table of time-dependent geometry/astrometry."""
import pytest

from pymusepipe.association import (CalibrationCandidate, InputFrame, ValidityError, ValidityTable, associate,
                                    default_association_rules)
from pymusepipe.recipes import default_recipe_table

RECIPES = default_recipe_table()


def _frame(tag="OBJECT", mjd=60000.2, mode="WFM-NOAO-N", read_mode="SCI1.0", date_obs="2023-02-25T04:48:00"):
    return InputFrame(f"/raw/{tag}_{mjd}.fits", tag, mjd, date_obs, "2023-02-25T04:40:00", 1, mode, read_mode)


def _master(tag, mjd, ifu=0, mode="WFM-NOAO-N", read_mode="SCI1.0", job=None):
    job = job or f"{tag}_{mjd}"
    return CalibrationCandidate(tag, f"/m/{job}-{ifu:02d}.fits", mjd, mode, read_mode, ifu, "tpl", job)


def _scibasic_candidates(mjd=60000.0, **kwargs):
    return {tag: [_master(tag, mjd, ifu=1, **kwargs)]
            for tag in ("MASTER_BIAS", "MASTER_FLAT", "TRACE_TABLE", "WAVECAL_TABLE")}


STATIC = {"GEOMETRY_TABLE": "/cal/geometry_table_wfm.fits", "BADPIX_TABLE": "/cal/badpix.fits"}


def _by_tag(associations):
    return {association.tag: association for association in associations}


def test_closest_in_time_wins_and_is_recorded():
    candidates = {"MASTER_BIAS": [_master("MASTER_BIAS", 59998.0), _master("MASTER_BIAS", 60001.0),
                                  _master("MASTER_BIAS", 60000.1)]}
    found, missing = associate(RECIPES["muse_flat"], [_frame("FLAT")], job_name="flat", ifus=(1,),
                               candidates=candidates, static=STATIC)
    assert not missing
    bias = _by_tag(found)["MASTER_BIAS"]
    assert bias.paths == ("/m/MASTER_BIAS_60000.1-00.fits",)
    assert bias.delta_days == pytest.approx(0.1)
    assert "same read mode" in bias.rule and "3 d" in bias.rule


def test_read_mode_and_ins_mode_must_match_where_eso_requires():
    frame = _frame("OBJECT", mode="WFM-AO-N", read_mode="SCI1.0")
    candidates = _scibasic_candidates()
    candidates["MASTER_BIAS"] = [_master("MASTER_BIAS", 60000.0, ifu=1, read_mode="SCI2.0"),
                                 _master("MASTER_BIAS", 60002.5, ifu=1, read_mode="SCI1.0")]
    found, missing = associate(RECIPES["muse_scibasic"], [frame], job_name="sci", ifus=(1,),
                               candidates=candidates, static=STATIC)
    # Bias: the other read mode is closer but refused; flat/trace/wave are WFM-NOAO-N, frame is WFM-AO-N.
    assert _by_tag(found)["MASTER_BIAS"].delta_days == pytest.approx(2.3)
    assert {item.tag for item in missing} == {"MASTER_FLAT", "TRACE_TABLE", "WAVECAL_TABLE"}
    assert all("INS.MODE='WFM-AO-N'" in item.reason for item in missing)


@pytest.mark.parametrize("tag, inside, outside", [("MASTER_BIAS", 2.9, 3.1), ("TWILIGHT_CUBE", 29.0, 31.0),
                                                  ("STD_TELLURIC", 0.9, 1.1)])
def test_time_windows(tag, inside, outside):
    spec = RECIPES["muse_scipost"] if tag == "STD_TELLURIC" else RECIPES["muse_scibasic"]
    frame = _frame("PIXTABLE_OBJECT" if tag == "STD_TELLURIC" else "OBJECT")
    for delta, expected in ((inside, True), (outside, False)):
        candidates = _scibasic_candidates(60000.2)
        candidates["STD_RESPONSE"] = [_master("STD_RESPONSE", 50000.0)]  # no window: 10000 d is fine
        candidates[tag] = [_master(tag, 60000.2 + delta, ifu=1 if tag == "MASTER_BIAS" else 0)]
        found, missing = associate(spec, [frame], job_name="job", ifus=(1,), candidates=candidates,
                                   static={**STATIC, "EXTINCT_TABLE": "/cal/extinct.fits"})
        assert (tag in _by_tag(found)) == expected, (tag, delta)
        if not expected and tag == "MASTER_BIAS":
            assert "outside +-3 d" in missing[0].reason


@pytest.mark.parametrize("raw_tag, window", [("OBJECT", 1.0), ("SKY", 0.5), ("STD", 0.5)])
def test_illum_window_depends_on_the_exposure_type(raw_tag, window):
    for delta in (window - 0.05, window + 0.05):
        candidates = _scibasic_candidates(60000.2)
        candidates["ILLUM"] = [CalibrationCandidate("ILLUM", "/raw/illum.fits", 60000.2 + delta, "WFM-NOAO-N",
                                                    "SCI1.0")]
        found, missing = associate(RECIPES["muse_scibasic"], [_frame(raw_tag)], job_name="job", ifus=(1,),
                                   candidates=candidates, static=STATIC)
        assert not missing  # ILLUM is optional
        assert ("ILLUM" in _by_tag(found)) == (delta < window)


def test_per_ifu_masters_must_cover_the_job_ifus():
    masters = [_master("MASTER_BIAS", 60000.0, ifu=ifu, job="near") for ifu in (1, 2)]
    masters += [_master("MASTER_BIAS", 60001.0, ifu=ifu, job="far") for ifu in (1, 2, 3)]
    spec = RECIPES["muse_twilight"]
    candidates = {**_scibasic_candidates(), "MASTER_BIAS": masters}
    # A job over IFUs 1-3 needs the farther set, the only one with all three IFUs.
    for ifus, expected_job, count in (((1, 2), "near", 2), ((1, 2, 3), "far", 3)):
        candidates.update({tag: [_master(tag, 60000.0, ifu=ifu, job=tag) for ifu in (1, 2, 3)]
                           for tag in ("MASTER_FLAT", "TRACE_TABLE", "WAVECAL_TABLE")})
        found, missing = associate(spec, [_frame("SKYFLAT")] * 3, job_name="tw", ifus=ifus,
                                   candidates=candidates, static=STATIC)
        bias = _by_tag(found)["MASTER_BIAS"]
        assert not missing and len(bias.paths) == count and all(expected_job in p for p in bias.paths)
    # A merged master (ifu 0) covers every IFU with one file.
    candidates["MASTER_BIAS"] = [_master("MASTER_BIAS", 60000.0, ifu=0, job="merged")]
    found, _ = associate(spec, [_frame("SKYFLAT")], job_name="tw", ifus=(1, 2, 3), candidates=candidates,
                         static=STATIC)
    assert _by_tag(found)["MASTER_BIAS"].paths == ("/m/merged-00.fits",)


def test_vignetting_mask_only_before_2017_and_explicit_calibrations_bypass_rules():
    static = {**STATIC, "VIGNETTING_MASK": "/cal/vignetting.fits"}
    candidates = {tag: [_master(tag, mjd, ifu=1)] for tag in ("MASTER_BIAS", "MASTER_FLAT", "TRACE_TABLE",
                                                               "WAVECAL_TABLE") for mjd in (57000.0, 60000.0)}
    old, _ = associate(RECIPES["muse_twilight"], [_frame("SKYFLAT", mjd=57000.1)], job_name="old", ifus=(1,),
                       candidates=candidates, static=static)
    new, _ = associate(RECIPES["muse_twilight"], [_frame("SKYFLAT", mjd=60000.1)], job_name="new", ifus=(1,),
                       candidates=candidates, static=static, explicit={"GEOMETRY_TABLE": ["/mine/geo.fits"]})
    assert "VIGNETTING_MASK" in _by_tag(old) and "VIGNETTING_MASK" not in _by_tag(new)
    assert _by_tag(new)["GEOMETRY_TABLE"].paths == ("/mine/geo.fits",)
    assert _by_tag(new)["GEOMETRY_TABLE"].rule == "given by the step"


def test_rules_can_be_overridden_per_call():
    rules = default_association_rules()
    rules["MASTER_BIAS"] = rules["MASTER_BIAS"].__class__("MASTER_BIAS", match_read_mode=True, window_days=10.0)
    candidates = {"MASTER_BIAS": [_master("MASTER_BIAS", 60005.0)]}
    found, missing = associate(RECIPES["muse_flat"], [_frame("FLAT")], job_name="flat", ifus=(1,),
                               candidates=candidates, static=STATIC, rules=rules)
    assert not missing and _by_tag(found)["MASTER_BIAS"].delta_days == pytest.approx(4.8)


VALIDITY = """# start       end          field  geometry_table                 astrometry_wcs
2014-09-13    2014-09-26   wfm    geometry_table_wfm_gto01.fits  astrometry_wcs_wfm_gto01.fits
2018-07-14    2018-12-12   wfm    geometry_table_wfm_gto29.fits  astrometry_wcs_wfm_gto29.fits
2018-08-12    2018-08-18   wfm    geometry_table_wfm_gto26.fits  astrometry_wcs_wfm_gto26.fits
"""


@pytest.fixture
def validity(tmp_path):
    path = tmp_path / "validity_table.txt"
    path.write_text(VALIDITY)
    for name in ("gto01", "gto29", "gto26"):
        for kind in ("geometry_table", "astrometry_wcs"):
            (tmp_path / f"{kind}_wfm_{name}.fits").write_text("x")
    return ValidityTable.read(path)


def test_validity_table_lookup_inclusive_and_narrowest(validity):
    assert validity.lookup("2014-09-26T23:59:00").geometry_table.name == "geometry_table_wfm_gto01.fits"
    assert validity.lookup("2018-08-15").geometry_table.name == "geometry_table_wfm_gto26.fits"
    assert validity.lookup("2018-11-01").astrometry_wcs.name == "astrometry_wcs_wfm_gto29.fits"


def test_date_outside_every_range_is_an_error_naming_date_and_file(validity):
    with pytest.raises(ValidityError, match=r"2019-06-01.*validity_table.txt"):
        validity.lookup("2019-06-01T01:00:00")
    with pytest.raises(ValidityError, match="nfm"):
        validity.lookup("2014-09-20", "nfm")


def test_validity_used_by_association_and_errors_collected(validity):
    candidates = _scibasic_candidates(56920.0)
    ok, missing = associate(RECIPES["muse_scibasic"], [_frame(mjd=56920.1, date_obs="2014-09-20T02:24:00")],
                            job_name="sci", ifus=(1,), candidates=candidates, static=STATIC, validity=validity)
    assert not missing and _by_tag(ok)["GEOMETRY_TABLE"].paths[0].endswith("geometry_table_wfm_gto01.fits")
    _, missing = associate(RECIPES["muse_scibasic"], [_frame(mjd=56920.1, date_obs="2020-01-01T00:00:00")],
                           job_name="sci", ifus=(1,), candidates=candidates, static=STATIC, validity=validity)
    assert [item.tag for item in missing] == ["GEOMETRY_TABLE"] and "2020-01-01" in missing[0].reason


@pytest.mark.parametrize("line, message", [
    ("2014-09-13 2014-09-26 wfm geo.fits", "expected 5 columns"),
    ("2014-09-26 2014-09-13 wfm geo.fits astro.fits", "before start"),
    ("2014/09/13 2014-09-26 wfm geo.fits astro.fits", "YYYY-MM-DD"),
    ("2014-09-13 2014-09-26 xfm geo.fits astro.fits", "wfm or nfm"),
])
def test_malformed_validity_table_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "validity_table.txt"
    path.write_text("# header\n" + line + "\n")
    with pytest.raises(ValidityError, match=f"line 2.*{message}|{message}") as error:
        ValidityTable.read(path)
    assert str(path) in str(error.value)
