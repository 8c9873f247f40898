"""Scanning and classification of raw folders, on real FITS files written by the tests."""
import os
import time

import numpy as np
import pytest
from astropy.io import fits

from pymusepipe import instrument
from pymusepipe.fitsheader import FitsHeaderError, read_primary_header
from pymusepipe.rawdata import (EXCLUDED_TABLE_NAME, RAW_COLUMNS, RAW_TABLE_NAME, RawFolderError, read_scan_tables,
                                scan_raw, write_scan_tables)

from rawframes import primary_header, write_raw

# (file stem, DPR CATG, DPR TYPE, expected tag, compression)
EVERY_TYPE = [
    ("bias", "CALIB", "BIAS", "BIAS", None),
    ("dark", "CALIB", "DARK", "DARK", "fz"),
    ("flat", "CALIB", "FLAT,LAMP", "FLAT", "gz"),
    ("illum", "CALIB", "FLAT,LAMP,ILLUM", "ILLUM", None),
    ("skyflat", "CALIB", "FLAT,SKY", "SKYFLAT", "fz"),
    ("arc", "CALIB", "WAVE", "ARC", "gz"),
    ("arclsf", "CALIB", "WAVE,LSF", "ARC_LSF", None),
    ("mask", "CALIB", "WAVE,MASK", "MASK", "fz"),
    ("sky", "SCIENCE", "SKY", "SKY", "gz"),
    ("std", "CALIB", "STD", "STD", None),
    ("astrometry", "CALIB", "ASTROMETRY", "ASTROMETRY", "fz"),
    ("object", "SCIENCE", "OBJECT", "OBJECT", "gz"),
    ("tellu", "CALIB", "TELLURIC", "OBJECT", None),
    ("ampl", "TECHNICAL", "FLAT,LAMP,THRUPUT", "AMPL", None),
]
SUFFIX = {None: ".fits", "fz": ".fits.fz", "gz": ".fits.gz"}


@pytest.fixture
def raw_folder(tmp_path):
    folder = tmp_path / "Raw"
    folder.mkdir()
    return folder


def _write(folder, stem, catg, dpr_type, compression=None, mjd=None, **kwargs):
    mjd = mjd if mjd is not None else 60750.1 + 0.001 * len(list(folder.iterdir()))
    path = folder / f"{stem}{SUFFIX[compression]}"
    return write_raw(path, primary_header(catg, dpr_type, mjd=mjd, **kwargs), compression)


def test_every_dpr_type_and_compression_gets_its_tag(raw_folder):
    for stem, catg, dpr_type, _, compression in EVERY_TYPE:
        _write(raw_folder, stem, catg, dpr_type, compression)
    scan = scan_raw(raw_folder)
    tags = {os.path.basename(name).split(".")[0]: tag for name, tag in zip(scan.table["filename"], scan.table["tag"])}
    assert tags == {stem: tag for stem, _, _, tag, _ in EVERY_TYPE}
    assert len(scan.excluded) == 0
    assert list(scan.table.colnames) == list(RAW_COLUMNS)
    # Sorted by time, absolute paths.
    assert np.all(np.diff(scan.table["mjd_obs"]) >= 0)
    assert all(os.path.isabs(name) for name in scan.table["filename"])


def test_columns_carry_header_values(raw_folder):
    _write(raw_folder, "arc", "CALIB", "WAVE", "gz", mjd=60750.95, tpl_start="2025-03-14T22:40:00", nexp=3,
           expno=2, lamps_on=("CU-LAMP5",))
    row = scan_raw(raw_folder).table[0]
    assert row["tag"] == "ARC"
    assert row["lamps"] == "HgCd"
    assert row["tpl_start"] == "2025-03-14T22:40:00"
    assert (row["tpl_nexp"], row["tpl_expno"]) == (3, 2)
    assert row["read_mode"] == "SCI1.0"
    assert row["ins_mode"] == "WFM-NOAO-N"
    assert row["mjd_obs"] == pytest.approx(60750.95)
    assert row["date_obs"].startswith("2025-03-16T22:48")
    assert row["night"] == "2025-03-16"
    assert row["obs_id"] == 1234
    assert row["exptime"] == 60.0


def test_frames_after_midnight_belong_to_the_previous_night(raw_folder):
    _write(raw_folder, "evening", "SCIENCE", "OBJECT", mjd=60750.99)   # 2025-03-16 23:45 UT
    _write(raw_folder, "morning", "SCIENCE", "OBJECT", mjd=60751.40)   # 2025-03-17 09:36 UT
    _write(raw_folder, "nextday", "CALIB", "BIAS", mjd=60751.60)       # 2025-03-17 14:24 UT (day calibration)
    nights = dict(zip((os.path.basename(n) for n in scan_raw(raw_folder).table["filename"]),
                      scan_raw(raw_folder).table["night"]))
    assert nights == {"evening.fits": "2025-03-16", "morning.fits": "2025-03-16", "nextday.fits": "2025-03-17"}


def test_ignored_and_bad_files_are_reported_with_reasons(raw_folder):
    _write(raw_folder, "good", "CALIB", "BIAS")
    _write(raw_folder, "acq", "ACQUISITION", "OBJECT", tech="IMAGE")
    _write(raw_folder, "test", "TEST", "BIAS")
    _write(raw_folder, "image", "SCIENCE", "OBJECT", tech="IMAGE")
    _write(raw_folder, "nodpr", None, None)
    _write(raw_folder, "other", "CALIB", "BIAS", instrume="FORS2")
    _write(raw_folder, "weird", "CALIB", "SOMETHING")
    good = raw_folder / "good.fits"
    # Truncated: the first 1000 bytes of a real file.
    (raw_folder / "truncated.fits").write_bytes(good.read_bytes()[:1000])
    (raw_folder / "notfits.fits").write_bytes(b"hello world" * 400)
    (raw_folder / "corrupt.fits.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 100)
    (raw_folder / "good.fits.1").write_bytes(good.read_bytes())
    (raw_folder / "README.txt").write_text("archive notes")
    scan = scan_raw(raw_folder)
    assert list(scan.table["tag"]) == ["BIAS"]
    reasons = {os.path.basename(name): reason for name, reason in zip(scan.excluded["filename"],
                                                                       scan.excluded["reason"])}
    assert "acquisition" in reasons["acq.fits"]
    assert "test frame" in reasons["test.fits"]
    assert "not an IFU exposure" in reasons["image.fits"]
    assert "no ESO DPR" in reasons["nodpr.fits"]
    assert "not a MUSE file" in reasons["other.fits"] and "FORS2" in reasons["other.fits"]
    assert "unknown combination" in reasons["weird.fits"] and "SOMETHING" in reasons["weird.fits"]
    assert "truncated" in reasons["truncated.fits"]
    assert "not a FITS file" in reasons["notfits.fits"]
    assert "corrupt" in reasons["corrupt.fits.gz"]
    assert "duplicate download of good.fits" in reasons["good.fits.1"]
    assert "not a FITS file name" in reasons["README.txt"]
    assert len(reasons) == 11


def test_same_exposure_downloaded_twice_is_reduced_once(raw_folder):
    _write(raw_folder, "expo", "SCIENCE", "OBJECT", mjd=60750.2)
    _write(raw_folder, "expo", "SCIENCE", "OBJECT", "fz", mjd=60750.2)
    scan = scan_raw(raw_folder)
    assert len(scan.table) == 1
    assert "duplicate of" in scan.excluded["reason"][0]


def test_mode_filter_follows_eso_rules(raw_folder):
    _write(raw_folder, "obj_nfm", "SCIENCE", "OBJECT", mode="NFM-AO-N")
    _write(raw_folder, "obj_ext", "SCIENCE", "OBJECT", mode="WFM-NOAO-E")
    _write(raw_folder, "obj_ok", "SCIENCE", "OBJECT", mode="WFM-NOAO-N")
    _write(raw_folder, "bias_nfm", "CALIB", "BIAS", mode="NFM-AO-N")          # mode-independent
    _write(raw_folder, "illum_ext", "CALIB", "FLAT,LAMP,ILLUM", mode="WFM-AO-E")  # field only
    _write(raw_folder, "illum_nfm", "CALIB", "FLAT,LAMP,ILLUM", mode="NFM-AO-N")
    scan = scan_raw(raw_folder, "WFM-NOAO-N")
    kept = sorted(os.path.basename(name) for name in scan.table["filename"])
    assert kept == ["bias_nfm.fits", "illum_ext.fits", "obj_ok.fits"]
    reasons = dict(zip((os.path.basename(n) for n in scan.excluded["filename"]), scan.excluded["reason"]))
    assert "NFM-AO-N" in reasons["obj_nfm.fits"] and "WFM-NOAO-N" in reasons["obj_nfm.fits"]
    assert "field" in reasons["illum_nfm.fits"]
    assert len(scan_raw(raw_folder, "WFM-NOAO-N", checkmode=False).table) == 6
    with pytest.raises(ValueError, match="musemode"):
        scan_raw(raw_folder, "WFM")


def test_templates_flag_incomplete_groups(raw_folder):
    for i in range(2):
        _write(raw_folder, f"bias{i}", "CALIB", "BIAS", tpl_start="2025-03-14T10:00:00", nexp=2, expno=i + 1)
    for i in range(3):
        _write(raw_folder, f"flat{i}", "CALIB", "FLAT,LAMP", tpl_start="2025-03-14T11:00:00", nexp=3, expno=i + 1)
    _write(raw_folder, "obj", "SCIENCE", "OBJECT", tpl_start="2025-03-15T01:00:00", nexp=2, expno=1)
    # A science template with OBJECT and SKY exposures is complete when all announced exposures are there.
    _write(raw_folder, "sci1", "SCIENCE", "OBJECT", tpl_start="2025-03-15T02:00:00", nexp=2, expno=1)
    _write(raw_folder, "sci2", "SCIENCE", "SKY", tpl_start="2025-03-15T02:00:00", nexp=2, expno=2)
    templates = {(row["tpl_start"], row["tag"]): row for row in scan_raw(raw_folder).templates()}
    assert templates[("2025-03-15T02:00:00", "OBJECT")]["complete"]
    assert templates[("2025-03-15T02:00:00", "SKY")]["complete"]
    templates = {row["tpl_start"]: row for row in scan_raw(raw_folder).templates()}
    assert not templates["2025-03-14T10:00:00"]["complete"]
    assert "at least 3" in templates["2025-03-14T10:00:00"]["problem"]
    assert templates["2025-03-14T11:00:00"]["complete"]
    assert "1 of the 2 exposures" in templates["2025-03-15T01:00:00"]["problem"]


def test_archive_calibration_products_are_recognised(raw_folder):
    _write(raw_folder, "geo", None, None, pro_catg="GEOMETRY_TABLE", obj="WAVE,MASK")
    _write(raw_folder, "astro", None, None, pro_catg="ASTROMETRY_WCS")
    _write(raw_folder, "cube", None, None, pro_catg="DATACUBE_FINAL")
    scan = scan_raw(raw_folder)
    assert sorted(scan.table["tag"]) == ["ASTROMETRY_WCS", "GEOMETRY_TABLE"]
    assert "DATACUBE_FINAL" in scan.excluded["reason"][0]


def test_missing_and_empty_raw_folder(tmp_path):
    with pytest.raises(RawFolderError, match="does not exist"):
        scan_raw(tmp_path / "nowhere")
    (tmp_path / "Raw").mkdir()
    scan = scan_raw(tmp_path / "Raw")
    assert len(scan.table) == 0 and len(scan.excluded) == 0
    assert "0 frame(s) accepted" in scan.summary()


def test_cache_rereads_only_changed_files_and_raw_is_untouched(raw_folder, tmp_path):
    for i in range(5):
        _write(raw_folder, f"bias{i}", "CALIB", "BIAS")
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in raw_folder.iterdir()}
    cache = tmp_path / "tables" / "cache.json"
    first = scan_raw(raw_folder, cache_file=cache)
    assert first.nread == 5
    second = scan_raw(raw_folder, cache_file=cache)
    assert second.nread == 0
    assert list(second.table["filename"]) == list(first.table["filename"])
    # Rewrite one file with another type: only that one is read again and its tag changes.
    time.sleep(0.01)
    _write(raw_folder, "bias3", "CALIB", "FLAT,LAMP")
    third = scan_raw(raw_folder, cache_file=cache)
    assert third.nread == 1
    assert sorted(third.table["tag"]) == ["BIAS"] * 4 + ["FLAT"]
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in raw_folder.iterdir()}
    assert {k: v for k, v in after.items() if k != "bias3.fits"} == \
        {k: v for k, v in before.items() if k != "bias3.fits"}
    assert sorted(after) == sorted(before)


def test_tables_are_written_and_overwrite_is_honoured(raw_folder, tmp_path):
    _write(raw_folder, "bias0", "CALIB", "BIAS")
    tables = tmp_path / "Astro_Tables"
    write_scan_tables(scan_raw(raw_folder), tables)
    raw, excluded = read_scan_tables(tables)
    assert (tables / RAW_TABLE_NAME).is_file() and (tables / EXCLUDED_TABLE_NAME).is_file()
    assert list(raw["tag"]) == ["BIAS"] and "filename" in raw.colnames
    _write(raw_folder, "flat0", "CALIB", "FLAT,LAMP")
    write_scan_tables(scan_raw(raw_folder), tables, overwrite=False)
    assert len(read_scan_tables(tables)[0]) == 1
    write_scan_tables(scan_raw(raw_folder), tables, overwrite=True)
    assert len(read_scan_tables(tables)[0]) == 2


def test_header_reader_agrees_with_astropy(tmp_path):
    header = primary_header("CALIB", "WAVE", lamps_on=("CU-LAMP3",), nfiller=1200)
    header["HIERARCH ESO QUOTED"] = "it's"
    path = write_raw(tmp_path / "big.fits.gz", header, "gz")
    reference = fits.getheader(path)
    keys = ["OBJECT", "MJD-OBS", "ESO DPR TYPE", "ESO INS LAMP3 ST", "ESO TPL NEXP", "ESO QUOTED",
            "ESO FILL1 K100"]
    mine = read_primary_header(path, keys)
    assert mine == {key: reference[key] for key in keys}
    with pytest.raises(FitsHeaderError, match="not a FITS"):
        (tmp_path / "x.fits").write_text("nope" * 1000)
        read_primary_header(tmp_path / "x.fits", keys)


def test_classification_rules_are_consistent():
    tags = {rule.tag for rule in instrument.FRAME_RULES}
    assert tags == {"BIAS", "DARK", "FLAT", "ILLUM", "SKYFLAT", "ARC", "ARC_LSF", "MASK", "SKY", "STD",
                    "ASTROMETRY", "OBJECT", "AMPL"}
    assert instrument.classify_frame("SCIENCE", "SKY", "IFU").tag == "SKY"
    assert instrument.classify_frame("CALIB", "SKY", "IFU").tag == "SKY"
