"""Payload digests: one pass while torch writes, and a re-read for verification."""

from __future__ import annotations

from collections import deque

import xxhash

from envkit.checkpoint.stamp import DIGEST_ALGORITHMS
from envkit.errors import BadInput

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Protocol

    class Hasher(Protocol):
        def update(self, data: Any) -> None: ...
        def hexdigest(self) -> str: ...
        def copy(self) -> Hasher: ...

CHUNK = 8 * 1024 * 1024
_SNAPSHOTS = 16
PARALLEL_MIN_BYTES = 1 << 20
SMALL_WRITE = 64 * 1024  # writes under this are gathered
BUFFER_BYTES = 1 << 20  # and written and hashed once this much is gathered


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "xxh3_128":
        return xxhash.xxh3_128()
    if algorithm == "sha256":
        import hashlib  # only sha256 stamps pay for OpenSSL's start-up

        return hashlib.sha256()
    raise BadInput(f"unknown digest {algorithm!r}; use one of {', '.join(DIGEST_ALGORITHMS)}")


def digest_of_file(fh: BinaryIO, length: int, algorithm: str) -> str:
    """Digest of the first ``length`` bytes of an open file; short files give a short read."""
    hasher = new_hasher(algorithm)
    fh.seek(0)
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


class HashingWriter:
    """A write-only file wrapper that hashes what passes through it.

    The payload ends where torch's central directory starts, which is only known
    once torch has finished. miniz writes the central directory in one call, so a
    snapshot of the hash state taken before each of the last few large writes, and
    the bytes of the last few small-write buffers with the state before each, give
    the digest at that offset without re-reading anything.

    torch makes about five writes per tensor (headers, padding, data); a state dict of
    100,000 small tensors is half a million calls. Writes under ``SMALL_WRITE`` bytes are
    gathered into one buffer that is written and hashed when it fills, so the per-call
    cost is one copy into a bytearray.
    """

    def __init__(self, fh: BinaryIO, algorithm: str) -> None:
        self._fh = fh
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)
        self._snapshots: deque[tuple[int, Hasher]] = deque(maxlen=_SNAPSHOTS)
        self._buffers: deque[tuple[int, Hasher, bytes]] = deque(maxlen=2)
        self._pending = bytearray()
        self.position = 0  # bytes written, buffered ones included
        self._written = 0  # bytes that reached the file
        self._executor: Any = None
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            n = data.nbytes if isinstance(data, memoryview) else len(data)
            if n < SMALL_WRITE:
                self._pending += data
                self.position += n
                if len(self._pending) >= BUFFER_BYTES:
                    self._drain()
                return n
            self._drain()
            self.position += n
            return self._write(data)
        except OSError as exc:
            # torch turns an exception raised in its write callback into a RuntimeError about
            # the zip position; keep the real cause (ENOSPC, EIO) for the caller.
            self.error = self.error or exc
            raise

    def _drain(self) -> None:
        """Write and hash the gathered small writes, keeping them for ``digest_at``."""
        if not self._pending:
            return
        data, self._pending = bytes(self._pending), bytearray()
        self._buffers.append((self._written, self._hasher.copy(), data))
        self._write(data)

    def _write(self, data: Any) -> int:
        """Write to the file and hash, in order: every byte that reaches the file passes here."""
        view = memoryview(data).cast("B")
        self._snapshots.append((self._written, self._hasher.copy()))
        if len(view) >= PARALLEL_MIN_BYTES:
            # Hash on a second core while the kernel copies the same bytes: both release the
            # GIL. torch's buffer is only valid during this call, so wait before returning.
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

    def _pool(self) -> Any:
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envkit-hash")
        return self._executor

    def close(self) -> None:
        """Write what is gathered and stop the hashing thread; call before reading the file."""
        try:
            self._drain()
        except OSError as exc:
            self.error = self.error or exc
            raise
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def flush(self) -> None:
        self._drain()
        self._fh.flush()

    def writable(self) -> bool:
        return True

    def digest_at(self, offset: int) -> str:
        """The digest of the first ``offset`` bytes written (after ``close``)."""
        self._drain()
        if offset == self.position:
            return f"{self.algorithm}:{self._hasher.hexdigest()}"
        for start, snapshot in self._snapshots:
            if start == offset:
                return f"{self.algorithm}:{snapshot.hexdigest()}"
        for start, before, data in self._buffers:
            if start <= offset <= start + len(data):
                hasher = before.copy()
                hasher.update(data[: offset - start])
                return f"{self.algorithm}:{hasher.hexdigest()}"
        self._fh.flush()
        reader = open(self._fh.name, "rb")  # type: ignore[attr-defined]
        with reader:
            return digest_of_file(reader, offset, self.algorithm)
