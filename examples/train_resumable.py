"""A training run that a preemption cannot hurt: CheckpointManager + ResumableRandomSampler.

Run it; kill it with SIGTERM (or SIGUSR1) at any moment; run the same command again.
It saves at the next step boundary, exits with 143 (128 + SIGTERM), and the rerun
continues from that step with the same random streams and data order, so its final
weights are bit-identical to a run that was never interrupted.

    python examples/train_resumable.py --dir runs/exp1 --epochs 4
    python examples/train_resumable.py --dir runs/exp1 --epochs 4 --out final.pt   # after a kill: resumes

``--out`` writes the final model and optimizer state for comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import envkit


def build(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, TensorDataset]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(480, 16, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(480, 1, generator=g) > 0).float()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.7)
    return model, optimizer, scheduler, TensorDataset(x, y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="checkpoint folder (persistent storage)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--every-n-steps", type=int, default=10)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step (to make room for a signal)")
    parser.add_argument("--log-every", type=int, default=1, help="print every Nth step")
    parser.add_argument("--out", type=Path, help="write the final model and optimizer state here")
    parser.add_argument("--async-save", action="store_true", help="save in the background (CheckpointManager(async_save=True))")
    args = parser.parse_args(argv)

    model, optimizer, scheduler, dataset = build()
    sampler = envkit.ResumableRandomSampler(dataset, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers)
    loss_fn = nn.BCEWithLogitsLoss()
    mgr = envkit.CheckpointManager(
        args.dir, project="resumable", keep_last=2, keep_best=1, monitor="loss", every_n_steps=args.every_n_steps,
        async_save=args.async_save,
    )
    info = mgr.resume(model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler)
    step = info.step if info else 0
    if info:
        print(f"resumed from {info.path.name} at epoch {info.epoch}, step {info.step}", flush=True)
    mgr.handle_signals()

    for epoch in range(info.epoch if info else 0, args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % args.log_every == 0:
                print(f"step {step} epoch {epoch} loss {loss.item():.5f}", flush=True)
            mgr.save(epoch=epoch, step=step, metrics={"loss": loss.item()}, model=model, optimizer=optimizer,
                     scheduler=scheduler, sampler=sampler)
            if mgr.should_stop:
                print(f"stopping at step {step} after saving (signal {mgr.stop_signal})", flush=True)
                mgr.close()
                return mgr.exit_code
            if args.step_delay:
                time.sleep(args.step_delay)
    mgr.save(epoch=args.epochs, step=step, metrics={"loss": loss.item()}, model=model, optimizer=optimizer,
             scheduler=scheduler, sampler=sampler, force=True)
    if args.out:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, args.out)
    print(f"done at step {step}", flush=True)
    mgr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
