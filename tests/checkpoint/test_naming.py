"""Filename templates: {timestamp} and {time:...} (the stamp's saved_at), unknown fields, ordering by step."""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import envkit  # noqa: E402
from envkit.checkpoint.naming import FIELDS, save_time  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::envkit.EphemeralDirectoryWarning")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(2, 2)


def _saved_at(path: Path) -> datetime:
    stamp = envkit.read_stamp(path).stamp
    assert stamp is not None
    return datetime.fromisoformat(stamp.meta["saved_at"])


def test_timestamp_is_the_stamps_saved_at(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None,
                                  filename="ckpt_epoch_{epoch}_time_{timestamp}.pth") as mgr:
        path = mgr.save(epoch=3, step=7, model=_model())
    assert path is not None
    match = re.fullmatch(r"ckpt_epoch_3_time_(\d{8}T\d{6}Z)\.pth", path.name)
    assert match, path.name
    saved = _saved_at(path)
    assert saved.tzinfo is not None and saved.utcoffset().total_seconds() == 0
    assert saved.strftime("%Y%m%dT%H%M%SZ") == match.group(1)


def test_time_format_spec_is_the_stamps_saved_at(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="run", keep_last=None,
                                  filename="{project}_{time:%Y%m%d-%H%M%S.%f}_{step}_{loss:.2f}.pth") as mgr:
        path = mgr.save(epoch=0, step=5, metrics={"loss": 0.25}, model=_model())
    assert path is not None
    match = re.fullmatch(r"run_(\d{8}-\d{6}\.\d{6})_5_0\.25\.pth", path.name)
    assert match, path.name
    # the microseconds in the name are the stamp's milliseconds: one time, taken once
    assert _saved_at(path).strftime("%Y%m%d-%H%M%S.%f") == match.group(1)
    assert match.group(1).endswith("000")


def test_names_that_sort_against_the_steps_do_not_change_latest(tmp_path: Path) -> None:
    model = _model()
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None, filename="{time:%Y%m%d%H%M%S%f}_s{step}.pth") as mgr:
        paths, last = [], None
        for step in (30, 20, 10):  # later saves, later times, smaller steps
            while last is not None and save_time() <= last:
                pass  # a new millisecond, so that each name's time is later than the one before
            path = mgr.save(epoch=0, step=step, model=model)
            assert path is not None
            last = _saved_at(path)
            paths.append(path)
        by_name = sorted(p.name for p in paths)
        assert [int(n.split("_s")[1].split(".")[0]) for n in by_name] == [30, 20, 10]
        for age, path in enumerate(paths):  # and the mtimes too: the smallest step is the newest file
            os.utime(path, (1_000_000 + age * 100, 1_000_000 + age * 100))
        (tmp_path / ".envkit-index.json").unlink(missing_ok=True)  # the scan, not only the index's order
        latest = mgr.latest()
        assert latest is not None and latest.step == 30 and latest.path == paths[0]
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None, filename="{time:%Y%m%d%H%M%S%f}_s{step}.pth") as again:
        latest = again.latest()
        assert latest is not None and latest.step == 30


def test_unknown_field_names_the_fields_that_exist(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", filename="{project}_{timestmp}.pth") as mgr:
        with pytest.raises(envkit.BadInput) as caught:
            mgr.save(epoch=0, step=1, metrics={"loss": 1.0}, model=_model())
    message = str(caught.value)
    assert "'timestmp'" in message and "loss" in message
    for field in FIELDS:
        assert field in message
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{project}_{time:%b}.pth", "uses %b; use only"),  # month name: locale text
        ("{project}_{time:%c}.pth", "uses %c;"),           # locale date and time
        ("{project}_{time:%A_%p}.pth", "uses %A, %p;"),
        ("{project}_{time:%Y/%m}.pth", "drop '/'"),  # a folder, not a name
        ("{project}_{time:%D}.pth", "uses %D;"),          # %m/%d/%y
        ("{project}_{time:%}.pth", "uses %"),
        ("{project}_{time:%-d}.pth", "uses %-;"),
        ("{project}_{time:.1f}.pth", "no strftime code"),  # a metric named time: the field wins, so say so
    ],
)
def test_time_formats_that_are_not_names_are_refused_before_any_save(tmp_path: Path, template: str, message: str) -> None:
    with pytest.raises(envkit.BadInput, match=re.escape(message)) as caught:
        envkit.CheckpointManager(tmp_path, project="p", filename=template)
    assert template in str(caught.value)
    assert list(tmp_path.glob("*.pth")) == []


def test_epoch_step_metrics_and_escaped_percent_keep_working(tmp_path: Path) -> None:
    model = _model()
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None,
                                  filename="{project}_{epoch:03d}_{step}_{acc:.1f}_{time:%Y%%}.pth") as mgr:
        path = mgr.save(epoch=2, step=9, metrics={"acc": 0.5}, model=model)
    assert path is not None
    year = datetime.now(timezone.utc).year
    assert path.name in (f"p_002_9_0.5_{year}%.pth", f"p_002_9_0.5_{year - 1}%.pth")
    (tmp_path / "d").mkdir()
    with envkit.CheckpointManager(tmp_path / "d", project="q") as mgr:
        assert mgr.save(epoch=1, step=2, model=model).name == "q_0001_00000002.pth"


@pytest.mark.slow
def test_sharded_ranks_agree_on_one_save_time(tmp_path: Path) -> None:
    """Two real gloo ranks whose clocks read different milliseconds save one folder, named by rank 0's time."""
    from tests.distributed.helpers import run_ranks, worker_commands

    results = run_ranks(worker_commands(2, tmp_path, ["timestamp_names"]))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    docs = [r.reports()["timestamp_names"] for r in results]
    assert docs[0]["name"] == docs[1]["name"] and docs[0]["saved_at"] == docs[1]["saved_at"]
    folders = [p.name for p in (tmp_path / "ts").iterdir() if not p.name.startswith(".")]
    assert folders == [docs[0]["name"]]
    saved = datetime.fromisoformat(docs[0]["saved_at"])
    assert docs[0]["name"] == f"ts_{saved.strftime('%Y%m%dT%H%M%S%f')}_4.dcp"
