"""Real processes, real signals, real fsync: a run killed at any moment loses nothing."""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import envkit  # noqa: E402
from envkit.checkpoint import hashing  # noqa: E402
from envkit.errors import CheckpointWriteError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "train_resumable.py"
KILLS = 50


def _save_forever(folder: str, state_model: torch.nn.Module, opt: torch.optim.Optimizer, async_save: bool = False) -> None:
    """Child: save checkpoints as fast as it can until it is killed (async_save: in the background, so most
    kills land while the background thread writes, commits or deletes).

    It runs no tensor math: after fork, OpenMP's thread pool from the parent can hang it.
    """
    if async_save:
        torch.set_num_threads(1)  # staging copies tensors: in one thread, not in the parent's OpenMP pool
    mgr = envkit.CheckpointManager(folder, project="stress", keep_last=2, keep_best=0, async_save=async_save)
    latest = mgr.latest()
    step = latest.step if latest else 0
    while True:
        step += 1
        mgr.save(epoch=0, step=step, metrics={"loss": 1.0 / step}, model=state_model, optimizer=opt)


def _assert_folder_whole(folder: Path) -> int:
    for path in folder.glob("*.pth"):  # every file under a final name is whole
        assert envkit.verify(path).ok, envkit.verify(path).problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mgr = envkit.CheckpointManager(folder, project="stress")
    try:
        latest = mgr.latest()
        assert latest is not None and latest.valid
        state = torch.load(latest.path, weights_only=True)
        assert state["step"] == latest.step
        return latest.step
    finally:
        mgr.close()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_kill_9_at_random_moments_never_loses_the_latest_checkpoint(tmp_path: Path, async_save: bool) -> None:
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(2026 + async_save)
    kills = KILLS if not async_save else KILLS // 2
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 256))  # ~1.5 MB with Adam state
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 256)).sum().backward()
    opt.step()
    steps = []
    for _ in range(kills):
        child = ctx.Process(target=_save_forever, args=(str(tmp_path), model, opt, async_save), daemon=True)
        child.start()
        time.sleep(0.15 + rng.random() * 0.35)  # the first save lands in ~0.1 s; kill anywhere after
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        if any(tmp_path.glob("*.pth")):
            steps.append(_assert_folder_whole(tmp_path))
    assert len(steps) >= kills - 5, "the children hardly ever saved: the test proved nothing"
    assert steps == sorted(steps), "latest() went backwards after a kill"


@pytest.fixture
def small_filesystem(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 3 MiB tmpfs, so a save really runs out of space (needs root and mount)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def test_real_enospc_midway_keeps_earlier_checkpoints(small_filesystem: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", envkit.EphemeralDirectoryWarning)
        mgr = envkit.CheckpointManager(small_filesystem, project="p", keep_last=None)
    small = torch.nn.Linear(64, 64)
    first = mgr.save(epoch=0, step=1, model=small)
    before = first.read_bytes()
    big = torch.nn.Linear(1024, 1024)  # 4 MiB of weights: cannot fit
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        mgr.save(epoch=0, step=2, model=big)
    assert first.read_bytes() == before and envkit.verify(first).ok
    leftovers = sorted(p.name for p in small_filesystem.iterdir() if not p.name.startswith(".envkit"))
    assert leftovers == [first.name]  # the temporary file is gone
    assert mgr.latest().step == 1
    mgr.close()


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_injected_write_error_midway_keeps_earlier_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """EIO cannot be provoked on demand here: the failing write is injected into the writer."""
    mgr = envkit.CheckpointManager(tmp_path, project="p", keep_last=None)
    model = torch.nn.Linear(128, 128)
    first = mgr.save(epoch=0, step=1, model=model)
    before = first.read_bytes()
    real_write = hashing.HashingWriter._write

    def failing_write(self: hashing.HashingWriter, data: object) -> int:
        if self.position > 20_000:
            raise OSError(code, os.strerror(code))
        return real_write(self, data)

    monkeypatch.setattr(hashing.HashingWriter, "_write", failing_write)
    with pytest.raises(CheckpointWriteError, match=os.strerror(code)):
        mgr.save(epoch=0, step=2, model=model)
    monkeypatch.undo()
    assert first.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".envkit")) == [first.name]
    assert mgr.latest().step == 1
    mgr.close()


def _train(folder: Path, out: Path | None = None, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(TRAIN), "--dir", str(folder), "--epochs", "3", "--every-n-steps", "7", *extra]
    if out is not None:
        cmd += ["--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_same_final_state(a: Path, b: Path) -> None:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert x["step"] == y["step"]
    for key, tensor in x["model"].items():
        assert torch.equal(tensor, y["model"][key]), key
    for index, state in x["optimizer"]["state"].items():
        for key, value in state.items():
            other = y["optimizer"]["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, key)
    assert x["optimizer"]["param_groups"] == y["optimizer"]["param_groups"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path: Path, workers: int) -> None:
    reference = _train(tmp_path / "reference", tmp_path / "reference.pt", "--workers", str(workers))
    assert reference.wait(180) == 0, reference.stderr.read()

    rng = random.Random(workers)
    stop_at = rng.randrange(35, 55)  # 30 steps an epoch: somewhere inside the second epoch
    run = _train(tmp_path / "run", None, "--workers", str(workers), "--step-delay", "0.01")
    assert run.stdout is not None
    for line in run.stdout:
        if line.startswith(f"step {stop_at} "):
            run.send_signal(signal.SIGTERM)
            run.send_signal(signal.SIGTERM)  # a second signal, while it may be saving
            break
    rest = run.communicate(timeout=180)[0]
    assert run.returncode == 128 + signal.SIGTERM, rest
    stopped = int(rest.strip().splitlines()[-1].split()[3])
    assert stopped >= stop_at

    resumed = _train(tmp_path / "run", tmp_path / "resumed.pt", "--workers", str(workers))
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    assert out.splitlines()[0].endswith(f"step {stopped}")
    _assert_same_final_state(tmp_path / "reference.pt", tmp_path / "resumed.pt")
