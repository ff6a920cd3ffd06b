"""Both CheckpointStorage implementations, through the protocol alone: write, commit, is-committed,
a crash before the commit (a real one: the writing process exits) leaves nothing listed, load, delete.

The sharded one needs a process group: a real one-rank gloo group, in a subprocess (a group
made in the test process would make every later test distributed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, os, sys
from pathlib import Path
import torch, torch.distributed as dist
from envkit.config import resolve_policy
from envkit.checkpoint.ranks import Ranks
from envkit.checkpoint.manager import open_storage
from envkit.checkpoint.storage import CheckpointStorage
from envkit.checkpoint.writer import build_meta
from envkit.fingerprint import collect

kind, root, store, stage = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
if kind == "sharded":
    dist.init_process_group("gloo", init_method="file://" + store + stage, rank=0, world_size=1)
root.mkdir(exist_ok=True)
storage: CheckpointStorage = open_storage(root, sharded=kind == "sharded", digest="xxh3_128", ranks=Ranks.current())
torch.manual_seed(0)
model = torch.nn.Linear(3, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
model(torch.ones(1, 3)).sum().backward()
opt.step()

def write(step):
    name = storage.name_for(f"p_{step}.pth")
    meta = build_meta({"epoch": 0, "step": step, "metrics": {"loss": 0.5}, "project": "p"}, root / name)
    return name, storage.write(name, epoch=0, step=step, metrics={"loss": 0.5}, extra={"k": step},
                               parts={"model": model, "optimizer": opt}, fingerprint=collect(), meta=meta)

out = {}
if stage == "first":
    name, pending = write(1)
    out["before_commit"] = [storage.list_committed(), storage.is_committed(name)]
    committed_to = []
    path = storage.commit(pending, then=committed_to.append)
    out["after_commit"] = [storage.list_committed(), storage.is_committed(name), path == storage.path_of(name),
                           committed_to == [path]]
    name2, pending2 = write(2)
    out["written_not_committed"] = [sorted(storage.list_committed()), storage.is_committed(name2)]
    storage.abort(pending2)
    out["after_abort"] = sorted(p.name for p in root.iterdir() if not p.name.startswith(".envkit"))
    name3, pending3 = write(3)
    print(json.dumps(out), flush=True)
    os._exit(9)  # a crash between write and commit
if stage == "after_crash":
    name = storage.name_for("p_1.pth")
    out["listed"] = storage.list_committed()
    out["stale_removed"] = [p.name.startswith(".") and ".tmp-" in p.name for p in storage.remove_stale()]
    out["left"] = sorted(p.name for p in root.iterdir() if not p.name.startswith(".envkit"))
    out["stamp"] = [storage.read(name).stamp.meta["step"], storage.read(name).stamp.meta["project"]]
    state = storage.load(name, policy=resolve_policy(None))
    out["state"] = [state.epoch, state.step, dict(state.metrics), dict(state.extra),
                    all(torch.equal(state.model[k], v) for k, v in model.state_dict().items()),
                    state.optimizer["param_groups"][0]["momentum"],
                    all(torch.equal(state.optimizer["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
                        for _ in [0]),
                    state.rng is not None]
    storage.delete(name)
    out["after_delete"] = [storage.list_committed(), storage.is_committed(name), (root / name).exists()]
    print(json.dumps(out), flush=True)
if kind == "sharded":
    dist.destroy_process_group()
"""


def run_stage(tmp_path: Path, kind: str, stage: str) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, kind, str(tmp_path / "ck"), str(tmp_path / "store-"), stage],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert lines, done.stderr[-3000:]
    return done.returncode, json.loads(lines[-1])


@pytest.mark.parametrize("kind", ["single_file", "sharded"])
def test_storage_protocol_commit_crash_load_delete(tmp_path: Path, kind: str) -> None:
    name = "p_1.dcp" if kind == "sharded" else "p_1.pth"
    rc, first = run_stage(tmp_path, kind, "first")
    assert rc == 9  # the writer died between write and commit
    assert first["before_commit"] == [[], False]  # written is not committed: nothing listed
    assert first["after_commit"] == [[name], True, True, True]
    assert first["written_not_committed"] == [[name], False]
    assert first["after_abort"] == [name]  # abort left nothing behind
    rc, later = run_stage(tmp_path, kind, "after_crash")
    assert rc == 0
    assert later["listed"] == [name]  # the crashed write is not a checkpoint
    assert later["stale_removed"] == [True]  # ... and its temporary file or folder is removed
    assert later["left"] == [name]
    assert later["stamp"] == [1, "p"]
    assert later["state"] == [0, 1, {"loss": 0.5}, {"k": 1}, True, 0.9, True, True]
    assert later["after_delete"] == [[], False, False]
