"""Sharded saves: every rank writes its part through torch.distributed.checkpoint (DCP).

Layout of ``<name>.dcp/``: DCP's files (``.metadata``, ``__<rank>_<n>.distcp``), one small
``rank<r>.pt`` per rank (its RNG, sampler, scheduler, scaler: what is not replicated), and
``envkit.json``, the commit marker (see dcp_format). Steps: rank 0 makes a temporary
folder; all ranks write; each hashes the files it wrote; rank 0 renames the folder into
place and writes the stamp; every rank learns the outcome (or the error) before returning.

torch 2.0.1 has only ``save_state_dict``/``load_state_dict``; newer torch ``save``/``load``.
Nested state is flattened here to ``model/<key>`` and ``optimizer/state/<i>/<name>``, so
that every torch version sees the same flat keys.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from envkit import distributed as dist_util
from envkit.atomic import fsync_dir
from envkit.checkpoint.dcp_format import (
    STAMP_NAME,
    SUFFIX,
    file_digest,
    manifest_digest,
)
from envkit.checkpoint.paths import temp_path_for
from envkit.checkpoint.ranks import Ranks
from envkit.checkpoint.reader import CheckpointFile
from envkit.checkpoint.stamp import Payload, Stamp
from envkit.checkpoint.state import TrainingState
from envkit.checkpoint.storage import LocalFolder
from envkit.errors import BadInput, CheckpointWriteError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from envkit.checkpoint.background import StagedSave, Stager
    from envkit.fingerprint import Fingerprint
    from envkit.policy import Policy

SEP = "/"


def sharded_path(path: Path) -> Path:
    return path.with_name(path.stem + SUFFIX) if path.suffix else path.with_name(path.name + SUFFIX)


def _dcp() -> Any:
    import torch.distributed.checkpoint as dcp

    return dcp


def _dcp_save(state: dict[str, Any], folder: Path, group: Any) -> None:
    dcp = _dcp()
    writer = dcp.FileSystemWriter(str(folder))
    if hasattr(dcp, "save"):
        dcp.save(state, storage_writer=writer, process_group=group)
    else:  # torch 2.0 / 2.1
        dcp.save_state_dict(state, storage_writer=writer, process_group=group)


def _dcp_load(state: dict[str, Any], folder: Path, group: Any) -> None:
    dcp = _dcp()
    reader = dcp.FileSystemReader(str(folder))
    if hasattr(dcp, "load"):
        dcp.load(state, storage_reader=reader, process_group=group)
    else:
        dcp.load_state_dict(state, storage_reader=reader, process_group=group)


def flatten(prefix: str, obj: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        for k, v in obj.items():
            flatten(f"{prefix}{SEP}{k}", v, out)
    else:
        out[prefix] = obj
    return out


def unflatten(flat: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in flat.items():
        if not key.startswith(prefix + SEP):
            continue
        parts = key[len(prefix) + 1 :].split(SEP)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return root


def _optimizer_from_flat(doc: dict[str, Any]) -> dict[str, Any]:
    state = dict(sorted((int(k), v) for k, v in (doc.get("state") or {}).items()))  # DCP returns keys in its own order
    return {"state": state, "param_groups": doc["param_groups"]}


def _write_rank_file(folder: Path, rank: int, doc: dict[str, Any]) -> None:
    with open(folder / f"rank{rank}.pt", "wb") as fh:
        torch.save(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _own_files(folder: Path, rank: int) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n == f"rank{rank}.pt" or n.startswith(f"__{rank}_"))


@dataclass
class _PendingFolder:
    final: Path
    tmp: Path
    records: list[dict[str, Any]]  # every rank's files (rank 0; empty on the others)
    error: str | None  # the first rank's error (rank 0)
    fingerprint: Any
    meta: dict[str, Any]


class ShardedFolderStorage(LocalFolder):
    """A folder per checkpoint (``<name>.dcp``): DCP's files, one ``rank<r>.pt`` per rank, ``envkit.json`` last.

    Needs an initialised process group: ``write``, ``commit`` and ``load`` are collectives.
    """

    def __init__(self, root: Path, *, digest: str, ranks: Ranks) -> None:
        super().__init__(root, digest=digest, ranks=ranks)
        self._background: ShardedFolderStorage | None = None  # the same storage on the background thread's own group

    def name_for(self, name: str) -> str:
        return sharded_path(Path(name)).name

    def write(self, name: str, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
              parts: Mapping[str, Any], fingerprint: Fingerprint, meta: Mapping[str, Any]) -> _PendingFolder:
        ranks = self.ranks
        final = self.root / name
        rank = ranks.rank
        tmp = self._temp_folder(final)
        error, records = None, {}
        try:
            write_part(tmp, ranks, epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts)
            records = self._records(tmp)
        except Exception as exc:  # noqa: BLE001 - any error goes to the other ranks, which raise it
            error = f"rank {rank}: {exc}"
        return self._gathered(final, tmp, error, records, fingerprint, meta)

    def stage(self, name: str, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
              parts: Mapping[str, Any], fingerprint: Fingerprint, meta: Mapping[str, Any], stager: Stager) -> StagedSave | None:
        """A background save through DCP's ``async_save`` (torch 2.3 and later; None, with a warning once, before).

        Here, on the caller's thread: the temporary folder (a broadcast on the caller's group), the
        capture, this rank's small ``rank<r>.pt``, and DCP's staging of the tensors to CPU memory.
        DCP writes the shards on its thread; then ``write()``, on the background thread, hashes this
        rank's files, gathers every rank's and commits, all on a gloo process group of its own
        (made here, on the first background save: a collective), never on the caller's group,
        which the training loop keeps using meanwhile.
        """
        from envkit.checkpoint.background import StagedSave, warn_once

        dcp = _dcp()
        if not hasattr(dcp, "async_save"):
            warn_once("dcp-async", f"torch {torch.__version__} has no torch.distributed.checkpoint.async_save (torch 2.3 and "
                      "later): sharded saves with async_save=True are synchronous; upgrade torch to write them in the background")
            return None
        ranks = self.ranks
        final = self.root / name
        rank = ranks.rank
        mine = self._background_storage()
        tmp = self._temp_folder(final)
        error: str | None = None
        future: Any = None
        try:
            state = TrainingState.capture(epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts)
            _write_rank_file(tmp, rank, _rank_doc(state, rank, ranks.world))
            future = dcp.async_save(_flat(state), storage_writer=dcp.FileSystemWriter(str(tmp)), process_group=mine.ranks.group)
        except Exception as exc:  # noqa: BLE001 - any error goes to the other ranks (in write), which raise it
            error = f"rank {rank}: {exc}"

        def write() -> Path:
            failed, records = error, {}
            if future is not None:
                try:
                    getattr(future, "upload_completion", future).result()  # a Future, or newer DCP's AsyncSaveResponse
                    records = mine._records(tmp)
                except Exception as exc:  # noqa: BLE001 - any error goes to the other ranks, which raise it
                    failed = f"rank {rank}: {exc}"
            return mine.commit(mine._gathered(final, tmp, failed, records, fingerprint, meta))

        return StagedSave(final, write)

    def _background_storage(self) -> ShardedFolderStorage:
        """This storage on a gloo process group of its own, for the background thread (made once: a collective)."""
        if self._background is None:
            self._background = ShardedFolderStorage(self.root, digest=self.digest, ranks=background_ranks(self.ranks))
        return self._background

    def _temp_folder(self, final: Path) -> Path:
        """Rank 0 makes the temporary folder; every rank gets its name (a collective) or the error."""
        ranks = self.ranks
        tmp = temp_path_for(final)
        made = None
        if ranks.rank == 0:
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
            except OSError as exc:
                made = f"cannot create {tmp} ({exc.strerror})"
        made = ranks.broadcast(made)
        if made is not None:
            raise CheckpointWriteError(f"{final}: save failed: {made}; earlier checkpoints are untouched")
        return self.root / ranks.broadcast(tmp.name)

    def _records(self, tmp: Path) -> dict[str, dict[str, Any]]:
        return file_records(tmp, _own_files(tmp, self.ranks.rank), self.digest)

    def _gathered(self, final: Path, tmp: Path, error: str | None, records: dict[str, Any], fingerprint: Any,
                  meta: Mapping[str, Any]) -> _PendingFolder:
        """Every rank's error and files on rank 0 (a collective)."""
        gathered = dist_util.all_gather((error, records), self.ranks.group)
        errors = [e for e, _ in gathered if e]
        return _PendingFolder(final, tmp, [r for _, r in gathered] if self.ranks.rank == 0 else [], errors[0] if errors else None,
                              fingerprint, dict(meta))

    def commit(self, pending: _PendingFolder, then: Callable[[Path], None] | None = None) -> Path:
        final, outcome = pending.final, None
        if self.ranks.rank == 0:
            try:
                if pending.error:
                    raise CheckpointWriteError(f"{final}: save failed ({pending.error})")
                _commit(pending, self.digest, self.ranks.world)
                if then is not None:
                    then(final)
            except Exception as exc:  # noqa: BLE001 - any error is broadcast, so every rank raises it
                shutil.rmtree(pending.tmp, ignore_errors=True)
                outcome = str(exc) or type(exc).__name__
        outcome = self.ranks.broadcast(outcome)
        if outcome is not None:
            raise CheckpointWriteError(
                f"{outcome}" if outcome.startswith(str(final)) else f"{final}: save failed ({outcome}); earlier checkpoints are untouched"
            )
        return final

    def abort(self, pending: _PendingFolder) -> None:
        if self.ranks.rank == 0:
            shutil.rmtree(pending.tmp, ignore_errors=True)

    def load(self, name: str, *, policy: Policy, map_location: Any = None, file: CheckpointFile | None = None) -> TrainingState:
        return load_folder(self.root / name, ranks=self.ranks, policy=policy, file=file)


def write_part(folder: Path, ranks: Ranks, *, epoch: int, step: int, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None,
               parts: Mapping[str, Any]) -> None:
    """This rank's part of a sharded save into ``folder``: its ``rank<r>.pt``, then its DCP shards (a collective;
    rank 0 also writes DCP's ``.metadata``). The folder may be shared by every rank or this rank's own."""
    write_state_part(folder, ranks, TrainingState.capture(epoch=epoch, step=step, metrics=metrics, extra=extra, parts=parts))


def write_state_part(folder: Path, ranks: Ranks, state: TrainingState) -> None:
    """``write_part`` of a state captured already (a background save's staged copy)."""
    _write_rank_file(folder, ranks.rank, _rank_doc(state, ranks.rank, ranks.world))
    _dcp_save(_flat(state), folder, ranks.group)


def background_ranks(ranks: Ranks) -> Ranks:
    """These ranks on a gloo process group of their own, for a background thread's collectives (a collective: every
    rank of ``ranks.group`` calls it), so that they never interleave with the training loop's on its group."""
    import torch.distributed as dist

    group = ranks.group
    if group is None:
        own = dist.new_group(backend="gloo")
    else:  # only the ranks of the group make it
        own = dist.new_group(ranks=dist.get_process_group_ranks(group), backend="gloo", use_local_synchronization=True)
    return Ranks(True, ranks.rank, own)


def file_records(folder: Path, names: Iterable[str], digest: str) -> dict[str, dict[str, Any]]:
    """name -> {size, digest} of files of ``folder``: what ``envkit.json`` lists."""
    return {n: {"size": (folder / n).stat().st_size, "digest": file_digest(folder / n, digest)} for n in names}


def stamp_document(files: Mapping[str, Mapping[str, Any]], *, fingerprint: Any, meta: Mapping[str, Any], digest: str,
                   world: int) -> bytes:
    """``envkit.json`` of a sharded checkpoint whose files are ``files`` (the commit marker: written last)."""
    total = sum(int(r["size"]) for r in files.values())
    stamp = Stamp(fingerprint, Payload(manifest_digest(files, digest), total), {**meta, "world_size": world, "format": "dcp"})
    return json.dumps({**stamp.to_json(), "files": dict(files)}, sort_keys=True, separators=(",", ":")).encode()


def _flat(state: TrainingState) -> dict[str, Any]:
    """The tensors DCP writes, under flat keys (``model/<key>``, ``optimizer/state/<i>/<name>``)."""
    flat: dict[str, Any] = {}
    if state.model is not None:
        flatten("model", state.model, flat)
    if state.optimizer is not None:
        flatten("optimizer/state", {str(k): v for k, v in state.optimizer["state"].items()}, flat)
    return flat


def _rank_doc(state: TrainingState, rank: int, world: int) -> dict[str, Any]:
    """What a rank file holds: the state but the tensors DCP writes (param_groups are small plain data: here,
    not in DCP, as newer DCP flattens lists)."""
    doc = state.to_state()
    del doc["model"]
    opt = doc.pop("optimizer")
    return {"optimizer_param_groups": opt["param_groups"] if opt is not None else None, **doc,
            "metrics": dict(state.metrics), "rank": rank, "world_size": world}


def _commit(pending: _PendingFolder, digest: str, world: int) -> None:
    """Rank 0: the rest of the files' digests, fsync, rename into place, then the stamp."""
    tmp, final = pending.tmp, pending.final
    files: dict[str, dict[str, Any]] = {}
    for records in pending.records:
        files.update(records)
    for name in sorted(os.listdir(tmp)):  # DCP's .metadata, written by the coordinator
        if name not in files:
            files.update(file_records(tmp, [name], digest))
            fd = os.open(tmp / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(tmp)
    if final.exists():  # the same step saved again: keep the old one until the new one is in place
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
    document = stamp_document(files, fingerprint=pending.fingerprint, meta=pending.meta, digest=digest, world=world)
    marker = final / f".{STAMP_NAME}.tmp-{os.getpid()}"
    with open(marker, "wb") as fh:
        fh.write(document)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(marker, final / STAMP_NAME)
    fsync_dir(final)


def _allocate(folder: Path) -> dict[str, Any]:
    """Empty tensors of every saved shape (a fresh optimizer has no state to load into)."""
    metadata = _dcp().FileSystemReader(str(folder)).read_metadata()
    out: dict[str, Any] = {}
    for key, item in metadata.state_dict_metadata.items():
        props = getattr(item, "properties", None)
        size = getattr(item, "size", None)
        out[key] = torch.empty(tuple(size), dtype=props.dtype) if size is not None and props is not None else None
    return out


def load_folder(path: Path, *, ranks: Ranks, policy: Policy, file: CheckpointFile | None = None) -> TrainingState:
    """The guard, then this rank's part of a sharded checkpoint (a collective), as a TrainingState."""
    from envkit.checkpoint.resume_check import guard

    report = guard(path, policy, info=file)
    check_world(path, report.info, ranks)
    return load_local(path, ranks=ranks, source=path)


def check_world(path: Path, info: CheckpointFile, ranks: Ranks) -> None:
    """BadInput unless this job has as many ranks as saved the checkpoint ``info`` describes."""
    saved_world = info.stamp.meta.get("world_size") if info.stamp else None
    world = ranks.world
    if saved_world != world:
        raise BadInput(f"{path}: saved by {saved_world} ranks, this job has {world}; resume it with {saved_world} ranks")


def load_local(folder: Path, *, ranks: Ranks, source: Path) -> TrainingState:
    """This rank's part of the sharded checkpoint in the local ``folder`` (a collective), guarded already;
    ``source``: where it came from, for messages (the folder itself, or the bucket prefix it was downloaded from)."""
    own = torch.load(folder / f"rank{ranks.rank}.pt", map_location="cpu", weights_only=True)
    flat = _allocate(folder)
    _dcp_load(flat, folder, ranks.group)
    groups = own.get("optimizer_param_groups")
    model = unflatten(flat, "model") if any(k.startswith(f"model{SEP}") for k in flat) else None
    optimizer = _optimizer_from_flat({"state": unflatten(flat, "optimizer/state"), "param_groups": groups}) if groups is not None else None
    return TrainingState.from_state({**own, "model": model, "optimizer": optimizer}, source=source)
