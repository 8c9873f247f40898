"""Scanning and classification of raw folders, on real FITS files written by the tests."""
import os
import subprocess
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


# --- integrity: truncated files are left out with the reason, without reading any data ---------------------

def _multi_extension(path, nchan=3, shape=(64, 64), nextend=False, compression=None, mjd=60750.1):
    """A raw-like file with ``nchan`` CHANnn extensions (8 kB of noise each by default)."""
    header = primary_header("CALIB", "BIAS", mjd=mjd)
    if nextend:
        header.insert("INSTRUME", ("NEXTEND", nchan))  # with the first cards, where writers put it
    exts = []
    rng = np.random.default_rng(1)
    for i in range(1, nchan + 1):
        data = rng.integers(0, 60000, size=shape).astype(np.uint16)
        kind = fits.CompImageHDU if compression == "fz" else fits.ImageHDU
        exts.append(kind(data=data, name=f"CHAN{i:02d}"))
    fits.HDUList([fits.PrimaryHDU(header=header)] + exts).writeto(path, overwrite=True)
    return path


def _truncate(source, destination, size):
    destination.write_bytes(source.read_bytes()[:size])
    return destination


def _reasons(scan):
    return {os.path.basename(name): reason for name, reason in zip(scan.excluded["filename"], scan.excluded["reason"])}


def test_truncated_data_units_are_left_out_with_sizes(tmp_path, raw_folder):
    full = _multi_extension(tmp_path / "full.fits")
    size = full.stat().st_size
    hdus = fits.open(full)
    offsets = [hdu.fileinfo()["datLoc"] for hdu in hdus]
    hdus.close()
    _truncate(full, raw_folder / "end.fits", size - 1000)                     # inside the last data unit
    _truncate(full, raw_folder / "middle.fits", offsets[2] + 100)             # inside CHAN02's data
    _truncate(full, raw_folder / "header.fits", offsets[2] - 2880 + 200)      # inside CHAN02's header
    # Whole files (distinct exposures, or they would be left out as duplicates):
    (raw_folder / "ok.fits").write_bytes(_multi_extension(tmp_path / "a.fits", mjd=60750.2).read_bytes())
    nopad = _multi_extension(tmp_path / "b.fits", mjd=60750.3)
    _truncate(nopad, raw_folder / "nopad.fits", size - 2880 + 8192 % 2880)     # only the last padding missing
    trailing = _multi_extension(tmp_path / "c.fits", mjd=60750.4).read_bytes() + b"\0" * 2880
    (raw_folder / "trailing.fits").write_bytes(trailing)                       # zero blocks after the end
    before = {p.name: p.read_bytes() for p in raw_folder.iterdir()}
    scan = scan_raw(raw_folder, checkmode=False)
    reasons = _reasons(scan)
    assert reasons["end.fits"] == (f"truncated: {(size - 1000) / 1e3:.1f} kB of at least {size / 1e3:.1f} kB "
                                   "expected (the file ends inside the data of HDU 3, CHAN03); download it again")
    assert "truncated" in reasons["middle.fits"] and "data of HDU 2, CHAN02" in reasons["middle.fits"]
    assert "at least" in reasons["middle.fits"]
    assert "truncated" in reasons["header.fits"] and "header of HDU" in reasons["header.fits"]
    assert sorted(reasons) == ["end.fits", "header.fits", "middle.fits"]
    assert sorted(os.path.basename(n) for n in scan.table["filename"]) == ["nopad.fits", "ok.fits", "trailing.fits"]
    assert {p.name: p.read_bytes() for p in raw_folder.iterdir()} == before  # raw data never modified


def test_nextend_gives_the_exact_expected_size(tmp_path, raw_folder):
    full = _multi_extension(tmp_path / "full.fits", nextend=True)
    size = full.stat().st_size
    _truncate(full, raw_folder / "end.fits", size - 1000)
    with fits.open(full) as hdus:
        boundary = hdus[3].fileinfo()["hdrLoc"]
    _truncate(full, raw_folder / "boundary.fits", boundary)  # two whole extensions, the third missing
    reasons = _reasons(scan_raw(raw_folder, checkmode=False))
    assert reasons["end.fits"].startswith(f"truncated: {(size - 1000) / 1e3:.1f} kB of {size / 1e3:.1f} kB expected")
    assert reasons["boundary.fits"].startswith("truncated: 2 of the 3 extensions announced by NEXTEND")


def test_truncated_compressed_files(tmp_path, raw_folder):
    fz = _multi_extension(tmp_path / "full.fits.fz", compression="fz")
    (raw_folder / "ok.fits.fz").write_bytes(fz.read_bytes())
    _truncate(fz, raw_folder / "cut.fits.fz", fz.stat().st_size - 3000)  # inside the last tile table / heap
    plain = _multi_extension(tmp_path / "plain.fits", shape=(256, 256), mjd=60750.2)
    import gzip
    with open(plain, "rb") as src, gzip.open(raw_folder / "ok.fits.gz", "wb") as dst:
        dst.write(src.read())
    compressed = (raw_folder / "ok.fits.gz").read_bytes()
    (raw_folder / "cut.fits.gz").write_bytes(compressed[:len(compressed) * 2 // 3])  # far after the header
    (raw_folder / "cuthead.fits.gz").write_bytes(compressed[:3000])                  # inside the header
    reasons = _reasons(scan_raw(raw_folder, checkmode=False))
    assert reasons["cut.fits.fz"].startswith("truncated: ")
    assert "the file ends inside the data of HDU 3, CHAN03" in reasons["cut.fits.fz"]
    assert "truncated or corrupt" in reasons["cut.fits.gz"] and "gzip trailer" in reasons["cut.fits.gz"]
    assert reasons["cuthead.fits.gz"].startswith("truncated: the gzip stream ends")
    assert sorted(reasons) == ["cut.fits.fz", "cut.fits.gz", "cuthead.fits.gz"]


def test_size_check_agrees_with_astropy_at_every_cut(tmp_path):
    """Every cut of a file with image, compressed and table HDUs (with a heap) is caught; whole files pass."""
    from pymusepipe.fitsheader import FitsHeaderError, check_fits_size

    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="ARR", format="PJ()", array=np.array([np.arange(n) for n in (3, 70, 500)], dtype=object)),
         fits.Column(name="X", format="D", array=[1.0, 2.0, 3.0])], name="VARTAB")
    hdus = fits.HDUList([fits.PrimaryHDU(data=np.ones((10, 7), dtype=np.float32)),
                         fits.CompImageHDU(data=np.arange(4096, dtype=np.int32).reshape(64, 64), name="COMP"),
                         table, fits.ImageHDU(data=np.zeros((3, 5, 7), dtype=np.int16), name="CUBE")])
    path = tmp_path / "mixed.fits"
    hdus.writeto(path)
    check_fits_size(path)
    content = path.read_bytes()
    with fits.open(path, disable_image_compression=True) as reference:
        # astropy's own view: where each data unit starts and its size without padding (the heap included).
        ends = [(hdu.fileinfo()["datLoc"] + hdu.size, hdu.fileinfo()["datLoc"] + hdu.fileinfo()["datSpan"])
                for hdu in reference]
    # A cut after the data of an HDU (in its padding or at the next header) leaves whole HDUs: without NEXTEND
    # nothing says more should follow. Every other cut must be caught.
    undetectable = [(data_end, padded_end) for data_end, padded_end in ends]
    cut_file = tmp_path / "cut.fits"
    checked = 0
    for cut in range(100, len(content), 97):
        if any(low <= cut <= high for low, high in undetectable):
            continue
        cut_file.write_bytes(content[:cut])
        with pytest.raises(FitsHeaderError, match="truncated"):
            check_fits_size(cut_file)
        checked += 1
    assert checked > 100


def test_unreadable_file_is_reported_and_read_again_later(raw_folder, tmp_path, monkeypatch):
    import pymusepipe.fitsheader as fitsheader

    _write(raw_folder, "bias0", "CALIB", "BIAS")
    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path).endswith("bias0.fits"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    cache = tmp_path / "cache.json"
    monkeypatch.setattr(fitsheader.os, "open", denied)
    scan = scan_raw(raw_folder, cache_file=cache)
    assert _reasons(scan)["bias0.fits"] == "cannot be read (Permission denied)"
    monkeypatch.setattr(fitsheader.os, "open", real_open)
    scan = scan_raw(raw_folder, cache_file=cache)  # permissions fixed: not a cached verdict
    assert list(scan.table["tag"]) == ["BIAS"] and scan.nread == 1


def test_an_old_cache_is_not_trusted(raw_folder, tmp_path):
    import json

    good = _multi_extension(tmp_path / "full.fits")
    _truncate(good, raw_folder / "cut.fits", good.stat().st_size - 1000)
    stat = (raw_folder / "cut.fits").stat()
    cache = tmp_path / "cache.json"
    # A version-1 cache (written before the size check) believed this file was fine.
    cache.write_text(json.dumps({"version": 1, "entries": {"cut.fits": {
        "size": stat.st_size, "mtime": stat.st_mtime, "error": None,
        "header": {"INSTRUME": "MUSE", "ESO DPR CATG": "CALIB", "ESO DPR TYPE": "BIAS", "ESO DPR TECH": "IFU"}}}}))
    scan = scan_raw(raw_folder, cache_file=cache)
    assert "truncated" in _reasons(scan)["cut.fits"]


# --- disk full while writing the tables ---------------------------------------------------------------------

@pytest.fixture
def full_disk(tmp_path):
    """A 200 kB tmpfs (root only; skipped elsewhere): a real ENOSPC."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)])


def test_disk_full_while_writing_tables_leaves_no_temporary_file(raw_folder, full_disk):
    from pymusepipe.errors import DiskFullError

    for i in range(40):
        _write(raw_folder, f"bias{i:02d}", "CALIB", "BIAS", nfiller=300)
    tables = full_disk / "Astro_Tables"
    scan = scan_raw(raw_folder)
    write_scan_tables(scan, tables)  # fits
    previous = (tables / RAW_TABLE_NAME).read_bytes()
    # Fill the disk, then write again: one error naming the table, the old table intact, no .tmp left.
    try:
        with open(full_disk / "filler", "wb", buffering=0) as filler:
            while True:
                filler.write(b"x" * 4096)
    except OSError:
        pass
    with pytest.raises(DiskFullError) as info:
        write_scan_tables(scan, tables)
    assert str(tables) in str(info.value) and "df -h" in str(info.value)
    assert sorted(p.name for p in tables.iterdir()) == sorted([RAW_TABLE_NAME, EXCLUDED_TABLE_NAME])
    assert (tables / RAW_TABLE_NAME).read_bytes() == previous
    # The header cache is only a cache: not saved (a warning), the scan stands, nothing left behind.
    assert len(scan_raw(raw_folder, cache_file=full_disk / "cache.json").table) == 40
    assert sorted(p.name for p in full_disk.iterdir()) == ["Astro_Tables", "filler"]
    # The engine's tables (products.py) behave the same.
    from pymusepipe.products import write_table_atomically

    with pytest.raises(DiskFullError, match="muse_bias_jobs.fits"):
        write_table_atomically(scan.table, tables / "muse_bias_jobs.fits")
    assert sorted(p.name for p in tables.iterdir()) == sorted([RAW_TABLE_NAME, EXCLUDED_TABLE_NAME])


def test_disk_full_is_simulated_where_no_small_disk_can_be_mounted(raw_folder, tmp_path, monkeypatch):
    import errno

    from astropy.table import Table

    from pymusepipe.errors import DiskFullError

    _write(raw_folder, "bias0", "CALIB", "BIAS")
    scan = scan_raw(raw_folder)

    def write_half_then_fail(self, path, **kwargs):
        with open(path, "wb") as stream:
            stream.write(b"SIMPLE  =")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Table, "write", write_half_then_fail)
    with pytest.raises(DiskFullError, match=f"disk full .* while writing {tmp_path / 'T' / RAW_TABLE_NAME}"):
        write_scan_tables(scan, tmp_path / "T")
    assert list((tmp_path / "T").iterdir()) == []
    from pymusepipe.products import write_table_atomically

    with pytest.raises(DiskFullError, match="df -h"):
        write_table_atomically(scan.table, tmp_path / "T" / "muse_bias_products.fits")
    assert list((tmp_path / "T").iterdir()) == []
