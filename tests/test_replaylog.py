"""The replay log is a bash script: commands run as written, comments carry time and versions."""
import subprocess

from pymusepipe.replaylog import ReplayLog


def test_log_is_a_runnable_script_even_with_awkward_paths(tmp_path):
    log = ReplayLog(tmp_path / "Log" / "run.log", pipeline_version="2.8.7")
    folder = tmp_path / "a folder with 'quotes' and $dollars"
    log.stamp("step bias: 1 job")
    log.mkdir(folder)
    log.write_file(folder / "input.sof", "/raw/b1.fits BIAS\n/raw/b2.fits BIAS\n")
    log.command(["sh", "-c", 'echo "$OMP_NUM_THREADS" > "$0"; pwd > where.txt', str(folder / "threads.txt")],
                env={"OMP_NUM_THREADS": 3}, cwd=folder)
    log.move(folder / "input.sof", folder / "moved.sof")
    text = log.path.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert "# At : " in text and "pymusepipe" in text and "MUSE pipeline 2.8.7" in text
    assert "# step bias: 1 job" in text
    result = subprocess.run(["bash", str(log.path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (folder / "moved.sof").read_text() == "/raw/b1.fits BIAS\n/raw/b2.fits BIAS\n"
    assert (folder / "threads.txt").read_text() == "3\n"
    assert (folder / "where.txt").read_text() == f"{folder}\n"


def test_append_by_default_and_reset_on_request(tmp_path):
    path = tmp_path / "run.log"
    ReplayLog(path).comment("first session")
    ReplayLog(path).comment("second session")
    assert "first session" in path.read_text() and "second session" in path.read_text()
    ReplayLog(path, reset=True).comment("fresh")
    text = path.read_text()
    assert "first session" not in text and "# fresh" in text and text.startswith("#!/bin/bash")


def test_fakemode_commands_are_commented_out(tmp_path):
    log = ReplayLog(tmp_path / "fake.log", fakemode=True)
    log.stamp()
    log.command(["esorex", "muse_bias", "/sof/bias.sof"])
    log.write_file(tmp_path / "x.sof", "/raw/a.fits BIAS\n")
    body = [line for line in log.path.read_text().splitlines()[2:]]
    assert body and all(line.startswith("#") for line in body)
    assert "# [fakemode] esorex muse_bias /sof/bias.sof" in body
    assert subprocess.run(["bash", str(log.path)]).returncode == 0
    assert not (tmp_path / "x.sof").exists()


def test_multiline_messages_stay_comments(tmp_path):
    log = ReplayLog(tmp_path / "m.log")
    log.comment("line one\nrm -rf /nothing")
    assert "# rm -rf /nothing" in log.path.read_text().splitlines()


def test_batches_nest_and_write_once_in_order(tmp_path):
    log = ReplayLog(tmp_path / "b.log")
    with log.batch():
        log.comment("outer 1")
        with log.batch():
            log.comment("inner")
        log.comment("outer 2")
        assert "outer" not in log.path.read_text()  # nothing written before the outer block ends
    assert log.path.read_text().splitlines()[-3:] == ["# outer 1", "# inner", "# outer 2"]
