"""Configuration files and settings: the original format, with errors that name what is wrong."""
import pytest

from pymusepipe.config import (CALIB_KEYS, ConfigError, PipelineConfig, read_calib_file, read_rc_file,
                               render_calib_template, render_rc_template)
from pymusepipe.layout import PointingLayout, pointing_folder_name


@pytest.fixture
def kit(tmp_path):
    """A calibration folder with every static file, a time folder and a data root."""
    calib = tmp_path / "cal"
    calib.mkdir()
    for _, _, default in CALIB_KEYS.values():
        (calib / default).write_bytes(b"")
    (tmp_path / "caltime").mkdir()
    (tmp_path / "data").mkdir()
    return tmp_path


def _write_files(kit, rc_extra="", cal_text=None):
    rc = kit / "rc.dic"
    rc.write_text(f"# comment\n% other comment\n\nmusecalib {kit}/cal/\nmusecalib_time {kit}/caltime\n"
                  f"root {kit}/data\n{rc_extra}")
    cal = kit / "calib_tables.dic"
    cal.write_text(cal_text if cal_text is not None else render_calib_template())
    return rc, cal


def test_reads_original_format(kit):
    rc, cal = _write_files(kit, "str_pointing P\nndigits 2\n")
    config = PipelineConfig.from_files(rc, cal)
    assert config.musecalib == kit / "cal"          # trailing slash does not matter
    assert config.root == kit / "data"
    assert config.musecalib_time == kit / "caltime"
    assert config.static_calibration("line_catalog") == kit / "cal" / "line_catalog.fits"
    assert config.static_calibrations()["GEOMETRY_TABLE"] == kit / "cal" / "geometry_table_wfm.fits"
    assert (config.str_pointing, config.ndigits) == ("P", 2)


def test_unknown_key_names_file_line_and_closest_key(kit):
    rc, cal = _write_files(kit, "musecallib /x\n")
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_files(rc, cal)
    message = str(info.value)
    assert str(rc) in message and "line 7" in message and "'musecallib'" in message and "'musecalib'" in message


def test_missing_key_and_missing_paths_are_errors(kit):
    rc = kit / "rc.dic"
    rc.write_text(f"musecalib {kit}/cal\n")
    with pytest.raises(ConfigError, match="missing required key.*root"):
        read_rc_file(rc)
    rc, cal = _write_files(kit)
    rc.write_text(rc.read_text().replace(f"{kit}/data", f"{kit}/nodata"))
    with pytest.raises(ConfigError, match="root = .*nodata.*not an existing folder"):
        PipelineConfig.from_files(rc, cal)
    rc, cal = _write_files(kit, cal_text=render_calib_template({"sky_lines": "nosuch.fits"}))
    with pytest.raises(ConfigError, match="sky_lines = nosuch.fits.*does not exist"):
        PipelineConfig.from_files(rc, cal)
    with pytest.raises(ConfigError, match="does not exist"):
        read_calib_file(kit / "absent.dic")


def test_repeated_key_and_empty_value(kit):
    rc, _ = _write_files(kit, "root /elsewhere\n")
    with pytest.raises(ConfigError, match="repeats line"):
        read_rc_file(rc)
    rc.write_text("musecalib\n")
    with pytest.raises(ConfigError, match="has no value"):
        read_rc_file(rc)


def test_user_and_environment_variables_expand(kit, monkeypatch):
    monkeypatch.setenv("MUSEKIT", str(kit))
    monkeypatch.setenv("HOME", str(kit))
    rc = kit / "rc.dic"
    rc.write_text("musecalib $MUSEKIT/cal\nroot ~/data\n")
    cal = kit / "calib_tables.dic"
    cal.write_text(render_calib_template())
    config = PipelineConfig.from_files(rc, cal)
    assert config.musecalib == kit / "cal" and config.root == kit / "data"
    rc.write_text("musecalib $NOT_SET_ANYWHERE/cal\nroot ~/data\n")
    with pytest.raises(ConfigError, match="not set"):
        PipelineConfig.from_files(rc, cal)


def test_settings_without_any_file(kit):
    config = PipelineConfig.from_settings(musecalib=kit / "cal", root=kit / "data")
    assert config.static_calibration("filter_list") == kit / "cal" / "filter_list.fits"
    with pytest.raises(ConfigError, match="did you mean 'sky_lines'"):
        PipelineConfig.from_settings(musecalib=kit / "cal", root=kit / "data", calib_tables={"skylines": "x"})


def test_folder_renaming_from_rc(kit):
    rc, cal = _write_files(kit, "folder_object Objects\n")
    config = PipelineConfig.from_files(rc, cal)
    layout = PointingLayout(config.root, "NGC1000", 3, folders=config.folders)
    assert layout.folder("object") == kit / "data" / "NGC1000" / "P03" / "Objects"
    rc, cal = _write_files(kit, "folder_objet Objects\n")
    with pytest.raises(ConfigError, match="did you mean 'folder_object'"):
        PipelineConfig.from_files(rc, cal)


def test_templates_parse_and_match_the_shipped_files():
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "config_templates"
    assert (shipped / "rc.dic").read_text() == render_rc_template() + "\n"
    assert (shipped / "calib_tables.dic").read_text() == render_calib_template() + "\n"
    # raman_lines is commented out: the file only exists in kits for AO data
    assert set(read_calib_file(shipped / "calib_tables.dic")) == set(CALIB_KEYS) - {"raman_lines"}
    assert {"musecalib", "root", "musecalib_time"} <= set(read_rc_file(shipped / "rc.dic"))


def test_layout_paths(tmp_path):
    layout = PointingLayout(tmp_path, "NGC1000", 1)
    assert layout.pointing_dir == tmp_path / "NGC1000" / "P01"
    assert layout.folder("astro_tables") == tmp_path / "NGC1000" / "P01" / "Astro_Tables"
    assert layout.folder("alignment") == tmp_path / "NGC1000" / "Alignment"
    assert layout.master_folder("bias") == tmp_path / "NGC1000" / "P01" / "Master" / "Bias"
    layout.create_working_folders()
    assert (tmp_path / "NGC1000" / "Combined").is_dir()
    assert not (tmp_path / "NGC1000" / "P01" / "Raw").exists()
    assert pointing_folder_name(7, "OB", 3) == "OB007"
    with pytest.raises(KeyError, match="unknown layout folder"):
        layout.folder("objects")
    with pytest.raises(ValueError, match="unknown folder key"):
        PointingLayout(tmp_path, "T", 1, folders={"objet": "X"})


def test_paths_with_white_space_are_refused_when_read_with_the_way_out(kit, monkeypatch):
    spaced = kit / "My MUSE data"
    spaced.mkdir()
    monkeypatch.setenv("HOME", str(kit))
    rc, cal = _write_files(kit)
    rc.write_text(rc.read_text().replace(f"root {kit}/data", f"root {spaced}"))
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_files(rc, cal)
    message = str(info.value)
    assert f"root = '{spaced}' (from {rc}) contains a space" in message
    assert "SOF files as 'path TAG' lines split on white space" in message
    # The exact command, and what to set afterwards.
    assert f"ln -s '{spaced}' {kit}/My_MUSE_data, then set 'root {kit}/My_MUSE_data' in {rc}" in message
    assert "\n" not in message
    # Following the advice works.
    import subprocess
    subprocess.run(["ln", "-s", str(spaced), f"{kit}/My_MUSE_data"], check=True)
    rc.write_text(rc.read_text().replace(f"root {spaced}", f"root {kit}/My_MUSE_data"))
    assert PipelineConfig.from_files(rc, cal).root == kit / "My_MUSE_data"


@pytest.mark.parametrize("key", ["musecalib", "musecalib_time", "root"])
def test_every_path_setting_is_checked_also_from_python(kit, key):
    spaced = kit / f"a\tfolder for {key}"
    spaced.mkdir()
    settings = {"musecalib": kit / "cal", "root": kit / "data", "musecalib_time": kit / "caltime"}
    settings[key] = spaced
    with pytest.raises(ConfigError, match=f"{key} = .* contains a tab.*pass {key}="):
        PipelineConfig.from_settings(**settings)


def test_names_with_white_space_are_refused(kit):
    rc, cal = _write_files(kit, "folder_object My Objects\n")
    with pytest.raises(ConfigError, match="folder_object = 'My Objects'.*contains a space.*name without"):
        PipelineConfig.from_files(rc, cal)
    rc, cal = _write_files(kit, cal_text=render_calib_template({"sky_lines": "sky lines.fits"}))
    with pytest.raises(ConfigError, match="sky_lines = 'sky lines.fits'"):
        PipelineConfig.from_files(rc, cal)
