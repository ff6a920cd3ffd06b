"""Payload digests: one pass while torch writes, and a re-read for verification."""

from __future__ import annotations

import io
from collections import deque

import xxhash

from envkit.checkpoint.stamp import DIGEST_ALGORITHMS, StorageDigests
from envkit.errors import BadInput

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Protocol

    class Hasher(Protocol):
        def update(self, data: Any) -> None: ...
        def hexdigest(self) -> str: ...
        def copy(self) -> Hasher: ...

    class ReadableFile(Protocol):  # an open binary file, or a wrapper that reports progress
        def seek(self, offset: int, whence: int = ..., /) -> int: ...
        def readinto(self, buffer: memoryview, /) -> int | None: ...

CHUNK = 8 * 1024 * 1024
_SNAPSHOTS = 16
PARALLEL_MIN_BYTES = 1 << 20
BUFFER_BYTES = 64 * 1024  # torch's small writes are gathered into chunks of this size
_REREAD_MOST = 1 << 20  # digest_at re-reads at most this much past a snapshot


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "xxh3_128":
        return xxhash.xxh3_128()
    if algorithm == "sha256":
        import hashlib  # only sha256 stamps pay for OpenSSL's start-up

        return hashlib.sha256()
    raise BadInput(f"unknown digest {algorithm!r}; use one of {', '.join(DIGEST_ALGORITHMS)}")


def storage_digests(directory: bytes, records: int) -> StorageDigests:
    """The stamp's record of every storage's CRC-32: the digest of the central directory torch
    wrote (which lists them), taken from bytes the writer reads anyway (``append_last_member``)."""
    return StorageDigests(f"xxh3_128:{xxhash.xxh3_128_hexdigest(directory)}", len(directory), records)


def digest_of_file(fh: ReadableFile, length: int, algorithm: str) -> str:
    """Digest of the first ``length`` bytes of an open file; short files give a short read.

    Past ``PIPELINE_MIN_BYTES`` the next chunk is read while the last one is hashed on a second
    core (both release the GIL), in two buffers: the reads stay in the caller's thread, in order.
    """
    hasher = new_hasher(algorithm)
    fh.seek(0)
    if length >= PIPELINE_MIN_BYTES:
        _pipelined(fh, length, hasher)
        return f"{algorithm}:{hasher.hexdigest()}"
    remaining = length
    buffer = bytearray(min(CHUNK, max(length, 1)))
    view = memoryview(buffer)
    while remaining > 0:
        n = fh.readinto(view[: min(CHUNK, remaining)])
        if not n:
            break
        hasher.update(view[:n])
        remaining -= n
    return f"{algorithm}:{hasher.hexdigest()}"


PIPELINE_MIN_BYTES = 4 * CHUNK


def _pipelined(fh: ReadableFile, length: int, hasher: Hasher) -> None:
    from concurrent.futures import ThreadPoolExecutor

    views = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
    remaining, turn, pending = length, 0, None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="envkit-hash") as pool:
        try:
            while remaining > 0:
                view = views[turn]  # hashed two turns ago: that hash was waited for last turn
                n = fh.readinto(view[: min(CHUNK, remaining)])
                if not n:
                    break
                if pending is not None:
                    pending.result()
                pending = pool.submit(hasher.update, view[:n])
                remaining -= n
                turn ^= 1
        finally:
            if pending is not None:
                pending.result()


class _Sink(io.RawIOBase):
    """The raw file under HashingWriter's buffer: every chunk goes to ``HashingWriter._write``."""

    def __init__(self, owner: HashingWriter) -> None:
        super().__init__()
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._owner.closing_after_error:
            return len(memoryview(data))  # the save failed: what is still buffered is dropped, not retried
        return self._owner._write(data)


class HashingWriter:
    """A write-only file wrapper that hashes what passes through it.

    torch makes about five writes per tensor (headers, padding, data): a state dict of
    100,000 small tensors is half a million calls. ``write`` is the C method of an
    ``io.BufferedWriter``, so small writes cost a copy and no Python frame; the buffer
    reaches ``_write`` in chunks of ``BUFFER_BYTES``, and a write larger than that goes
    straight through, hashed on a second core while the kernel copies it.

    The payload ends where torch's central directory starts, which is only known once
    torch has finished. A snapshot of the hash state before each of the last chunks gives
    the digest at that offset by re-reading at most one chunk.
    """

    def __init__(self, fh: BinaryIO, algorithm: str) -> None:
        self._fh = fh
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)
        self._snapshots: deque[tuple[int, Hasher]] = deque(maxlen=_SNAPSHOTS)
        self._written = 0
        self._executor: Any = None
        self.error: OSError | None = None
        self.closing_after_error = False
        self._buffered = io.BufferedWriter(_Sink(self), BUFFER_BYTES)
        self.write = self._buffered.write  # what torch calls: C, no Python frame per write

    @property
    def position(self) -> int:
        """Bytes that reached the file (all of them after ``close``)."""
        return self._written

    def _write(self, data: Any) -> int:
        """Write to the file and hash, in order: every byte that reaches the file passes here."""
        try:
            view = memoryview(data).cast("B")
            self._snapshots.append((self._written, self._hasher.copy()))
            if len(view) >= PARALLEL_MIN_BYTES:
                # Hash on a second core while the kernel copies the same bytes: both release the
                # GIL. The caller's buffer is only valid during this call, so wait before returning.
                pending = self._pool().submit(self._hasher.update, view)
                try:
                    self._fh.write(view)
                finally:
                    pending.result()
            else:
                self._fh.write(view)
                self._hasher.update(view)
            self._written += len(view)
            return len(view)
        except OSError as exc:
            # torch turns an exception raised in its write callback into a RuntimeError about
            # the zip position; keep the real cause (ENOSPC, EIO) for the caller.
            self.error = self.error or exc
            raise

    def _pool(self) -> Any:
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envkit-hash")
        return self._executor

    def close(self) -> None:
        """Write what is buffered and stop the hashing thread; call before reading the file."""
        try:
            self._buffered.flush()
        except BaseException:
            self.closing_after_error = True
            raise
        finally:
            try:
                self._buffered.close()  # not left for the garbage collector to flush into a closed file
            except OSError:
                pass
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def flush(self) -> None:
        self._buffered.flush()
        self._fh.flush()

    def writable(self) -> bool:
        return True

    def digest_at(self, offset: int) -> str:
        """The digest of the first ``offset`` bytes written (after ``close``)."""
        if offset == self._written:
            return f"{self.algorithm}:{self._hasher.hexdigest()}"
        self._fh.flush()
        before = [(start, snapshot) for start, snapshot in self._snapshots if start <= offset]
        reopen = getattr(self._fh, "reopen", None)  # an upload's spool reads back what it holds
        with reopen() if reopen is not None else open(self._fh.name, "rb") as reader:
            if before and offset - before[-1][0] <= _REREAD_MOST:
                start, snapshot = before[-1]
                hasher = snapshot.copy()
                reader.seek(start)
                hasher.update(reader.read(offset - start))
                return f"{self.algorithm}:{hasher.hexdigest()}"
            return digest_of_file(reader, offset, self.algorithm)
