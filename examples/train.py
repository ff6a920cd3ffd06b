"""The usual resumable training loop, made safe with envkit.

It is the loop blog posts teach (save a dict of epoch, model and optimizer state
every epoch; at start-up load the last one and continue from epoch + 1), with
three changes:

- ``envkit.save`` instead of ``torch.save``: atomic, checksummed, stamped with the
  environment that wrote it;
- ``envkit.guard`` before anything is unpickled: refuses a checkpoint this
  environment must not resume (say, written by a newer torch), warns on drift;
- ``envkit.load`` instead of ``torch.load``: verifies the payload digest and loads
  with ``weights_only=True``, onto the CPU when the saving GPU is not here.

    python examples/train.py --ckpt-dir runs/demo --epochs 5
    python examples/train.py --ckpt-dir runs/demo --epochs 8     # resumes at epoch 5

``--as-environment FINGERPRINT.json`` runs the guard as if this process lived in
that environment (the demo uses it to show a resume being refused).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

import envkit
from envkit.fingerprint import read_fingerprint_file

EXIT_REFUSED = 3


def make_data(n: int = 512, features: int = 20, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 1, generator=g)
    y = (x @ w + 0.1 * torch.randn(n, 1, generator=g) > 0).float()
    return x, y


def make_model(features: int = 20) -> nn.Module:
    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 1))


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, loss: float, ckpt_dir: Path, project: str) -> Path:
    state = {
        "epoch": epoch,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": loss,
    }
    meta = {"epoch": epoch, "step": epoch + 1, "metrics": {"loss": loss}}
    path = ckpt_dir / f"{project}_{epoch:03d}_{loss:.4f}.pth"
    envkit.save(state, path, meta=meta)
    envkit.save(state, ckpt_dir / "last.pth", meta=meta)
    return path


def load_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, ckpt_dir: Path, as_environment: Path | None) -> int:
    """Returns the epoch to start from: 0 on a fresh start."""
    path = ckpt_dir / "last.pth"
    if not path.exists():
        return 0
    live = read_fingerprint_file(as_environment) if as_environment else None
    envkit.guard(path, live=live)  # raises EnvironmentMismatch before anything is unpickled
    state = envkit.load(path)
    model.load_state_dict(state["model_state_dict"])
    optimizer.load_state_dict(state["optimizer_state_dict"])
    print(f"resumed from {path} (epoch {state['epoch']}, loss {state['loss']:.4f})")
    return state["epoch"] + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--project", default="demo")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--as-environment", type=Path, help="guard as if running in the environment of this fingerprint JSON")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    args.ckpt_dir.mkdir(parents=True, exist_ok=True)
    x, y = make_data()
    model = make_model(x.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.BCEWithLogitsLoss()

    try:
        start_epoch = load_checkpoint(model, optimizer, args.ckpt_dir, args.as_environment)
    except envkit.EnvironmentMismatch as exc:
        print(f"refusing to resume: {exc}", file=sys.stderr)
        return EXIT_REFUSED

    for epoch in range(start_epoch, args.epochs):
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        path = save_checkpoint(model, optimizer, epoch, loss.item(), args.ckpt_dir, args.project)
        print(f"epoch {epoch}: loss {loss.item():.4f} -> {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
