"""SOF files, esorex command lines, log parsing and the pipeline version."""
import pytest

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
