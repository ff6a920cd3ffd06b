"""One rank of a multi-process test: ``worker.py RANK WORLD PORT FOLDER SCENARIO...``.

Joins the others through a TCP store on 127.0.0.1:PORT (gloo), runs each scenario in
order and prints one JSON line per scenario: ``{"scenario": ..., "rank": ..., ...}``.
Started with plain subprocess by tests/distributed/test_*.py, from any Python that can
import torch and envkit (PYTHONPATH names the repository).
"""

from __future__ import annotations

import errno
import faulthandler
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import envkit
from envkit.distributed import check_consistency
from envkit.errors import EnvkitError
from tests.distributed.ending import end_process

warnings.simplefilter("ignore")


def report(scenario: str, **fields: Any) -> None:
    print(json.dumps({"scenario": scenario, "rank": dist.get_rank(), **fields}), flush=True)


def outcome(scenario: str, action: Callable[[], Any]) -> None:
    try:
        value = action()
    except EnvkitError as exc:
        report(scenario, ok=False, error=type(exc).__name__, message=exc.message, exit_code=exc.exit_code)
    else:
        report(scenario, ok=True, value=value)


def consistency(folder: Path) -> None:
    outcome("consistency", lambda: check_consistency().to_json()["world_size"])


def manager_resume(folder: Path) -> None:
    def run() -> Any:
        with envkit.CheckpointManager(folder, project="m") as mgr:
            return repr(mgr.resume(model=torch.nn.Linear(2, 2)))

    outcome("manager_resume", run)


def save_error(folder: Path) -> None:
    """Rank 0's disk fills up mid-save: every rank raises, none waits forever."""
    import envkit.checkpoint.writer as writer_module  # what the single-file storage writes with

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise envkit.errors.CheckpointWriteError(f"{args[1]}: save failed ({os.strerror(errno.ENOSPC)})")

    real = writer_module.write_uncommitted
    if dist.get_rank() == 0:
        writer_module.write_uncommitted = full_disk
    try:
        with envkit.CheckpointManager(folder / "full", project="e") as mgr:
            outcome("save_error", lambda: str(mgr.save(epoch=0, step=1, model=torch.nn.Linear(2, 2))))
    finally:
        writer_module.write_uncommitted = real


def slurm(folder: Path) -> None:
    """SIGUSR1 reaches rank 1 only; both save, only rank 0 requeues, both exit 138."""
    with envkit.CheckpointManager(folder / "slurm", project="s", requeue=True) as mgr:
        mgr.handle_signals()
        if dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        path = mgr.save(epoch=0, step=3, model=torch.nn.Linear(2, 2))
        report("slurm", ok=True, stop=mgr.should_stop, exit_code=mgr.exit_code, saved=path.name, requeued=mgr.requeued,
               latest=mgr.latest().path.name if dist.get_rank() == 0 else None)


def _trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    return model, opt


def sharded_round_trip(folder: Path) -> None:
    """Save twice sharded, resume into fresh objects: equal state, and every rank its own RNG."""
    model, opt = _trained(0)
    torch.manual_seed(100 + dist.get_rank())  # rank-local RNG, as with per-rank seeds
    with envkit.CheckpointManager(folder / "sh", project="sh", sharded=True, keep_last=1) as mgr:
        mgr.save(epoch=0, step=1, model=model, optimizer=opt)
        path = mgr.save(epoch=0, step=2, model=model, optimizer=opt)
        expected_draw = torch.rand(3).tolist()
    fresh, fresh_opt = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2)), None
    fresh_opt = torch.optim.Adam(fresh.parameters())
    with envkit.CheckpointManager(folder / "sh", project="sh", sharded=True) as mgr:
        info = mgr.resume(model=fresh, optimizer=fresh_opt)
        names = sorted(p.name for p in (folder / "sh").iterdir() if not p.name.startswith("."))
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    same_opt = len(opt.state_dict()["state"]) == len(fresh_opt.state_dict()["state"]) == 4 and all(
        torch.equal(x[n], fresh_opt.state_dict()["state"][k][n]) for k, x in opt.state_dict()["state"].items() for n in x
    ) and opt.state_dict()["param_groups"] == fresh_opt.state_dict()["param_groups"]
    report("sharded_round_trip", ok=True, path=path.name, step=info.step, model=same, optimizer=same_opt,
           rng=torch.rand(3).tolist() == expected_draw, names=names)


def sharded_other_world(folder: Path) -> None:
    """Ranks 0 and 1 alone (a 2-rank group) try to resume what 4 ranks saved."""
    sub = dist.new_group([0, 1])
    if dist.get_rank() > 1:
        return
    with envkit.CheckpointManager(folder / "sh", project="sh", sharded=True, group=sub) as mgr:
        outcome("sharded_other_world", lambda: repr(mgr.resume(model=torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2)))))


def sharded_kill(folder: Path) -> None:
    """A good save at step 1; at step 2 rank 1 dies by SIGKILL halfway through writing its shard."""
    model, opt = _trained(0)
    with envkit.CheckpointManager(folder / "k", project="k", sharded=True) as mgr:
        mgr.save(epoch=0, step=1, model=model, optimizer=opt)
        report("sharded_kill", ok=True, saved=1)
        if dist.get_rank() == 1:
            import torch.distributed.checkpoint as dcp

            def die(self: Any, plan: Any, planner: Any) -> Any:
                target = Path(self.path if hasattr(self, "path") else self.checkpoint_id) / "__1_0.distcp"
                with open(target, "wb") as fh:
                    fh.write(b"\0" * 4096)  # a partial shard on disk
                    fh.flush()
                    os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)

            dcp.FileSystemWriter.write_data = die
        mgr.save(epoch=0, step=2, model=model, optimizer=opt)


def timestamp_names(folder: Path) -> None:
    """A {time:...%f} template, sharded: every rank saves under the name rank 0's clock gives (rank 1 starts later)."""
    import time

    with envkit.CheckpointManager(folder / "ts", project="ts", sharded=True, keep_last=None,
                                  filename="{project}_{time:%Y%m%dT%H%M%S%f}_{step}.pth") as mgr:
        if dist.get_rank() == 1:
            time.sleep(0.05)  # another millisecond on this rank's clock than on rank 0's
        path = mgr.save(epoch=0, step=4, model=torch.nn.Linear(2, 2))
        stamp = envkit.read_stamp(path).stamp
        report("timestamp_names", ok=True, name=path.name, saved_at=stamp.meta["saved_at"] if stamp else None)


def _async_run(folder: Path, scenario: str, *, sharded: bool) -> None:
    """Background saves while the loop keeps running collectives (an all_reduce per step, as DDP does): the
    checkpoint of each step holds that step's state, not what the loop made of it afterwards."""
    model, opt = _trained(0)
    torch.manual_seed(100 + dist.get_rank())
    saved: dict[int, dict[str, torch.Tensor]] = {}
    with envkit.CheckpointManager(folder / scenario, project="a", sharded=sharded, keep_last=2, async_save=True) as mgr:
        for step in range(1, 6):
            loss = model(torch.randn(4, 8)).sum()
            loss.backward()
            for p in model.parameters():  # the loop's own collectives, while the previous save is being written
                dist.all_reduce(p.grad)
            opt.step()
            opt.zero_grad()
            mgr.save(epoch=0, step=step, model=model, optimizer=opt)
            saved[step] = {k: v.clone() for k, v in model.state_dict().items()}
            with torch.no_grad():  # changed right after save() returned: the checkpoint must not see it
                for p in model.parameters():
                    p.add_(1000.0)
            dist.barrier()
        expected_draw = torch.rand(3).tolist()
        last = mgr.wait()
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2))
    with envkit.CheckpointManager(folder / scenario, project="a", sharded=sharded) as mgr:
        info = mgr.resume(model=fresh, optimizer=torch.optim.Adam(fresh.parameters()))
        names = sorted(p.name for p in (folder / scenario).iterdir() if not p.name.startswith("."))
    same = all(torch.equal(v, saved[5][k]) for k, v in fresh.state_dict().items())
    report(scenario, ok=True, step=info.step, model=same, names=names, last=last.name if last else None, rng=torch.rand(3).tolist() == expected_draw)


def async_replicated(folder: Path) -> None:
    _async_run(folder, "async_replicated", sharded=False)


def async_sharded(folder: Path) -> None:
    _async_run(folder, "async_sharded", sharded=True)


def async_sharded_mock_of_torch_20(folder: Path) -> None:
    """torch 2.0.1 has no DCP async_save: hidden here, the sharded save is synchronous, with one warning."""
    import torch.distributed.checkpoint as dcp

    hidden = getattr(dcp, "async_save", None)  # torch 2.0.1 itself has none
    if hidden is not None:
        del dcp.async_save
    model, opt = _trained(0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with envkit.CheckpointManager(folder / "old", project="o", sharded=True, async_save=True) as mgr:
                first = mgr.save(epoch=0, step=1, model=model, optimizer=opt)
                durable = (first / "envkit.json").is_file()  # on return: it was not left to a thread
                mgr.save(epoch=0, step=2, model=model, optimizer=opt)
                pending = mgr.wait()
    finally:
        if hidden is not None:
            dcp.async_save = hidden
    messages = [str(w.message) for w in caught if issubclass(w.category, envkit.BackgroundSaveWarning)]
    report("async_sharded_mock_of_torch_20", ok=True, durable=durable, pending=pending.name if pending else None, warnings=messages)


def async_save_error(folder: Path) -> None:
    """Rank 0's background write fails: every rank raises it at the next save, at the same step."""
    import envkit.checkpoint.writer as writer_module

    real = writer_module.write_uncommitted

    def full_disk(*args: Any, **kwargs: Any) -> Any:
        if "00000002" in str(args[1]):
            raise envkit.errors.CheckpointWriteError(f"{args[1]}: save failed ({os.strerror(errno.ENOSPC)})")
        return real(*args, **kwargs)

    if dist.get_rank() == 0:
        writer_module.write_uncommitted = full_disk
    model = torch.nn.Linear(2, 2)
    try:
        with envkit.CheckpointManager(folder / "afull", project="e", async_save=True) as mgr:
            mgr.save(epoch=0, step=1, model=model)
            mgr.save(epoch=0, step=2, model=model)  # fails in the background
            outcome("async_save_error", lambda: str(mgr.save(epoch=0, step=3, model=model)))
            mgr.save(epoch=0, step=4, model=model)
            report("async_save_error_after", ok=True, last=str(mgr.wait()), latest=mgr.latest().step if dist.get_rank() == 0 else None)
    finally:
        writer_module.write_uncommitted = real


SCENARIOS = {
    f.__name__: f
    for f in (consistency, manager_resume, save_error, slurm, sharded_round_trip, sharded_other_world, sharded_kill,
              timestamp_names, async_replicated, async_sharded, async_sharded_mock_of_torch_20, async_save_error)
}


def main() -> int:
    faulthandler.enable()  # an abort (SIGABRT, -6) prints the Python stack it hit, on stderr, which the test shows
    rank, world, port, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for name in sys.argv[5:]:
        SCENARIOS[name](folder)
    return 0


if __name__ == "__main__":
    end_process(main())
