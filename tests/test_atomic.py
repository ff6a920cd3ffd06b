"""envkit.atomic: the one atomic, durable write every writer uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from envkit.atomic import atomic_file, atomic_write, is_temp_name, write_target
from envkit.errors import BadInput


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    assert atomic_write(path, "new") == path
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path) as fh:
        fh.write(b"half")
        raise RuntimeError("the writer died")
    assert path.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]


@pytest.mark.parametrize("kind", ["relative", "absolute", "chain", "dangling"])
def test_writes_go_through_symlinks_to_their_target(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "real" / "out.txt"
    target.parent.mkdir()
    if kind != "dangling":
        target.write_text("old")
    link = tmp_path / "link.txt"
    if kind == "relative":
        link.symlink_to(os.path.relpath(target, tmp_path))
    elif kind == "chain":
        (tmp_path / "middle.txt").symlink_to(target)
        link.symlink_to(tmp_path / "middle.txt")
    else:
        link.symlink_to(target)
    assert atomic_write(link, "new") == target
    assert link.is_symlink() and target.read_text() == "new"


@pytest.mark.parametrize("make", ["folder", "loop", "device", "fifo", "no-parent"])
def test_what_cannot_be_replaced_by_a_file_is_bad_input(tmp_path: Path, make: str) -> None:
    path = tmp_path / "x"
    if make == "folder":
        path.mkdir()
    elif make == "loop":
        path.symlink_to(tmp_path / "y")
        (tmp_path / "y").symlink_to(path)
    elif make == "device":
        path = Path("/dev/null")
    elif make == "fifo":
        os.mkfifo(path)
    else:
        path = tmp_path / "missing" / "x"
    with pytest.raises(BadInput) as caught:
        write_target(path, "-o")
    assert str(path) in caught.value.message
    if make == "device":
        assert Path("/dev/null").is_char_device()
