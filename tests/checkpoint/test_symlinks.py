"""Saving to a symlink writes through it, atomically, at its target; the link stays a link (issue 10, item 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import envkit

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::envkit.EphemeralDirectoryWarning")


def make_link(kind: str, where: Path) -> tuple[Path, Path]:
    """(the link to save to, the file a save must land in), for each kind of link."""
    store = where / "store"
    store.mkdir()
    target = store / "epoch1.pth"
    link = where / "last.pth"
    if kind == "relative":
        link.symlink_to(os.path.join("store", "epoch1.pth"))
    elif kind == "absolute":
        link.symlink_to(target.resolve())
    elif kind == "chain":
        middle = where / "middle.pth"
        middle.symlink_to("store/epoch1.pth")
        link.symlink_to("middle.pth")
    elif kind == "parent-relative":  # the link lives in a subfolder and points up and across
        (where / "runs").mkdir()
        link = where / "runs" / "last.pth"
        link.symlink_to("../store/epoch1.pth")
    else:
        raise AssertionError(kind)
    return link, target


def temp_files(*folders: Path) -> list[str]:
    return [n for f in folders for n in os.listdir(f) if ".tmp-" in n]


@pytest.mark.parametrize("kind", ["relative", "absolute", "chain", "parent-relative"])
def test_save_writes_through_the_link_at_its_target(tmp_path: Path, kind: str) -> None:
    link, target = make_link(kind, tmp_path)
    envkit.save({"w": torch.ones(2)}, target, meta={"epoch": 1})
    inode = target.stat().st_ino
    envkit.save({"w": torch.full((2,), 2.0)}, link, meta={"epoch": 2})
    assert link.is_symlink() and os.path.realpath(link) == str(target.resolve())  # the link stays a link
    assert envkit.read_stamp(target).stamp.epoch == 2  # its target is the new checkpoint, not stale
    assert torch.load(link, weights_only=True)["w"].tolist() == [2.0, 2.0]
    assert target.stat().st_ino != inode  # replaced by rename (atomic), not rewritten in place
    assert envkit.verify(link).ok and temp_files(link.parent, target.parent) == []


@pytest.mark.parametrize("chain", [False, True])
def test_a_dangling_link_creates_its_target(tmp_path: Path, chain: bool) -> None:
    (tmp_path / "store").mkdir()
    link = tmp_path / "last.pth"
    if chain:
        (tmp_path / "middle.pth").symlink_to("store/new.pth")
        link.symlink_to("middle.pth")
    else:
        link.symlink_to("store/new.pth")
    envkit.save({"w": torch.ones(1)}, link, meta={"step": 5})
    assert link.is_symlink() and (tmp_path / "store" / "new.pth").is_file()
    assert envkit.read_stamp(link).stamp.step == 5 and temp_files(tmp_path, tmp_path / "store") == []


def test_a_dangling_link_into_a_missing_folder_is_bad_input(tmp_path: Path) -> None:
    link = tmp_path / "last.pth"
    link.symlink_to("gone/new.pth")
    with pytest.raises(envkit.BadInput, match="does not exist"):
        envkit.save({}, link)
    assert link.is_symlink() and os.listdir(tmp_path) == ["last.pth"]


@pytest.mark.parametrize("kind", ["link to a folder", "folder", "loop"])
def test_a_link_to_a_folder_or_a_loop_is_bad_input(tmp_path: Path, kind: str) -> None:
    (tmp_path / "store").mkdir()
    if kind == "link to a folder":
        path = tmp_path / "last.pth"
        path.symlink_to("store")
    elif kind == "folder":
        path = tmp_path / "store"
    else:
        path = tmp_path / "a.pth"
        path.symlink_to("b.pth")
        (tmp_path / "b.pth").symlink_to("a.pth")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(envkit.BadInput) as caught:
        envkit.save({"w": torch.ones(1)}, path)
    assert caught.value.exit_code == 2 and str(path) in caught.value.message
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "store") == []


def test_the_manager_writes_through_a_link_it_is_given(tmp_path: Path) -> None:
    """A checkpoint name that is a link (e.g. onto faster or shared storage) keeps being one."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "p_0000_00000001.pth").symlink_to(elsewhere / "step1.pth")
    with envkit.CheckpointManager(run, project="p") as mgr:
        path = mgr.save(epoch=0, step=1, model=torch.nn.Linear(1, 1))
        assert path is not None and path.is_symlink() and (elsewhere / "step1.pth").is_file()
        assert mgr.latest().path == path and mgr.resume().step == 1


def test_write_target_is_the_one_rule(tmp_path: Path) -> None:
    from envkit.checkpoint.paths import write_target

    plain = tmp_path / "plain.json"
    assert write_target(plain) == plain  # not a link, not there yet: as given, parents untouched
    (tmp_path / "l.json").symlink_to("plain.json")
    assert write_target(tmp_path / "l.json") == Path(os.path.realpath(plain))


@pytest.mark.parametrize("kind", ["relative", "chain"])
def test_fingerprint_output_writes_through_a_link(tmp_path: Path, kind: str) -> None:
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "fp.json"
    target.write_text("{}")
    link = tmp_path / "fp.json"
    if kind == "chain":
        (tmp_path / "mid.json").symlink_to("store/fp.json")
        link.symlink_to("mid.json")
    else:
        link.symlink_to("store/fp.json")
    done = subprocess.run([sys.executable, "-m", "envkit", "fingerprint", "-o", str(link)], check=False, capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and json.loads(target.read_text())["schema"] == "envkit.fingerprint/1"
    (tmp_path / "dirlink").symlink_to("store")
    done = subprocess.run([sys.executable, "-m", "envkit", "fingerprint", "-o", str(tmp_path / "dirlink")], check=False,
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr and (tmp_path / "store").is_dir()
