"""Checkpoints at URLs (``s3://bucket/run/x.pth``, ``gs://``, ``memory://``), through fsspec.

fsspec is the interface and s3fs the implementation for ``s3://`` (the extra ``envkit[s3]``).
Where the endpoint and the credentials come from: the usual places (``AWS_*`` variables,
``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` and the shared config files, which botocore reads) plus
``[tool.envkit.storage]`` (config.py), whose timeouts are bounded so that an endpoint that does
not answer fails in seconds: connect 5 s, read 20 s, one retry unless set.

Reads cost little, whatever the size:

- ``read_stamp`` (``check``, ``guard``) of a stamped checkpoint reads the object's tail with one
  ranged GET and nothing else (no HEAD: the size comes with the answer, its ``Content-Range``),
  then runs ziptail.py's parser over those bytes (that torch wrote it, data.pkl first, is read
  from the directory's first record); a central directory larger than the tail read (about
  3,000 tensors) costs a second GET, an unstamped or foreign object its head too. A
  ``.safetensors`` object is read from its head instead: its header, in one GET (two for a
  header over 64 KiB). Where the endpoint and keys are named outright, those GETs are
  ``s3_direct.DirectS3``'s (signed by envkit, sent with http.client: no s3fs import), and s3fs
  answers whatever they cannot;
- ``verify`` reads the directory from the tail, then streams the payload once in 32 MiB ranged
  reads, hashing as it goes and checking every record's local header as it passes;
- ``ls`` of a prefix reads its ``.envkit-index.json`` and one LIST, not every stamp.

Writes (``ObjectStorage``, a manager's ``CheckpointStorage`` for a bucket prefix): torch.save
streams through the hashing writer into a multipart upload to the *final* key, holding back
the archive's tail in memory so that the stamp can be appended (``_Spool``); the commit is the
upload's completion, when S3 makes the object appear whole (no copy, no rename: a save costs
its upload and nothing more). Until then nothing is listed: a failure aborts the upload, and a
kill leaves an incomplete upload that S3 never shows and the next manager aborts. Retention
deletes only after a HEAD confirms the new object's size. One writer per prefix: a lock object
``.envkit-lock`` created with ``If-None-Match: *`` (fsspec's ``"xb"``), holding host, pid and
time, deleted on close. A lock left by a process of this host that is gone is broken by the
next manager; one from another host is refused with what to do (delete it once that writer is
known to be gone). Other fsspec file systems (``memory://``) write a temporary key and move it.
A safetensors save (``upload_stream``) is one sequential upload to the final key, header first.

The modules: this one is the file system, its errors, the ranged reads and the upload (it imports
none of envkit's readers, so that they can dispatch to it); ``reader.py`` reads a stamp through a
``RangeView``, ``remote_verify.py`` streams a payload, ``listing.ObjectListing`` lists a prefix,
``bucket.ObjectStorage`` is the manager's storage.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any, NoReturn

from envkit.checkpoint.paths import TEMP_MARK
from envkit.checkpoint.urls import ObjectPath, as_location
from envkit.errors import BadInput, CheckpointDirLocked, CheckpointWriteError, EnvkitError, StorageUnavailable

TAIL_BYTES = 320 * 1024  # the first ranged read: end records + ziptail's 256 KiB directory window + the stamp
HEAD_BYTES = 64 * 1024  # the second: the magic and torch's first local header (and a small data.pkl)
STREAM_BLOCK = 32 * 1024 * 1024  # verify's and load's ranged reads
PART_BYTES = 16 * 1024 * 1024  # multipart upload part size (S3's minimum is 5 MiB)
HOLD_BACK = 64 * 1024 * 1024  # the archive tail a save keeps in memory to append the stamp
LOCK_NAME = ".envkit-lock"
DEFAULTS: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 20, "retries": 1}
_ATOMIC_UPLOADS = ("s3", "s3a", "gs", "gcs")  # a multipart/resumable upload appears only when completed
_FS_CACHE: dict[tuple[Any, ...], Any] = {}
_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


# -- the file system ------------------------------------------------------------------


def split(location: str | os.PathLike[str]) -> tuple[Any, str, ObjectPath]:
    """(the fsspec file system, the path within it, the ObjectPath) of a URL."""
    where = as_location(location)
    if not isinstance(where, ObjectPath):
        raise BadInput(f"{location}: not a URL")
    fs = filesystem(where.scheme, where.url)
    return fs, fs._strip_protocol(where.url), where


def split_for_reading(location: str | os.PathLike[str]) -> tuple[Any, str, ObjectPath]:
    """``split``, for a stamp's reads (``RangeView``, a ``.dcp``'s marker): an ``s3://`` URL whose endpoint and
    credentials are named outright gets ``s3_direct.DirectS3`` (plain signed GETs, no s3fs import; s3fs
    answers whatever those cannot), any other URL ``split``'s file system."""
    where = as_location(location)
    if isinstance(where, ObjectPath) and where.scheme in ("s3", "s3a"):
        direct = _direct(where)
        if direct is not None:
            return direct, where.url.split("://", 1)[1], where
    return split(where)


def _direct(where: ObjectPath) -> Any:
    from envkit.checkpoint import s3_direct

    settings = _settings()
    key = ("direct", where.scheme, tuple(sorted((k, repr(v)) for k, v in settings.items())), tuple(os.environ.get(k) for k in _ENV),
           os.getpid())
    if key not in _FS_CACHE:
        planned = s3_direct.plan(settings, os.environ, s3_direct.config_file_exists(os.environ))
        _FS_CACHE[key] = planned and s3_direct.DirectS3(
            *planned, connect_timeout=float(settings["connect_timeout"]), read_timeout=float(settings["read_timeout"]),
            slow=lambda: filesystem(where.scheme, where.url))
    return _FS_CACHE[key]


def filesystem(scheme: str, url: str) -> Any:
    """One fsspec file system per scheme, options and relevant environment (cached: a client costs ~50 ms)."""
    try:
        import fsspec
    except ImportError:
        raise BadInput(f"{url}: reading and writing URLs needs fsspec (and s3fs for s3://); install pip install 'envkit[s3]'") from None
    options = storage_options(scheme)
    key = (scheme, tuple(sorted((k, repr(v)) for k, v in options.items())), tuple(os.environ.get(k) for k in _ENV), os.getpid())
    fs = _FS_CACHE.get(key)
    if fs is not None:
        return fs
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except ImportError:
        raise BadInput(f"{url}: {scheme}:// needs its fsspec implementation (s3fs for s3://); install pip install 'envkit[s3]'") from None
    except ValueError:
        raise BadInput(f"{url}: fsspec knows no {scheme}:// file system; use s3://, gs:// or memory://, or a local path") from None
    fs = cls(skip_instance_cache=True, **options)
    if scheme in ("s3", "s3a"):
        fs.retries = int(_settings()["retries"]) + 1  # s3fs's own retry loop, on top of botocore's
    _FS_CACHE[key] = fs
    return fs


def _settings() -> dict[str, Any]:
    from envkit.config import load_config

    return {**DEFAULTS, **dict(load_config().storage)}


def storage_options(scheme: str) -> dict[str, Any]:
    """The fsspec options for ``scheme`` from ``[tool.envkit.storage]`` and the bounded defaults."""
    if scheme not in ("s3", "s3a"):
        return {}
    settings = _settings()
    options: dict[str, Any] = {
        "config_kwargs": {
            "connect_timeout": settings["connect_timeout"],
            "read_timeout": settings["read_timeout"],
            "retries": {"max_attempts": int(settings["retries"]) + 1, "mode": "standard"},
        },
    }
    if "endpoint_url" in settings:
        options["endpoint_url"] = settings["endpoint_url"]
    if "region" in settings:
        options["client_kwargs"] = {"region_name": settings["region"]}
    if "profile" in settings:
        options["profile"] = settings["profile"]
    if settings.get("anon"):
        options["anon"] = True
    return options


def _endpoint() -> str:
    settings = _settings()
    return str(settings.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
               or "the AWS default endpoint")


def remote_error(where: object, exc: BaseException, doing: str = "read") -> EnvkitError:
    """The one-line EnvkitError for a failed request: what happened and what to set."""
    name = type(exc).__name__
    text = str(exc) or name
    if isinstance(exc, EnvkitError):
        return exc
    if isinstance(exc, FileNotFoundError):
        if "bucket" in text.lower():
            bucket = str(where).split("://", 1)[-1].split("/", 1)[0]
            return StorageUnavailable(f"{where}: the bucket {bucket!r} does not exist at {_endpoint()}; create it, or fix the URL "
                            "or AWS_ENDPOINT_URL / [tool.envkit.storage] endpoint_url")
        return BadInput(f"{where}: no such object; pass the URL of a checkpoint (envkit ls URL-of-the-folder lists them)")
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError") or "credentials" in text.lower():
        return StorageUnavailable(f"{where}: no credentials for {_endpoint()}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                        "or AWS_PROFILE, or anon = true in [tool.envkit.storage] for a public bucket")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return StorageUnavailable(f"{where}: access denied to {doing} ({text.splitlines()[0][:160]}); check the credentials "
                        "(AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket's policy, or choose a bucket you may "
                        f"{doing}")
    timeouts = ("ConnectTimeoutError", "ReadTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
                "FSTimeoutError", "TimeoutError", "ConnectionError", "ClientConnectorError", "ServerDisconnectedError")
    if name in timeouts or isinstance(exc, (TimeoutError, ConnectionError, socket.timeout)) or "timeout" in text.lower() \
            or "connect" in text.lower():
        s = _settings()
        return StorageUnavailable(f"{where}: the endpoint {_endpoint()} did not answer ({name}; connect_timeout {s['connect_timeout']} s, "
                        f"read_timeout {s['read_timeout']} s, retries {s['retries']}); check AWS_ENDPOINT_URL or "
                        "[tool.envkit.storage] endpoint_url and the network")
    if isinstance(exc, OSError):
        return StorageUnavailable(f"{where}: cannot {doing} ({name}: {text.splitlines()[0][:200]}); check the URL, the endpoint "
                        f"({_endpoint()}) and the credentials")
    raise exc


def _call(where: object, fn: Callable[..., Any], *args: Any, doing: str = "read", **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except EnvkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - every request error becomes one line that says what to set
        raise remote_error(where, exc, doing) from None


# -- reading: a view of the object built from ranged reads ---------------------------


class _Positioned:
    """The file methods of a reader with a position over ``read_at(offset, n)`` and an end:
    seek, tell, read, readinto (what zipfile, ziptail, the unpickler and the hashing writer call).
    ``RangeView`` (an object being read) and ``_Spool`` (an object being written) are both."""

    _pos = 0

    def _end(self) -> int:
        raise NotImplementedError

    def read_at(self, offset: int, n: int) -> bytes:
        raise NotImplementedError

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self._end() + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        left = self._end() - self._pos
        data = self.read_at(self._pos, left if n is None or n < 0 else min(n, left))
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class RangeView(_Positioned):
    """A read-only, seekable file over an object, filled by ranged GETs as it is read.

    Starts from the tail read (``cat_file(start=-TAIL_BYTES)``: one GET, no HEAD). Reads of
    bytes it does not hold fetch them (at least HEAD_BYTES at a time) and keep them.
    """

    def __init__(self, fs: Any, key: str, where: ObjectPath, *, first: str = "tail") -> None:
        self.fs, self.key, self.where = fs, key, where
        self.gets = 1
        self._pos = 0
        if first == "head":  # a format whose header is at the head (safetensors): its first HEAD_BYTES
            head, total = _call(where, _first_read, fs, key, HEAD_BYTES, tail=False)
            self._tail = b""
            self.size = total if total is not None else len(head) if len(head) < HEAD_BYTES else int(_call(where, fs.size, key))
            self.size_confirmed = True
            self._chunks: list[tuple[int, bytes]] = [(0, head)]
            return
        tail, total = _call(where, _first_read, fs, key, TAIL_BYTES, tail=True)
        derived = _size_from_end_records(tail) if len(tail) >= TAIL_BYTES else len(tail)
        self.size_confirmed = len(tail) < TAIL_BYTES or total is not None  # the whole object came back, or its size with it
        self._tail = tail
        if total is not None:
            self.resize(total)
        else:
            self.resize(derived if derived is not None else int(_call(where, fs.size, key)), confirmed=derived is None)

    def holds(self, offset: int, n: int) -> bool:
        """Whether [offset, offset + n) was read already (no request to read it again)."""
        return any(s <= offset and offset + n <= s + len(d) for s, d in self._chunks)

    def resize(self, size: int, *, confirmed: bool = True) -> None:
        """Place the tail at the end of an object of ``size`` bytes (a HEAD's answer, or the end records')."""
        self.size = size
        self.size_confirmed = self.size_confirmed or confirmed
        self._chunks = [(size - len(self._tail), self._tail)]

    def confirm_size(self) -> None:
        """The size from a HEAD, when it came from the end records (which a damaged file can get wrong)."""
        if not self.size_confirmed:
            self.resize(int(_call(self.where, self.fs.size, self.key)))

    def _fetch(self, start: int, end: int) -> None:
        """Fetch [start, end) and up to HEAD_BYTES either side (the members a read wants next lie close
        by: the stamp's local header, torch's version record before it), never a byte already held."""
        low, high = max(0, start - HEAD_BYTES), min(self.size, max(end, start + HEAD_BYTES))
        for s, data in self._chunks:
            if s + len(data) <= start:
                low = max(low, s + len(data))
            elif s >= end:
                high = min(high, s)
        data = _call(self.where, self.fs.cat_file, self.key, start=low, end=high)
        self.gets += 1
        self._chunks.append((low, data))

    def read_at(self, offset: int, n: int) -> bytes:
        if offset >= self.size or n <= 0:
            return b""
        n = min(n, self.size - offset)
        out = bytearray()
        while len(out) < n:
            at = offset + len(out)
            for s, data in self._chunks:
                if s <= at < s + len(data):
                    out += data[at - s : at - s + n - len(out)]
                    break
            else:
                self._fetch(at, offset + n)
                if not any(s <= at < s + len(d) for s, d in self._chunks):
                    break  # the object shrank: a short read
        return bytes(out)

    def _end(self) -> int:
        return self.size

    def readline(self, limit: int = -1) -> bytes:  # the legacy reader's unpickler
        out = bytearray()
        while limit < 0 or len(out) < limit:
            c = self.read(1)
            if not c:
                break
            out += c
            if c == b"\n":
                break
        return bytes(out)

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _first_read(fs: Any, key: str, n: int, *, tail: bool) -> tuple[bytes, int | None]:
    """The object's last (``tail``) or first ``n`` bytes in one ranged GET (no HEAD), and its size
    where the answer says it.

    s3fs's ``cat_file(start=-n)`` sends the same request but drops the answer's
    ``Content-Range: bytes a-b/SIZE``; through s3fs's own call (its client, retries and error
    translation) the size comes with the bytes, so that the tail is placed exactly whatever the
    end records claim. Any other file system: ``cat_file``, and the size from the end records.
    """
    if hasattr(fs, "first_read"):  # s3_direct.DirectS3: its own GET, or s3fs's where that is no answer
        answer = fs.first_read(key, n, tail=tail)
        if answer is not None:
            return answer
        fs = fs.slow()
    start, end = (-n, None) if tail else (0, n)
    if "s3" not in getattr(fs, "protocol", ()):
        return fs.cat_file(key, start=start, end=end), None
    try:
        from fsspec.asyn import sync  # type: ignore[import-untyped,unused-ignore]
        from s3fs.core import _error_wrapper, version_id_kw  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:  # an s3fs without them: the size from the end records
        return fs.cat_file(key, start=start, end=end), None
    bucket, name, version = fs.split_path(key)
    spec = f"bytes=-{n}" if tail else f"bytes=0-{n - 1}"

    async def get() -> tuple[bytes, Any]:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=name, Range=spec, **version_id_kw(version))
        try:
            return await resp["Body"].read(), resp.get("ContentRange")
        finally:
            resp["Body"].close()

    try:
        data, content_range = sync(fs.loop, _error_wrapper, get, retries=fs.retries)
    except OSError as exc:
        if not tail and "range is not satisfiable" in str(exc).lower():
            return b"", 0  # a range from byte 0 is unsatisfiable only in an empty object (S3 answers 416)
        raise
    total = str(content_range or "").rpartition("/")[2]
    return data, int(total) if total.isdigit() and int(total) >= len(data) else None


def _size_from_end_records(tail: bytes) -> int | None:
    """The object's size as its zip end records give it (directory offset + size + the records), if they are plain."""
    import struct

    if len(tail) < 22 or tail[-22:-18] != b"PK\x05\x06" or tail[-2:] != b"\x00\x00":
        return None
    cd_size, cd_offset = struct.unpack_from("<2L", tail, len(tail) - 22 + 12)
    size = cd_offset + cd_size + 22
    if len(tail) >= 98 and tail[-42:-38] == b"PK\x06\x07":
        record = tail[-98:-42]
        if record[:4] != b"PK\x06\x06":
            return None
        cd_size, cd_offset = struct.unpack_from("<2Q", record, 40)
        size = cd_offset + cd_size + 56 + 20 + 22
    return size if size >= len(tail) else None


def download(location: str | os.PathLike[str], out: Any, *, length: int | None = None) -> int:
    """Stream the object (its first ``length`` bytes) into the open file ``out``; returns the bytes written."""
    fs, key, where = split(location)
    size = int(_call(where, fs.size, key)) if length is None else length
    done = 0
    while done < size:
        block = _call(where, fs.cat_file, key, start=done, end=min(size, done + STREAM_BLOCK))
        if not block:
            break
        out.write(block)
        done += len(block)
    return done


# -- writing ---------------------------------------------------------------------------


class _Spool(_Positioned):
    """What torch.save writes to when the destination is an upload: a sequential stream that
    forwards bytes to ``out`` but holds the last HOLD_BACK bytes back (and keeps a copy of the
    first HEAD_BYTES), so that the stamp can be appended after torch's records, as the local
    writer does in its file (``ziptail.append_last_member``), before the tail goes up."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._head = bytearray()
        self._tail = bytearray()
        self._tail_start = 0
        self._size = 0
        self._pos = 0
        self.name = None

    # sequential writes (torch, through the hashing writer)
    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self._pos != self._size:  # after seek: append_last_member rewrites the tail
            start = self._pos - self._tail_start
            if start < 0:
                raise OSError(f"cannot rewrite bytes already uploaded (offset {self._pos})")
            self._tail[start : start + n] = view
            self._pos += n
            self._size = max(self._size, self._pos)
            return n
        if len(self._head) < HEAD_BYTES:
            self._head += view[: HEAD_BYTES - len(self._head)]
        self._tail += view
        self._size += n
        self._pos = self._size
        if len(self._tail) >= HOLD_BACK + 4 * PART_BYTES:
            self._send(len(self._tail) - HOLD_BACK)
        return n

    def _send(self, n: int) -> None:
        """Upload the first ``n`` bytes held, a part at a time (the upload sends a part per PART_BYTES it is given)."""
        view = memoryview(self._tail)
        for at in range(0, n, PART_BYTES):
            self._out.write(view[at : min(n, at + PART_BYTES)])
        view.release()
        del self._tail[:n]
        self._tail_start += n

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        raise OSError("an upload has no file descriptor")

    # what torch_layout, first_member and append_last_member read (and write: above)
    def _end(self) -> int:
        return self._size

    def read_at(self, offset: int, n: int) -> bytes:
        if offset >= self._tail_start:
            return bytes(self._tail[offset - self._tail_start : offset - self._tail_start + n])
        if offset + n <= len(self._head):
            return bytes(self._head[offset : offset + n])
        if offset + n <= self._tail_start:
            return b""  # uploaded and not kept: a short read, which the zip-tail readers take as "not this layout"
        raise OSError(f"bytes {offset}..{offset + n} straddle what is already uploaded")

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if size < self._tail_start:
            raise OSError("cannot truncate what is already uploaded")
        del self._tail[size - self._tail_start :]
        self._size = size
        return size

    def reopen(self) -> _Spool:
        """A reader of the same bytes (HashingWriter.digest_at re-reads the last chunk it wrote)."""
        return self

    def finish(self) -> int:
        """Send what is held back; the upload is then complete but for its commit."""
        self._send(len(self._tail))
        return self._size


def upload_stamped(obj: Any, fs: Any, key: str, where: ObjectPath, *, stamp_for: Any, digest: str) -> Any:
    """torch.save ``obj`` into an uncommitted upload of ``key`` with its stamp appended; returns the upload.

    ``commit_upload`` makes it appear; ``discard_upload`` drops it. Any failure here drops it.
    """
    from envkit.checkpoint.devices import with_storage_devices
    from envkit.checkpoint.hashing import HashingWriter
    from envkit.checkpoint.stamp import MEMBER, Payload
    from envkit.checkpoint.ziptail import append_last_member, first_member, torch_layout
    from envkit.errors import TorchNotInstalled

    try:
        import torch
    except ImportError:
        raise TorchNotInstalled("envkit.save needs torch; install it with `pip install envkit[torch]`") from None
    upload = _Upload(fs, key, where)
    try:
        spool = _Spool(upload.file)
        writer = HashingWriter(spool, digest)  # type: ignore[arg-type]
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]
        finally:
            writer.close()
        layout = torch_layout(spool, writer.position)  # type: ignore[arg-type]
        if layout is None:
            raise CheckpointWriteError(f"{where}: torch.save did not write the zip layout envkit stamps; nothing was uploaded")
        if layout[1] < spool._tail_start:
            raise CheckpointWriteError(f"{where}: the archive's directory is larger than the {HOLD_BACK >> 20} MiB a save "
                                       "to a bucket holds back; save to a local folder and copy it")
        stamp = stamp_for(Payload(writer.digest_at(layout[1]), layout[1]))
        first = first_member(spool, layout[1], layout[1])  # type: ignore[arg-type]
        data_pkl = first[1] if first is not None and first[0] == f"{layout[0]}/data.pkl" else None
        stamp = with_storage_devices(stamp, data_pkl)
        append_last_member(spool, layout, f"{layout[0]}/{MEMBER}", stamp.to_bytes())  # type: ignore[arg-type]
        upload.size = spool.finish()
        upload.stamp = stamp
        upload.finish_parts()
    except BaseException as exc:  # noqa: BLE001 - dropped, then re-raised as one line (or as it came: an interrupt)
        _failed(upload, exc)
    return upload


def _failed(upload: _Upload, exc: BaseException) -> NoReturn:
    """Drop the upload (nothing appears under its key) and raise the one-line error for ``exc``."""
    upload.discard()
    if isinstance(exc, EnvkitError) or not isinstance(exc, Exception):
        raise exc
    cause = exc.__cause__
    try:  # the request's own error says most (s3fs wraps it), else the wrapper (a missing bucket: FileNotFoundError)
        error = remote_error(upload.where, cause if isinstance(cause, Exception) else exc, "write")
    except Exception:  # noqa: BLE001 - the cause is no storage error envkit knows
        error = remote_error(upload.where, exc, "write")
    raise CheckpointWriteError(f"{error.message}; nothing was left under that key and earlier checkpoints are untouched") from None


def upload_stream(location: str | os.PathLike[str], write: Callable[[Any], Any]) -> Any:
    """A sequential upload to the final key of ``location``: ``write(file)`` writes the whole object
    (front to back) and returns its stamp; then the upload completes and the object appears whole.
    Any failure, in ``write`` or in the requests, aborts it: nothing appears under the key (the
    safetensors writer's path to a URL, which knows its header before its first byte)."""
    fs, key, where = split(location)
    upload = _Upload(fs, key, where)
    try:
        upload.stamp = write(upload.file)
        upload.finish_parts()
    except BaseException as exc:  # noqa: BLE001 - dropped, then re-raised as one line (or as it came: an interrupt)
        _failed(upload, exc)
    _commit(upload)
    return upload.stamp


def _commit(upload: _Upload) -> None:
    try:
        upload.commit()
    except Exception as exc:  # noqa: BLE001
        upload.discard()
        raise CheckpointWriteError(f"{remote_error(upload.where, exc, 'write').message}; nothing was left under that key") from None


def save_url(obj: Any, location: str | os.PathLike[str], *, stamp_for: Any, digest: str) -> Any:
    """``envkit.save`` to a URL: the upload, then its completion; returns the stamp."""
    fs, key, where = split(location)
    upload = upload_stamped(obj, fs, key, where, stamp_for=stamp_for, digest=digest)
    _commit(upload)
    return upload.stamp


class _Upload:
    """One object being written: a multipart upload to the final key (s3, gs), else a temporary key moved at commit."""

    def __init__(self, fs: Any, key: str, where: ObjectPath) -> None:
        self.fs, self.key, self.where = fs, key, where
        self.size = 0
        self.stamp: Any = None
        self.atomic = where.scheme in _ATOMIC_UPLOADS
        self.target = key if self.atomic else f"{key.rsplit('/', 1)[0]}/.{key.rsplit('/', 1)[-1]}{TEMP_MARK}{os.getpid()}"
        options: dict[str, Any] = {"autocommit": False, "block_size": PART_BYTES} if self.atomic else {}
        self.file = _call(where, fs.open, self.target, "wb", doing="write", **options)
        self.done = False

    def finish_parts(self) -> None:
        """Upload every part (close without completing); nothing is visible yet."""
        self.file.close()

    def commit(self) -> None:
        if self.atomic:
            self.file.commit()  # CompleteMultipartUpload: the object appears whole, now
        else:
            self.fs.mv(self.target, self.key)
        self.done = True
        self.fs.invalidate_cache()

    def discard(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            if self.atomic:
                self.file.discard()  # AbortMultipartUpload
                self.file.closed = True  # nothing for fsspec to flush at garbage collection
            else:
                self.file.close()
                self.fs.rm_file(self.target)
        except Exception:  # noqa: BLE001 - the next manager aborts what is left (remove_stale)
            pass


def _pid_alive(pid: int) -> bool:
    from envkit.checkpoint.paths import _pid_alive as alive

    return alive(pid)


class ObjectLock:
    """The one-writer rule on a bucket prefix: ``.envkit-lock``, created only if absent (``If-None-Match: *``)."""

    def __init__(self, fs: Any, key: str, where: ObjectPath) -> None:
        self.fs, self.key, self.where = fs, key, where
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.held = False

    def _create(self) -> bool:
        doc = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": self.token}
        try:
            with self.fs.open(self.key, "xb") as fh:
                fh.write(json.dumps(doc).encode())
        except FileExistsError:
            return False
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self.where, exc, "write") from None
        return True

    def holder(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.fs.cat_file(self.key))
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - unreadable: a holder we cannot judge
            return {}
        return doc if isinstance(doc, dict) else {}

    def acquire(self) -> None:
        for _ in range(3):
            if self._create():
                self.held = True
                return
            holder = self.holder()
            if holder is None:
                continue  # released between the two requests
            pid, host = holder.get("pid"), holder.get("host")
            if host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid):
                self.fs.rm_file(self.key)  # its writer is gone (same host, no such pid): a stale lock
                continue
            since = holder.get("since")
            age = f", taken {time.time() - since:.0f} s ago" if isinstance(since, (int, float)) else ""
            raise CheckpointDirLocked(
                f"{self.where.parent}: another writer holds its lock {self.where} (host {host}, pid {pid}{age}); "
                f"stop it first, or, once you know it is gone, delete {self.where} and start again"
            )
        raise CheckpointDirLocked(f"{self.where}: the lock changed hands while it was taken; start again")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self.holder()
        if holder and holder.get("token") == self.token:
            try:
                self.fs.rm_file(self.key)
            except Exception:  # noqa: BLE001 - a lock left behind is broken by the next manager of this host
                pass


__all__ = ["HEAD_BYTES", "PART_BYTES", "TAIL_BYTES", "ObjectLock", "RangeView", "download", "filesystem", "remote_error", "save_url",
           "split", "storage_options", "upload_stamped", "upload_stream"]
