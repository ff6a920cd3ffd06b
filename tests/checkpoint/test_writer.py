from __future__ import annotations

import errno
import os
import pickle
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import envkit  # noqa: E402
from envkit.checkpoint.hashing import digest_of_file  # noqa: E402
from envkit.checkpoint.stamp import MEMBER  # noqa: E402
from envkit.errors import BadInput, CheckpointWriteError  # noqa: E402


def state() -> dict:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 16)).sum().backward()
    opt.step()
    return {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 1, "loss": 0.5}


def test_save_returns_stamp_and_file_loads_with_plain_torch(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    st = state()
    stamp = envkit.save(st, path, meta={"epoch": 1, "step": 10, "metrics": {"loss": 0.5}})
    assert stamp.meta["epoch"] == 1 and stamp.meta["envkit"] == envkit.__version__
    variants = [{"weights_only": True}, {"weights_only": False}]
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 1):
        variants.append({"weights_only": True, "mmap": True})  # mmap= exists from torch 2.1
    for kwargs in variants:
        loaded = torch.load(path, **kwargs)
        assert torch.equal(loaded["model_state_dict"]["0.weight"], st["model_state_dict"]["0.weight"])
        assert loaded["optimizer_state_dict"]["state"][0]["step"] == st["optimizer_state_dict"]["state"][0]["step"]


def test_stamp_member_sits_under_archive_prefix_and_payload_digest_matches(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    stamp = envkit.save(state(), path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert f"archive/{MEMBER}" in names
        assert zf.getinfo(f"archive/{MEMBER}").header_offset == stamp.payload.length
        assert zf.testzip() is None  # every CRC is right, the appended member's too
    with open(path, "rb") as fh:
        assert digest_of_file(fh, stamp.payload.length, "xxh3_128") == stamp.payload.digest


def test_tensor_offsets_do_not_move(tmp_path: Path) -> None:
    st = state()
    plain, stamped = tmp_path / "archive.pth", tmp_path / "stamped.pth"  # same top-folder name
    torch.save(st, plain)
    envkit.save(st, stamped)
    with zipfile.ZipFile(plain) as a, zipfile.ZipFile(stamped) as b:
        offsets_a = {i.filename: i.header_offset for i in a.infolist()}
        offsets_b = {i.filename: i.header_offset for i in b.infolist() if not i.filename.endswith(MEMBER)}
    assert offsets_a == offsets_b


def test_sha256_option(tmp_path: Path) -> None:
    stamp = envkit.save(state(), tmp_path / "c.pth", digest="sha256")
    assert stamp.payload.digest.startswith("sha256:")
    assert envkit.verify(tmp_path / "c.pth").ok


def test_read_stamp_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    stamp = envkit.save(state(), path, meta={"epoch": 3, "step": 7, "metrics": {"acc": 0.9}})
    info = envkit.read_stamp(path)
    assert info.stamped and info.format == "zip" and info.stamp_source == "member"
    assert info.stamp == stamp
    assert info.serialization_version == "3"


def test_no_temp_files_left_and_overwrite_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    envkit.save({"a": torch.zeros(3)}, path)
    envkit.save({"a": torch.ones(3)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]
    assert torch.equal(torch.load(path)["a"], torch.ones(3))


def test_unpicklable_object_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    envkit.save({"a": torch.zeros(3)}, path)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        envkit.save({"f": lambda: 1}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]


def test_enospc_midway_keeps_earlier_checkpoint_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pth"
    envkit.save({"a": torch.zeros(3)}, path)
    before = path.read_bytes()
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        envkit.save({"a": torch.ones(1000)}, path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


def test_bad_meta_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="plain JSON"):
        envkit.save({}, tmp_path / "c.pth", meta={"when": object()})
    with pytest.raises(BadInput, match="does not exist"):
        envkit.save({}, tmp_path / "nope" / "c.pth")
    with pytest.raises(BadInput, match="unknown digest"):
        envkit.save({}, tmp_path / "c.pth", digest="md5")
    assert list(tmp_path.iterdir()) == []


def test_fingerprint_failure_on_the_helper_thread_reaches_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import envkit.checkpoint.writer as writer

    target = tmp_path / "c.pth"
    envkit.save({"w": torch.zeros(2)}, target)
    before = target.read_bytes()

    def broken_collect() -> None:
        raise BadInput("site-packages unreadable")

    monkeypatch.setattr(writer, "collect", broken_collect)
    with pytest.raises(BadInput, match="site-packages unreadable"):
        envkit.save({"w": torch.ones(2)}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]
