"""CheckpointManager: the resumable training loop's checkpoints, that cannot lose work (docs/architecture.md).

    mgr = CheckpointManager("runs/exp1", project="exp1", keep_last=3, keep_best=1, monitor="val_loss")
    info = mgr.resume(model=model, optimizer=opt, scheduler=sched, sampler=sampler)
    mgr.handle_signals()
    for epoch in range(info.epoch if info else 0, epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            ...
            mgr.save(epoch=epoch, step=step, metrics=..., model=model, optimizer=opt, sampler=sampler)
            if mgr.should_stop:
                sys.exit(mgr.exit_code)

A checkpoint is the state right after the step given to ``save``. Saves are atomic and
stamped; old checkpoints are deleted only once the new one is durable, and the newest
and the best never are. Signals only set a flag: the save happens at the next step
boundary, never inside the handler.

Under torch.distributed (a process group initialised before the manager is made), every
rank makes a manager on the same folder and calls the same methods in the same order:
``save``, ``resume`` and ``should_stop`` are then collectives. Only rank 0 takes the lock,
writes replicated (DDP) state and applies retention; each save ends when every rank knows
it is durable (or every rank raises its error). ``save`` and ``should_stop`` agree on a
stop across ranks, so a SIGTERM that reaches one rank stops all of them after the same
step. ``resume`` loads, on every rank, the checkpoint rank 0 chose. The ranks' environments
are compared (``envkit.distributed.check_consistency``) on resume and before the first save.

With ``async_save=True`` a ``save`` returns once the state is copied to CPU memory, and one
background thread writes and commits it (background.py): at most one save in flight, its
error raised at the next ``save``, ``wait`` or ``close``; retention runs on the caller's
thread when it is collected; a stop's save is synchronous. Distributed, the background thread
runs no collective on ``group``: only rank 0 writes a single-file save, and the ranks agree on
its outcome at the next ``save``/``wait``/``close``; sharded saves use a gloo group of their own.

The manager only orchestrates: where and how checkpoints are written is a ``CheckpointStorage``
(storage.py, sharded.py), the cache and listing are index.py and directory.py, the lock
folder_lock.py, the stop signals stop.py, the saved state state.py.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit import distributed as dist_util
from envkit.checkpoint.background import (
    BackgroundSaver,
    Outcome,
    StagedSave,
    Stager,
    agree,
    lost_save_message,
    warn_once,
)
from envkit.checkpoint.directory import (
    CheckpointInfo,
    apply_retention,
    find_latest,
    find_latest_verified,
    metric_value,
    scan,
    skipped_warning,
    with_validity,
)
from envkit.checkpoint.naming import (
    DEFAULT_FILENAME,
    as_int,
    check_template,
    checkpoint_name,
    save_time,
    uses_time,
)
from envkit.checkpoint.ranks import Ranks
from envkit.checkpoint.stamp import DIGEST_ALGORITHMS, normalise_metrics
from envkit.checkpoint.state import STATE_FORMAT  # noqa: F401 - re-exported (the format name lives in state.py)
from envkit.checkpoint.stop import StopAgreement
from envkit.checkpoint.storage import CheckpointStorage
from envkit.checkpoint.writer import build_meta
from envkit.errors import (
    BackgroundSaveWarning,
    BadInput,
    CheckpointSkippedWarning,
    EphemeralDirectoryWarning,
    warn_at_caller,
)
from envkit.policy import Policy


def _resolve_policy(policy: Policy | str | None) -> Policy:
    """The one line that names where policies are resolved."""
    from envkit.config import resolve_policy

    return resolve_policy(policy)


@dataclass(frozen=True)
class ResumeInfo:
    path: Path
    epoch: int
    step: int
    metrics: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


def open_storage(root: Path, *, sharded: bool, digest: str, ranks: Ranks) -> CheckpointStorage:
    """The storage a manager writes to: decided here, once (a URL: a bucket prefix, ``bucket.ObjectStorage``)."""
    from envkit.checkpoint.urls import is_url

    if is_url(root) and sharded:
        from envkit.checkpoint.bucket_sharded import ShardedObjectStorage

        return ShardedObjectStorage(root, digest=digest, ranks=ranks)
    if is_url(root):
        from envkit.checkpoint.bucket import ObjectStorage

        return ObjectStorage(root, sharded=sharded, digest=digest, ranks=ranks)
    if sharded:
        from envkit.checkpoint.sharded import ShardedFolderStorage

        return ShardedFolderStorage(root, digest=digest, ranks=ranks)
    from envkit.checkpoint.single_file import SingleFileStorage

    return SingleFileStorage(root, digest=digest, ranks=ranks)


class CheckpointManager:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        project: str = "checkpoint",
        keep_last: int | None = 3,
        keep_best: int = 1,
        monitor: str | None = None,
        mode: str = "min",
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        filename: str = DEFAULT_FILENAME,
        policy: Policy | str | None = None,
        digest: str = "xxh3_128",
        group: Any = None,
        sharded: bool = False,
        requeue: bool = False,
        async_save: bool = False,
    ) -> None:
        """``group``: the process group of the ranks that share this folder (default: the world).
        ``sharded``: every rank saves its own shards through torch.distributed.checkpoint
        into a folder per checkpoint. ``requeue``: under SLURM, a SIGUSR1 stop requeues
        the job (``scontrol requeue``) once its checkpoint is durable. ``async_save``: ``save()``
        returns once the state is copied to CPU memory, and a background thread writes and
        commits it (background.py); ``wait()`` for it, and ``close()`` at the end.
        """
        if mode not in ("min", "max"):
            raise BadInput(f"mode must be 'min' or 'max', not {mode!r}")
        if digest not in DIGEST_ALGORITHMS:
            raise BadInput(f"unknown digest {digest!r}; use one of {', '.join(DIGEST_ALGORITHMS)}")
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and value < 1:
                raise BadInput(f"{name} must be 1 or more, not {value}")
        from envkit.checkpoint.urls import as_location

        self.directory = as_location(directory)  # a URL stays one (an ObjectPath)
        self.project, self.keep_last, self.keep_best, self.monitor, self.mode = project, keep_last, keep_best, monitor, mode
        self.every_n_epochs, self.every_n_steps, self.filename = every_n_epochs, every_n_steps, filename
        self.policy, self.digest, self.group, self.sharded, self.requeue = policy, digest, group, sharded, requeue
        self.async_save = async_save
        check_template(filename, project)
        self._fingerprint: Any = None
        self._policy: Policy | None = None
        self._consistent = False
        self.requeued = False
        self.ranks = Ranks.current(group)
        self.distributed, self.rank = self.ranks.distributed, self.ranks.rank
        if sharded and not self.distributed:
            raise BadInput("sharded=True needs an initialised torch.distributed process group; call init_process_group first")
        self.stop = StopAgreement(distributed=self.distributed, group=group)
        self.storage: CheckpointStorage = open_storage(self.directory, sharded=sharded, digest=digest, ranks=self.ranks)
        self.lock = self.storage.lock()
        self._saver: BackgroundSaver | None = None
        self._stager: Stager | None = None
        if async_save:
            self._saver, self._stager = BackgroundSaver(self.directory), Stager()
        self.removed_temp_files: list[Path] = []
        if self.rank == 0:  # the other ranks only read; a second flock on the folder would fail
            self.storage.prepare()
            self.lock.acquire()
            self.removed_temp_files = self.storage.remove_stale()
            if (why := self.storage.ephemeral_warning()) is not None:
                warn_at_caller(why, EphemeralDirectoryWarning)

    # -- life cycle ------------------------------------------------------------------
    def close(self) -> None:
        """Wait for a background save (raising its error), restore the signal handlers, release the folder."""
        try:
            self.wait()
        finally:
            if self._stager is not None:
                self._stager.release()
            self.restore_signals()
            self.lock.release()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:
            self.close()
            return
        try:  # an exception is on its way out already: a background save's error is a warning, not a replacement
            self.close()
        except Exception as error:  # noqa: BLE001
            message = lost_save_message(Outcome(self.directory, None, error))
            warn_at_caller(message.replace("nobody waited for it", "the with block raised"), BackgroundSaveWarning)

    def wait(self) -> Path | None:
        """Block until the background save in flight (``async_save=True``) is committed; returns its path.

        Raises its error (CheckpointWriteError, ...): the earlier checkpoints are untouched. None when no
        save was in flight (and always without ``async_save``). Retention runs here, on this thread.
        Distributed: a collective, like ``save``: every rank calls it at the same point (``save`` and
        ``close`` call it first).
        """
        if self._saver is None:
            return None
        outcome = self._saver.wait()
        if outcome is None:
            return None
        error = outcome.error
        if error is None and outcome.committed is not None and self.rank == 0:
            try:
                self._apply_retention(outcome.committed)
            except Exception as exc:  # noqa: BLE001 - every rank raises it (agree)
                error = exc
        agree(self.ranks, error)
        return outcome.committed

    def _active_policy(self) -> Policy:
        """The policy, resolved once (the project's config is read at the first use, not per resume)."""
        if self._policy is None:
            self._policy = _resolve_policy(self.policy)
        return self._policy

    def _environment(self) -> Any:
        if self._fingerprint is None:
            from envkit.fingerprint import collect

            self._fingerprint = collect()
        return self._fingerprint

    def _check_ranks(self) -> None:
        dist_util.check_consistency(self.group, self._active_policy(), fingerprint=self._environment())
        self._consistent = True

    # -- signals ---------------------------------------------------------------------
    def handle_signals(self, signals: tuple[int, ...] | None = None) -> None:
        """SIGTERM and SIGUSR1 (by default) set ``should_stop``; nothing else happens in the handler."""
        self.stop.install(signals)

    def restore_signals(self) -> None:
        self.stop.restore()

    @property
    def should_stop(self) -> bool:
        """True once a stop signal arrived (SIGTERM, SIGUSR1).

        Distributed: a collective that every rank must read at the same step boundary; it
        is True on every rank as soon as one rank got a signal. Read right after ``save``
        it costs nothing more: it returns what that save agreed (so a stop is always saved
        first; a signal that arrives later is acted on at the next step's save).
        """
        return self.stop.should_stop()

    @property
    def stop_signal(self) -> int | None:
        return self.stop.signal

    @property
    def exit_code(self) -> int:
        """128 + the signal number (143 for SIGTERM); distributed: the agreed signal's, the same on every rank."""
        return self.stop.exit_code

    # -- listing ---------------------------------------------------------------------
    def _ours(self, *, with_unreadable: bool = False) -> list[CheckpointInfo]:
        """This project's checkpoints; with_unreadable adds files whose stamp cannot be read at all."""
        return [
            i
            for i in scan(self.storage)
            if i.project == self.project or (with_unreadable and i.valid is False and i.project is None)
        ]

    def list(self) -> list[CheckpointInfo]:
        """This project's checkpoints (and unreadable files) in the folder, oldest first, each verified."""
        return sorted((with_validity(i) for i in self._ours(with_unreadable=True)), key=lambda i: (i.order_key, i.path.name))

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint that verifies, by the step its stamp records (never by mtime)."""
        return find_latest(self.storage, self.project)

    def best(self) -> CheckpointInfo | None:
        if not self.monitor:
            return None
        scored = [(metric_value(i, self.monitor), i) for i in self._ours()]
        ranked = sorted(((v, i) for v, i in scored if v is not None), key=lambda vi: vi[0], reverse=self.mode == "max")
        for _, info in ranked:
            checked = with_validity(info)
            if checked.valid:
                return checked
        return None

    # -- saving ----------------------------------------------------------------------
    def is_due(self, epoch: int, step: int) -> bool:
        if self.stop.stopping_now or (self.every_n_epochs is None and self.every_n_steps is None):
            return True
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            return True
        return self.every_n_epochs is not None and epoch % self.every_n_epochs == 0

    def save(
        self,
        *,
        epoch: int,
        step: int,
        metrics: Mapping[str, Any] | None = None,
        model: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        sampler: Any = None,
        extra: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> Path | None:
        """Save the state right after ``step``; returns the path, or None when not due.

        Distributed: call it on every rank at every step boundary (``force`` alike on all).
        ``async_save=True``: it first waits for the save in flight (raising its error, and then
        not saving this step), copies the state to CPU memory and returns the path the checkpoint
        will have once the background thread has committed it (``wait()``). A stop's save (after
        SIGTERM/SIGUSR1) is synchronous, durable when it returns, and made even when the save
        before it failed (that failure is then a BackgroundSaveWarning).
        """
        self.stop.agree_for_save()
        where = f"{self.directory}: save()"
        epoch, step = as_int(epoch, "epoch", where), as_int(step, "step", where)
        if not force and not self.is_due(epoch, step):
            return None
        numbers = normalise_metrics(metrics, source=where)  # 0-d tensors and numpy scalars become numbers
        saved_at = save_time()  # once per save: the name's {timestamp}/{time} and the stamp's saved_at
        if self.distributed and uses_time(self.filename):
            saved_at = self.ranks.broadcast(saved_at)  # one name on every rank
        template_name = checkpoint_name(self.filename, numbers, saved_at=saved_at, project=self.project, epoch=epoch, step=step)
        name = self.storage.name_for(template_name)
        meta = build_meta({"epoch": epoch, "step": step, "metrics": numbers, "project": self.project}, self.directory / template_name,
                          saved_at=saved_at)
        fingerprint = self._environment()
        if self.distributed and not self._consistent:
            self._check_ranks()
        parts = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, sampler=sampler)
        if self._saver is not None and self.stop.stopping_now:
            self._wait_before_stop_save()
        elif self._saver is not None:
            self.wait()  # at most one save in flight; its error is raised here
            staged = self._stage(name, epoch=epoch, step=step, metrics=meta["metrics"], extra=extra, parts=parts,
                                 fingerprint=fingerprint, meta=meta)
            if staged is not None:
                self._saver.start(staged)
                return staged.path
        pending = self.storage.write(name, epoch=epoch, step=step, metrics=meta["metrics"],  # as the stamp records them
                                     extra=extra, parts=parts, fingerprint=fingerprint, meta=meta)
        path = self.storage.commit(pending, then=self._apply_retention)
        self._after_stop_save()
        return path

    def _wait_before_stop_save(self) -> None:
        """A stop's save waits for the one in flight; if that failed, the stop's own save is still made (a
        preemption must not lose it): the earlier failure is a warning, not an error that would skip it."""
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001 - every rank gets the same agreed error, and warns alike
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            warn_at_caller(f"{self.directory}: the background save before this stop failed ({reason}); the stop's "
                           "checkpoint is saved now, synchronously", BackgroundSaveWarning)

    def _stage(self, name: str, **save: Any) -> StagedSave | None:
        """The staged background save; None: save synchronously (a stop's final save, a storage that cannot)."""
        if self.stop.stopping_now:
            return None  # a signal that came while save() waited for the one in flight: this save is the stop's, durable on return
        stage = getattr(self.storage, "stage", None)
        if stage is None:
            warn_once(f"stage:{type(self.storage).__name__}", f"{self.directory}: {type(self.storage).__name__} cannot "
                      "save in the background; async_save=True saves synchronously")
            return None
        assert self._stager is not None
        staged: StagedSave | None = stage(name, **save, stager=self._stager)
        return staged

    def _after_stop_save(self) -> None:
        """Under SLURM, with requeue on, a SIGUSR1 stop requeues the job once its checkpoint is durable."""
        if self.requeue and not self.requeued and self.stop_signal == getattr(signal, "SIGUSR1", None):
            from envkit.checkpoint.slurm import requeue_after_stop

            self.requeued = requeue_after_stop(self.rank)

    def _apply_retention(self, just_saved: Path) -> None:
        apply_retention(self.storage, self.project, self.storage.delete, keep_last=self.keep_last, keep_best=self.keep_best,
                        monitor=self.monitor, mode=self.mode, just_saved=just_saved)

    # -- resuming --------------------------------------------------------------------
    def resume(
        self,
        *,
        model: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        sampler: Any = None,
        map_location: Any = None,
    ) -> ResumeInfo | None:
        """Restore everything from the newest valid checkpoint; None on a fresh start.

        Runs the guard first (the manager's policy, else the project's), so a checkpoint
        this environment must not resume raises EnvironmentMismatch before unpickling.
        Distributed: the ranks' environments are compared first, then rank 0 picks the
        checkpoint and every rank loads that one. The chosen file is read twice: once to
        verify it (its stamp comes with that read) and once to load it; in a bucket rank 0
        loads the copy its verify kept, so the object crosses the network once.
        """
        self.wait()  # a background save in flight is committed first (and its error raised)
        if self.distributed:
            self._check_ranks()
        with self.storage.verified_copy() as copy:  # a bucket: the object verify streams is loaded from here, not fetched again
            found = find_latest_verified(self.storage, self.project, copy=copy) if self.rank == 0 else None
            if self.rank == 0:
                skipped = skipped_warning(self.storage, self.project, self._ours(with_unreadable=True), found[0] if found else None)
                if skipped is not None:
                    warn_at_caller(skipped, CheckpointSkippedWarning)
            name = self.ranks.broadcast(found[0].path.name if found is not None else None)
            if name is None:
                return None
            file = found[1].info if found is not None else None  # the other ranks read the stamp themselves
            state = self.storage.load(name, policy=self._active_policy(), map_location=map_location, file=file)
        path = self.directory / name
        parts = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, sampler=sampler)
        state.restore(parts, path, rank=self.rank, world=self.ranks.world)
        return ResumeInfo(path, state.epoch, state.step, state.metrics, state.extra)
