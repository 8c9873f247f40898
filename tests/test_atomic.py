"""Files written whole or not at all (pymusepipe.atomic)."""
import errno

import pytest

from pymusepipe.atomic import atomic_move, write_atomically
from pymusepipe.errors import DiskFullError


def test_the_file_appears_whole_and_nothing_else_is_left(tmp_path):
    path = tmp_path / "new" / "table.txt"
    seen = []

    def write(temporary):
        temporary.write_text("first half ")
        seen.append(path.exists())  # while writing, the final name does not exist yet
        with open(temporary, "a") as stream:
            stream.write("second half")

    assert write_atomically(path, write) == path
    assert seen == [False]
    assert path.read_text() == "first half second half"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.txt"]


def test_a_failure_keeps_the_previous_version_and_names_the_file(tmp_path):
    path = tmp_path / "table.txt"
    path.write_text("previous")

    def fill_the_disk(temporary):
        temporary.write_text("part")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="table.txt"):
        write_atomically(path, fill_the_disk)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["table.txt"]

    def crash(temporary):
        temporary.write_text("part")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, crash)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["table.txt"]


def test_move_across_file_systems_copies_then_renames(tmp_path, monkeypatch):
    import os

    source = tmp_path / "product.fits"
    source.write_bytes(b"x" * 1000)
    destination = tmp_path / "Master" / "product.fits"
    real_replace = os.replace

    def replace(a, b):
        if str(a) == str(source):  # as a rename between two file systems fails
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    atomic_move(source, destination)
    assert destination.read_bytes() == b"x" * 1000
    assert not source.exists()
    assert [p.name for p in destination.parent.iterdir()] == ["product.fits"]
