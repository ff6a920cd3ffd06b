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
from pathlib import Path
from typing import Any, Mapping

import torch

from envkit import distributed as dist_util
from envkit.checkpoint import training_state as ts
from envkit.checkpoint.dcp_format import STAMP_NAME, SUFFIX, file_digest, manifest_digest
from envkit.checkpoint.paths import temp_path_for
from envkit.checkpoint.stamp import Payload, Stamp
from envkit.checkpoint.writer import fsync_dir
from envkit.errors import BadInput, CheckpointWriteError

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


def save_sharded(mgr: Any, path: Path, meta: dict[str, Any], *, epoch: int, step: int, metrics: Mapping[str, Any],
                 extra: Mapping[str, Any] | None, model: Any, optimizer: Any, scheduler: Any, scaler: Any, sampler: Any) -> Path:
    final = sharded_path(path)
    rank, world, group, src = mgr.rank, dist_util.world_size(mgr.group), mgr.group, mgr._rank0()
    tmp = temp_path_for(final)
    made = None
    if rank == 0:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as exc:
            made = f"cannot create {tmp} ({exc.strerror})"
    made = dist_util.broadcast_object(made, src=src, group=group)
    if made is not None:
        raise CheckpointWriteError(f"{final}: save failed: {made}; earlier checkpoints are untouched")
    tmp = mgr.directory / dist_util.broadcast_object(tmp.name, src=src, group=group)

    error, records = None, {}
    try:
        opt = optimizer.state_dict() if optimizer is not None else None
        _write_rank_file(tmp, rank, {
            # param_groups are small plain data: here, not in DCP (newer DCP flattens lists)
            "optimizer_param_groups": opt["param_groups"] if opt is not None else None,
            "format": "envkit.training/1", "epoch": epoch, "step": step, "metrics": dict(metrics), "extra": dict(extra or {}),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "sampler": sampler.state_dict() if sampler is not None else None,
            "rng": ts.capture_rng(), "rank": rank, "world_size": world,
        })
        state: dict[str, Any] = {}
        if model is not None:
            flatten("model", ts.model_state(model), state)
        if opt is not None:
            flatten("optimizer/state", {str(k): v for k, v in opt["state"].items()}, state)
        _dcp_save(state, tmp, group)
        records = {n: {"size": (tmp / n).stat().st_size, "digest": file_digest(tmp / n, mgr.digest)} for n in _own_files(tmp, rank)}
    except Exception as exc:  # the other ranks must hear of it
        error = f"rank {rank}: {exc}"
    gathered = dist_util.all_gather((error, records), group)
    errors = [e for e, _ in gathered if e]
    outcome = None
    if rank == 0:
        try:
            if errors:
                raise CheckpointWriteError(f"{final}: save failed ({errors[0]})")
            outcome = _commit(mgr, tmp, final, [r for _, r in gathered], meta, world)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            outcome = str(exc) or type(exc).__name__
    outcome = dist_util.broadcast_object(outcome, src=src, group=group)
    if outcome is not None:
        raise CheckpointWriteError(
            f"{outcome}" if outcome.startswith(str(final)) else f"{final}: save failed ({outcome}); earlier checkpoints are untouched"
        )
    return final


def _commit(mgr: Any, tmp: Path, final: Path, per_rank: list[dict[str, Any]], meta: dict[str, Any], world: int) -> None:
    """Rank 0: the rest of the files' digests, fsync, rename into place, then the stamp."""
    files: dict[str, dict[str, Any]] = {}
    for records in per_rank:
        files.update(records)
    for name in sorted(os.listdir(tmp)):  # DCP's .metadata, written by the coordinator
        if name not in files:
            files[name] = {"size": (tmp / name).stat().st_size, "digest": file_digest(tmp / name, mgr.digest)}
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
    total = sum(r["size"] for r in files.values())
    stamp = Stamp(mgr._fingerprint, Payload(manifest_digest(files, mgr.digest), total), {**meta, "world_size": world, "format": "dcp"})
    doc = {**stamp.to_json(), "files": files}
    marker = final / f".{STAMP_NAME}.tmp-{os.getpid()}"
    with open(marker, "wb") as fh:
        fh.write(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(marker, final / STAMP_NAME)
    fsync_dir(final)
    mgr._apply_retention(final)


def _allocate(folder: Path) -> dict[str, Any]:
    """Empty tensors of every saved shape (a fresh optimizer has no state to load into)."""
    metadata = _dcp().FileSystemReader(str(folder)).read_metadata()
    out: dict[str, Any] = {}
    for key, item in metadata.state_dict_metadata.items():
        props = getattr(item, "properties", None)
        size = getattr(item, "size", None)
        out[key] = torch.empty(tuple(size), dtype=props.dtype) if size is not None and props is not None else None
    return out


def load_sharded(mgr: Any, path: Path, *, model: Any, optimizer: Any, scheduler: Any, scaler: Any, sampler: Any) -> Any:
    from envkit.checkpoint.compat import guard
    from envkit.checkpoint.manager import ResumeInfo, warn_missing_state

    report = guard(path, mgr.policy)
    saved_world = report.info.stamp.meta.get("world_size") if report.info.stamp else None
    world = dist_util.world_size(mgr.group)
    if saved_world != world:
        raise BadInput(f"{path}: saved by {saved_world} ranks, this job has {world}; resume it with {saved_world} ranks")
    own = torch.load(path / f"rank{mgr.rank}.pt", map_location="cpu", weights_only=True)
    flat = _allocate(path)
    _dcp_load(flat, path, mgr.group)
    if model is not None:
        ts.load_model_state(model, unflatten(flat, "model"))
    if optimizer is not None and own.get("optimizer_param_groups") is not None:
        optimizer.load_state_dict(_optimizer_from_flat({"state": unflatten(flat, "optimizer/state"),
                                                        "param_groups": own["optimizer_param_groups"]}))
    for target, key in ((scheduler, "scheduler"), (scaler, "scaler"), (sampler, "sampler")):
        if target is not None and own.get(key) is not None:
            target.load_state_dict(own[key])
    held = {
        "model": any(k.startswith(f"model{SEP}") for k in flat),
        "optimizer": own.get("optimizer_param_groups") is not None,
        **{k: own.get(k) is not None for k in ("scheduler", "scaler", "sampler")},
    }
    passed = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "sampler": sampler}
    warn_missing_state(path, [k for k, v in passed.items() if v is not None and not held[k]], stacklevel=4)
    ts.restore_rng(own["rng"])
    if sampler is not None and hasattr(sampler, "restore_rng_when_iterated"):
        sampler.restore_rng_when_iterated(own["rng"])
    return ResumeInfo(path, int(own["epoch"]), int(own["step"]), own.get("metrics") or {}, own.get("extra") or {})
