"""Replicated (DDP) checkpoints keep every rank's RNG: ranks seeded seed + rank resume their own streams."""

from __future__ import annotations

import signal
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import envkit  # noqa: E402
from envkit.checkpoint.training_state import capture_rng, restore_rng  # noqa: E402
from tests.distributed.test_ddp_resume import COMMON, assert_same_state, launch, stopped_at  # noqa: E402

SEEDED = COMMON + ["--seed-per-rank", "7"]


def same_rng(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["python"] == b["python"] and a["numpy"] == b["numpy"] and torch.equal(a["torch"], b["torch"])


@pytest.fixture(scope="module")
def seeded_whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seeded")
    whole = launch(2, "--dir", str(folder / "run"), "--out", str(folder / "whole-{rank}.pt"), *SEEDED)
    assert all(r.returncode == 0 for r in whole), whole[0].stderr[-2000:]
    return folder


@pytest.fixture(scope="module")
def seeded_stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run SIGTERMed (rank 1 only) after step 6; its checkpoint folder."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    first = launch(2, "--dir", str(run), "--stop-at-step", "6", "--stop-rank", "1", *SEEDED)
    for r in first:
        assert r.returncode == 128 + signal.SIGTERM, r.stderr[-2000:]
        assert stopped_at(r.stdout) == 6, r.stdout[-1000:]
    return run


@pytest.mark.slow
def test_checkpoint_holds_every_ranks_rng_and_loads_weights_only(seeded_stopped: Path) -> None:
    path = seeded_stopped / "ddp_0000_00000006.pth"
    state = envkit.load(path)  # weights_only=True
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert same_rng(state["rng"], state["rng_ranks"][0])
    assert not same_rng(state["rng_ranks"][0], state["rng_ranks"][1])  # seed + rank: the streams differ


@pytest.mark.slow
def test_sigterm_resume_is_bit_identical_on_every_rank_with_per_rank_seeds(tmp_path: Path, seeded_whole: Path,
                                                                            seeded_stopped: Path) -> None:
    run = tmp_path / "run"
    import shutil

    shutil.copytree(seeded_stopped, run)
    second = launch(2, "--dir", str(run), "--out", str(tmp_path / "resumed-{rank}.pt"), *SEEDED)
    assert all(r.returncode == 0 for r in second), second[1].stderr[-2000:]
    assert "step 6" in second[0].stdout
    for rank in (0, 1):
        resumed, whole = tmp_path / f"resumed-{rank}.pt", seeded_whole / f"whole-{rank}.pt"
        assert_same_state(resumed, whole)
        assert same_rng(torch.load(resumed, weights_only=True)["rng"], torch.load(whole, weights_only=True)["rng"]), rank
    ends = [torch.load(seeded_whole / f"whole-{r}.pt", weights_only=True)["rng"] for r in (0, 1)]
    assert not same_rng(ends[0], ends[1])


@pytest.mark.slow
def test_other_world_size_restores_rank0_rng_and_warns(tmp_path: Path, seeded_stopped: Path) -> None:
    """One process resuming what 2 ranks saved: rank 0's random state, and a RankRngWarning."""
    import shutil

    shutil.copytree(seeded_stopped, tmp_path / "run")
    saved = envkit.load(tmp_path / "run" / "ddp_0000_00000006.pth")["rng_ranks"]
    mine = capture_rng()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", envkit.EphemeralDirectoryWarning)
            with envkit.CheckpointManager(tmp_path / "run", project="ddp") as mgr, pytest.warns(envkit.RankRngWarning, match="2 ranks"):
                info = mgr.resume()
        assert info is not None and info.step == 6
        assert same_rng(capture_rng(), saved[0])
    finally:
        restore_rng(mine)
