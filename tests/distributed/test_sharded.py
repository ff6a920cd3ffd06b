"""Sharded saves through torch.distributed.checkpoint on real gloo ranks (2 and 4), a real kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import envkit  # noqa: E402
from tests.distributed.helpers import ROOT, rank_env, run_ranks, worker_commands  # noqa: E402


@pytest.mark.slow
def test_four_ranks_save_sharded_and_resume_exactly_and_refuse_another_world_size(tmp_path: Path) -> None:
    results = run_ranks(worker_commands(4, tmp_path, ["sharded_round_trip", "sharded_other_world"]))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
        doc = r.reports()["sharded_round_trip"]
        assert doc["path"] == "sh_0000_00000002.dcp" and doc["step"] == 2
        assert doc["model"] and doc["optimizer"] and doc["rng"], doc  # rng: each rank got its own back
        assert doc["names"] == ["sh_0000_00000002.dcp"]  # keep_last=1 removed the step-1 folder
    for r in results[:2]:
        other = r.reports()["sharded_other_world"]
        assert other["ok"] is False and other["error"] == "BadInput" and other["exit_code"] == 2
        assert other["message"].endswith("saved by 4 ranks, this job has 2; resume it with 4 ranks")
    folder = tmp_path / "sh" / "sh_0000_00000002.dcp"
    assert {p.name for p in folder.iterdir()} >= {"envkit.json", ".metadata", *(f"rank{r}.pt" for r in range(4))}
    for command in ("verify", "check", "inspect"):
        done = subprocess.run([sys.executable, "-m", "envkit", command, "--json", str(folder)], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        json.loads(done.stdout)
    listed = subprocess.run([sys.executable, "-m", "envkit", "ls", "--json", str(tmp_path / "sh")], capture_output=True, text=True)
    assert listed.returncode == 0 and "sh_0000_00000002.dcp" in listed.stdout
    # a changed shard is found; a folder without its commit marker is not a checkpoint
    # torch 2.0's DCP writes each replicated tensor from rank 0 only (its dedup keeps the first rank),
    # leaving the other ranks' shard files empty; newer torch spreads them: take the largest
    shard = max(folder.glob("__*_0.distcp"), key=lambda p: p.stat().st_size)
    assert shard.stat().st_size > 0
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = subprocess.run([sys.executable, "-m", "envkit", "verify", str(folder)], capture_output=True, text=True)
    assert bad.returncode == 1 and "digest mismatch" in bad.stdout + bad.stderr
    (folder / "envkit.json").unlink()
    gone = subprocess.run([sys.executable, "-m", "envkit", "check", str(folder)], capture_output=True, text=True)
    assert gone.returncode == 2 and "not a committed sharded checkpoint" in gone.stderr and "Traceback" not in gone.stderr


@pytest.mark.slow
def test_kill_9_of_one_rank_during_a_sharded_save_leaves_the_previous_checkpoint_latest(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=rank_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in worker_commands(2, tmp_path, ["sharded_kill"])
    ]
    try:
        assert procs[1].wait(timeout=120) == -signal.SIGKILL, procs[1].stderr.read()[-2000:]
        # what torchrun does when a worker dies: stop the others (rank 0 may still be in a collective)
        if procs[0].poll() is None:
            procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    folder = tmp_path / "k"
    leftovers = [p.name for p in folder.iterdir() if ".tmp-" in p.name]
    assert leftovers, "the interrupted save left no temporary folder: the kill came too late to prove anything"
    with pytest.warns(envkit.errors.EphemeralDirectoryWarning):
        mgr = envkit.CheckpointManager(folder, project="k")
    try:
        latest = mgr.latest()
        assert latest is not None and latest.path.name == "k_0000_00000001.dcp" and latest.valid
        assert [p.name for p in mgr.removed_temp_files] == leftovers  # the dead writer's folder is cleaned up
    finally:
        mgr.close()
    assert envkit.verify(folder / "k_0000_00000001.dcp").ok
