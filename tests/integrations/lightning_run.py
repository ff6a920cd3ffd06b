"""A tiny Lightning training run for tests/integrations/test_lightning.py, in-process or as a script.

    python tests/integrations/lightning_run.py DIR --epochs 4 [--io plugin|callback|none]
        [--hang-at-epoch N | --hang-at-step N] [--every-n-steps K] [--resume CKPT]

Linear 4->2 on a fixed TensorDataset (32 rows, batches of 8, not shuffled), SGD with momentum
(so the optimizer state matters on resume), CPU. ModelCheckpoint writes ``last.ckpt`` (and the
best by ``train_loss``) at every epoch end, or every K steps with ``--every-n-steps``. A hang
point writes ``DIR/ready`` once the checkpoint before it is on disk and then waits for a signal.
The final weights go to ``DIR/final.pt``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 2, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


class _Hang(Callback):
    """Stops the run where a kill should land: after the checkpoint of the previous epoch or step."""

    def __init__(self, root: Path, epoch: int | None, step: int | None) -> None:
        self.root, self.epoch, self.step = root, epoch, step

    def _hang(self, trainer: Any) -> None:
        """Until SIGKILL ends the process, or SIGTERM reaches Lightning's handler: then Lightning
        raises SIGTERMException before the next batch and the process exits 1."""
        (self.root / "ready").write_text("ready")
        while not getattr(trainer, "received_sigterm", False):
            time.sleep(0.05)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.epoch is not None and trainer.current_epoch == self.epoch:
            self._hang(trainer)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.step is not None and trainer.global_step == self.step:
            self._hang(trainer)


def trainer_for(root: Path, epochs: int, *, io: str = "plugin", callbacks: list[Any] | None = None,
                every_n_steps: int | None = None, plugins: list[Any] | None = None, policy: Any = None) -> L.Trainer:
    from envkit.integrations.lightning import EnvkitCallback, EnvkitCheckpointIO

    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", monitor="train_loss", save_last=True,
                                 every_n_train_steps=every_n_steps, save_top_k=-1)
    plugins = list(plugins or [])
    cbs = [checkpoint, *(callbacks or [])]
    if io == "plugin":
        plugins.append(EnvkitCheckpointIO(policy=policy))
    elif io == "callback":
        cbs.append(EnvkitCallback(policy=policy))
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=cbs, plugins=plugins or None,
                     enable_progress_bar=False, logger=False, enable_model_summary=False,
                     default_root_dir=root, deterministic=True)


def run(root: Path, epochs: int, *, io: str = "plugin", resume: str | None = None, hang_at_epoch: int | None = None,
        hang_at_step: int | None = None, every_n_steps: int | None = None) -> dict[str, torch.Tensor]:
    L.seed_everything(0, verbose=False)
    model = Tiny()
    hang = [_Hang(root, hang_at_epoch, hang_at_step)] if hang_at_epoch is not None or hang_at_step is not None else []
    trainer = trainer_for(root, epochs, io=io, callbacks=hang, every_n_steps=every_n_steps)
    trainer.fit(model, loader(), ckpt_path=resume)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(weights, root / "final.pt")
    return weights


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--io", default="plugin", choices=("plugin", "callback", "none"))
    parser.add_argument("--resume")
    parser.add_argument("--hang-at-epoch", type=int)
    parser.add_argument("--hang-at-step", type=int)
    parser.add_argument("--every-n-steps", type=int)
    a = parser.parse_args(argv)
    run(a.root, a.epochs, io=a.io, resume=a.resume, hang_at_epoch=a.hang_at_epoch, hang_at_step=a.hang_at_step,
        every_n_steps=a.every_n_steps)


if __name__ == "__main__":
    main(sys.argv[1:])
