"""writer.stamp_existing: stamping a torch zip file that something else wrote (a framework's own saver)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import envkit
from envkit.checkpoint.stamp import Stamp
from envkit.checkpoint.writer import build_meta, stamp_existing
from envkit.errors import CheckpointWriteError

torch = pytest.importorskip("torch")


def _stamp_for(path: Path) -> object:
    fingerprint, meta = envkit.collect(), build_meta({"epoch": 2, "step": 7}, path)
    return lambda payload: Stamp(fingerprint, payload, meta)


def _state() -> dict[str, object]:
    torch.manual_seed(0)
    return {"w": torch.randn(3, 4), "step": 7}


def _no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("layout", ["as torch wrote it", "with a zip comment (the zipfile path)"])
def test_a_torch_zip_gets_a_verified_stamp_and_still_loads(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "model.ckpt"
    state = _state()
    torch.save(state, path)
    if layout.startswith("with"):
        with zipfile.ZipFile(path, "a") as zf:
            zf.comment = b"written by somebody else"
    stamp = stamp_existing(path, stamp_for=_stamp_for(path))
    assert stamp is not None
    info = envkit.read_stamp(path)
    assert info.stamp_source == "member" and info.stamp == stamp and (info.stamp.epoch, info.stamp.step) == (2, 7)
    assert envkit.verify(path).status == "ok"
    loaded = envkit.load(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7
    assert _no_temporary_files(tmp_path)


def test_a_changed_byte_after_stamping_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    state = _state()
    torch.save(state, path)
    stamp_existing(path, stamp_for=_stamp_for(path))
    data = bytearray(path.read_bytes())
    data[data.index(state["w"].numpy().tobytes())] ^= 1  # type: ignore[attr-defined]
    path.write_bytes(bytes(data))
    assert envkit.verify(path).status == "corrupt"


@pytest.mark.parametrize("kind", ["stamped already", "a legacy stream"])
def test_nothing_changes_where_there_is_nothing_to_add(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.ckpt"
    if kind == "stamped already":
        envkit.save(_state(), path, meta={"epoch": 1})
    else:
        torch.save(_state(), path, _use_new_zipfile_serialization=False)
    before = path.read_bytes()
    assert stamp_existing(path, stamp_for=_stamp_for(path)) is None
    assert path.read_bytes() == before and _no_temporary_files(tmp_path)


def test_through_a_symlink_the_link_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "epoch=3.ckpt"
    torch.save(_state(), real)
    link = tmp_path / "last.ckpt"
    link.symlink_to(real.name)
    assert stamp_existing(link, stamp_for=_stamp_for(link)) is not None
    assert link.is_symlink() and envkit.verify(real).status == "ok"


def test_a_missing_file_is_one_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointWriteError, match="missing.ckpt"):
        stamp_existing(tmp_path / "missing.ckpt", stamp_for=_stamp_for(tmp_path / "missing.ckpt"))
    assert list(tmp_path.iterdir()) == []
