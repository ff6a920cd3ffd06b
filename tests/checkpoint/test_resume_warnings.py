"""resume() says what it skipped and what it could not restore (issue 10, item 10): real corrupted
files, checkpoints saved without optimizer state, and a real (one-rank, gloo) sharded run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import envkit
from tests.distributed.helpers import free_port

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::envkit.EphemeralDirectoryWarning")


def flip_payload_byte(path: Path) -> None:
    """One bit in the middle of the payload: the stamp still reads, the digest does not match."""
    length = envkit.read_stamp(path).stamp.payload.length
    data = bytearray(path.read_bytes())
    data[length // 2] ^= 0x04
    path.write_bytes(bytes(data))


def parts() -> dict[str, object]:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    return {
        "model": model,
        "optimizer": opt,
        "scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1),
        "scaler": torch.amp.GradScaler("cpu", enabled=False) if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler(enabled=False),
        "sampler": envkit.ResumableRandomSampler(list(range(10)), seed=1),
    }


def saved_steps(folder: Path, steps: list[int], **state: object) -> list[Path]:
    with envkit.CheckpointManager(folder, project="p", keep_last=None) as mgr:
        return [mgr.save(epoch=0, step=s, **(state or {"model": torch.nn.Linear(3, 2)})) for s in steps]


def resume_recording(folder: Path, **targets: object) -> tuple[object, list[warnings.WarningMessage]]:
    with envkit.CheckpointManager(folder, project="p", keep_last=None) as mgr, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        info = mgr.resume(**targets)  # the line the warnings must point at
    ours = [w for w in seen if issubclass(w.category, (envkit.CheckpointSkippedWarning, envkit.MissingStateWarning))]
    return info, ours


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path: Path) -> None:
    paths = saved_steps(tmp_path, [1, 2, 3])
    flip_payload_byte(paths[2])
    info, seen = resume_recording(tmp_path, model=torch.nn.Linear(3, 2))
    assert info.path == paths[1]
    assert [w.category for w in seen] == [envkit.CheckpointSkippedWarning]
    message = str(seen[0].message)
    assert f"resumed from {paths[1].name}" in message and f"{paths[2].name} (payload digest mismatch" in message
    assert seen[0].filename == __file__  # points at the caller of resume()


def test_every_skipped_file_is_named_newest_first(tmp_path: Path) -> None:
    paths = saved_steps(tmp_path, [1, 2, 3, 4])
    flip_payload_byte(paths[3])
    paths[2].write_bytes(paths[2].read_bytes()[:-100])  # truncated: its stamp cannot be read at all
    os.utime(paths[2], (paths[3].stat().st_mtime + 1,) * 2)
    flip_payload_byte(paths[0])  # older than the one resumed from: not skipped, not mentioned
    info, seen = resume_recording(tmp_path)
    assert info.path == paths[1] and len(seen) == 1
    message = str(seen[0].message)
    assert "skipping 2 newer checkpoint(s)" in message and paths[0].name not in message
    assert message.index(paths[3].name) < message.index(paths[2].name)  # by step; the unreadable one has none
    assert "truncated zip archive" in message and "payload digest mismatch" in message


def test_when_nothing_verifies_resume_starts_fresh_and_says_so(tmp_path: Path) -> None:
    paths = saved_steps(tmp_path, [1, 2])
    for p in paths:
        flip_payload_byte(p)
    info, seen = resume_recording(tmp_path)
    assert info is None and len(seen) == 1 and seen[0].category is envkit.CheckpointSkippedWarning
    message = str(seen[0].message)
    assert "starts fresh" in message and paths[0].name in message and paths[1].name in message


def test_no_warning_when_the_newest_verifies_and_everything_is_restored(tmp_path: Path) -> None:
    state = parts()
    with envkit.CheckpointManager(tmp_path, project="p") as mgr:
        mgr.save(epoch=0, step=1, **state)
    torch.save({"w": torch.ones(1)}, tmp_path / "pretrained.pth")  # a plain file beside them: not ours, not skipped
    info, seen = resume_recording(tmp_path, **parts())
    assert info.step == 1 and seen == []
    assert resume_recording(tmp_path / "empty")[1] == []  # a fresh start in an empty folder is no news


def test_resume_names_each_piece_the_checkpoint_holds_no_state_for(tmp_path: Path) -> None:
    saved = saved_steps(tmp_path, [1])[0]  # saved with a model only
    targets = parts()
    info, seen = resume_recording(tmp_path, **targets)
    assert info.path == saved and [w.category for w in seen] == [envkit.MissingStateWarning]
    message = str(seen[0].message)
    assert str(saved) in message and "optimizer, scheduler, scaler, sampler" in message and "model" not in message.split("passed")[0]
    assert seen[0].filename == __file__
    info, seen = resume_recording(tmp_path, optimizer=targets["optimizer"])
    expected = (f"{saved}: holds no state for the optimizer passed to resume(), so it starts from scratch; "
                "save with mgr.save(..., optimizer=optimizer) to resume it")
    assert [str(w.message) for w in seen] == [expected]


def test_a_model_the_checkpoint_has_no_weights_for_is_named(tmp_path: Path) -> None:
    opt_only = parts()
    with envkit.CheckpointManager(tmp_path, project="p") as mgr:
        mgr.save(epoch=0, step=1, optimizer=opt_only["optimizer"])
    _, seen = resume_recording(tmp_path, model=torch.nn.Linear(3, 2), optimizer=parts()["optimizer"])
    assert len(seen) == 1 and "holds no state for the model passed" in str(seen[0].message)


SHARDED = r"""
import json, sys, warnings
import torch, torch.distributed as dist
import envkit
folder, port = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
model = torch.nn.Linear(3, 2)
with envkit.CheckpointManager(folder, project="s", sharded=True, keep_last=None) as mgr:
    first = mgr.save(epoch=0, step=1, model=model)
    second = mgr.save(epoch=0, step=2, model=model)
shard = max(second.glob("__*.distcp"), key=lambda p: p.stat().st_size)
data = bytearray(shard.read_bytes()); data[len(data) // 2] ^= 1; shard.write_bytes(bytes(data))
fresh = torch.nn.Linear(3, 2)
with envkit.CheckpointManager(folder, project="s", sharded=True) as mgr, warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    info = mgr.resume(model=fresh, optimizer=torch.optim.SGD(fresh.parameters(), lr=0.1))
print(json.dumps({"path": info.path.name, "first": first.name, "second": second.name,
                  "warnings": [[w.category.__name__, str(w.message), w.filename] for w in seen
                               if w.category.__name__ in ("CheckpointSkippedWarning", "MissingStateWarning")]}))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_sharded_resume_warns_too(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed.checkpoint")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path / "run"), str(free_port())], check=False, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc["path"] == doc["first"]
    kinds = {name: message for name, message, _ in doc["warnings"]}
    assert set(kinds) == {"CheckpointSkippedWarning", "MissingStateWarning"}, doc
    assert f"resumed from {doc['first']}" in kinds["CheckpointSkippedWarning"] and doc["second"] in kinds["CheckpointSkippedWarning"]
    assert "digest mismatch" in kinds["CheckpointSkippedWarning"]
    assert "holds no state for the optimizer passed" in kinds["MissingStateWarning"] and doc["first"] in kinds["MissingStateWarning"]
    assert all(filename == "<string>" for _, _, filename in doc["warnings"])  # the caller's line, not envkit's
