"""DDP training that a preemption cannot hurt: run it under torchrun, SIGTERM any one rank, rerun.

    torchrun --nproc_per_node=2 examples/train_ddp.py --dir runs/ddp --out final.pt

The rank that gets the signal tells the others at the next step boundary (the manager's
``save``/``should_stop`` are collectives under torch.distributed); all ranks save that
step and exit with 143. The same command resumes every rank from the checkpoint rank 0
picks, with the same data order and random streams, so the final weights equal those of
a run that was never interrupted. ``--sharded`` saves through torch.distributed.checkpoint.

Data parallel over one shuffled order: each global batch of ``world * batch_size``
samples comes from one ResumableRandomSampler (the same on every rank) and rank r trains
on rows r, r + world, ... of it, so the sampler state is replicated like the model.
With ``--seed-per-rank`` each rank seeds its random streams with ``seed + rank`` (as is
common for dropout and augmentation); the checkpoint keeps every rank's random state and
each rank resumes its own.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a checkout without installing envkit
    sys.path.insert(0, str(ROOT))

import envkit  # noqa: E402 - after the sys.path insert above


def build(hidden: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR, TensorDataset]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(512, 16, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(512, 1, generator=g) > 0).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.7)
    return model, optimizer, scheduler, TensorDataset(x, y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="checkpoint folder, shared by all ranks")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--every-n-steps", type=int, default=5)
    parser.add_argument("--sharded", action="store_true", help="save through torch.distributed.checkpoint")
    parser.add_argument("--async-save", action="store_true", help="save in the background (CheckpointManager(async_save=True))")
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step (room for a signal)")
    parser.add_argument("--stop-at-step", type=int, help="send SIGTERM to one rank (--stop-rank) after this step")
    parser.add_argument("--stop-rank", type=int, default=1)
    parser.add_argument("--seed-per-rank", type=int, help="seed python, numpy and torch with this + rank after building the model")
    parser.add_argument("--out", type=Path, help="rank 0 writes the final model and optimizer state here; "
                        "a path with {rank} in it: every rank writes its own, with its final random state")
    parser.add_argument("--backend", default="gloo")
    args = parser.parse_args(argv)

    dist.init_process_group(args.backend)  # env://: torchrun (or the caller) sets RANK, WORLD_SIZE, MASTER_*
    rank, world = dist.get_rank(), dist.get_world_size()
    print(f"rank {rank} pid {os.getpid()}", flush=True)
    model, optimizer, scheduler, dataset = build(args.hidden)
    if args.seed_per_rank is not None:  # DDP broadcasts rank 0's weights, so only the random streams differ
        seed = args.seed_per_rank + rank
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            import numpy as np

            np.random.seed(seed)
        except ImportError:
            pass
    ddp = DDP(model)
    sampler = envkit.ResumableRandomSampler(dataset, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size * world, sampler=sampler, drop_last=True)
    loss_fn = nn.BCEWithLogitsLoss()
    mgr = envkit.CheckpointManager(args.dir, project="ddp", keep_last=2, keep_best=0,
                                   every_n_steps=args.every_n_steps, sharded=args.sharded, async_save=args.async_save)
    info = mgr.resume(model=ddp, optimizer=optimizer, scheduler=scheduler, sampler=sampler)
    step = info.step if info else 0
    if info and rank == 0:
        print(f"resumed from {info.path.name} at epoch {info.epoch}, step {info.step}", flush=True)
    mgr.handle_signals()

    loss = torch.zeros(())
    for epoch in range(info.epoch if info else 0, args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(ddp(x[rank::world]), y[rank::world])
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if rank == 0:
                print(f"step {step} epoch {epoch} loss {loss.item():.5f}", flush=True)
            if args.stop_at_step == step and rank == args.stop_rank:
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to this rank only
            mgr.save(epoch=epoch, step=step, metrics={"loss": loss.item()}, model=ddp, optimizer=optimizer,
                     scheduler=scheduler, sampler=sampler)
            if mgr.should_stop:
                print(f"rank {rank} stopping at step {step} after saving (signal {mgr.stop_signal})", flush=True)
                code = mgr.exit_code
                mgr.close()
                dist.barrier()  # leave together: a rank tearing down while another still writes can hang gloo
                dist.destroy_process_group()
                return code
            if args.step_delay:
                time.sleep(args.step_delay)
    mgr.save(epoch=args.epochs, step=step, metrics={"loss": loss.item()}, model=ddp, optimizer=optimizer,
             scheduler=scheduler, sampler=sampler, force=True)
    per_rank = args.out is not None and "{rank}" in str(args.out)
    if args.out and (rank == 0 or per_rank):
        final = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        if per_rank:
            from envkit.checkpoint.training_state import capture_rng

            final["rng"] = capture_rng()
        torch.save(final, str(args.out).replace("{rank}", str(rank)))
    print(f"rank {rank} done at step {step}", flush=True)
    mgr.close()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The process group is destroyed and every file is closed: leave without the interpreter's
    # teardown, where gloo's threads sometimes abort the process ("terminate called without an
    # active exception", about one run in ten here) after a clean run.
    os._exit(code)
