"""SOF files, esorex command lines, log parsing (the headline of a failure) and the pipeline version."""
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pymusepipe.esorex import (EsorexError, SofEntry, build_command, format_cpu_list, parse_log, pinning_prefix,
                               pipeline_version, read_sof, write_sof)


def test_sof_is_sorted_by_mjd_with_undated_calibrations_last(tmp_path):
    path = tmp_path / "Sof" / "bias.sof"
    text = write_sof(path, [("/raw/b3.fits", "BIAS", 3.0), SofEntry("/cal/bp.fits", "BADPIX_TABLE"),
                            ("/raw/b1.fits", "BIAS", 1.0), ("/raw/b2.fits", "BIAS", 2.0)])
    assert text == path.read_text()
    assert path.read_text().splitlines() == ["/raw/b1.fits BIAS", "/raw/b2.fits BIAS", "/raw/b3.fits BIAS",
                                             "/cal/bp.fits BADPIX_TABLE"]
    assert read_sof(path)[0] == ("/raw/b1.fits", "BIAS")


def test_sof_refuses_relative_paths_and_bad_tags(tmp_path):
    with pytest.raises(ValueError, match="not absolute"):
        write_sof(tmp_path / "x.sof", [("Raw/b1.fits", "BIAS", 1.0)])
    with pytest.raises(ValueError, match="invalid tag"):
        write_sof(tmp_path / "x.sof", [("/raw/b1.fits", "MASTER BIAS", 1.0)])


def test_command_is_an_argv_list_in_esorex_order(tmp_path):
    argv = build_command("muse_bias", tmp_path / "bias.sof", output_dir=tmp_path / "out", log_dir=tmp_path / "log",
                         log_file="muse_bias_2024.log", parameters={"nifu": 3, "merge": False, "pixfrac": [0.8, 0.8]},
                         esorex_options=["--no-checksum"])
    assert argv == ["esorex", f"--output-dir={tmp_path / 'out'}", f"--log-dir={tmp_path / 'log'}",
                    "--log-file=muse_bias_2024.log", "--no-checksum", "muse_bias", "--nifu=3", "--merge=false",
                    "--pixfrac=0.8,0.8", str(tmp_path / "bias.sof")]


def test_pinning_prefixes_and_likwid_refuses_spaces(tmp_path):
    assert pinning_prefix("taskset", [0, 1]) == ["taskset", "-c", "0-1"]
    assert pinning_prefix("likwid", [2]) == ["likwid-pin", "-q", "-c", "2"]
    assert pinning_prefix("none", [0]) == []
    with pytest.raises(ValueError, match="pinning='numactl'"):
        pinning_prefix("numactl", [0])
    spaced = tmp_path / "my data"
    common = dict(output_dir=spaced / "out", log_dir=spaced, log_file="a.log")
    with pytest.raises(ValueError, match="likwid-pin splits arguments on spaces"):
        build_command("muse_bias", spaced / "a.sof", pinning="likwid", cpus=[0], **common)
    argv = build_command("muse_bias", spaced / "a.sof", pinning="taskset", cpus=[0], **common)
    assert argv[:3] == ["taskset", "-c", "0"] and argv[-1] == str(spaced / "a.sof")


def test_command_refuses_relative_folders_and_log_paths(tmp_path):
    with pytest.raises(ValueError, match="output_dir='out'"):
        build_command("muse_bias", tmp_path / "a.sof", output_dir="out", log_dir=tmp_path, log_file="a.log")
    with pytest.raises(ValueError, match="bare file name"):
        build_command("muse_bias", tmp_path / "a.sof", output_dir=tmp_path, log_dir=tmp_path, log_file="x/a.log")


def test_format_cpu_list():
    assert format_cpu_list([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    with pytest.raises(ValueError):
        format_cpu_list([])


def test_parse_log_finds_errors_and_keeps_a_tail(tmp_path):
    log = tmp_path / "esorex.log"
    lines = [f"12:00:{i:02d} [ INFO  ] muse_bias: step {i}" for i in range(40)]
    lines[10] = "12:00:10 [WARNING] muse_bias: something odd"
    lines[30] = "12:00:30 [ ERROR ] muse_bias: No raw images loaded for IFU 2"
    log.write_text("\n".join(lines) + "\n")
    summary = parse_log(log, tail_lines=5)
    assert summary.errors == ["12:00:30 [ ERROR ] muse_bias: No raw images loaded for IFU 2"]
    assert summary.n_warnings == 1 and summary.tail == lines[-5:] and summary.has_errors
    assert not parse_log(tmp_path / "absent.log").has_errors


@pytest.mark.esorex
def test_pipeline_version_of_installed_muse():
    version = pipeline_version()
    assert version.count(".") == 2 and version.split(".")[0].isdigit()


def test_pipeline_version_without_esorex():
    with pytest.raises(EsorexError, match="not found"):
        pipeline_version("esorex-not-installed")


# --- the headline: the first real cause of a failure, from real esorex logs ---------------------------------
# tests/data/esorex_logs holds logs of esorex 3.13.6 / MUSE 2.8.7 runs made by hand (paths under /tmp/esx).
LOGS = Path(__file__).with_name("data") / "esorex_logs"


@pytest.mark.parametrize("name, headline, cause", [
    ("muse_bias_truncated_raw.log",
     "cannot read /tmp/esx/trunc/bias3.fits (extension CHAN01): error reading from FITS file (CFITSIO status 108)",
     "/tmp/esx/trunc/bias3.fits"),
    # The recipe's first error is the follow-on "found 0 frames with tag MASTER_BIAS"; the cause comes later.
    ("muse_flat_master_bias_cut_in_header.log",
     "cannot read /tmp/esx/master/MASTER_BIAS-01.fits: error reading from FITS file (CFITSIO status 108)",
     "/tmp/esx/master/MASTER_BIAS-01.fits"),
    ("muse_flat_master_bias_cut_in_data.log",
     'cannot read /tmp/esx/master/MASTER_BIAS-01.fits (extension DATA): Could not load extension DATA from '
     '"/tmp/esx/master/MASTER_BIAS-01.fits"', "/tmp/esx/master/MASTER_BIAS-01.fits"),
    ("muse_bias_sof_file_missing.log", "cannot read /tmp/esx/raw/gone.fits: the file could not be opened",
     "/tmp/esx/raw/gone.fits"),
    ("muse_bias_sof_file_missing.stdout", "cannot read /tmp/esx/raw/gone.fits: the file could not be opened",
     "/tmp/esx/raw/gone.fits"),
    ("muse_flat_no_master_bias.log", 'missing input: Required 1, found 0 frames with tag "MASTER_BIAS" with IFU 1',
     ""),
])
def test_headline_is_the_first_real_cause(name, headline, cause):
    log = parse_log(LOGS / name, check_files=False)
    assert log.headline == headline
    assert log.cause_path == cause
    assert log.errors and log.has_errors


def test_headline_says_what_is_wrong_with_the_file_now(tmp_path):
    # The same log, its paths moved to files that exist here: one truncated, one gone.
    text = (LOGS / "muse_flat_master_bias_cut_in_header.log").read_text().replace("/tmp/esx", str(tmp_path))
    (tmp_path / "esorex.log").write_text(text)
    master = tmp_path / "master" / "MASTER_BIAS-01.fits"
    master.parent.mkdir()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((100, 100), np.float32), name="DATA")]).writeto(master)
    master.write_bytes(master.read_bytes()[:10000])
    log = parse_log(tmp_path / "esorex.log")
    assert log.headline.startswith(f"cannot read {master}: error reading from FITS file (CFITSIO status 108); now: "
                                   "truncated: 10.0 kB of ")
    master.unlink()
    assert parse_log(tmp_path / "esorex.log").headline.endswith("; now: it does not exist")


def test_headline_of_a_product_that_could_not_be_written_names_it_and_a_full_disk(tmp_path, monkeypatch):
    # muse_bias on a full disk (a tmpfs): CFITSIO fails writing the product, named relative to esorex's working
    # folder (the job's output folder), which is where it is looked for.
    log = parse_log(LOGS / "muse_bias_disk_full.stdout", check_files=False, cwd="/tmp/esx/full/job")
    assert log.headline == ("cannot write /tmp/esx/full/job/MASTER_BIAS-01.fits: error writing to FITS file "
                            "(CFITSIO status 106)")
    assert log.cause_path == "/tmp/esx/full/job/MASTER_BIAS-01.fits"
    job = tmp_path / "job"
    job.mkdir()
    assert parse_log(LOGS / "muse_bias_disk_full.stdout", cwd=job).headline.endswith("; now: it does not exist")
    import os
    from types import SimpleNamespace

    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=2, f_frsize=4096))
    headline = parse_log(LOGS / "muse_bias_disk_full.stdout", cwd=job).headline
    assert "; now: the disk is full (8 kB free on " in headline and headline.endswith(f"; df -h {job})")


def test_headline_without_file_or_tag_errors_skips_follow_on_lines(tmp_path):
    log = tmp_path / "esorex.log"
    log.write_text("10:00:00 [ ERROR ] muse_scipost: [tid=000] something specific went wrong\n"
                   "10:00:00 [ ERROR ] muse_cplerrorstate_dump_some: [tid=000] Dumping the 1 most recent error(s) "
                   "out of a total of 1 errors:\n"
                   "10:00:00 [ ERROR ] : [tid=000] Execution of recipe 'muse_scipost' failed, status = -1\n")
    assert parse_log(log).headline == "something specific went wrong"
    log.write_text("10:00:00 [ INFO  ] all fine\n")
    assert parse_log(log).headline == ""


def _sim_biases(folder, n=3):
    from pymusepipe.simulate.detector import electrons_to_raw, write_raw_file
    from pymusepipe.simulate.model import DetectorModel
    from pymusepipe.simulate.observing import Exposure, isot, primary_header

    detector, rng, tpl = DetectorModel(), np.random.default_rng(3), 60000.9
    paths = []
    for number in range(1, n + 1):
        exposure = Exposure(kind="BIAS", mjd=tpl + number * 0.0005, exptime=0.0, ra=0.0, dec=-30.0,
                            object_name="BIAS", tpl_start=isot(tpl)[:19], tpl_nexp=n, tpl_expno=number, obs_id=1)
        path = folder / exposure.file_name
        write_raw_file(path, primary_header(exposure, number), {1: electrons_to_raw(None, detector, rng)}, detector)
        paths.append(path)
    return paths


def _master_bias_cut(raw_bias, path, size):
    """The first ``size`` bytes of a MASTER_BIAS (primary + DATA/DQ/STAT of 4096 x 4112): headers written,
    data left as holes (never read: the cut comes first)."""
    primary = fits.getheader(raw_bias)
    primary["EXTNAME"] = "CHAN01"
    primary["HIERARCH ESO PRO CATG"] = "MASTER_BIAS"
    with open(path, "wb") as stream:
        stream.write(fits.PrimaryHDU(header=primary).header.tostring().encode())
        for name, bitpix in (("DATA", -32), ("DQ", 32), ("STAT", -32)):
            header = fits.Header([("XTENSION", "IMAGE"), ("BITPIX", bitpix), ("NAXIS", 2), ("NAXIS1", 4096),
                                  ("NAXIS2", 4112), ("PCOUNT", 0), ("GCOUNT", 1), ("EXTNAME", name)])
            stream.write(header.tostring().encode())
            stream.seek(-(-4096 * 4112 * 4 // 2880) * 2880, 1)
        stream.truncate(size)
    return path


def _run_esorex(tmp_path, recipe, entries, name):
    from pymusepipe.processes import run_command

    sof = tmp_path / f"{name}.sof"
    write_sof(sof, entries)
    out = tmp_path / f"out_{name}"
    out.mkdir()
    argv = build_command(recipe, sof, output_dir=out, log_dir=tmp_path, log_file=f"{name}.log",
                         parameters={"nifu": 1})
    outcome = run_command(argv, cwd=out, stdout_path=tmp_path / f"{name}.stdout")
    return outcome, parse_log(tmp_path / f"{name}.log")


@pytest.mark.esorex
def test_real_recipes_blame_the_truncated_file(tmp_path):
    """muse_bias on a truncated raw file; muse_flat with a MASTER_BIAS truncated in its header (the recipe
    then says "found 0 frames with tag MASTER_BIAS") and in its data."""
    biases = _sim_biases(tmp_path)
    cut = biases[2].with_name("cut_" + biases[2].name)
    cut.write_bytes(biases[2].read_bytes()[:20_000_000])
    outcome, log = _run_esorex(tmp_path, "muse_bias", [(str(p), "BIAS", i) for i, p in
                                                       enumerate([biases[0], biases[1], cut])], "bias")
    assert outcome.returncode != 0 and not outcome.cancelled
    assert log.cause_path == str(cut)
    assert log.headline.startswith(f"cannot read {cut} (extension CHAN01): error reading from FITS file")
    assert "now: truncated: 20.0 MB of at least 35.8 MB expected" in log.headline
    # muse_flat fails on the master bias before looking at the flats: the biases stand in for them.
    flats = [(str(p), "FLAT", i) for i, p in enumerate(biases)]
    for size, name in ((10_000, "flat_header"), (30_000_000, "flat_data")):
        master = _master_bias_cut(biases[0], tmp_path / f"MASTER_BIAS_{name}.fits", size)
        outcome, log = _run_esorex(tmp_path, "muse_flat", flats + [(str(master), "MASTER_BIAS")], name)
        assert outcome.returncode != 0
        assert log.cause_path == str(master), log.errors
        assert log.headline.startswith(f"cannot read {master}")
        assert "now: truncated" in log.headline and "found 0 frames" not in log.headline
        master.unlink()
    for path in biases + [cut]:
        path.unlink()


def test_sof_on_a_full_disk_is_an_error_naming_it_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from pymusepipe.errors import DiskFullError

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # what a write on a full disk raises

    monkeypatch.setattr(Path, "write_text", full)
    sof = tmp_path / "Sof" / "muse_bias.sof"
    with pytest.raises(DiskFullError, match=f"while writing {sof}"):
        write_sof(sof, [("/raw/b1.fits", "BIAS", 1.0)])
    assert list(sof.parent.iterdir()) == []
