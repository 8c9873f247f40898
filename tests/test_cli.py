"""The console script: version, templates, the scan summary, and errors as one line with an exit status."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pymusepipe
from pymusepipe import __version__
from pymusepipe.cli import main, run_handler
from pymusepipe.config import CALIB_KEYS
from pymusepipe.errors import LockHeldError, StepFailedError, UsageError

PACKAGE_ROOT = str(Path(pymusepipe.__file__).resolve().parent.parent)

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
    assert status == 1
    err = capsys.readouterr().err
    assert "did you mean 'root'" in err and err.count("\n") == 1 and "Traceback" not in err


# --- errors for people: one line, no traceback, the right exit status -----------------------------------------

def _cli(*args, env=None, cwd=None):
    """Run the console script as the user does; returns (exit status, stdout, stderr)."""
    environment = dict(os.environ, PYTHONPATH=PACKAGE_ROOT, **(env or {}))
    result = subprocess.run([sys.executable, "-m", "pymusepipe.cli", *args], capture_output=True, text=True,
                            env=environment, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("pymusepipe: error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture
def kit(tmp_path):
    calib, raw = empty_calibration_kit(tmp_path)
    for i in range(3):
        write_raw(raw / f"bias{i}.fits", primary_header("CALIB", "BIAS", mjd=60750.5 + i * 0.001,
                                                        tpl_start="2025-03-16T12:00:00", nexp=3, expno=i + 1))
    rc = tmp_path / "rc.dic"
    rc.write_text(f"musecalib {calib}\nroot {tmp_path / 'data'}\n")
    cal = tmp_path / "calib_tables.dic"
    cal.write_text("\n".join(f"{key} {name}" for key, (_, _, name) in CALIB_KEYS.items()))
    return tmp_path, ["--rc", str(rc), "--cal", str(cal)]


@pytest.mark.parametrize("command", ["scan", "run", "report"])
def test_missing_configuration_file_is_one_line_for_every_command(tmp_path, command):
    status, _, err = _cli(command, "--rc", str(tmp_path / "nope.dic"), "--cal", str(tmp_path / "nope.dic"),
                          "--target", "T")
    assert status == 1
    assert f"configuration file {tmp_path / 'nope.dic'} does not exist" in _one_error_line(err)


def test_missing_target_and_raw_folder(kit):
    root, config = kit
    status, _, err = _cli("scan", *config, "--target", "NGC999")
    assert status == 1
    line = _one_error_line(err)
    assert f"folder {root / 'data' / 'NGC999'} does not exist" in line and "check --target" in line
    status, _, err = _cli("run", *config, "--target", "NGC1000", "--pointing", "2")
    assert status == 1 and str(root / "data" / "NGC1000" / "P02" / "Raw") in _one_error_line(err)


def test_esorex_missing_is_one_line_with_the_way_out(kit):
    root, config = kit
    status, _, err = _cli("run", *config, "--target", "NGC1000", env={"PATH": str(root / "empty")})
    assert status == 1
    line = _one_error_line(err)
    assert "esorex executable 'esorex' not found on PATH" in line and "apt-get install esorex" in line


def test_usage_errors_exit_2(kit):
    _, config = kit
    status, _, err = _cli("scan", *config, "--target", "NGC1000", "--pointing", "one")
    assert status == 2 and "--pointing 'one': expected integers" in _one_error_line(err)
    status, _, err = _cli("scan", "--bogus")
    assert status == 2 and "Traceback" not in err
    assert _cli()[0] == 2


def test_debug_shows_the_traceback(tmp_path):
    status, _, err = _cli("--debug", "scan", "--rc", str(tmp_path / "x"), "--cal", str(tmp_path / "x"),
                          "--target", "T")
    assert status == 1 and "Traceback" in err and "pymusepipe: error: " in err
    status, _, err = _cli("scan", "--rc", str(tmp_path / "x"), "--cal", str(tmp_path / "x"), "--target", "T",
                          "--debug")
    assert status == 1 and "Traceback" in err


def _raising(error):
    def handler(args):
        raise error
    return handler


@pytest.mark.parametrize("error, status, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/P01/Astro_Tables/x.fits"), 1,
     "disk full (no space left on device) while writing /data/P01/Astro_Tables/x.fits; free space on"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/P01/Sof"), 1,
     "permission denied while accessing /data/P01/Sof; check the owner"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/offsets.fits"), 1,
     "no such file or folder /data/offsets.fits"),
    (LockHeldError("/data/P01 is in use by another pymusepipe run: pid 12 on host a", "wait for it"), 1,
     "/data/P01 is in use by another pymusepipe run: pid 12 on host a; wait for it"),
    (StepFailedError("step bias failed: muse_bias_2025 exited with code 255: cannot read MASTER_BIAS.fits",
                     "fix it and rerun to resume"), 1, "step bias failed: muse_bias_2025 exited with code 255"),
    (ValueError("unknown step 'bais'; steps are bias, flat"), 1, "unknown step 'bais'"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), 1, "Connection refused"),
    (OSError("raw folder /data/T/P01/Raw does not exist: put the raw files there"), 1,
     "raw folder /data/T/P01/Raw does not exist: put the raw files there"),
    (UsageError("--cpus 'x': expected CPU ids"), 2, "--cpus 'x': expected CPU ids"),
    (type("StepInputError", (RuntimeError,), {})("flat: 2 required calibration(s) missing:\n  a\n  b"), 1,
     "flat: 2 required calibration(s) missing (and 2 more line(s): rerun with --debug to see them)"),
])
def test_known_errors_become_one_line(capsys, error, status, expected):
    handlers = [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
    assert run_handler(_raising(error), None) == status
    assert [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == handlers
    err = capsys.readouterr().err
    assert _one_error_line(err).startswith(f"pymusepipe: error: {expected}"), err


def test_unexpected_errors_keep_their_traceback():
    with pytest.raises(KeyError):
        run_handler(_raising(KeyError("bug")), None)


INTERRUPTIBLE = """import sys
from pymusepipe.cli import run_handler
from pymusepipe import processes

def handler(args):
    print("STARTED", flush=True)
    processes.run_command(["sleep", "300"])

sys.exit(run_handler(handler, None))
"""


def _command_line(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("signum, status, message", [
    (signal.SIGINT, 130, "pymusepipe: interrupted; rerun to resume"),
    (signal.SIGTERM, 143, "pymusepipe: terminated by SIGTERM; rerun to resume"),
])
def test_ctrl_c_and_sigterm_stop_the_jobs_and_say_how_to_resume(tmp_path, signum, status, message):
    from pymusepipe.processes import alive, process_table

    script = tmp_path / "interruptible.py"
    script.write_text(INTERRUPTIBLE)
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT), start_new_session=True)
    try:
        assert process.stdout.readline() == "STARTED\n"
        sleepers, deadline = set(), time.monotonic() + 60
        while not sleepers and time.monotonic() < deadline:  # wait until sleep runs
            sleepers = {pid for pid, (ppid, _, _) in process_table().items()
                        if ppid == process.pid and _command_line(pid).startswith(b"sleep")}
        assert sleepers, "sleep never started"
        process.send_signal(signum)
        _, err = process.communicate()
    finally:
        process.kill()
    assert process.returncode == status
    assert err.strip() == message and "Traceback" not in err
    assert alive(sleepers) == set()
