"""``verify`` of a checkpoint at a URL: its directory from the tail read, then the payload streamed once.

32 MiB ranged reads, hashed as they arrive; every record's local header is checked as the
stream passes it, so nothing is read twice (the local verify seeks to each header instead).
integrity.verify dispatches here and wraps the answer in its ``VerifyResult``.

Given a ``VerifiedCopy``, the bytes streamed are written to its local file as well, and the rest
of the object from the bytes already held: a resume loads the checkpoint it verified from there,
instead of downloading it a second time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


class VerifiedCopy:
    """A local folder where a verify of a URL keeps the bytes it streams: one object under its name, or a ``.dcp``
    prefix's files in a folder of its name.

    ``holds`` is the URL whose bytes it holds once they verified whole and were written whole; None while they
    are written, after any other answer, and when the local disk refused a write (the copy saves a download, it
    is never a reason for verify to fail). Each verify replaces the previous copy.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.holds: Path | None = None
        self.path: Path | None = None
        self.failed = False
        self._file: Any = None

    def begin(self, where: Path, *, folder: bool = False) -> None:
        """Start the copy of ``where`` (``folder``: a prefix of files, each begun with ``member``)."""
        self._close()
        if self.path is not None:
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink(missing_ok=True)
        self.holds, self.failed, self.path = None, False, self.folder / where.name
        try:
            self.path.mkdir() if folder else self._open(self.path)
        except OSError:
            self.failed = True

    def member(self, name: str) -> None:
        """The writes that follow are the prefix's file ``name``."""
        self._close()
        if not self.failed and self.path is not None:
            try:
                self._open(self.path / name)
            except OSError:
                self.failed = True

    def write(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            self._file.write(data)
        except OSError:
            self.failed = True

    def end(self, answer_ok: bool, where: Path) -> None:
        self._close()
        if answer_ok and not self.failed:
            self.holds = where

    def _open(self, path: Path) -> None:
        self._file = open(path, "wb")

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                self.failed = True
            self._file = None


class KeepsVerifiedCopy:
    """The bucket storages' ``verified_copy()``: a scratch folder in ``$TMPDIR`` for the duration of a resume, where
    its verify keeps what it streams; ``kept(where)`` is the local copy of ``where`` when that is what it holds."""

    _copy: VerifiedCopy | None = None

    @contextmanager
    def verified_copy(self) -> Iterator[VerifiedCopy | None]:
        try:
            folder = Path(tempfile.mkdtemp(prefix="envkit-resume-"))
        except OSError:  # no scratch space at all: no copy (the load's own download names the problem)
            yield None
            return
        self._copy = VerifiedCopy(folder)
        try:
            yield self._copy
        finally:
            self._copy = None
            shutil.rmtree(folder, ignore_errors=True)

    def kept(self, where: Path) -> Path | None:
        return self._copy.path if self._copy is not None and self._copy.holds == where else None


class Answer(NamedTuple):
    path: Path
    status: str
    problem: str | None = None
    info: CheckpointFile | None = None


def verify_url(location: str | os.PathLike[str], info: CheckpointFile | None, progress: Any,
               copy: VerifiedCopy | None = None) -> Answer:
    """``verify`` of a URL: the directory from the tail, then the payload streamed once (into ``copy`` too)."""
    if copy is None:
        return _verify_url(location, info, progress, None)
    copy.begin(as_location(location))
    answer = Answer(as_location(location), UNREADABLE)
    try:
        answer = _verify_url(location, info, progress, copy)
    finally:
        copy.end(answer.status == OK, answer.path)
    return answer


def _verify_url(location: str | os.PathLike[str], info: CheckpointFile | None, progress: Any, out: Any) -> Answer:

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
        return _verify_safetensors(where, fs, key, view or open_view(where), info, progress, out)
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
            if out is not None:
                out.write(block)
            window, base = carry + block, done - len(carry)
            while at < len(headers) and headers[at][0] + 4 <= end:
                offset, name = headers[at]
                if window[offset - base : offset - base + 4] != b"PK\x03\x04":
                    return Answer(where, CORRUPT, f"{where}: the central directory points {name} at a wrong offset", info)
                at += 1
            carry, done = window[-3:], end
            if progress is not None:
                progress(done, payload.length)
        return _streamed(where, info, hasher, view or open_view(where), out, rest_from=payload.length)
    except StorageUnavailable:
        raise
    except EnvkitError as exc:
        return Answer(where, CORRUPT if isinstance(exc, (NotACheckpoint, MalformedStamp)) else UNREADABLE, exc.message, info)


def _streamed(where: Path, info: CheckpointFile, hasher: Any, view: RangeView, out: Any, *, rest_from: int) -> Answer:
    """The answer once the payload has streamed through ``hasher``: its digest against the stamp's; then, for a copy,
    the object's bytes from ``rest_from`` to its end (the stamp and the directory, held since the first read)."""
    assert info.stamp is not None and info.stamp.payload is not None
    payload = info.stamp.payload
    actual = f"{payload.algorithm}:{hasher.hexdigest()}"
    if actual != payload.digest:
        return Answer(where, CORRUPT, f"{where}: payload digest mismatch (recorded {payload.digest}, found {actual}): "
                            "the bytes changed after saving", info)
    if out is not None:
        view.seek(rest_from)
        rest = view.read(info.size - rest_from)
        if len(rest) != info.size - rest_from:
            raise MalformedStamp(f"{where}: the object ended at {rest_from + len(rest)} bytes, not {info.size}")
        out.write(rest)
    return Answer(where, OK, None, info)


def _verify_safetensors(where: Path, fs: Any, key: str, view: RangeView, info: CheckpointFile, progress: Any,
                        out: Any) -> Answer:
    stamp = info.stamp
    assert stamp is not None and stamp.payload is not None
    payload = stamp.payload
    try:
        header = read_header(where, view, view.size)  # type: ignore[arg-type]  # held since the stamp was read
        problem = header_problem(where, header, stamp)
        if problem is not None:
            return Answer(where, CORRUPT, problem, info)
        hasher = new_hasher(payload.algorithm)
        if out is not None:
            out.write(view.read_at(0, header.data_start))
        done = 0
        while done < payload.length:
            at = header.data_start + done
            block = _call(where, fs.cat_file, key, start=at, end=at + min(STREAM_BLOCK, payload.length - done))
            if not block:
                return Answer(where, CORRUPT, f"{where}: truncated: {done:,} of {payload.length:,} data bytes could be read", info)
            hasher.update(block)
            if out is not None:
                out.write(block)
            done += len(block)
            if progress is not None:
                progress(done, payload.length)
        return _streamed(where, info, hasher, view, out, rest_from=header.data_start + payload.length)
    except StorageUnavailable:
        raise
    except EnvkitError as exc:
        return Answer(where, CORRUPT, exc.message, info)


__all__ = ["Answer", "KeepsVerifiedCopy", "VerifiedCopy", "verify_url"]
