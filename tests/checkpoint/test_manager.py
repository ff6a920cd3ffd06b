from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

import envkit  # noqa: E402
from envkit.checkpoint.directory import INDEX_NAME, CheckpointInfo, retention_plan  # noqa: E402
from envkit.cli import main as cli  # noqa: E402


def tiny() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def save_steps(mgr: envkit.CheckpointManager, steps: list[int], losses: list[float] | None = None) -> list[Path]:
    model, opt = tiny()
    paths = []
    for i, step in enumerate(steps):
        loss = losses[i] if losses else 1.0 / step
        paths.append(mgr.save(epoch=step // 10, step=step, metrics={"val_loss": loss}, model=model, optimizer=opt))
    return paths


def test_fresh_start_returns_none(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p") as mgr:
        model, opt = tiny()
        assert mgr.resume(model=model, optimizer=opt) is None
        assert mgr.latest() is None and mgr.best() is None and mgr.list() == []


def test_default_names_and_keep_last(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="exp", keep_last=2, keep_best=0) as mgr:
        save_steps(mgr, [1, 2, 3, 4])
        names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["exp_0000_00000003.pth", "exp_0000_00000004.pth"]


def test_best_is_never_deleted(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=1, keep_best=1, monitor="val_loss") as mgr:
        save_steps(mgr, [1, 2, 3, 4], losses=[0.5, 0.1, 0.3, 0.4])
        assert mgr.best().step == 2
        assert sorted(i.step for i in mgr.list()) == [2, 4]
    with envkit.CheckpointManager(tmp_path / "max", project="p", keep_last=1, monitor="acc", mode="max") as mgr:
        model, opt = tiny()
        for step, acc in [(1, 0.9), (2, 0.5), (3, 0.6)]:
            mgr.save(epoch=0, step=step, metrics={"acc": acc}, model=model)
        assert mgr.best().step == 1 and mgr.latest().step == 3


def test_retention_plan_is_pure_and_protects_newest_and_best() -> None:
    infos = [CheckpointInfo(Path(f"/x/{s}.pth"), 0, s, {"loss": loss}) for s, loss in [(1, 0.1), (2, 0.9), (3, 0.8)]]
    keep, delete = retention_plan(infos, keep_last=0, keep_best=0, monitor="loss", mode="min")
    assert keep == {Path("/x/3.pth"), Path("/x/1.pth")} and delete == {Path("/x/2.pth")}
    keep, delete = retention_plan(infos, keep_last=None, keep_best=1, monitor=None, mode="min")
    assert delete == set()


def test_latest_is_by_step_not_mtime_and_skips_corrupt(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None) as mgr:
        paths = save_steps(mgr, [5, 10, 15])
        os.utime(paths[0], (2_000_000_000, 2_000_000_000))  # the oldest looks newest by mtime
        assert mgr.latest().step == 15
        data = bytearray(paths[2].read_bytes())
        data[len(data) // 3] ^= 0x10
        paths[2].write_bytes(bytes(data))
        assert mgr.latest().step == 10
        paths[1].write_bytes(paths[1].read_bytes()[:100])  # truncated
        assert mgr.latest().step == 5
        listed = mgr.list()  # the truncated file has no readable stamp: listed first, with its problem
        assert [(i.step, i.valid) for i in listed] == [(None, False), (5, True), (15, False)]
        assert "damaged or truncated" in listed[0].problem


def test_latest_works_without_the_index(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None) as mgr:
        save_steps(mgr, [1, 2])
        (tmp_path / INDEX_NAME).write_text("{not json")
        assert mgr.latest().step == 2
        (tmp_path / INDEX_NAME).unlink()
        assert mgr.latest().step == 2



def test_latest_in_a_fresh_process_imports_neither_torch_nor_the_fingerprint_schema(tmp_path: Path) -> None:
    """What keeps a start-up latest() fast: the winner's stamp is verified, its fingerprint never parsed."""
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None) as mgr:
        save_steps(mgr, [1, 2, 3])
    code = (
        "import sys\nfrom pathlib import Path\nfrom envkit.checkpoint.directory import find_latest\n"
        "info = find_latest(Path(sys.argv[1]), 'p')\n"
        "print(info.step, info.valid, *(m in sys.modules for m in ('torch', 'envkit.fingerprint.schema', 'typing', 'click')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "True", "False", "False", "False", "False"]

def test_resume_restores_state_and_rng(tmp_path: Path) -> None:
    import random

    import numpy as np

    model, opt = tiny()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    with envkit.CheckpointManager(tmp_path, project="p") as mgr:
        mgr.save(epoch=1, step=7, metrics={"val_loss": 0.3}, model=model, optimizer=opt, scheduler=sched, extra={"note": "x"})
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    fresh, fresh_opt = tiny()
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=1, gamma=0.5)
    random.random(), np.random.rand(), torch.rand(5)  # move every stream on
    with envkit.CheckpointManager(tmp_path, project="p") as mgr:
        info = mgr.resume(model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert (info.epoch, info.step, info.metrics, info.extra) == (1, 7, {"val_loss": 0.3}, {"note": "x"})
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_sched.state_dict()["last_epoch"] == 1 and fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_ddp_prefix_either_way(tmp_path: Path) -> None:
    model, _ = tiny()

    class Wrapped(torch.nn.Module):  # what DDP looks like from the outside: .module
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.module = inner

    with envkit.CheckpointManager(tmp_path / "a", project="p") as mgr:
        mgr.save(epoch=0, step=1, model=Wrapped(model))
    plain, _ = tiny()
    torch.nn.init.zeros_(plain.weight)
    with envkit.CheckpointManager(tmp_path / "a", project="p") as mgr:
        mgr.resume(model=plain)
    assert torch.equal(plain.weight, model.weight)
    # a checkpoint whose keys carry "module." (saved by hand from a DDP model) loads into a plain module
    from envkit.checkpoint.training_state import load_model_state

    target, _ = tiny()
    torch.nn.init.zeros_(target.weight)
    load_model_state(Wrapped(target), {f"module.{k}": v for k, v in model.state_dict().items()})
    assert torch.equal(target.weight, model.weight)


def test_second_writer_fails_fast(tmp_path: Path) -> None:
    code = (
        "import sys, envkit\n"
        "try:\n    envkit.CheckpointManager(sys.argv[1], project='p')\n"
        "except envkit.CheckpointDirLocked as e:\n    print(e); sys.exit(2)\n"
    )
    with envkit.CheckpointManager(tmp_path, project="p"):
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "another writer" in done.stdout and str(os.getpid()) in done.stdout
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0  # released on close


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".p_0000_00000001.pth.tmp-{dead}"
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    alive = tmp_path / f".other.pth.tmp-{os.getppid()}"
    alive.write_bytes(b"someone else is writing")
    with envkit.CheckpointManager(tmp_path, project="p") as mgr:
        assert mgr.removed_temp_files == [stale]
    assert not stale.exists() and alive.exists()


def test_tmpfs_or_tmp_warns(tmp_path: Path) -> None:
    target = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    with pytest.warns(envkit.EphemeralDirectoryWarning, match="may not survive a reboot"):
        mgr = envkit.CheckpointManager(target / f"envkit-test-{os.getpid()}", project="p")
    mgr.close()
    import shutil

    shutil.rmtree(target / f"envkit-test-{os.getpid()}", ignore_errors=True)


def test_every_n_steps_and_metric_template(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", every_n_steps=5, keep_last=None,
                                  filename="{project}_{step}_{val_loss:.2f}.pth") as mgr:
        model, _ = tiny()
        saved = [mgr.save(epoch=0, step=s, metrics={"val_loss": s / 10}, model=model) for s in range(1, 11)]
    assert [p.name for p in saved if p] == ["p_5_0.50.pth", "p_10_1.00.pth"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filename": "../escape_{step}.pth"}, "plain file name"),
        ({"filename": "{project}_{nope!z}.pth"}, "not usable"),
        ({"mode": "median"}, "mode must be"),
        ({"digest": "md5"}, "unknown digest"),
        ({"every_n_steps": 0}, "1 or more"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(envkit.BadInput, match=message):
        envkit.CheckpointManager(tmp_path, project="p", **kwargs)


def test_missing_metric_in_template(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", filename="{project}_{acc}.pth") as mgr:
        with pytest.raises(envkit.BadInput, match="metric 'acc'"):
            mgr.save(epoch=0, step=1, metrics={"loss": 1.0})
    assert list(tmp_path.glob("*.pth")) == []


def test_ls_and_verify_commands(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None) as mgr:
        paths = save_steps(mgr, [1, 2])
    data = bytearray(paths[0].read_bytes())
    data[200] ^= 0x01
    paths[0].write_bytes(bytes(data))
    runner = CliRunner()
    result = runner.invoke(cli, ["ls", "--json", str(tmp_path)])
    doc = json.loads(result.stdout)
    assert result.exit_code == 0
    assert [(r["step"], r["valid"], r["verdict"]) for r in doc["checkpoints"]] == [(1, False, "ok"), (2, True, "ok")]
    assert all(r["environment_digest"].startswith("sha256:") for r in doc["checkpoints"])
    human = runner.invoke(cli, ["ls", str(tmp_path)])
    assert "NO" in human.stdout and "digest mismatch" in human.stdout
    result = runner.invoke(cli, ["verify", *map(str, paths)])
    assert result.exit_code == 1 and "CORRUPT" in result.stdout and str(paths[0]) in result.stdout
    result = runner.invoke(cli, ["ls", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not a folder" in result.stderr


def test_files_added_behind_the_managers_back_are_seen(tmp_path: Path) -> None:
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=None) as mgr:
        save_steps(mgr, [1, 2, 3])
        assert mgr.latest().step == 3  # from the order file
        envkit.save({"x": 1}, tmp_path / "p_by_hand.pth", meta={"epoch": 0, "step": 9, "project": "p"})
        assert mgr.latest().step == 9  # the folder no longer matches the order file: scanned
        (tmp_path / "p_by_hand.pth").unlink()
        paths = sorted(tmp_path.glob("p_0000_*.pth"))
        paths[-1].write_bytes(paths[0].read_bytes())  # rewritten in place: same name, an older stamp
        assert mgr.latest().step == 2


