"""Sharded checkpoints on disk: a folder of torch.distributed.checkpoint files plus ``envkit.json``.

The folder is written under a temporary name, renamed to its final name, and only then
committed by writing ``envkit.json`` (atomically): a folder without it is an interrupted
save, never a checkpoint. The stamp is the usual ``envkit.stamp/1`` document plus
``files``: every file's size and digest. Its payload digest covers the canonical JSON of
that list, its length the files' total size. No torch import here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envkit.checkpoint.stamp import MAX_STAMP_BYTES, Stamp
from envkit.errors import MalformedStamp, NotACheckpoint

STAMP_NAME = "envkit.json"
FORMAT = "dcp"
SUFFIX = ".dcp"


def committed_size(folder: str) -> int | None:
    """A sharded folder's size key, its stamp's size (the stamp is written last); None: not committed."""
    try:
        return os.stat(os.path.join(folder, STAMP_NAME)).st_size
    except OSError:
        return None


def manifest_digest(files: Mapping[str, Mapping[str, Any]], algorithm: str) -> str:
    from envkit.checkpoint.hashing import new_hasher

    hasher = new_hasher(algorithm)
    hasher.update(json.dumps(files, sort_keys=True, separators=(",", ":")).encode())
    return f"{algorithm}:{hasher.hexdigest()}"


def file_digest(path: Path, algorithm: str) -> str:
    from envkit.checkpoint.hashing import digest_of_file

    with open(path, "rb") as fh:
        return digest_of_file(fh, os.fstat(fh.fileno()).st_size, algorithm)


def read_stamp_doc(path: Path) -> dict[str, Any]:
    stamp_path = path / STAMP_NAME
    try:
        with open(stamp_path, "rb") as fh:
            data = fh.read(MAX_STAMP_BYTES + 1)
    except FileNotFoundError:
        raise NotACheckpoint(
            f"{path}: a folder without {STAMP_NAME}: not a committed sharded checkpoint (an interrupted save?); "
            "pass a checkpoint file or a sharded checkpoint folder"
        ) from None
    except OSError as exc:
        raise NotACheckpoint(f"{stamp_path}: cannot read ({exc.strerror}); check the folder's permissions") from None
    if len(data) > MAX_STAMP_BYTES:
        raise MalformedStamp(f"{stamp_path}: over the {MAX_STAMP_BYTES} byte limit; the folder was not written by envkit")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise MalformedStamp(f"{stamp_path}: not valid JSON ({exc}); the commit marker is damaged, resume from an earlier checkpoint") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and "/" not in k and k not in (".", "..", STAMP_NAME) and isinstance(v, dict)
        and isinstance(v.get("size"), int) and isinstance(v.get("digest"), str)
        for k, v in files.items()
    ):
        raise MalformedStamp(f"{stamp_path}: the list of files is missing or malformed; resume from an earlier checkpoint")
    return doc


def read_dir_stamp(path: Path) -> tuple[Stamp, dict[str, dict[str, Any]]]:
    doc = read_stamp_doc(path)
    return Stamp.from_json(doc, source=str(path / STAMP_NAME)), doc["files"]


def verify_files(path: Path, stamp: Stamp, files: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The first problem found, or None when every file is there, whole and nothing else is."""
    if stamp.payload is None:
        return f"{path}: the stamp has no payload record, so there is nothing to verify against"
    algorithm = stamp.payload.algorithm
    if manifest_digest(files, algorithm) != stamp.payload.digest:
        return f"{path}: the list of files does not match the stamp's digest: {STAMP_NAME} was edited"
    present = {e.name for e in os.scandir(path)} - {STAMP_NAME}
    extra = sorted(present - set(files))
    if extra:
        return f"{path}: {extra[0]} is not one of the files the stamp lists"
    for name in sorted(files):
        record, f = files[name], path / name
        try:
            size = f.stat().st_size
        except OSError:
            return f"{path}: {name} is missing; resume from an earlier checkpoint"
        if size != record["size"]:
            return f"{path}: {name} is {size} bytes, the stamp records {record['size']}: truncated or changed"
        actual = file_digest(f, algorithm)
        if actual != record["digest"]:
            return f"{path}: {name} digest mismatch (recorded {record['digest']}, found {actual}): the bytes changed after saving"
    return None
