"""envkit for the Hugging Face Trainer: stamp every ``checkpoint-<step>/``, guard the resume.

    from envkit.integrations.transformers import EnvkitTrainerCallback, guard_resume

    trainer = Trainer(..., callbacks=[EnvkitTrainerCallback()])
    trainer.train(resume_from_checkpoint=guard_resume(args.output_dir))  # on a restart

Where each part sits in the Trainer's own order (transformers 4.30 to 5.x):

- ``_maybe_log_save_evaluate`` calls ``_save_checkpoint`` (model, optimizer, scheduler, scaler,
  RNG, ``trainer_state.json``, then ``rotate_checkpoints`` of older folders) and only then the
  ``on_save`` event: the callback stamps a complete folder that rotation has already left alone.
  ``envkit.json``, written last and atomically, is the commit marker: a folder without it is an
  interrupted save (or the process died between the Trainer's save and the stamp).
- ``train(resume_from_checkpoint=...)`` loads the weights before ``accelerator.prepare`` and the
  optimizer and scheduler before any event: no callback can refuse first. ``guard_resume`` does,
  before ``train()`` is called.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

from envkit.errors import MissingExtra

if importlib.util.find_spec("transformers") is None:
    raise MissingExtra("envkit.integrations.transformers needs transformers; install it with `pip install 'envkit[transformers]'`")

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from envkit.checkpoint.folder import stamp_folder
from envkit.integrations.resume import guard_resume

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from envkit.checkpoint.stamp import Stamp
    from envkit.policy import Policy

__all__ = ["EnvkitTrainerCallback", "guard_resume", "checkpoint_meta"]

PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


def checkpoint_meta(state: TrainerState) -> dict[str, Any]:
    """What the stamp's meta holds for a Trainer checkpoint: step, the epochs completed (``epoch``, an
    int as envkit's meta has it) and the Trainer's fractional epoch, the best metric so far."""
    meta: dict[str, Any] = {"step": int(state.global_step)}
    if state.epoch is not None:  # the Trainer's epoch is fractional (1.5: half-way through the second)
        meta["epoch"] = int(math.floor(state.epoch))
        meta["epoch_progress"] = float(state.epoch)
    if state.best_metric is not None:
        meta["metrics"] = {"best_metric": float(state.best_metric)}
    if state.best_model_checkpoint:
        meta["best_checkpoint"] = os.path.basename(str(state.best_model_checkpoint))
    return meta


def _barrier() -> None:
    """Every rank writes its ``rng_state_<rank>.pth`` (and, under FSDP, its shards) before ``on_save``
    and without a barrier: wait for them all before the stamp lists the folder's files."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class EnvkitTrainerCallback(TrainerCallback):
    """Stamps each ``checkpoint-<step>/`` the Trainer saves: ``envkit.json`` with the fingerprint, the
    meta (step, epoch, best metric) and every file's digest, written last. Only the process that
    saves (``args.should_save``: the main process, or each node's with ``save_on_each_node``) writes.

    ``policy`` is kept for ``guard_resume(trainer.args.output_dir, callback.policy)``; saving never
    refuses.
    """

    def __init__(self, policy: Policy | str | None = None) -> None:
        self.policy = policy
        self.last: Stamp | None = None

    def folder(self, args: TrainingArguments, state: TrainerState) -> Path | None:
        """Where ``_save_checkpoint`` wrote this step's folder (``run_dir`` is ``args.output_dir``
        outside a hyperparameter search)."""
        return Path(args.output_dir) / f"{PREFIX}-{state.global_step}" if args.output_dir else None

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        if getattr(args, "world_size", 1) > 1:
            _barrier()
        folder = self.folder(args, state)
        if args.should_save and folder is not None and folder.is_dir():  # a hyperparameter search trial saves under its own run dir
            self.last = stamp_folder(folder, meta=checkpoint_meta(state), framework="transformers")
        return control
