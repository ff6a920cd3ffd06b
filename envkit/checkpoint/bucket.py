"""``ObjectStorage``: a CheckpointManager's checkpoints under a bucket prefix (``CheckpointManager("s3://bucket/run")``).

A ``CheckpointStorage`` (storage.py) and a ``listing.Listing`` (``listing.ObjectListing``): one
stamped torch.save object per checkpoint, written as remote.py describes (a multipart upload to
the final key, completed at commit, confirmed by a HEAD before retention deletes anything), the
one-writer lock an object created with ``If-None-Match: *`` (``remote.ObjectLock``), the index
``.envkit-index.json`` an object of the prefix, so that ``latest()`` and ``envkit ls`` read it and
one LIST. Distributed, rank 0 uploads the replicated state with every rank's RNG and every rank learns the
outcome (as ``single_file.SingleFileStorage`` does). Sharded (``.dcp``) saves are ``bucket_sharded.ShardedObjectStorage``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.checkpoint.listing import ObjectListing
from envkit.checkpoint.paths import TEMP_MARK
from envkit.checkpoint.reader import CheckpointFile, read_stamp
from envkit.checkpoint.remote import LOCK_NAME, ObjectLock, _Upload, remote_error, upload_stamped
from envkit.checkpoint.remote_verify import KeepsVerifiedCopy
from envkit.checkpoint.state import TrainingState
from envkit.checkpoint.urls import ObjectPath
from envkit.errors import BadInput, CheckpointWriteError

if False:  # TYPE_CHECKING, without importing typing's machinery at run time
    from envkit.checkpoint.background import StagedSave, Stager
    from envkit.checkpoint.ranks import Ranks
    from envkit.fingerprint import Fingerprint
    from envkit.policy import Policy


@dataclass
class _PendingObject:
    name: str
    upload: _Upload | None
    error: BaseException | None = None



class ObjectStorage(ObjectListing, KeepsVerifiedCopy):
    """``CheckpointStorage`` for a bucket prefix: one stamped torch.save object per checkpoint."""

    def __init__(self, root: Path, *, sharded: bool, digest: str, ranks: Ranks) -> None:
        if not isinstance(root, ObjectPath):
            raise BadInput(f"{root}: not a URL")
        super().__init__(root)
        if sharded:
            raise BadInput(f"{root}: ObjectStorage keeps one object per checkpoint; sharded checkpoints in a bucket are "
                           "bucket_sharded.ShardedObjectStorage's (CheckpointManager(url, sharded=True) picks it)")
        self.digest, self.ranks = digest, ranks

    def name_for(self, name: str) -> str:
        return name

    def path_of(self, name: str) -> Path:
        return self.location(name)

    def prepare(self) -> None:
        """The bucket must exist and answer: one LIST (what every listing needs anyway)."""
        bucket = self.key.split("/", 1)[0]
        try:
            self.fs.ls(self.key, refresh=True)
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower() or not self.fs.exists(bucket):
                raise remote_error(self.root, FileNotFoundError("bucket does not exist")) from None
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self.root, exc) from None

    def lock(self) -> ObjectLock:
        return ObjectLock(self.fs, self._key(LOCK_NAME), self.url / LOCK_NAME)

    def ephemeral_warning(self) -> str | None:
        return None if self.url.scheme != "memory" else f"{self.root}: memory:// lives in this process only; use a bucket"

    def remove_stale(self) -> list[Path]:
        """Abort the incomplete uploads under the prefix (writers that died; this one holds the lock) and old temporary keys."""
        removed: list[Path] = []
        bucket, _, prefix = self.key.partition("/")
        if self.url.scheme in ("s3", "s3a"):
            try:
                uploads = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=f"{prefix}/").get("Uploads") or []
                for up in uploads:
                    self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                    removed.append(ObjectPath(f"{self.url.scheme}://{bucket}/{up['Key']}"))
            except Exception:  # noqa: BLE001 - a cleanup that fails costs storage, not correctness
                pass
        for entry in self._entries():
            name = str(entry["name"]).rsplit("/", 1)[-1]
            if TEMP_MARK in name and name.startswith("."):
                try:
                    self.fs.rm_file(self._key(name))
                    removed.append(self.location(name))
                except Exception:  # noqa: BLE001
                    pass
        return removed

    def write(self, name: str, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
              parts: Mapping[str, Any], fingerprint: Fingerprint, meta: Mapping[str, Any]) -> _PendingObject:
        from envkit.checkpoint.stamp import DICT_KEY, Stamp

        pending = _PendingObject(name, None)
        try:
            if self.ranks.distributed:  # rank 0 uploads the replicated state and every rank's RNG (single_file.py alike)
                from envkit.checkpoint.single_file import capture_on_rank0

                captured = capture_on_rank0(self.ranks, epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts)
                if captured.state is None:  # another rank, or an error that commit raises on every rank
                    pending.error = captured.error
                    return pending
                training = captured.state
            else:
                training = TrainingState.capture(epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts)
            state = training.to_state()
            state[DICT_KEY] = Stamp(fingerprint, None, meta).to_json()
            pending.upload = upload_stamped(state, self.fs, self._key(name), self.location(name),
                                            stamp_for=lambda payload: Stamp(fingerprint, payload, meta), digest=self.digest)
        except Exception as exc:  # noqa: BLE001 - raised by commit, as the local storages do
            pending.error = exc
        return pending

    def stage(self, name: str, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
              parts: Mapping[str, Any], fingerprint: Fingerprint, meta: Mapping[str, Any], stager: Stager) -> StagedSave | None:
        """A background save (background.py): the state captured and copied to CPU memory here, on the caller's thread
        (an error here is raised now: nothing is in flight yet); ``write()``, on the background thread, serialises,
        hashes and uploads the copy (``remote.upload_stamped``: a multipart upload to the final key) and commits it as
        a synchronous save does (``commit``: the upload's completion, then a HEAD that confirms its size), returning
        its URL. Any failure aborts the upload, so nothing appears under the key (a kill leaves an incomplete upload,
        never listed, that the next manager aborts), and the error is raised when the save is collected. Retention
        and the index wait for that too (the manager, on the caller's thread). None, saved synchronously: a
        distributed run (``write`` answers it)."""
        from envkit.checkpoint.background import StagedSave, synchronize_devices, warn_once

        if self.ranks.distributed:
            warn_once("bucket-distributed", f"{self.root}: a distributed run saves to a bucket synchronously for now; "
                      "async_save=True has no effect here")
            return None

        captured = TrainingState.capture(epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts)
        copy = stager.stage(captured)
        synchronize_devices()
        meta, path = dict(meta), self.location(name)

        def write() -> Path:
            from envkit.checkpoint.stamp import DICT_KEY, Stamp

            state = copy.to_state()
            state[DICT_KEY] = Stamp(fingerprint, None, meta).to_json()
            upload = upload_stamped(state, self.fs, self._key(name), path,
                                    stamp_for=lambda payload: Stamp(fingerprint, payload, meta), digest=self.digest)
            return self.commit(_PendingObject(name, upload))

        return StagedSave(path, write)

    def commit(self, pending: _PendingObject, then: Callable[[Path], None] | None = None) -> Path:
        if not self.ranks.distributed:
            return self._commit(pending, then)
        from envkit.checkpoint.background import agree

        error: BaseException | None = None
        try:
            if self.ranks.rank == 0 or pending.error is not None:
                self._commit(pending, then)
        except Exception as exc:  # noqa: BLE001 - rank 0's error is raised on every rank (a broadcast)
            error = exc
        agree(self.ranks, error)
        return self.location(pending.name)

    def _commit(self, pending: _PendingObject, then: Callable[[Path], None] | None) -> Path:
        path = self.location(pending.name)
        if pending.error is not None:
            raise pending.error
        upload = pending.upload
        assert upload is not None
        try:
            upload.commit()
            size = int(self.fs.info(upload.key, refresh=True)["size"])  # HEAD: confirmed before anything is deleted
        except Exception as exc:  # noqa: BLE001
            upload.discard()
            raise CheckpointWriteError(f"{remote_error(path, exc, 'write').message}; earlier checkpoints are untouched") from None
        if size != upload.size:
            raise CheckpointWriteError(f"{path}: the bucket holds {size} bytes, the save wrote {upload.size}; earlier "
                                       "checkpoints are untouched (retention skipped)")
        if then is not None:
            then(path)
        return path

    def abort(self, pending: _PendingObject) -> None:
        if pending.upload is not None:
            pending.upload.discard()

    def read(self, name: str) -> CheckpointFile:
        return read_stamp(self.location(name))

    def load(self, name: str, *, policy: Policy, map_location: Any = None, file: CheckpointFile | None = None) -> TrainingState:
        from envkit.checkpoint.resume_check import load

        path = self.location(name)
        return TrainingState.from_state(load(path, map_location=map_location, policy=policy, verify=False, info=file,
                                             local_copy=self.kept(path)), source=path)

    def delete(self, name: str) -> None:
        try:
            if name.endswith(".dcp"):
                self.fs.rm(self._key(name), recursive=True)
            else:
                self.fs.rm_file(self._key(name))
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self.location(name), exc, "delete") from None

    def list_committed(self) -> list[str]:
        return list(self.committed_sizes())

    def is_committed(self, name: str) -> bool:
        return name in self.committed_sizes()


__all__ = ["ObjectStorage"]
