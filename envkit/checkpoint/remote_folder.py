"""Sharded (``.dcp``) checkpoints at a URL, read: ``s3://bucket/run/x.dcp`` is a prefix of objects.

The layout is the local one (dcp_format, folder_format): the DCP files, one ``rank<r>.pt`` per
rank and ``envkit.json``, the commit marker, written last. A prefix without it is an
interrupted save, never a checkpoint. What each read costs:

- the stamp (``check``, ``inspect``, ``guard``, the listing's stamp reads): one ranged GET of
  ``<prefix>/envkit.json``, bounded by the stamp size limit;
- ``verify``: that GET, one LIST of the prefix (a missing, extra or resized object is found
  there), then every file streamed once in 32 MiB ranged reads and hashed;
- ``download_folder`` (a resume): every file the stamp lists, into a local folder.

No torch import here, and none of envkit's readers (reader.py and integrity.py dispatch here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from envkit.checkpoint.folder_format import STAMP_NAME, FolderStamp, manifest_digest, parse_stamp_doc
from envkit.checkpoint.remote import STREAM_BLOCK, _call, remote_error, split, split_for_reading
from envkit.checkpoint.stamp import MAX_STAMP_BYTES, Stamp
from envkit.checkpoint.urls import ObjectPath
from envkit.errors import NotACheckpoint

SUFFIX = ".dcp"


def is_folder_url(location: object) -> bool:
    """A URL naming a sharded checkpoint (its last part ends in ``.dcp``): a prefix, not one object."""
    return str(location).rstrip("/").endswith(SUFFIX)


def read_folder_url(location: str | os.PathLike[str]) -> tuple[ObjectPath, FolderStamp]:
    """The folder's ``envkit.json``, checked as a local one is: one ranged GET."""
    fs, key, where = split_for_reading(location)
    marker = where / STAMP_NAME
    try:
        data = bytes(fs.cat_file(f"{key}/{STAMP_NAME}", start=0, end=MAX_STAMP_BYTES + 1))
    except FileNotFoundError:
        raise NotACheckpoint(
            f"{where}: a prefix without {STAMP_NAME}: not a committed sharded checkpoint (an interrupted save?); "
            "pass a checkpoint, or run `envkit ls` on the prefix above it"
        ) from None
    except Exception as exc:  # noqa: BLE001 - one line that says what to set
        raise remote_error(marker, exc) from None
    doc = parse_stamp_doc(data, marker)
    return where, FolderStamp(Stamp.from_json(doc, source=str(marker)), doc["files"], doc.get("layout"))


def listed_sizes(fs: Any, key: str, where: ObjectPath) -> dict[str, int]:
    """Every object under the prefix (relative name -> size), envkit.json included: one LIST (a page per 1,000)."""
    fs.invalidate_cache(key)
    found = _call(where, fs.find, key, detail=True)
    out: dict[str, int] = {}
    for name, entry in found.items():
        if entry.get("type") == "directory":
            continue
        out[str(name)[len(key) + 1:]] = int(entry.get("size") or 0)
    return out


def verify_folder_url(where: ObjectPath, stamp: Stamp, files: dict[str, dict[str, Any]], progress: Any = None,
                      copy: Any = None) -> str | None:
    """The first problem found (None: every file is there, whole, and nothing else is), as ``folder_format.verify_files``.

    ``copy``: a ``remote_verify.VerifiedCopy`` begun for this prefix; each file's bytes are written to it as they stream.
    """
    from envkit.checkpoint.hashing import new_hasher

    if stamp.payload is None:
        return f"{where}: the stamp has no payload record, so there is nothing to verify against"
    algorithm = stamp.payload.algorithm
    if manifest_digest(files, algorithm) != stamp.payload.digest:
        return f"{where}: the list of files does not match the stamp's digest: {STAMP_NAME} was edited"
    fs, key, _ = split(where)
    present = listed_sizes(fs, key, where)
    present.pop(STAMP_NAME, None)
    extra = sorted(set(present) - set(files))
    if extra:
        return f"{where}: {extra[0]} is not one of the files the stamp lists"
    total, done = sum(int(r["size"]) for r in files.values()), 0
    for name in sorted(files):
        record = files[name]
        if name not in present:
            return f"{where}: {name} is missing; resume from an earlier checkpoint"
        if present[name] != record["size"]:
            return f"{where}: {name} is {present[name]} bytes, the stamp records {record['size']}: truncated or changed"
        hasher, at = new_hasher(algorithm), 0
        if copy is not None:
            copy.member(name)
        while at < record["size"]:
            end = min(record["size"], at + STREAM_BLOCK)
            block = _call(where / name, fs.cat_file, f"{key}/{name}", start=at, end=end)
            if len(block) != end - at:
                return f"{where}: {name} ended at {at + len(block)} bytes, the stamp records {record['size']}: truncated"
            hasher.update(block)
            if copy is not None:
                copy.write(block)
            at = end
            if progress is not None:
                progress(done + at, total)
        done += record["size"]
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != record["digest"]:
            return f"{where}: {name} digest mismatch (recorded {record['digest']}, found {actual}): the bytes changed after saving"
    return None


def download_folder(where: ObjectPath, sizes: dict[str, int], folder: Path) -> None:
    """The objects ``sizes`` names (name -> the size the stamp records) under the prefix into ``folder``, in ranged reads
    (a short object is a short file, which the caller's verify names)."""
    fs, key, _ = split(where)
    for name, size in sizes.items():
        with open(folder / name, "wb") as out:
            at = 0
            while at < size:
                block = _call(where / name, fs.cat_file, f"{key}/{name}", start=at, end=min(size, at + STREAM_BLOCK))
                if not block:
                    break
                out.write(block)
                at += len(block)


__all__ = ["download_folder", "is_folder_url", "listed_sizes", "read_folder_url", "verify_folder_url"]
