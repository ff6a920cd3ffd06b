"""envkit for the Hugging Face Trainer: stamp every ``checkpoint-<step>/``, guard the resume.

    from envkit.integrations.transformers import EnvkitTrainerCallback, guard_resume

    trainer = Trainer(..., callbacks=[EnvkitTrainerCallback()])
    trainer.train(resume_from_checkpoint=guard_resume(args.output_dir))  # on a restart

Where each part sits in the Trainer's own order (read from transformers 5.24's source):

- ``_maybe_log_save_evaluate`` calls ``_save_checkpoint`` (model, optimizer, scheduler, scaler,
  RNG, ``trainer_state.json``, then ``rotate_checkpoints`` of older folders) and only then the
  ``on_save`` event: the callback stamps a complete folder that rotation has already left alone.
  ``envkit.json``, written last and atomically, is the commit marker: a folder without it is an
  interrupted save, or the process died between the Trainer's save and the stamp (the stamp is
  hashed in a thread while training goes on: see ``EnvkitTrainerCallback``).
- ``train(resume_from_checkpoint=...)`` loads the weights before ``accelerator.prepare`` and the
  optimizer and scheduler before any event: no callback can refuse first. ``guard_resume`` does,
  before ``train()`` is called.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from pathlib import Path

from envkit.errors import EnvkitError, MissingExtra

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

    ``background`` (default): ``on_save`` starts the stamp in a thread and training goes on while
    it hashes the files (the GIL is released while they are read and hashed; the Trainer touches a
    saved folder again only to rotate it away). The next ``on_save`` and ``on_train_end`` wait
    for it, and so does the interpreter's exit (not a daemon thread); an error it met is raised
    there. A process killed before the stamp is written leaves that folder unstamped, which
    ``guard_resume`` passes over for the previous one, as it does a folder killed during the
    Trainer's own save. ``background=False``: the stamp is written before ``on_save`` returns.
    ``fsync`` (default on: it costs training nothing in the thread): every file is made durable
    before ``envkit.json``, which the Trainer itself never does; off, a power cut can leave a
    stamp over torn files, which verify (and so ``guard_resume``) then reports corrupt.

    ``policy`` is kept for ``guard_resume(trainer.args.output_dir, callback.policy)``; saving never
    refuses. ``last``: the newest stamp written.
    """

    def __init__(self, policy: Policy | str | None = None, *, background: bool = True, fsync: bool = True) -> None:
        self.policy = policy
        self.background = background
        self.fsync = fsync
        self.last: Stamp | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def folder(self, args: TrainingArguments, state: TrainerState) -> Path | None:
        """Where ``_save_checkpoint`` wrote this step's folder (``run_dir`` is ``args.output_dir``
        outside a hyperparameter search, whose trials are not stamped)."""
        return Path(args.output_dir) / f"{PREFIX}-{state.global_step}" if args.output_dir else None

    def wait(self) -> Stamp | None:
        """Wait for the stamp in flight, if any; raise the error it met; the newest stamp."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self.last

    def _stamp(self, folder: Path, meta: dict[str, Any]) -> None:
        try:
            self.last = stamp_folder(folder, meta=meta, framework="transformers", fsync=self.fsync)
        except (EnvkitError, OSError) as exc:
            if folder.is_dir():  # else rotation removed it meanwhile (save_total_limit=1): nothing to stamp
                self._error = exc

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        self.wait()
        if getattr(args, "world_size", 1) > 1:
            _barrier()
        folder = self.folder(args, state)
        if args.should_save and folder is not None and folder.is_dir():
            meta = checkpoint_meta(state)  # now: the state moves on while the thread hashes
            if self.background:
                self._thread = threading.Thread(target=self._stamp, args=(folder, meta), name=f"envkit-stamp-{folder.name}")
                self._thread.start()
            else:
                self._stamp(folder, meta)
                self.wait()
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        self.wait()  # train() returns with its last checkpoint stamped
        return control
