"""The console script: version, templates and the scan summary."""
import subprocess
import sys

from pymusepipe import __version__
from pymusepipe.cli import main
from pymusepipe.config import CALIB_KEYS

from rawframes import empty_calibration_kit, primary_header, write_raw


def test_version():
    out = subprocess.run([sys.executable, "-m", "pymusepipe.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_init_config_writes_templates(tmp_path, capsys):
    assert main(["init-config", str(tmp_path / "cfg")]) == 0
    assert (tmp_path / "cfg" / "rc.dic").is_file() and (tmp_path / "cfg" / "calib_tables.dic").is_file()
    assert main(["init-config", str(tmp_path / "cfg")]) == 0
    assert "not overwritten" in capsys.readouterr().out


def test_scan_prints_a_summary_per_pointing(tmp_path, capsys):
    calib, raw = empty_calibration_kit(tmp_path)
    for i in range(3):
        write_raw(raw / f"bias{i}.fits", primary_header("CALIB", "BIAS", mjd=60750.5 + i * 0.001,
                                                        tpl_start="2025-03-16T12:00:00", nexp=3, expno=i + 1))
    write_raw(raw / "obj.fits.gz", primary_header("SCIENCE", "OBJECT", mjd=60751.1), "gz")
    write_raw(raw / "acq.fits", primary_header("ACQUISITION", "OBJECT", tech="IMAGE", mjd=60751.09))
    (tmp_path / "data" / "NGC1000" / "P02").mkdir()
    rc = tmp_path / "rc.dic"
    rc.write_text(f"musecalib {calib}\nroot {tmp_path / 'data'}\n")
    cal = tmp_path / "calib_tables.dic"
    cal.write_text("\n".join(f"{key} {name}" for key, (_, _, name) in CALIB_KEYS.items()))
    status = main(["scan", "--rc", str(rc), "--cal", str(cal), "--target", "NGC1000"])
    out = capsys.readouterr().out
    assert status == 1                      # P02 has no Raw folder: reported, the scan goes on
    assert "BIAS 3, OBJECT 1" in out
    assert "acq.fits: acquisition frame" in out
    assert "P02/Raw does not exist" in out
    assert (tmp_path / "data" / "NGC1000" / "P01" / "Astro_Tables" / "RAW_rawfiles_list_table.fits").is_file()
    status = main(["scan", "--rc", str(rc), "--cal", str(cal), "--target", "NGC1000", "--pointing", "1"])
    assert status == 0


def test_config_error_is_reported_not_raised(tmp_path, capsys):
    rc = tmp_path / "rc.dic"
    rc.write_text("rooot /x\n")
    status = main(["scan", "--rc", str(rc), "--cal", str(rc), "--target", "T"])
    assert status == 2
    assert "did you mean 'root'" in capsys.readouterr().err
