"""SingleFileStorage: one stamped ``torch.save`` file per checkpoint, committed by a rename (``envkit.checkpoint.storage``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.checkpoint.paths import is_folder_checkpoint
from envkit.checkpoint.reader import CheckpointFile
from envkit.checkpoint.state import TrainingState
from envkit.checkpoint.storage import LocalFolder
from envkit.errors import CheckpointWriteError

if False:  # TYPE_CHECKING, without importing typing's machinery at run time
    from envkit.checkpoint.background import StagedSave, Stager
    from envkit.checkpoint.ranks import Ranks
    from envkit.fingerprint import Fingerprint
    from envkit.policy import Policy


@dataclass(frozen=True)
class _Captured:
    state: TrainingState | None  # rank 0's; None on the other ranks or after an error
    error: Exception | None


@dataclass
class _PendingFile:
    name: str
    tmp: Path | None  # rank 0's written temporary file; None on the other ranks or after an error
    error: Exception | None = None


class SingleFileStorage(LocalFolder):
    """One stamped ``torch.save`` file per checkpoint (envkit.save's format, holding ``TrainingState.to_state()``).

    Distributed, rank 0 writes the replicated state and every rank's RNG state.
    """

    def name_for(self, name: str) -> str:
        return name

    def write(self, name: str, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
              parts: Mapping[str, Any], fingerprint: Fingerprint, meta: Mapping[str, Any]) -> _PendingFile:
        captured = self._capture(epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts)
        return self._write_captured(name, captured, fingerprint=fingerprint, meta=meta)

    def stage(self, name: str, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
              parts: Mapping[str, Any], fingerprint: Fingerprint, meta: Mapping[str, Any], stager: Stager) -> StagedSave:
        """A background save (background.py): the state captured and copied to CPU memory here, on the caller's thread
        (distributed: the RNG gather, a collective, happens here too); ``write()`` then writes and commits it on
        rank 0 with local I/O only. The other ranks' ``write()`` does nothing; they learn the outcome from
        ``background.agree`` when the save is collected. Errors are kept for that too, so that every rank raises them."""
        from envkit.checkpoint.background import StagedSave, synchronize_devices

        captured = self._capture(epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts)
        if captured.state is not None:
            try:
                captured = _Captured(stager.stage(captured.state), None)
                synchronize_devices()
            except Exception as exc:  # noqa: BLE001 - raised by the background save, on every rank
                captured = _Captured(None, exc)
        if not self.ranks.distributed and captured.error is not None:
            raise captured.error  # nothing is in flight: raise it now

        def write() -> Path:
            pending = self._write_captured(name, captured, fingerprint=fingerprint, meta=dict(meta))
            if pending.error is not None:
                raise pending.error
            if pending.tmp is not None:
                from envkit.checkpoint.writer import commit_file

                commit_file(pending.tmp, self.root / name)
            return self.root / name

        return StagedSave(self.root / name, write)

    def _capture(self, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
                 parts: Mapping[str, Any]) -> _Captured:
        return capture_on_rank0(self.ranks, epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts)

    def _write_captured(self, name: str, captured: _Captured, *, fingerprint: Fingerprint,
                        meta: Mapping[str, Any]) -> _PendingFile:
        pending = _PendingFile(name, None, captured.error)
        if captured.state is None:
            return pending
        try:
            from envkit.checkpoint.stamp import DICT_KEY, Stamp
            from envkit.checkpoint.writer import write_uncommitted

            state = captured.state.to_state()
            state[DICT_KEY] = Stamp(fingerprint, None, meta).to_json()
            pending.tmp = write_uncommitted(state, self.root / name,
                                            stamp_for=lambda payload: Stamp(fingerprint, payload, meta), digest=self.digest)
        except Exception as exc:  # noqa: BLE001 - kept and raised in commit; the other ranks must hear of it, or they wait forever
            pending.error = exc
        return pending

    def commit(self, pending: _PendingFile, then: Callable[[Path], None] | None = None) -> Path:
        path = self.root / pending.name
        error = pending.error
        if self.ranks.rank == 0 and error is None and pending.tmp is not None:
            try:
                from envkit.checkpoint.writer import commit_file

                commit_file(pending.tmp, path)
                if then is not None:
                    then(path)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the broadcast the other ranks wait on
                error = exc
        if self.ranks.distributed:  # the barrier that ends a distributed save; rank 0's error is raised on every rank
            text = (str(error) or type(error).__name__) if error is not None and self.ranks.rank == 0 else None
            message = self.ranks.broadcast(text)
            if message is not None and error is None:
                error = CheckpointWriteError(f"rank 0 could not save: {message}")
        if error is not None:
            raise error
        return path

    def abort(self, pending: _PendingFile) -> None:
        if pending.tmp is not None:
            pending.tmp.unlink(missing_ok=True)
            pending.tmp = None

    def load(self, name: str, *, policy: Policy, map_location: Any = None, file: CheckpointFile | None = None) -> TrainingState:
        path = self.root / name
        if is_folder_checkpoint(path):  # a sharded checkpoint in this folder: read as the folder storage reads it
            from envkit.checkpoint.sharded import load_folder

            return load_folder(path, ranks=self.ranks, policy=policy, file=file)
        from envkit.checkpoint.resume_check import load

        return TrainingState.from_state(load(path, map_location=map_location, policy=policy, verify=False, info=file), source=path)



def capture_on_rank0(ranks: Ranks, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
                     parts: Mapping[str, Any]) -> _Captured:
    """Rank 0's TrainingState with every rank's RNG (None on the other ranks), or the error (kept, for every rank to
    hear of): what a storage that writes one file per checkpoint from rank 0 writes (a collective when distributed)."""
    try:
        rng_ranks = gather_rng(ranks) if ranks.distributed else None
    except CheckpointWriteError as exc:
        return _Captured(None, exc)
    if ranks.rank != 0:
        return _Captured(None, None)
    try:
        return _Captured(TrainingState.capture(epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts,
                                               rng_ranks=rng_ranks), None)
    except Exception as exc:  # noqa: BLE001 - kept and raised in commit; the other ranks must hear of it, or they wait forever
        return _Captured(None, exc)


def gather_rng(ranks: Ranks) -> list[Mapping[str, Any]] | None:
    """Every rank's RNG state on rank 0, in group-rank order (a collective); None on the other ranks.

    Ranks often seed differently (seed + rank for dropout or augmentation), so one rank's
    state cannot stand for all. A rank that cannot capture its state sends the error instead
    of leaving rank 0 waiting; rank 0 then fails the save on every rank.
    """
    from envkit import distributed as dist_util
    from envkit.checkpoint import training_state as ts

    try:
        mine: Any = ts.capture_rng()
    except Exception as exc:  # noqa: BLE001 - sent to rank 0 instead of leaving it waiting
        mine = f"rank {ranks.rank}: cannot capture its RNG state ({exc})"
    gathered = dist_util.gather(mine, ranks.group)
    if gathered is None:
        return None
    failed = [g for g in gathered if isinstance(g, str)]
    if failed:
        raise CheckpointWriteError(failed[0])
    return gathered


__all__ = ["SingleFileStorage", "capture_on_rank0", "gather_rng"]
