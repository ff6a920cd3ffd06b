"""examples/train_ddp.py on 2 real gloo ranks: SIGTERM to one rank stops both at one step; resume is exact."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.distributed.helpers import ROOT, free_port, rank_env, run_ranks  # noqa: E402

TRAIN = ROOT / "examples" / "train_ddp.py"


def launch(world: int, *args: str) -> list:
    """What torchrun does for one node: env:// with RANK, WORLD_SIZE, MASTER_ADDR/PORT per rank."""
    port = str(free_port())
    envs = [
        rank_env({"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        for r in range(world)
    ]
    return run_ranks([[sys.executable, str(TRAIN), *args] for _ in range(world)], envs)


def stopped_at(stdout: str) -> int | None:
    lines = [line for line in stdout.splitlines() if " stopping at step " in line]
    return int(lines[0].split(" stopping at step ")[1].split()[0]) if lines else None


def assert_same_state(a: Path, b: Path) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa["step"] == sb["step"]
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert len(sa["optimizer"]["state"]) == len(sb["optimizer"]["state"]) > 0
    assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]
    for key, pa in sa["optimizer"]["state"].items():
        assert all(torch.equal(pa[n], sb["optimizer"]["state"][key][n]) for n in pa), key


COMMON = ["--epochs", "1", "--every-n-steps", "4"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 2-rank run; sharded or not, the training math is the same."""
    folder = tmp_path_factory.mktemp("whole")
    whole = launch(2, "--dir", str(folder / "run"), "--out", str(folder / "whole.pt"), *COMMON)
    assert all(r.returncode == 0 for r in whole), whole[0].stderr[-2000:]
    return folder / "whole.pt"


@pytest.mark.slow
@pytest.mark.parametrize(("sharded", "async_save"), [(False, False), (True, False), (False, True), (True, True)],
                         ids=["replicated", "sharded", "replicated-async", "sharded-async"])
def test_sigterm_to_one_rank_stops_both_at_one_step_and_resume_is_bit_identical(tmp_path: Path, sharded: bool, async_save: bool,
                                                                                 uninterrupted: Path) -> None:
    """async_save: the step-4 save is written in the background while DDP's all-reduces of steps 5 and 6 run."""
    common = COMMON + (["--sharded"] if sharded else []) + (["--async-save"] if async_save else [])
    first = launch(2, "--dir", str(tmp_path / "run"), "--stop-at-step", "6", "--stop-rank", "1", *common)
    for r in first:
        assert r.returncode == 128 + signal.SIGTERM, r.stderr[-2000:]
        assert stopped_at(r.stdout) == 6, r.stdout[-1000:]
    assert "(signal 15)" in first[0].stdout  # rank 0 never got the signal, and knows which one stopped the job
    names = sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith("."))
    assert names[-1] == "ddp_0000_00000006" + (".dcp" if sharded else ".pth"), names
    second = launch(2, "--dir", str(tmp_path / "run"), "--out", str(tmp_path / "resumed.pt"), *common)
    assert all(r.returncode == 0 for r in second), second[1].stderr[-2000:]
    assert "resumed from " in second[0].stdout and "step 6" in second[0].stdout
    assert_same_state(tmp_path / "resumed.pt", uninterrupted)
