"""The folder's index (envkit.checkpoint.index): one cache file with entries and order, read back,
and folders whose cache an older envkit wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import envkit  # noqa: E402 - after importorskip("torch")
from envkit.checkpoint.directory import _latest_from_index_order, find_latest, scan  # noqa: E402 - after importorskip("torch")
from envkit.checkpoint.index import (  # noqa: E402 - after importorskip("torch")
    INDEX_NAME,
    LEGACY_ORDER_NAME,
    CheckpointInfo,
    newest_first,
    read_index,
    write_index,
)

pytestmark = pytest.mark.filterwarnings("ignore::envkit.errors.EphemeralDirectoryWarning")


def tiny() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def save_steps(mgr: envkit.CheckpointManager, steps: list[int]) -> None:
    model, opt = tiny()
    for step in steps:
        mgr.save(epoch=step // 10, step=step, metrics={"val_loss": 1.0 / step}, model=model, optimizer=opt)


def order_line(folder: Path) -> dict:
    """The index's first line: the version, and the names newest first when they can be joined."""
    return json.loads((folder / INDEX_NAME).read_text().split("\n", 1)[0])


def write_two_file_cache(folder: Path) -> None:
    """The cache as envkit wrote it before the one-file index: entries in .envkit-index.json (version 1),
    the order in .envkit-order.json (version 2, newline-joined names and project/step/size rows)."""
    infos = newest_first(scan(folder))
    (folder / INDEX_NAME).write_text(json.dumps({"version": 1, "entries": {i.path.name: i.to_index() for i in infos}}))
    (folder / LEGACY_ORDER_NAME).write_text(json.dumps({
        "version": 2,
        "names": "\n".join(i.path.name for i in infos),
        "rows": "\n".join(f"{i.project or ''}\t{i.step}\t{i.size}" for i in infos),
    }))


def test_index_is_one_file_holding_entries_and_order(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None) as mgr:
        save_steps(mgr, [1, 2, 3])
    assert not (tmp_path / LEGACY_ORDER_NAME).exists()
    doc = order_line(tmp_path)
    assert doc["names"].split("\n") == ["p_0000_00000003.pth", "p_0000_00000002.pth", "p_0000_00000001.pth"]
    entries = read_index(tmp_path)
    assert {n: (e["step"], e["epoch"], e["project"], e["metrics"]) for n, e in entries.items()} == {
        f"p_0000_0000000{s}.pth": (s, 0, "p", {"val_loss": 1.0 / s}) for s in (1, 2, 3)
    }
    assert all(e["size"] == (tmp_path / n).stat().st_size and e["saved_at"] for n, e in entries.items())


def test_index_round_trip_keeps_absent_values_absent(tmp_path: Path) -> None:
    infos = [
        CheckpointInfo(tmp_path / "a.pth", None, None, {}, project=None, size=5, saved_at=None),
        CheckpointInfo(tmp_path / "b.pth", 2, 7, {"loss": 0.25, "note": "x\ty"}, project="q", size=9, saved_at="2026-01-01T00:00:00"),
        CheckpointInfo(tmp_path / "bad.pth", None, None, valid=False),  # known bad: not cached
    ]
    write_index(tmp_path, infos)
    assert read_index(tmp_path) == {"a.pth": infos[0].to_index(), "b.pth": infos[1].to_index()}


def test_names_the_order_cannot_carry_keep_entries_but_no_order(tmp_path: Path) -> None:
    infos = [CheckpointInfo(tmp_path / "p\t1.pth", 0, 1, {}, project="p", size=3)]
    write_index(tmp_path, infos)
    doc = order_line(tmp_path)
    assert "names" not in doc and read_index(tmp_path) == {"p\t1.pth": infos[0].to_index()}


def test_cache_from_an_older_envkit_or_unsafe_names_fall_back_to_a_scan(tmp_path: Path) -> None:
    """(Moved from test_manager: the order file is now the index itself.)"""
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None) as mgr:
        save_steps(mgr, [1, 2])
        assert _latest_from_index_order(tmp_path, "p").step == 2  # the fast path answers
        (tmp_path / INDEX_NAME).write_text(json.dumps({"version": 1, "order": [["p_0000_00000001.pth", "p", 1, 1]]}))
        assert _latest_from_index_order(tmp_path, "p") is None
        assert mgr.latest().step == 2
    with envkit.CheckpointManager(tmp_path / "tabs", project="p", keep_last=None, filename="p\t{step}.pth") as mgr:
        save_steps(mgr, [1, 2])
        assert "names" not in order_line(tmp_path / "tabs")  # a name the order cannot carry
        assert _latest_from_index_order(tmp_path / "tabs", "p") is None
        assert mgr.latest().step == 2


def test_a_folder_with_the_two_file_cache_of_an_older_envkit_still_resumes(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None) as mgr:
        save_steps(mgr, [1, 2, 3])
    write_two_file_cache(tmp_path)
    assert read_index(tmp_path).keys() == {f"p_0000_0000000{s}.pth" for s in (1, 2, 3)}  # version-1 entries still read
    assert find_latest(tmp_path, "p").step == 3
    model, opt = tiny()
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None) as mgr:
        info = mgr.resume(model=model, optimizer=opt)
        assert (info.step, info.path.name) == (3, "p_0000_00000003.pth")
        save_steps(mgr, [4])
    assert not (tmp_path / LEGACY_ORDER_NAME).exists()  # the next write leaves one file
    assert order_line(tmp_path)["version"] == 2
    assert find_latest(tmp_path, "p").step == 4


def test_the_fast_path_checks_the_winners_stamp(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None) as mgr:
        save_steps(mgr, [1, 2])
    newest, oldest = tmp_path / "p_0000_00000002.pth", tmp_path / "p_0000_00000001.pth"
    newest.write_bytes(oldest.read_bytes())  # rewritten in place: same name, an older stamp
    os.utime(newest)
    assert _latest_from_index_order(tmp_path, "p") is None
    assert find_latest(tmp_path, "p").step == 1  # the scan ranks it by its own stamp


def test_from_meta_reads_wrong_types_as_absent(tmp_path: Path) -> None:
    info = CheckpointInfo.from_meta(tmp_path / "x.pth", {"epoch": True, "step": "3", "metrics": [1], "project": 5,
                                                         "saved_at": 1}, size=4)
    assert (info.epoch, info.step, dict(info.metrics), info.project, info.saved_at, info.size) == (None, None, {}, None, None, 4)
    good = CheckpointInfo.from_meta(tmp_path / "y.pth", {"epoch": 1, "step": 2, "metrics": {"a": 1.0}, "project": "p",
                                                         "saved_at": "t"}, size=1, valid=True)
    assert (good.epoch, good.step, dict(good.metrics), good.project, good.saved_at, good.valid) == (1, 2, {"a": 1.0}, "p", "t", True)
