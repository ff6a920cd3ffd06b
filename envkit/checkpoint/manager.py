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
"""

from __future__ import annotations

import errno
import os
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Mapping

from envkit.checkpoint.directory import (
    LOCK_NAME,
    CheckpointInfo,
    find_latest,
    metric_value,
    retention_plan,
    scan,
    with_validity,
    write_index,
)
from envkit.checkpoint.stamp import DICT_KEY, DIGEST_ALGORITHMS, Stamp, normalise_meta, normalise_metrics
from envkit.checkpoint.paths import TEMP_MARK, is_temp_name
from envkit.checkpoint.writer import build_meta, fsync_dir, write_stamped
from envkit import distributed as dist_util
from envkit.errors import (
    BadInput,
    CheckpointDirLocked,
    CheckpointSkippedWarning,
    CheckpointWriteError,
    EphemeralDirectoryWarning,
    MissingStateWarning,
    RankRngWarning,
)
from envkit.policy import Policy

DEFAULT_FILENAME = "{project}_{epoch:04d}_{step:08d}.pth"
STATE_FORMAT = "envkit.training/1"
EPHEMERAL_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})
EPHEMERAL_ROOTS = ("/tmp", "/dev/shm", "/var/tmp", "/run")


@dataclass(frozen=True)
class ResumeInfo:
    path: Path
    epoch: int
    step: int
    metrics: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


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
    ) -> None:
        """``group``: the process group of the ranks that share this folder (default: the world).
        ``sharded``: every rank saves its own shards through torch.distributed.checkpoint
        into a folder per checkpoint. ``requeue``: under SLURM, a SIGUSR1 stop requeues
        the job (``scontrol requeue``) once its checkpoint is durable.
        """
        if mode not in ("min", "max"):
            raise BadInput(f"mode must be 'min' or 'max', not {mode!r}")
        if digest not in DIGEST_ALGORITHMS:
            raise BadInput(f"unknown digest {digest!r}; use one of {', '.join(DIGEST_ALGORITHMS)}")
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and value < 1:
                raise BadInput(f"{name} must be 1 or more, not {value}")
        self.directory = Path(directory)
        self.project = project
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.monitor = monitor
        self.mode = mode
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.filename = filename
        self.policy = policy
        self.digest = digest
        self.group = group
        self.sharded = sharded
        self.requeue = requeue
        self._check_template()
        self._fingerprint: Any = None
        self._stop_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self.distributed = dist_util.is_distributed()
        self.rank = dist_util.rank(group) if self.distributed else 0
        self._consistent = False
        self._agreed_stop: int | None = None  # the signal every rank agreed to stop on
        self._agreement_fresh = False  # save() agreed; the next should_stop reads that answer
        self.requeued = False
        if sharded and not self.distributed:
            raise BadInput("sharded=True needs an initialised torch.distributed process group; call init_process_group first")
        self._lock_fd: int | None = None
        self.removed_temp_files: list[Path] = []
        if self.rank == 0:  # the other ranks only read; a second flock on the folder would fail
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BadInput(f"{self.directory}: cannot create the checkpoint folder ({exc.strerror}); choose another") from None
            self._lock_fd = self._acquire_lock()
            self.removed_temp_files = self._remove_stale_temp_files()
            self._warn_if_ephemeral()

    # -- life cycle ------------------------------------------------------------------
    def close(self) -> None:
        self.restore_signals()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _acquire_lock(self) -> int:
        import fcntl

        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointDirLocked(
                    f"{self.directory}: another writer (pid {holder}) holds {path.name}; two runs writing one "
                    "checkpoint folder would delete each other's files: give this run its own folder or stop the other"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def _remove_stale_temp_files(self) -> list[Path]:
        """Temporary files of writers that died: they hold this folder's lock no more, and their pid is gone."""
        removed = []
        for entry in os.scandir(self.directory):
            if not is_temp_name(entry.name):
                continue
            pid_text = entry.name.rsplit(TEMP_MARK, 1)[1]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and _pid_alive(int(pid_text)):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):  # a sharded save's folder
                    import shutil

                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
        return removed

    def _warn_if_ephemeral(self) -> None:
        where = self.directory.resolve()
        fstype = _filesystem_type(where)
        if fstype in EPHEMERAL_FILESYSTEMS or str(where).startswith(EPHEMERAL_ROOTS):
            place = f"on {fstype}" if fstype in EPHEMERAL_FILESYSTEMS else "under a temporary folder"
            warnings.warn(
                f"{where} is {place}: checkpoints there may not survive a reboot or a new container; "
                "use persistent storage",
                EphemeralDirectoryWarning,
                stacklevel=3,
            )

    def _check_template(self) -> None:
        try:
            name = self.filename.format_map(_TemplateProbe(project=self.project, epoch=0, step=0))
        except (KeyError, IndexError, ValueError) as exc:
            raise BadInput(f"filename template {self.filename!r} is not usable ({exc}); e.g. {DEFAULT_FILENAME!r}") from None
        if "/" in name or os.sep in name or name.startswith("."):
            raise BadInput(f"filename template {self.filename!r} must give a plain file name, not a path or hidden file")

    # -- signals ---------------------------------------------------------------------
    def handle_signals(self, signals: tuple[int, ...] | None = None) -> None:
        """SIGTERM and SIGUSR1 (by default) set ``should_stop``; nothing else happens in the handler."""
        chosen = signals if signals is not None else (signal.SIGTERM, getattr(signal, "SIGUSR1", signal.SIGTERM))
        for signum in chosen:
            if signum not in self._previous_handlers:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def restore_signals(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum

    @property
    def should_stop(self) -> bool:
        """True once a stop signal arrived (SIGTERM, SIGUSR1).

        Distributed: a collective that every rank must read at the same step boundary; it
        is True on every rank as soon as one rank got a signal. Read right after ``save``
        it costs nothing more: it returns what that save agreed (so a stop is always saved
        first; a signal that arrives later is acted on at the next step's save).
        """
        if not self.distributed:
            return self._stop_signal is not None
        if self._agreement_fresh:
            self._agreement_fresh = False
        else:
            self._agree_stop()
        return self._agreed_stop is not None

    def _agree_stop(self) -> None:
        if self._agreed_stop is not None:
            return  # every rank knows already; no collective, on every rank alike
        agreed = dist_util.all_max(self._stop_signal or 0, self.group)
        if agreed:
            self._agreed_stop = agreed

    @property
    def stop_signal(self) -> int | None:
        return self._agreed_stop if self.distributed and self._agreed_stop else self._stop_signal

    @property
    def exit_code(self) -> int:
        """128 + the signal number (143 for SIGTERM), the shell's convention for a run a signal ended.

        Distributed: the agreed signal's, the same on every rank.
        """
        signum = self.stop_signal
        return 128 + signum if signum is not None else 0

    # -- listing ---------------------------------------------------------------------
    def _ours(self, *, with_unreadable: bool = False) -> list[CheckpointInfo]:
        """This project's checkpoints; with_unreadable adds files whose stamp cannot be read at all."""
        return [
            i
            for i in scan(self.directory)
            if i.project == self.project or (with_unreadable and i.valid is False and i.project is None)
        ]

    def list(self) -> list[CheckpointInfo]:
        """This project's checkpoints (and unreadable files) in the folder, oldest first, each verified."""
        return sorted((with_validity(i) for i in self._ours(with_unreadable=True)), key=lambda i: (i.order_key, i.path.name))

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint that verifies, by the step its stamp records (never by mtime)."""
        return find_latest(self.directory, self.project)

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
        stopping = self._agreed_stop is not None if self.distributed else self.should_stop
        if stopping or (self.every_n_epochs is None and self.every_n_steps is None):
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
        """
        if self.distributed:
            self._agree_stop()
            self._agreement_fresh = True
        where = f"{self.directory}: save()"
        epoch, step = _as_int(epoch, "epoch", where), _as_int(step, "step", where)
        if not force and not self.is_due(epoch, step):
            return None
        from envkit.fingerprint import collect

        numbers = normalise_metrics(metrics, source=where)  # 0-d tensors and numpy scalars become numbers
        name = self.filename.format_map(_TemplateFields(numbers, project=self.project, epoch=epoch, step=step))
        path = self.directory / name
        meta = build_meta({"epoch": epoch, "step": step, "metrics": numbers, "project": self.project}, path)
        metrics = meta["metrics"]  # as the stamp records them: NaN and inf are null
        if self._fingerprint is None:
            self._fingerprint = collect()
        if self.distributed and not self._consistent:
            dist_util.check_consistency(self.group, self.policy, fingerprint=self._fingerprint)
            self._consistent = True
        parts = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, sampler=sampler)
        if self.sharded:
            from envkit.checkpoint.sharded import save_sharded

            path = save_sharded(self, path, meta, epoch=epoch, step=step, metrics=metrics, extra=extra, **parts)
        else:
            error: Exception | None = None
            try:
                rng_ranks = self._gather_rng() if self.distributed else None
            except CheckpointWriteError as exc:
                rng_ranks, error = None, exc
            if self.rank == 0:
                try:
                    if error is None:
                        self._write(path, meta, epoch=epoch, step=step, metrics=metrics, extra=extra, rng_ranks=rng_ranks,
                                    **parts)
                except Exception as exc:  # the other ranks must hear of it, or they wait forever
                    error = exc
                self._end_save(error)
            else:
                self._end_save(None)
        self._after_stop_save()
        return path

    def _gather_rng(self) -> list[dict[str, Any]] | None:
        """Every rank's RNG state on rank 0, in group-rank order (a collective); None on the other ranks.

        Ranks often seed differently (seed + rank for dropout or augmentation), so one rank's
        state cannot stand for all. A rank that cannot capture its state sends the error instead
        of leaving rank 0 waiting; rank 0 then fails the save on every rank.
        """
        from envkit.checkpoint import training_state as ts

        try:
            mine: Any = ts.capture_rng()
        except Exception as exc:
            mine = f"rank {self.rank}: cannot capture its RNG state ({exc})"
        gathered = dist_util.gather(mine, self.group)
        if gathered is None:
            return None
        failed = [g for g in gathered if isinstance(g, str)]
        if failed:
            raise CheckpointWriteError(failed[0])
        return gathered

    def _end_save(self, error: Exception | None) -> None:
        """The barrier that ends a distributed save; rank 0's error is raised on every rank."""
        if self.distributed:
            text = (str(error) or type(error).__name__) if error is not None else None
            message = dist_util.broadcast_object(text, src=self._rank0(), group=self.group)
            if message is not None and error is None:
                error = CheckpointWriteError(f"rank 0 could not save: {message}")
        if error is not None:
            raise error

    def _rank0(self) -> int:
        return dist_util._global_rank(self.group, 0) if self.distributed else 0

    def _after_stop_save(self) -> None:
        """Under SLURM, with requeue on, a SIGUSR1 stop requeues the job once its checkpoint is durable."""
        if not self.requeue or self.requeued or self.stop_signal != getattr(signal, "SIGUSR1", None):
            return
        from envkit.checkpoint.slurm import requeue_job, slurm_job_id

        if slurm_job_id() is None:
            return
        if self.rank == 0:
            requeue_job()
        self.requeued = True

    def _write(
        self,
        path: Path,
        meta: Mapping[str, Any],
        *,
        epoch: int,
        step: int,
        metrics: Mapping[str, Any],
        extra: Mapping[str, Any] | None,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        sampler: Any,
        rng_ranks: list[dict[str, Any]] | None = None,
    ) -> None:
        from envkit.checkpoint import training_state as ts

        fingerprint = self._fingerprint
        state = {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "step": step,
            "metrics": metrics,
            "extra": dict(extra or {}),
            "model": ts.model_state(model) if model is not None else None,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "sampler": sampler.state_dict() if sampler is not None else None,
            "rng": rng_ranks[0] if rng_ranks else ts.capture_rng(),  # rank 0's: what older readers restore
            **({"rng_ranks": rng_ranks, "world_size": len(rng_ranks)} if rng_ranks else {}),
            DICT_KEY: Stamp(fingerprint, None, meta).to_json(),
        }
        write_stamped(state, path, stamp_for=lambda payload: Stamp(fingerprint, payload, meta), digest=self.digest)
        self._apply_retention(path)

    def _apply_retention(self, just_saved: Path) -> None:
        everything = scan(self.directory)
        _, delete = retention_plan(
            [i for i in everything if i.project == self.project],
            keep_last=self.keep_last,
            keep_best=self.keep_best,
            monitor=self.monitor,
            mode=self.mode,
            protect=(just_saved,),
        )
        for path in delete:
            try:
                if path.is_dir():  # a sharded checkpoint: its stamp first, so it stops being one at once
                    import shutil

                    (path / "envkit.json").unlink(missing_ok=True)
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                pass
        if delete:
            fsync_dir(self.directory)
        write_index(self.directory, (i for i in everything if i.path not in delete))

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
        checkpoint and every rank loads that one.
        """
        if self.distributed:
            from envkit.fingerprint import collect

            if self._fingerprint is None:
                self._fingerprint = collect()
            dist_util.check_consistency(self.group, self.policy, fingerprint=self._fingerprint)
            self._consistent = True
            chosen = self.latest() if self.rank == 0 else None
            if self.rank == 0:
                self._warn_skipped(chosen)
            name = dist_util.broadcast_object(chosen.path.name if chosen is not None else None, src=self._rank0(), group=self.group)
            if name is None:
                return None
            latest = chosen if chosen is not None else CheckpointInfo(self.directory / name, None, None)
        else:
            latest = self.latest()
            self._warn_skipped(latest)
        if latest is None:
            return None
        from envkit.checkpoint import training_state as ts
        from envkit.checkpoint.compat import load

        if self.sharded or latest.path.is_dir():
            from envkit.checkpoint.sharded import load_sharded

            parts = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, sampler=sampler)
            return load_sharded(self, latest.path, **parts)
        state = load(latest.path, map_location=map_location, policy=self.policy, verify=False)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise BadInput(f"{latest.path}: not a CheckpointManager checkpoint; load it with envkit.load")
        if model is not None and state.get("model") is not None:
            ts.load_model_state(model, state["model"])
        for target, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler"), (sampler, "sampler")):
            if target is not None and state.get(key) is not None:
                target.load_state_dict(state[key])
        passed = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "sampler": sampler}
        warn_missing_state(latest.path, [k for k, v in passed.items() if v is not None and state.get(k) is None])
        rng = self._own_rng(state, latest.path)
        ts.restore_rng(rng)
        if sampler is not None and hasattr(sampler, "restore_rng_when_iterated"):
            sampler.restore_rng_when_iterated(rng)
        return ResumeInfo(latest.path, int(state["epoch"]), int(state["step"]), state.get("metrics") or {}, state.get("extra") or {})


    def _warn_skipped(self, chosen: CheckpointInfo | None) -> None:
        """Warn about this project's checkpoints newer than ``chosen`` (all of them, when None) that do not verify.

        A file whose stamp cannot be read has no step: it counts as newer when its mtime is.
        Files without any envkit stamp (a plain torch.save in the folder) are not this
        manager's and are not mentioned.
        """
        from envkit.checkpoint.integrity import verify

        newest_time = _mtime(chosen.path) if chosen is not None else None
        skipped: list[tuple[CheckpointInfo, str]] = []
        for info in self._ours(with_unreadable=True):
            if chosen is not None and info.path == chosen.path:
                continue
            if chosen is not None:
                if info.valid is False and info.step is None:
                    if newest_time is None or _mtime(info.path) <= newest_time:
                        continue
                elif info.order_key <= chosen.order_key:
                    continue
            result = verify(info.path)
            if result.status in ("corrupt", "unreadable"):
                skipped.append((info, _reason(result.problem or info.problem or "does not verify", info.path)))
        if not skipped:
            return
        skipped.sort(key=lambda pair: (pair[0].order_key, _mtime(pair[0].path)), reverse=True)
        shown = "; ".join(f"{i.path.name} ({why})" for i, why in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        where = f"{self.directory}: "
        if chosen is None:
            message = (f"{where}no checkpoint of project {self.project!r} verifies, so resume() starts fresh: skipped {shown}{more}; "
                       "restore them from a copy, or delete them to silence this")
        else:
            message = (f"{where}resumed from {chosen.path.name}, skipping {len(skipped)} newer checkpoint(s) that do not verify: "
                       f"{shown}{more}; delete or move them, or restore them from a copy")
        warnings.warn(message, CheckpointSkippedWarning, stacklevel=3)

    def _own_rng(self, state: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
        """This rank's saved RNG state: its own when the world size is the one saved, else rank 0's.

        Checkpoints without ``rng_ranks`` (single-process saves, and those of envkit before
        per-rank RNG) hold one state, which every rank restores.
        """
        ranks = state.get("rng_ranks")
        if not ranks:
            return state["rng"]
        world = dist_util.world_size(self.group) if self.distributed else 1
        if len(ranks) == world:
            return ranks[self.rank]
        if self.rank == 0:
            warnings.warn(
                f"{path.name} was saved by {len(ranks)} ranks and this job has {world}: every rank restores rank 0's "
                "random state, so per-rank random streams (dropout, augmentation) do not continue as they would have; "
                f"resume with {len(ranks)} ranks for an exact resume",
                RankRngWarning,
                stacklevel=3,
            )
        return state["rng"]


class _TemplateProbe(dict):
    """Checks a template before any metric exists: every metric field reads as 0.0."""

    def __missing__(self, key: str) -> float:
        return 0.0


class _TemplateFields(dict):
    def __init__(self, metrics: Mapping[str, Any], **fields: Any) -> None:
        super().__init__(metrics)
        self.update(fields)

    def __missing__(self, key: str) -> Any:
        raise BadInput(f"the filename template names metric {key!r}, but save() got no such metric")


def _as_int(value: Any, key: str, source: str) -> int:
    """epoch and step: ints, numpy ints and 0-d integer tensors; BadInput otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = normalise_meta({key: value}, source=source)[key]
    if number is None:
        raise BadInput(f"{source}: {key} is None; it must be an int")
    return int(number)


def warn_missing_state(path: Path, missing: list[str], stacklevel: int = 3) -> None:
    """resume() got objects (``missing``: their argument names) the checkpoint at ``path`` holds no state for."""
    if not missing:
        return
    names = ", ".join(missing)
    these = "it starts" if len(missing) == 1 else "they start"
    example = ", ".join(f"{k}={k}" for k in missing)
    warnings.warn(
        f"{path}: holds no state for the {names} passed to resume(), so {these} from scratch; "
        f"save with mgr.save(..., {example}) to resume {'it' if len(missing) == 1 else 'them'}",
        MissingStateWarning,
        stacklevel=stacklevel,
    )


def _reason(problem: str, path: Path) -> str:
    """A problem without the leading path, to name the file once."""
    for prefix in (f"{path}: ", f"{path.name}: "):
        if problem.startswith(prefix):
            return problem[len(prefix):]
    return problem


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _filesystem_type(path: Path) -> str | None:
    best, fstype = "", None
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    mount = parts[1].replace("\\040", " ")
                    if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                        best, fstype = mount, parts[2]
    except OSError:
        return None
    return fstype
