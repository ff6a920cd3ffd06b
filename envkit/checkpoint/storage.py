"""CheckpointStorage: where a CheckpointManager's checkpoints live, and how one is written and committed.

Like torch.distributed.checkpoint's StorageWriter/Reader and Orbax, a save is two steps:
``write`` puts the training state down where no reader sees it, ``commit`` makes it a
checkpoint in one atomic step (a rename, a marker). Until the commit the storage lists
nothing new, so a crash in between leaves the earlier checkpoints as they were; ``abort``
drops what ``write`` made. Checkpoints are named by a name within the storage's root.

Two implementations: ``single_file.SingleFileStorage`` (one stamped torch.save file per checkpoint)
and ``sharded.ShardedFolderStorage`` (every rank writes its shards through
torch.distributed.checkpoint into one folder, committed by its stamp). The manager picks
one when it is made (``manager.open_storage``) and talks to it only through this protocol. Under torch.distributed
``write``, ``commit`` and ``load`` are collectives: every rank calls them in the same order.
No torch import at module level.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

from envkit.checkpoint.listing import LocalListing
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

    def verified_copy(self) -> AbstractContextManager[Any]:
        """Where resume's verify keeps the bytes it reads, for ``load`` to take them from (a bucket's
        ``remote_verify.VerifiedCopy``); None where reading them again costs a local read."""

    def delete(self, name: str) -> None: ...

    def list_committed(self) -> list[str]:
        """The names of the committed checkpoints, in no particular order."""

    def is_committed(self, name: str) -> bool: ...

    def remove_stale(self) -> list[Path]:
        """Remove what writers that died left behind (call it holding the folder's lock)."""

    # The listing the manager, the index and retention read (``listing.Listing``): a storage is one.
    def location(self, name: str) -> Path: ...
    def committed_sizes(self) -> dict[str, int]: ...
    def names(self) -> set[str] | None: ...
    def is_new_checkpoint(self, name: str) -> bool: ...
    def read_index_bytes(self, *, first_line: bool = False) -> bytes | None: ...
    def write_index_bytes(self, data: bytes) -> None: ...
    def mtime(self, name: str) -> float: ...
    def after_deletes(self) -> None: ...

    def prepare(self) -> None:
        """Make the root if needed (rank 0, when the manager is made); BadInput when it cannot be."""

    def lock(self) -> Any:
        """The one-writer lock of this root (``acquire()``/``release()``): a flock, or a lock object in a bucket."""

    def ephemeral_warning(self) -> str | None:
        """Why checkpoints here may not survive a reboot; None when they should."""


class LocalFolder(LocalListing):
    """What both local implementations share: a folder, its listing, deletes and stale temporary files."""

    def __init__(self, root: Path, *, digest: str, ranks: Ranks) -> None:
        super().__init__(root)
        self.digest = digest
        self.ranks = ranks

    def verified_copy(self) -> AbstractContextManager[None]:
        return nullcontext()  # the second read of a local file comes from the page cache

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

    def prepare(self) -> None:
        from envkit.errors import BadInput

        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"{self.root}: cannot create the checkpoint folder ({exc.strerror}); choose another") from None

    def lock(self) -> Any:
        from envkit.checkpoint.folder_lock import FolderLock

        return FolderLock(self.root)

    def ephemeral_warning(self) -> str | None:
        from envkit.checkpoint.paths import ephemeral_warning

        return ephemeral_warning(self.root)


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


__all__ = ["CHECKPOINT_SUFFIXES", "CheckpointStorage", "LocalFolder", "is_checkpoint_name", "write_target"]
