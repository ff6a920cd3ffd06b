"""CheckpointStorage: where a CheckpointManager's checkpoints live, and how one is written and committed.

Like torch.distributed.checkpoint's StorageWriter/Reader and Orbax, a save is two steps:
``write`` puts the training state down where no reader sees it, ``commit`` makes it a
checkpoint in one atomic step (a rename, a marker). Until the commit the storage lists
nothing new, so a crash in between leaves the earlier checkpoints as they were; ``abort``
drops what ``write`` made. Checkpoints are named by a name within the storage's root.

Two implementations: ``SingleFileStorage`` (one stamped torch.save file per checkpoint)
and ``sharded.ShardedFolderStorage`` (every rank writes its shards through
torch.distributed.checkpoint into one folder, committed by its stamp). The manager picks
one when it is made and talks to it only through this protocol. Under torch.distributed
``write``, ``commit`` and ``load`` are collectives: every rank calls them in the same order.
No torch import at module level.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from envkit.checkpoint.paths import (
    CHECKPOINT_SUFFIXES,
    is_folder_checkpoint,
    is_temp_name,
    remove_checkpoint,
    remove_stale_temp_files,
    write_target,
)
from envkit.checkpoint.ranks import Ranks
from envkit.checkpoint.reader import CheckpointFile, read_stamp
from envkit.checkpoint.state import TrainingState
from envkit.errors import CheckpointWriteError

if False:  # TYPE_CHECKING, without importing typing's machinery at run time
    from envkit.fingerprint import Fingerprint
    from envkit.policy import Policy


class CheckpointStorage(Protocol):
    """The seam between the manager and where checkpoints are kept."""

    root: Path

    def name_for(self, name: str) -> str:
        """The name a checkpoint saved as ``name`` (the filename template's) gets in this storage."""

    def path_of(self, name: str) -> Path:
        """Where ``name`` is, for messages and the stamp readers."""

    def write(self, name: str, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
              parts: Mapping[str, Any], fingerprint: Fingerprint, meta: Mapping[str, Any]) -> Any:
        """Capture ``parts`` (model=..., optimizer=...) and write them, uncommitted; returns what commit takes."""

    def commit(self, pending: Any, then: Callable[[Path], None] | None = None) -> Path:
        """Make the written checkpoint visible atomically; ``then(path)`` runs on rank 0 once it is durable.

        Raises the write's or the commit's error (on every rank); nothing is left half-written.
        """

    def abort(self, pending: Any) -> None:
        """Drop an uncommitted write."""

    def read(self, name: str) -> CheckpointFile:
        """The stamp and format of a committed checkpoint, without loading it."""

    def load(self, name: str, *, policy: Policy, map_location: Any = None, file: CheckpointFile | None = None) -> TrainingState:
        """The guard (the environment may resume it, else EnvironmentMismatch), then the state.

        ``file``: the stamp read already (by the verify that chose this checkpoint): not read again.
        """

    def delete(self, name: str) -> None: ...

    def list_committed(self) -> list[str]:
        """The names of the committed checkpoints, in no particular order."""

    def is_committed(self, name: str) -> bool: ...

    def remove_stale(self) -> list[Path]:
        """Remove what writers that died left behind (call it holding the folder's lock)."""


class LocalFolder:
    """What both local implementations share: a folder, its listing, deletes and stale temporary files."""

    def __init__(self, root: Path, *, digest: str, ranks: Ranks) -> None:
        self.root = root
        self.digest = digest
        self.ranks = ranks

    def path_of(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> CheckpointFile:
        return read_stamp(self.root / name)

    def delete(self, name: str) -> None:
        remove_checkpoint(self.root / name)

    def list_committed(self) -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return [e.name for e in entries if _is_checkpoint_entry(e)]

    def is_committed(self, name: str) -> bool:
        path = self.root / name
        if not is_checkpoint_name(name):
            return False
        if is_folder_checkpoint(path):
            from envkit.checkpoint.dcp_format import committed_size

            return committed_size(str(path)) is not None
        return path.is_file()

    def remove_stale(self) -> list[Path]:
        return remove_stale_temp_files(self.root)


def is_checkpoint_name(name: str) -> bool:
    return name.endswith(CHECKPOINT_SUFFIXES) and not name.startswith(".") and not is_temp_name(name)


def _is_checkpoint_entry(entry: os.DirEntry[str]) -> bool:
    if not is_checkpoint_name(entry.name):
        return False
    try:
        if is_folder_checkpoint(entry):
            from envkit.checkpoint.dcp_format import committed_size

            return committed_size(entry.path) is not None
        return entry.is_file()
    except OSError:
        return False


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
        pending = _PendingFile(name, None)
        try:
            rng_ranks = self._gather_rng() if self.ranks.distributed else None
        except CheckpointWriteError as exc:
            pending.error = exc
            return pending
        if self.ranks.rank != 0:
            return pending
        try:
            from envkit.checkpoint.stamp import DICT_KEY, Stamp
            from envkit.checkpoint.writer import write_uncommitted

            state = TrainingState.capture(epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts,
                                          rng_ranks=rng_ranks).to_state()
            state[DICT_KEY] = Stamp(fingerprint, None, meta).to_json()
            pending.tmp = write_uncommitted(state, self.root / name,
                                            stamp_for=lambda payload: Stamp(fingerprint, payload, meta), digest=self.digest)
        except Exception as exc:  # the other ranks must hear of it, or they wait forever
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
            except Exception as exc:
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
        from envkit.checkpoint.compat import load

        return TrainingState.from_state(load(path, map_location=map_location, policy=policy, verify=False, info=file), source=path)

    def _gather_rng(self) -> list[Mapping[str, Any]] | None:
        """Every rank's RNG state on rank 0, in group-rank order (a collective); None on the other ranks.

        Ranks often seed differently (seed + rank for dropout or augmentation), so one rank's
        state cannot stand for all. A rank that cannot capture its state sends the error instead
        of leaving rank 0 waiting; rank 0 then fails the save on every rank.
        """
        from envkit import distributed as dist_util
        from envkit.checkpoint import training_state as ts

        try:
            mine: Any = ts.capture_rng()
        except Exception as exc:
            mine = f"rank {self.ranks.rank}: cannot capture its RNG state ({exc})"
        gathered = dist_util.gather(mine, self.ranks.group)
        if gathered is None:
            return None
        failed = [g for g in gathered if isinstance(g, str)]
        if failed:
            raise CheckpointWriteError(failed[0])
        return gathered


def open_storage(root: Path, *, sharded: bool, digest: str, ranks: Ranks) -> CheckpointStorage:
    """The storage a manager writes to: decided here, once."""
    if sharded:
        from envkit.checkpoint.sharded import ShardedFolderStorage

        return ShardedFolderStorage(root, digest=digest, ranks=ranks)
    return SingleFileStorage(root, digest=digest, ranks=ranks)


__all__ = ["CHECKPOINT_SUFFIXES", "CheckpointStorage", "LocalFolder", "SingleFileStorage", "is_checkpoint_name", "open_storage",
           "write_target"]
