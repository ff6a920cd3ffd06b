"""``verify`` of a checkpoint at a URL: its directory from the tail read, then the payload streamed once.

32 MiB ranged reads, hashed as they arrive; every record's local header is checked as the
stream passes it, so nothing is read twice (the local verify seeks to each header instead).
integrity.verify dispatches here and wraps the answer in its ``VerifyResult``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from envkit.checkpoint.hashing import new_hasher
from envkit.checkpoint.reader import ZIP_MAGIC, CheckpointFile, archive_prefix, open_view, open_zip, read_view
from envkit.checkpoint.remote import STREAM_BLOCK, RangeView, _call, split
from envkit.checkpoint.safetensors_format import FORMAT, header_problem, read_header
from envkit.checkpoint.urls import as_location
from envkit.errors import EnvkitError, MalformedStamp, NotACheckpoint, StorageUnavailable

OK, UNSTAMPED, CORRUPT, UNREADABLE = "ok", "unstamped", "corrupt", "unreadable"  # integrity's statuses
UNSTAMPED_ADVICE = "nothing to verify against; stamp it by saving with envkit.save"


class Answer(NamedTuple):
    path: Path
    status: str
    problem: str | None = None
    info: CheckpointFile | None = None


def verify_url(location: str | os.PathLike[str], info: CheckpointFile | None, progress: Any) -> Answer:
    """``verify`` of a URL: the directory from the tail, then the payload streamed once."""

    where = as_location(location)
    view: RangeView | None = None
    try:
        fs, key, where = split(where)
        view = open_view(where)
        info = info or read_view(view, deep=False).info
    except StorageUnavailable:
        raise  # the bucket cannot be reached: not an answer about this checkpoint
    except EnvkitError as exc:
        status = UNREADABLE
        if isinstance(exc, (NotACheckpoint, MalformedStamp)):
            try:
                status = CORRUPT if fs.cat_file(key, start=0, end=4) == ZIP_MAGIC else UNREADABLE
            except Exception:  # noqa: BLE001 - the first error is the answer
                pass
        return Answer(where, status, exc.message)
    stamp = info.stamp
    if stamp is None or stamp.payload is None:
        return Answer(where, UNSTAMPED, f"{where}: unstamped ({UNSTAMPED_ADVICE})", info)
    payload = stamp.payload
    if payload.length > info.size:
        return Answer(where, CORRUPT, f"{where}: truncated: the stamp records {payload.length} payload bytes, the object has {info.size}", info)
    if info.format == FORMAT:  # safetensors: the header against the stamp, then the data section streamed once
        return _verify_safetensors(where, fs, key, view or open_view(where), info, progress)
    try:
        headers: list[tuple[int, str]] = []
        if info.format != "legacy":
            view = view or RangeView(fs, key, where)  # the tail read for the stamp holds the directory too
            view.confirm_size()
            with open_zip(where, view) as zf:  # type: ignore[arg-type]
                archive_prefix(where, zf.namelist())
                for record in zf.infolist():
                    if record.filename.endswith("/extra/envkit.json"):
                        continue
                    if record.header_offset >= payload.length:
                        return Answer(where, CORRUPT, f"{where}: record {record.filename} lies outside the verified payload", info)
                    headers.append((record.header_offset, record.filename))
        headers.sort()
        hasher = new_hasher(payload.algorithm)
        done, carry, at = 0, b"", 0
        while done < payload.length:
            end = min(payload.length, done + STREAM_BLOCK)
            block = _call(where, fs.cat_file, key, start=done, end=end)
            if len(block) != end - done:
                return Answer(where, CORRUPT, f"{where}: truncated: the object ended at {done + len(block)} bytes", info)
            hasher.update(block)
            window, base = carry + block, done - len(carry)
            while at < len(headers) and headers[at][0] + 4 <= end:
                offset, name = headers[at]
                if window[offset - base : offset - base + 4] != b"PK\x03\x04":
                    return Answer(where, CORRUPT, f"{where}: the central directory points {name} at a wrong offset", info)
                at += 1
            carry, done = window[-3:], end
            if progress is not None:
                progress(done, payload.length)
        actual = f"{payload.algorithm}:{hasher.hexdigest()}"
        if actual != payload.digest:
            return Answer(where, CORRUPT, f"{where}: payload digest mismatch (recorded {payload.digest}, found {actual}): "
                                "the bytes changed after saving", info)
    except StorageUnavailable:
        raise
    except EnvkitError as exc:
        return Answer(where, CORRUPT if isinstance(exc, (NotACheckpoint, MalformedStamp)) else UNREADABLE, exc.message, info)
    return Answer(where, OK, None, info)


def _verify_safetensors(where: Path, fs: Any, key: str, view: RangeView, info: CheckpointFile, progress: Any) -> Answer:
    stamp = info.stamp
    assert stamp is not None and stamp.payload is not None
    payload = stamp.payload
    try:
        header = read_header(where, view, view.size)  # type: ignore[arg-type]  # held since the stamp was read
        problem = header_problem(where, header, stamp)
        if problem is not None:
            return Answer(where, CORRUPT, problem, info)
        hasher = new_hasher(payload.algorithm)
        done = 0
        while done < payload.length:
            at = header.data_start + done
            block = _call(where, fs.cat_file, key, start=at, end=at + min(STREAM_BLOCK, payload.length - done))
            if not block:
                return Answer(where, CORRUPT, f"{where}: truncated: {done:,} of {payload.length:,} data bytes could be read", info)
            hasher.update(block)
            done += len(block)
            if progress is not None:
                progress(done, payload.length)
    except StorageUnavailable:
        raise
    except EnvkitError as exc:
        return Answer(where, CORRUPT, exc.message, info)
    actual = f"{payload.algorithm}:{hasher.hexdigest()}"
    if actual != payload.digest:
        return Answer(where, CORRUPT, f"{where}: payload digest mismatch (recorded {payload.digest}, found {actual}): "
                            "the bytes changed after saving", info)
    return Answer(where, OK, None, info)


__all__ = ["Answer", "verify_url"]
