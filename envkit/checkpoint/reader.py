"""Read what a checkpoint says about itself, in milliseconds and without torch.

Order (docs/architecture.md, reading a stamp): the ``<prefix>/extra/envkit.json`` member of a zip checkpoint;
else the ``envkit`` key of the pickled dict, read with the restricted unpickler
(zip ``data.pkl`` or the legacy stream); else the file is reported unstamped.
"""

from __future__ import annotations

import gc
import itertools
import os
import stat
import zipfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from envkit.checkpoint.paths import is_folder_checkpoint
from envkit.checkpoint.stamp import DICT_KEY, MAX_STAMP_BYTES, MEMBER, Stamp
from envkit.checkpoint.urls import as_location, is_url
from envkit.checkpoint.ziptail import last_stamp_member
from envkit.errors import (
    BadInput,
    EnvkitError,
    MalformedStamp,
    NotACheckpoint,
    UnsafeCheckpoint,
    describe_os_error,
    os_error_input,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, BinaryIO

    from envkit.checkpoint.safe_pickle import StorageRef  # the unpickler is imported only when a file has no stamp member

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")
_PNG = b"\x89PNG"
MAX_TOP_KEYS = 50
MAX_TENSORS_LISTED = 1000  # tensors an Inspection names (inspect's text shows fewer)
MAX_JSON_RECORDS = 1000
_MAX_LISTING_VISITS = 1_000_000  # the walk that finds tensors (a DAG can have 2**60 paths)
_MAX_NAME = 300
MAX_PICKLE_BYTES = 256 * 1024 * 1024  # the most of a pickle the reader reads
# zip flag bits zipfile cannot read stored data under: encrypted, patched data, strong encryption
_UNREADABLE_FLAGS = 0x1 | 0x20 | 0x40
_ZIP_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError)


@dataclass(frozen=True)
class CheckpointFile:
    """What ``read_stamp`` learns about a checkpoint file."""

    path: Path
    format: str  # "zip" | "legacy" | "torchscript" | "safetensors" | "dcp"
    size: int
    stamp: Stamp | None = None
    stamp_source: str | None = None  # "member" | "pickle" | "metadata" (safetensors) | "file" (dcp)
    prefix: str | None = None
    serialization_version: str | None = None
    # The locations of the storages when the reader walked the pickle (an unstamped file); else
    # None, and envkit.checkpoint.devices.storage_devices reads what the stamp recorded.
    storage_devices: tuple[str, ...] | None = None

    @property
    def stamped(self) -> bool:
        return self.stamp is not None


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a checkpoint as the pickle describes it: dotted path, dtype and shape (None when unreadable)."""

    name: str
    dtype: str | None
    shape: tuple[int, ...] | None
    parameter: bool = False

    @property
    def label(self) -> str:
        """``float32 [4, 8]``: what ``inspect`` shows for the tensor."""
        shape = "[?]" if self.shape is None else f"[{', '.join(map(str, self.shape))}]"
        return f"{self.dtype or '?'} {shape}" + (" parameter" if self.parameter else "")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape) if self.shape is not None else None}


@dataclass(frozen=True)
class Inspection:
    """What ``envkit inspect`` shows: the zip records, storages and top-level keys, without loading tensors."""

    info: CheckpointFile
    records: tuple[tuple[str, int], ...] = ()
    storages: tuple[StorageRef, ...] = ()
    top_level: tuple[tuple[str, str], ...] = ()
    byteorder: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tensors: tuple[TensorEntry, ...] = ()  # the first MAX_TENSORS_LISTED, in the pickle's order
    tensor_count: int = 0
    tensors_complete: bool = True  # False: the walk stopped at its bound, tensor_count is a lower bound

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({s.location for s in self.storages}))

    def to_json(self) -> dict[str, Any]:
        info, stamp = self.info, self.info.stamp
        return {
            "checkpoint": str(info.path),
            "format": info.format,
            "size": info.size,
            "prefix": info.prefix,
            "serialization_version": info.serialization_version,
            "byteorder": self.byteorder,
            "records": [{"name": n, "size": s} for n, s in self.records[:MAX_JSON_RECORDS]],
            "records_total": len(self.records),
            "storages": len(self.storages),
            "devices": list(self.devices),
            "top_level": {k: t for k, t in self.top_level},
            "tensors": {
                "count": self.tensor_count,
                "complete": self.tensors_complete,
                "listed": [t.to_json() for t in self.tensors],
            },
            "stamped": info.stamped,
            "stamp_source": info.stamp_source,
            "meta": dict(stamp.meta) if stamp else None,
            "payload": {"digest": stamp.payload.digest, "length": stamp.payload.length} if stamp and stamp.payload else None,
            "fingerprint": stamp.fingerprint.to_json() if stamp else None,
            **({"notes": list(self.extra["notes"])} if self.extra.get("notes") else {}),
            **({"metadata": self.extra["metadata"]} if "metadata" in self.extra else {}),  # safetensors __metadata__
        }


# -- helpers ------------------------------------------------------------------------


def _check_regular_file(path: Path) -> int:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file; pass the path of a checkpoint written by torch.save or envkit.save") from None
    except OSError as exc:
        raise os_error_input(exc, path) from None
    if stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{path}: is a directory; pass a checkpoint file (envkit ls lists the checkpoints in a folder)")
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{path}: not a regular file; pass a checkpoint file")
    if st.st_size == 0:
        raise NotACheckpoint(f"{path}: the file is empty; it is not a checkpoint (an interrupted save?)")
    return st.st_size


def sniff(path: Path, head: bytes) -> str:
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        return "legacy"
    what = "a PNG image" if head.startswith(_PNG) else "neither a zip checkpoint nor a legacy torch file"
    raise NotACheckpoint(f"{path}: {what}; pass a file written by torch.save or envkit.save")


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise BadInput(f"{describe_os_error(path, exc)}; pass a readable checkpoint file") from None


@contextmanager
def open_zip(path: Path, fh: BinaryIO | None = None) -> Iterator[zipfile.ZipFile]:
    """``fh``: the file already open (not closed here), so that it is not opened again."""
    try:
        zf = zipfile.ZipFile(fh if fh is not None else path)
    except (zipfile.LargeZipFile, *_ZIP_READ_ERRORS) as exc:
        raise NotACheckpoint(
            f"{path}: a damaged or truncated zip archive ({exc}); it is not a usable checkpoint, "
            "resume from an earlier one"
        ) from None
    with zf:
        yield zf


def archive_prefix(path: Path, names: list[str]) -> str:
    """The archive's own top folder, the one torch reads records from."""
    prefixes = {n.split("/", 1)[0] for n in names if "/" in n}
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1 or len(prefixes) != 1:
        raise NotACheckpoint(f"{path}: a zip archive, but not one torch.save wrote (no single <prefix>/data.pkl)")
    return pkl[0].split("/", 1)[0]


def _member_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, limit: int) -> bytes:
    _refuse_unusual_member(info, path)
    if info.file_size > limit:
        raise MalformedStamp(
            f"{path}: member {info.filename} is {info.file_size} bytes, over the {limit} byte limit; "
            "the file was not written by envkit or was tampered with"
        )
    try:
        return zf.read(info)
    except _ZIP_READ_ERRORS as exc:
        raise NotACheckpoint(f"{path}: member {info.filename} is damaged ({exc}); resume from an earlier checkpoint") from None


def _refuse_unusual_member(info: zipfile.ZipInfo, path: Path) -> None:
    if info.flag_bits & (0x1 | 0x40):
        raise UnsafeCheckpoint(f"{path}: member {info.filename} is encrypted; torch never writes that, do not load this file")
    if info.flag_bits & _UNREADABLE_FLAGS:
        raise UnsafeCheckpoint(
            f"{path}: member {info.filename} uses zip features (flag bits {info.flag_bits:#06x}) torch never "
            "writes; do not load this file"
        )
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnsafeCheckpoint(f"{path}: member {info.filename} is compressed; torch never writes that, do not load this file")


class _Limited:
    """A read-only view of a stream that fails past ``limit`` bytes."""

    def __init__(self, fh: BinaryIO, limit: int, path: Path) -> None:
        self._fh, self._left, self._path = fh, limit, path

    def _take(self, n: int) -> int:
        if n > self._left:
            raise UnsafeCheckpoint(f"{self._path}: the pickle is larger than {MAX_PICKLE_BYTES} bytes; refusing to read it")
        self._left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(self._left + 1 if n is None or n < 0 else min(n, self._left + 1))
        self._take(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        data = self._fh.readline(self._left + 1)
        self._take(len(data))
        return data


def _stamp_from_object(obj: Any, path: Path) -> Stamp | None:
    if not isinstance(obj, dict) or DICT_KEY not in obj:
        return None
    from envkit.checkpoint.safe_pickle import to_plain

    doc = to_plain(obj[DICT_KEY], source=str(path))
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("envkit.stamp"):
        return None  # somebody else's "envkit" key
    return Stamp.from_json(doc, source=str(path))


def _top_level(obj: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(obj, dict):
        return (("<object>", _kind(obj)),)
    return tuple((_key_label(k), _kind(v)) for k, v in itertools.islice(obj.items(), MAX_TOP_KEYS))


def _tensor_listing(obj: Any) -> tuple[tuple[TensorEntry, ...], int, bool]:
    """(the first tensors with their dotted names, how many, whether the walk saw everything)."""
    listed: list[TensorEntry] = []
    count = 0
    walk = walk_tensors(obj)
    for name, value in walk:
        count += 1
        if len(listed) < MAX_TENSORS_LISTED:
            listed.append(TensorEntry(name, value.dtype, value.shape, value.parameter))
    return tuple(listed), count, walk.complete


class walk_tensors:  # used as a function: for name, placeholder in walk_tensors(obj)
    """Every tensor placeholder of an unpickled structure with its dotted name (``<object>`` for a
    bare tensor), walking dicts, lists and tuples, bounded; ``complete`` is False once the walk
    stopped at a bound. ``leaves``: every other leaf (a number, a string, an object) too.
    ``envkit trial``'s child names what it loads the same way."""

    def __init__(self, obj: Any, *, leaves: bool = False) -> None:
        self.obj = obj
        self.leaves = leaves
        self.complete = True

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        from envkit.checkpoint.safe_pickle import MAX_WALK_DEPTH, TensorPlaceholder

        visits = _MAX_LISTING_VISITS
        stack: list[tuple[str, Any, int]] = [("", self.obj, 0)]
        while stack:
            name, value, depth = stack.pop()
            visits -= 1
            if visits < 0:
                self.complete = False
                return
            if isinstance(value, TensorPlaceholder):
                yield name or "<object>", value
                continue
            if isinstance(value, dict):
                children = [(_key_label(k), v) for k, v in itertools.islice(value.items(), visits + 1)]
            elif isinstance(value, (list, tuple)):
                children = [(str(i), v) for i, v in enumerate(value[: visits + 1])]
            else:
                if self.leaves:
                    yield name or "<object>", value
                continue
            if depth >= MAX_WALK_DEPTH:
                self.complete = False
                continue
            prefix = f"{name}." if name else ""
            stack.extend((f"{prefix}{k}"[:_MAX_NAME], v, depth + 1) for k, v in reversed(children))


def _key_label(k: Any) -> str:
    """A short label for a top-level key; str() of a hostile key can recurse, fail or explode."""
    if isinstance(k, str):
        return k[:120]
    if k is None or isinstance(k, (bool, float)) or (isinstance(k, int) and k.bit_length() <= 64):
        return str(k)
    return f"<{_kind(k)}>"


def _kind(v: Any) -> str:
    from envkit.checkpoint.safe_pickle import Opaque, TensorPlaceholder

    if isinstance(v, TensorPlaceholder):
        return TensorEntry("", v.dtype, v.shape, v.parameter).label
    if isinstance(v, Opaque):
        return v.qualname.rsplit(".", 1)[-1].lstrip("_")
    if isinstance(v, dict):
        return f"dict[{len(v)}]"
    if isinstance(v, (list, tuple)):
        return f"{type(v).__name__}[{len(v)}]"
    return type(v).__name__


# -- zip ----------------------------------------------------------------------------


def _read_zip(path: Path, size: int, *, deep: bool, fh: BinaryIO | None = None) -> Inspection:
    with open_zip(path, fh) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        prefix = archive_prefix(path, names)
        by_name = {i.filename: i for i in infos}
        torchscript = f"{prefix}/constants.pkl" in by_name or any(n.startswith(f"{prefix}/code/") for n in names)
        fmt = "torchscript" if torchscript else "zip"
        version = by_name.get(f"{prefix}/version")
        serialization_version = _member_bytes(zf, version, path, 64).decode("ascii", "replace").strip() if version else None
        byteorder_info = by_name.get(f"{prefix}/byteorder")
        byteorder = _member_bytes(zf, byteorder_info, path, 64).decode("ascii", "replace").strip() if byteorder_info else None

        stamp, source = None, None
        member = by_name.get(f"{prefix}/{MEMBER}")
        if member is not None:
            stamp, source = Stamp.from_bytes(_member_bytes(zf, member, path, MAX_STAMP_BYTES), source=str(path)), "member"

        storages: tuple[StorageRef, ...] = ()
        top: tuple[tuple[str, str], ...] = ()
        listing: tuple[tuple[TensorEntry, ...], int, bool] = ((), 0, True)
        if (stamp is None or deep) and not torchscript:
            obj, unpickler = _zip_pickle(zf, by_name, prefix, path)
            storages, top = tuple(unpickler.storages), _top_level(obj)
            if deep:
                listing = _tensor_listing(obj)
            if stamp is None:
                stamp = _stamp_from_object(obj, path)
                source = "pickle" if stamp else None
        if torchscript and stamp is None:
            raise NotACheckpoint(
                f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint; envkit checks files "
                "written by torch.save or envkit.save, load this one with torch.jit.load"
            )
        info = CheckpointFile(path, fmt, size, stamp, source, prefix, serialization_version)
        if (source != "member" or deep) and not torchscript:  # the pickle was walked: its storages are known
            info = replace(info, storage_devices=tuple(sorted({s.location for s in storages})))
        records = tuple((i.filename, i.file_size) for i in infos) if deep else ()
        return Inspection(info, records, storages, top, byteorder, {}, *listing)


def _zip_pickle(zf: zipfile.ZipFile, by_name: dict[str, zipfile.ZipInfo], prefix: str, path: Path) -> tuple[Any, Any]:
    """(object, unpickler) of the archive's data.pkl, read with the restricted unpickler."""
    pkl = by_name.get(f"{prefix}/data.pkl")
    if pkl is None:
        raise NotACheckpoint(f"{path}: a zip archive without {prefix}/data.pkl, not a torch checkpoint")
    _refuse_unusual_member(pkl, path)
    if pkl.file_size > MAX_PICKLE_BYTES:
        raise UnsafeCheckpoint(f"{path}: data.pkl is {pkl.file_size} bytes; refusing to read so large a pickle")
    try:
        with zf.open(pkl) as stream:
            data = stream.read(MAX_PICKLE_BYTES + 1)
    except _ZIP_READ_ERRORS as exc:
        raise NotACheckpoint(f"{path}: data.pkl is damaged ({exc}); resume from an earlier checkpoint") from None
    from envkit.checkpoint.safe_pickle import restricted_loads

    return restricted_loads(data, source=str(path))


# -- legacy -------------------------------------------------------------------------


def _legacy_pickle(path: Path, fh: BinaryIO | None = None) -> tuple[Any, Any, int, dict[Any, Any]]:
    """(object, unpickler, protocol, sys_info) of a legacy torch stream, read with the restricted unpickler."""
    from envkit.checkpoint.safe_pickle import restricted_load

    with nullcontext(fh) if fh is not None else _open(path) as fh:
        stream = _Limited(fh, MAX_PICKLE_BYTES, path)
        magic, _ = restricted_load(stream, source=str(path))  # type: ignore[arg-type]
        protocol, _ = restricted_load(stream, source=str(path))  # type: ignore[arg-type]
        sys_info, _ = restricted_load(stream, source=str(path))  # type: ignore[arg-type]
        if not isinstance(protocol, int) or protocol.bit_length() > 64 or not isinstance(sys_info, dict):
            raise NotACheckpoint(f"{path}: a legacy torch header, but damaged; resume from an earlier checkpoint")
        obj, unpickler = restricted_load(stream, source=str(path))  # type: ignore[arg-type]
    return obj, unpickler, protocol, sys_info


def _read_legacy(path: Path, size: int, fh: BinaryIO | None = None) -> Inspection:
    obj, unpickler, protocol, sys_info = _legacy_pickle(path, fh)
    stamp = _stamp_from_object(obj, path)
    byteorder = "little" if sys_info.get("little_endian") else "big"
    info = CheckpointFile(path, "legacy", size, stamp, "pickle" if stamp else None, None, str(protocol))
    info = replace(info, storage_devices=tuple(sorted({s.location for s in unpickler.storages})))
    return Inspection(info, (), tuple(unpickler.storages), _top_level(obj), byteorder, {}, *_tensor_listing(obj))


def _read_folder(path: Path, *, deep: bool) -> Inspection:
    """A folder checkpoint (``folder_format``): a sharded ``.dcp`` folder or a framework's folder,
    stamped by its ``envkit.json`` or, without one, recognised by the files in it (unstamped)."""
    from envkit.checkpoint.folder_format import (
        DCP_FORMAT,
        FOLDER_FORMAT,
        STAMP_NAME,
        read_folder_stamp,
        unstamped_files,
    )

    stamp: Stamp | None
    if os.path.lexists(path / STAMP_NAME) or path.name.endswith(".dcp"):
        stamp, files, layout = read_folder_stamp(path)
        sizes = {name: int(record["size"]) for name, record in files.items()}
        fmt, source = (FOLDER_FORMAT if layout is not None else DCP_FORMAT), "file"
    else:
        stamp, sizes, fmt, source = None, unstamped_files(path), FOLDER_FORMAT, None
    records = tuple((name, sizes[name]) for name in sorted(sizes))
    info = CheckpointFile(path, fmt, sum(size for _, size in records), stamp, source)
    if not deep:
        return Inspection(info, records)
    return _with_safetensors_tensors(Inspection(info, records))


def _read_folder_url(location: str | os.PathLike[str]) -> Inspection:
    """A ``.dcp`` prefix in a bucket (remote_folder.py): its ``envkit.json``, one GET."""
    from envkit.checkpoint.folder_format import DCP_FORMAT, FOLDER_FORMAT
    from envkit.checkpoint.remote_folder import read_folder_url

    where, (stamp, files, layout) = read_folder_url(location)
    records = tuple((name, int(files[name]["size"])) for name in sorted(files))
    info = CheckpointFile(where, FOLDER_FORMAT if layout is not None else DCP_FORMAT, sum(size for _, size in records), stamp, "file")
    return Inspection(info, records)


MAX_FOLDER_FILES_INSPECTED = 64  # safetensors files of a folder whose tensors inspect lists


def _with_safetensors_tensors(insp: Inspection) -> Inspection:
    """The tensors of the ``.safetensors`` files in a folder, named ``<file>:<tensor>``, from each
    file's own inspection; a file that cannot be inspected is a note, never an error."""
    tensors: list[TensorEntry] = []
    count, complete, notes = 0, True, []
    names = [name for name, _ in insp.records if name.endswith(".safetensors")]
    for name in names[:MAX_FOLDER_FILES_INSPECTED]:
        try:
            inner = inspect_checkpoint(insp.info.path / name)
        except (EnvkitError, OSError, ValueError) as exc:
            notes.append(f"{name}: tensors not listed ({getattr(exc, 'message', None) or exc})")
            continue
        count += inner.tensor_count
        complete = complete and inner.tensors_complete
        room = MAX_TENSORS_LISTED - len(tensors)
        tensors.extend(replace(t, name=f"{name}:{t.name}") for t in inner.tensors[: max(room, 0)])
    if len(names) > MAX_FOLDER_FILES_INSPECTED:
        complete = False
        notes.append(f"tensors of {len(names) - MAX_FOLDER_FILES_INSPECTED} more safetensors file(s) not listed")
    return replace(insp, tensors=tuple(tensors), tensor_count=count, tensors_complete=complete,
                   extra={**insp.extra, "notes": notes} if notes else insp.extra)


def _read_safetensors(path: Path, fh: BinaryIO, size: int) -> Inspection:
    """A safetensors file: everything from its header (one more read), never its data."""
    from envkit.checkpoint.safetensors_format import FORMAT, read_header

    header = read_header(path, fh, size)
    info = CheckpointFile(path, FORMAT, size, header.stamp, "metadata" if header.stamp else None, storage_devices=("cpu",))
    tensors = tuple(TensorEntry(t.name[:_MAX_NAME], t.torch_dtype, t.shape) for t in header.tensors[:MAX_TENSORS_LISTED])
    records = (("header", header.data_start), ("data", header.data_length))
    extra = {"metadata": header.user_metadata}
    return Inspection(info, records, byteorder="little", extra=extra, tensors=tensors, tensor_count=len(header.tensors))


# -- entry points -------------------------------------------------------------------


def _read(path: str | os.PathLike[str], *, deep: bool, opened: BinaryIO | None = None) -> Inspection:
    if is_url(path) and str(path).rstrip("/").endswith(".dcp"):  # a sharded checkpoint in a bucket: its envkit.json
        return _read_folder_url(path)
    if is_url(path):  # s3://, gs://, ...: ranged reads of the object (remote.py)
        return read_view(open_view(path), deep=deep)
    p = as_location(path)  # a file:// URL is the local path it names
    if is_folder_checkpoint(p):
        return _read_folder(p, deep=deep)
    size = _check_regular_file(p)
    with nullcontext(opened) if opened is not None else _open(p) as fh:
        fh.seek(0)
        head = fh.read(len(LEGACY_MAGIC))
        if head[8:9] == b"{" and not head.startswith(ZIP_MAGIC):  # an 8-byte length, then the header's brace (safetensors_format.looks_like_safetensors)
            return _read_safetensors(p, fh, size)
        fmt = sniff(p, head)
        try:
            fast = last_stamp_member(fh, size) if fmt == "zip" and not deep else None
        except OSError:
            fast = None  # the full path names the read error
    if fast is not None:
        prefix, data, version = fast
        info = CheckpointFile(p, "zip", size, Stamp.from_bytes(data, source=str(p)), "member", prefix, version)
        return Inspection(info)
    with no_cycle_collection():
        if fmt == "zip":
            return _read_zip(p, size, deep=deep)
        return _read_legacy(p, size)


def read_view(view: Any, *, deep: bool) -> Inspection:
    """What ``_read`` learns, from an object in a bucket (a ``remote.RangeView``): for a stamped
    envkit checkpoint, its tail alone (one GET: the end records, the directory, the stamp and the
    version record; ``last_stamp_member(first_from_directory=True)``); else its head too, and more
    only when the fast path cannot answer (a directory larger than the tail read, no stamp member,
    ``deep``)."""
    where = view.where
    if view.size == 0:
        raise NotACheckpoint(f"{where}: the object is empty; it is not a checkpoint (an interrupted save?)")
    fast = None
    if not deep and view.size_confirmed and not view.holds(0, len(LEGACY_MAGIC)):
        fast = last_stamp_member(view, view.size, first_from_directory=True)
    if fast is None:
        head = view.read_at(0, len(LEGACY_MAGIC))
        if head[8:9] == b"{" and not head.startswith(ZIP_MAGIC):  # safetensors: its header, at the head
            return _read_safetensors(where, view, view.size)
        fmt = sniff(where, head)
        fast = last_stamp_member(view, view.size) if fmt == "zip" and not deep else None
    if fast is not None:
        prefix, data, version = fast
        return Inspection(CheckpointFile(where, "zip", view.size, Stamp.from_bytes(data, source=str(where)), "member", prefix, version))
    view.confirm_size()  # the full readers trust the size: from a HEAD, unless the whole object came back
    with no_cycle_collection():
        if fmt == "zip":
            return _read_zip(where, view.size, deep=deep, fh=view)
        return _read_legacy(where, view.size, fh=view)


def open_view(location: str | os.PathLike[str]) -> Any:
    """A ``remote.RangeView`` of the object at a URL, starting where its stamp is: the head of a
    ``.safetensors`` object (its header; at most two GETs in all), the tail of any other (a zip's
    directory and stamp; one GET)."""
    from envkit.checkpoint.remote import RangeView, split_for_reading
    from envkit.checkpoint.safetensors_format import SUFFIX

    fs, key, where = split_for_reading(location)
    return RangeView(fs, key, where, first="head" if where.name.endswith(SUFFIX) else "tail")


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """The full read makes an object per record and per tensor, all live until it ends: the
    cycle collector, run again and again as they appear, finds nothing and costs a third."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def read_stamp(path: str | os.PathLike[str], opened: BinaryIO | None = None) -> CheckpointFile:
    """The stamp and format of a checkpoint, read without torch and without running pickled code.

    Raises ``BadInput`` subclasses (exit code 2) for anything that is not a readable,
    safe checkpoint. ``opened``: the file, already open for reading (left open).
    """
    return _read(path, deep=False, opened=opened).info


def read_structure(path: str | os.PathLike[str]) -> tuple[CheckpointFile, Any]:
    """``read_stamp``'s answer and the pickled object with inert placeholders for tensors and
    storages (``safe_pickle``), always read with the restricted unpickler, stamp or not: what
    ``envkit trial`` compares a load with, and its refusal of a hostile file before any child runs."""
    p = Path(path)
    info = read_stamp(p)
    if info.format == "legacy":
        with no_cycle_collection():
            return info, _legacy_pickle(p)[0]
    if info.format != "zip":
        raise BadInput(f"{p}: a {info.format} checkpoint; this command reads single-file checkpoints written by torch.save")
    with no_cycle_collection(), open_zip(p) as zf:
        by_name = {i.filename: i for i in zf.infolist()}
        prefix = info.prefix or archive_prefix(p, list(by_name))
        return info, _zip_pickle(zf, by_name, prefix, p)[0]


def inspect_checkpoint(path: str | os.PathLike[str]) -> Inspection:
    """Everything ``read_stamp`` learns plus the records, storages and top-level keys."""
    return _read(path, deep=True)


__all__ = ["CheckpointFile", "Inspection", "TensorEntry", "inspect_checkpoint", "open_view", "read_stamp", "read_view"]
