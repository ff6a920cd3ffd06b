"""``ShardedObjectStorage``: sharded (``.dcp``) checkpoints under a bucket prefix (``CheckpointManager("s3://b/run", sharded=True)``).

The layout is the local one (sharded.py, dcp_format): ``<prefix>/<name>.dcp/`` holds DCP's files,
one ``rank<r>.pt`` per rank and ``envkit.json``, the commit marker. S3 has no rename, so the commit
is the marker alone, written last:

1. rank 0 clears ``<name>.dcp/`` (what a writer that died left there; a checkpoint saved under the
   same name before stops being one when its marker goes, first);
2. every rank writes its part (``sharded.write_part``: DCP on every torch, 2.0.1 included) into a
   local scratch folder of its own (removed after), then uploads each file it wrote, each one a
   multipart upload completed whole or aborted (remote.py's ``_Upload``; never a partial object),
   and confirms it with a HEAD of its size;
3. the ranks agree (every rank's error and files on rank 0, ``dist_util.all_gather``);
4. rank 0 puts ``envkit.json`` (one PUT: whole or absent), confirms it with a HEAD, and only then
   runs retention, which deletes an old ``.dcp`` marker first, then its files; every rank learns
   the outcome.

A prefix without its marker is never listed (``listing.ObjectListing``) and is deleted by the next
manager's ``remove_stale`` (it holds the lock). Resume: the guard from the marker (one GET), the
world size, then every file downloaded into local scratch, its digests verified, and the local
load path (``sharded.load_local``). Reads of a ``.dcp`` URL without a manager: remote_folder.py.
Background saves (``async_save=True``, ``stage``): the state is captured and copied to CPU memory
on the caller's thread; the steps above then run on the background thread, their collectives on a
gloo group of their own (``sharded.background_ranks``), on every torch, 2.0.1 included (DCP's own
``async_save`` is not needed: the whole save is already off the training loop's thread).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit import distributed as dist_util
from envkit.checkpoint import remote
from envkit.checkpoint.bucket import ObjectStorage
from envkit.checkpoint.folder_format import STAMP_NAME, file_digest, verify_files
from envkit.checkpoint.listing import ObjectListing
from envkit.checkpoint.paths import TEMP_MARK
from envkit.checkpoint.reader import CheckpointFile, read_stamp
from envkit.checkpoint.remote import ObjectLock, _Upload, remote_error
from envkit.checkpoint.remote_folder import download_folder, listed_sizes, read_folder_url
from envkit.checkpoint.remote_verify import KeepsVerifiedCopy
from envkit.checkpoint.sharded import (
    background_ranks,
    check_world,
    load_local,
    sharded_path,
    stamp_document,
    write_state_part,
)
from envkit.checkpoint.state import TrainingState
from envkit.checkpoint.urls import ObjectPath
from envkit.errors import BadInput, CheckpointWriteError, CorruptCheckpoint, EnvkitError

if False:  # TYPE_CHECKING, without importing typing's machinery at run time
    from envkit.checkpoint.background import StagedSave, Stager
    from envkit.checkpoint.ranks import Ranks
    from envkit.fingerprint import Fingerprint
    from envkit.policy import Policy


@dataclass
class _PendingPrefix:
    name: str
    records: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # every rank's uploaded files (rank 0)
    error: str | None = None  # the first rank's error (rank 0)
    fingerprint: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


def upload_file(fs: Any, key: str, where: ObjectPath, local: Path) -> int:
    """``local`` to ``key`` as one upload that appears whole or not at all, confirmed by a HEAD; returns its size."""
    upload = _Upload(fs, key, where)
    try:
        with open(local, "rb") as fh:
            while block := fh.read(remote.PART_BYTES):
                upload.file.write(block)
                upload.size += len(block)
        upload.finish_parts()
        upload.commit()
    except BaseException:
        upload.discard()
        raise
    size = int(fs.info(key, refresh=True)["size"])  # HEAD: the object is there, whole
    if size != upload.size:
        raise CheckpointWriteError(f"{where}: the bucket holds {size} bytes, the save wrote {upload.size}")
    return size


def _is_ours(name: str) -> bool:
    """A file a sharded save writes: DCP's ``.metadata`` and ``__<rank>_<n>.distcp``, a ``rank<r>.pt`` (or the temporary
    key ``.<file>.tmp-<pid>`` a file system without atomic uploads writes it through, remote._Upload)."""
    if TEMP_MARK in name and name.startswith("."):
        name = name[1:].rsplit(TEMP_MARK, 1)[0]
    return name == ".metadata" or (name.startswith("__") and name.endswith(".distcp")) or \
        (name.startswith("rank") and name.endswith(".pt") and name[4:-3].isdigit())


class ShardedObjectStorage(ObjectListing, KeepsVerifiedCopy):
    """``CheckpointStorage`` for sharded checkpoints under a bucket prefix. ``write``, ``commit`` and ``load`` are
    collectives under torch.distributed (every rank calls them), as with the local ``ShardedFolderStorage``."""

    def __init__(self, root: Path, *, digest: str, ranks: Ranks) -> None:
        if not isinstance(root, ObjectPath):
            raise BadInput(f"{root}: not a URL")
        super().__init__(root)
        self.digest, self.ranks = digest, ranks
        self._objects = ObjectStorage(root, sharded=False, digest=digest, ranks=ranks)  # the single-object storage of this prefix
        self._background: ShardedObjectStorage | None = None  # this storage on the background thread's own group

    # -- what the manager asks of every storage ------------------------------------------
    def name_for(self, name: str) -> str:
        return sharded_path(Path(name)).name

    def path_of(self, name: str) -> Path:
        return self.location(name)

    def prepare(self) -> None:
        self._objects.prepare()  # one LIST: the bucket exists and answers

    def lock(self) -> ObjectLock:
        return self._objects.lock()

    def ephemeral_warning(self) -> str | None:
        return self._objects.ephemeral_warning()

    def read(self, name: str) -> CheckpointFile:
        return read_stamp(self.location(name))

    def list_committed(self) -> list[str]:
        return list(self.committed_sizes())

    def is_committed(self, name: str) -> bool:
        return name in self.committed_sizes()

    def remove_stale(self) -> list[Path]:
        """Incomplete uploads and temporary keys (as ObjectStorage), and every ``.dcp`` prefix without its marker that
        holds only files a sharded save writes: what writers that died before their commit left (call it holding the
        lock). A prefix holding anything else is left alone. One LIST for the prefixes."""
        removed = self._objects.remove_stale()
        try:
            objects = listed_sizes(self.fs, self.key, self.url)
        except EnvkitError:
            return removed  # a cleanup that fails costs storage, not correctness
        folders: dict[str, list[str]] = {}
        for n in objects:
            folder, _, rest = n.partition("/")
            if rest and folder.endswith(".dcp") and not folder.startswith("."):
                folders.setdefault(folder, []).append(rest)
        for folder, names in sorted(folders.items()):
            if STAMP_NAME not in names and all(_is_ours(n) for n in names):  # anything else there is not a dead writer's
                try:
                    self._remove_prefix(folder)
                    removed.append(self.location(folder))
                except Exception:  # noqa: BLE001
                    pass
        return removed

    # -- saving ---------------------------------------------------------------------------
    def write(self, name: str, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
              parts: Mapping[str, Any], fingerprint: Fingerprint, meta: Mapping[str, Any]) -> _PendingPrefix:
        return self._write(name, lambda: TrainingState.capture(epoch=epoch, step=step, metrics=metrics, extra=extra,
                                                               parts=parts), fingerprint, meta)

    def stage(self, name: str, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
              parts: Mapping[str, Any], fingerprint: Fingerprint, meta: Mapping[str, Any], stager: Stager) -> StagedSave | None:
        """A background save (background.py): here, on the caller's thread, the capture and the CPU copy
        (``Stager``); ``write()``, on the background thread, runs ``write`` and ``commit`` of that copy on
        this storage's background twin, whose collectives use a gloo group of their own (made on the first
        background save: a collective). A capture that fails on one rank fails the save on every rank
        when it is collected. None (saved synchronously, with a warning once): tensors other than plain
        ones (DTensor, ShardedTensor), which a CPU copy would not keep as they are."""
        from envkit.checkpoint.background import StagedSave, synchronize_devices, warn_once

        failed: Exception | None = None
        staged: TrainingState | None = None
        try:
            state = TrainingState.capture(epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts)
            if not _plain_tensors(state):
                warn_once("bucket-sharded-tensors", f"{self.root}: the state holds distributed tensors (DTensor, "
                          "ShardedTensor); sharded saves of it to a bucket are synchronous")
                return None
            staged = stager.stage(state)
            synchronize_devices()
        except Exception as exc:
            if not self.ranks.distributed:
                raise  # nothing is in flight: raise it now
            failed = exc
        twin = self._background_twin()

        def state_of() -> TrainingState:
            if failed is not None:
                raise failed
            assert staged is not None
            return staged

        return StagedSave(self.location(name), lambda: twin.commit(twin._write(name, state_of, fingerprint, meta)))

    def _background_twin(self) -> ShardedObjectStorage:
        if not self.ranks.distributed:
            return self  # no collectives: the background thread may use this storage itself
        if self._background is None:
            self._background = ShardedObjectStorage(self.root, digest=self.digest, ranks=background_ranks(self.ranks))
        return self._background

    def _write(self, name: str, state_of: Callable[[], TrainingState], fingerprint: Fingerprint,
               meta: Mapping[str, Any]) -> _PendingPrefix:
        ranks, where = self.ranks, self.location(name)
        cleared = None
        if ranks.rank == 0:
            try:
                self.delete(name)  # leftovers of a writer that died; an older save of this name loses its marker first
            except EnvkitError as exc:
                cleared = exc.message
        cleared = ranks.broadcast(cleared)
        if cleared is not None:
            raise CheckpointWriteError(f"{where}: save failed ({cleared}); earlier checkpoints are untouched")
        error: str | None = None
        records: dict[str, dict[str, Any]] = {}
        scratch = Path(tempfile.mkdtemp(prefix="envkit-dcp-"))
        try:
            try:
                write_state_part(scratch, ranks, state_of())
            except Exception as exc:  # noqa: BLE001 - any error goes to the other ranks, which raise it
                error = f"rank {ranks.rank}: {exc}"
            if error is None:
                try:
                    records = self._upload(name, scratch)
                except Exception as exc:  # noqa: BLE001
                    error = f"rank {ranks.rank}: {remote_error(where, exc, 'write').message if not isinstance(exc, EnvkitError) else exc}"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        gathered = dist_util.all_gather((error, records), ranks.group)
        errors = [e for e, _ in gathered if e]
        return _PendingPrefix(name, [r for _, r in gathered] if ranks.rank == 0 else [], errors[0] if errors else None,
                              fingerprint, dict(meta))

    def _upload(self, name: str, scratch: Path) -> dict[str, dict[str, Any]]:
        """Every file this rank wrote (rank 0: DCP's ``.metadata`` too), uploaded and confirmed: name -> size, digest."""
        records: dict[str, dict[str, Any]] = {}
        for local in sorted(p for p in scratch.iterdir() if p.is_file()):
            digest = file_digest(local, self.digest)
            size = upload_file(self.fs, f"{self._key(name)}/{local.name}", self.location(name) / local.name, local)
            records[local.name] = {"size": size, "digest": digest}
        return records

    def commit(self, pending: _PendingPrefix, then: Callable[[Path], None] | None = None) -> Path:
        path = self.location(pending.name)
        outcome: str | None = None
        if self.ranks.rank == 0:
            committed = False
            try:
                if pending.error:
                    raise CheckpointWriteError(f"{path}: save failed ({pending.error}); earlier checkpoints are untouched")
                files: dict[str, dict[str, Any]] = {}
                for records in pending.records:
                    files.update(records)
                self._put_marker(pending.name, stamp_document(files, fingerprint=pending.fingerprint, meta=pending.meta,
                                                               digest=self.digest, world=self.ranks.world))
                committed = True
                if then is not None:
                    then(path)  # retention: only now, with the new marker confirmed
            except Exception as exc:  # noqa: BLE001 - any error is broadcast, so every rank raises it
                if not committed:
                    self._discard(pending.name)
                outcome = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        outcome = self.ranks.broadcast(outcome)
        if outcome is not None:
            if "earlier checkpoints are untouched" in outcome:
                raise CheckpointWriteError(outcome)
            raise CheckpointWriteError(f"{outcome}; earlier checkpoints are untouched" if outcome.startswith(str(path)) else
                                       f"{path}: save failed ({outcome}); earlier checkpoints are untouched")
        return path

    def _put_marker(self, name: str, document: bytes) -> None:
        """``envkit.json``: one PUT (S3 shows it whole or not at all), then a HEAD that confirms it."""
        key, where = f"{self._key(name)}/{STAMP_NAME}", self.location(name) / STAMP_NAME
        try:
            self.fs.pipe_file(key, document)
            size = int(self.fs.info(key, refresh=True)["size"])
        except Exception as exc:  # noqa: BLE001
            raise remote_error(where, exc, "write") from None
        if size != len(document):
            raise CheckpointWriteError(f"{where}: the bucket holds {size} bytes of the commit marker, the save wrote {len(document)}")

    def abort(self, pending: _PendingPrefix) -> None:
        if self.ranks.rank == 0:
            self._discard(pending.name)

    def _discard(self, name: str) -> None:
        try:
            self.delete(name)
        except EnvkitError:
            pass  # the next manager's remove_stale deletes a prefix without its marker

    def delete(self, name: str) -> None:
        """A ``.dcp`` prefix: its marker first (it stops being a checkpoint at once), then its files."""
        if not name.endswith(".dcp"):
            self._objects.delete(name)
            return
        try:
            self.fs.rm_file(f"{self._key(name)}/{STAMP_NAME}")
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self.location(name), exc, "delete") from None
        self._remove_prefix(name)

    def _remove_prefix(self, name: str) -> None:
        try:
            self.fs.rm(self._key(name), recursive=True)
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self.location(name), exc, "delete") from None
        finally:
            self.fs.invalidate_cache(self.key)

    # -- resuming -------------------------------------------------------------------------
    def load(self, name: str, *, policy: Policy, map_location: Any = None, file: CheckpointFile | None = None) -> TrainingState:
        """The guard and the world size from the marker, then the files downloaded, verified, and loaded (a collective)."""
        from envkit.checkpoint.resume_check import guard

        where = self.location(name)
        report = guard(where, policy, info=file)
        check_world(where, report.info, self.ranks)
        kept = self.kept(where)  # rank 0: the files its verify streamed (and hashed) while choosing this checkpoint
        scratch = kept or Path(tempfile.mkdtemp(prefix="envkit-dcp-load-"))
        try:
            error: EnvkitError | None = None
            try:
                if kept is None:
                    _, found = read_folder_url(where)  # the list of files (the marker again: the stamp read kept only their sizes)
                    download_folder(where, {n: int(r["size"]) for n, r in found.files.items()}, scratch)
                    problem = verify_files(scratch, found.stamp, found.files)
                    if problem is not None:
                        error = CorruptCheckpoint(f"{problem.replace(str(scratch), str(where))}; resume from an earlier checkpoint")
            except EnvkitError as exc:
                error = exc
            except OSError as exc:
                error = CheckpointWriteError(f"{where}: cannot download it into {scratch.parent} ({exc.strerror or exc}); "
                                             "free space there or set TMPDIR")
            failed = [m for m in dist_util.all_gather(error.message if error else None, self.ranks.group) if m]
            if error is not None:
                raise error
            if failed:  # another rank could not download it: nobody enters DCP's collective load
                raise CorruptCheckpoint(f"{where}: another rank could not read it ({failed[0]})")
            return load_local(scratch, ranks=self.ranks, source=where)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _plain_tensors(state: TrainingState) -> bool:
    """Every tensor of the state is a plain (or Parameter) tensor: what ``Stager`` copies faithfully."""
    import torch

    def plain(obj: Any) -> bool:
        if isinstance(obj, torch.Tensor):
            return type(obj) in (torch.Tensor, torch.nn.Parameter)
        if isinstance(obj, Mapping):
            return all(plain(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return all(plain(v) for v in obj)
        return True

    return plain(state.model) and plain(state.optimizer) and plain(state.extra)


__all__ = ["ShardedObjectStorage", "upload_file"]
