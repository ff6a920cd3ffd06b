"""safetensors files: the header read in two reads and validated, the stamp in ``__metadata__``.

The format: 8 bytes, the little-endian length N of the header; N bytes of JSON, an object of
``name -> {"dtype", "shape", "data_offsets": [begin, end]}`` and an optional ``__metadata__``
string-to-string map; then the data section, which the tensors' offsets (relative to its start,
``8 + N``) must cover exactly, without gaps or overlaps. Headers are at most 100,000,000 bytes.

envkit keeps its stamp (``envkit.stamp/1``) as the string ``__metadata__["envkit"]``, next to
``"format": "pt"`` (transformers refuses a file without it). The payload digest covers the data
section; the stamp's meta also records ``header_digest``, a digest of the tensor table and the
other metadata, so that ``verify`` sees a header changed after saving (names swapped, shapes
edited) as well as changed data. A file without the ``envkit`` entry is unstamped, not an error.

Reading needs neither torch nor the safetensors library (``read_header``: the 14 bytes the reader
sniffs, then one read of the header). Writing (``write``) and ``load_tensors`` need torch. No
torch import at module level.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from envkit.checkpoint.stamp import MAX_STAMP_BYTES, Payload, Stamp
from envkit.errors import BadInput, CorruptCheckpoint, MalformedSafetensors, MalformedStamp, TorchNotInstalled

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from typing import Any, BinaryIO

    Progress = Callable[[int, int], None]

FORMAT = "safetensors"
SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 100_000_000  # what safetensors itself accepts (the Hub caps at 25 MB)
STAMP_KEY = "envkit"  # __metadata__["envkit"]: the stamp JSON, as a string
METADATA_KEY = "__metadata__"
HEADER_DIGEST = "header_digest"  # stamp meta: digest of the tensor table and the other metadata
_MAX_INT_DIGITS = 20  # an offset or a dimension is below 2**64
_CHUNK = 8 * 1024 * 1024
_NAME_SHOWN = 80

# safetensors dtype -> (bits per element, torch's name or None where torch has no 1:1 dtype)
DTYPES: dict[str, tuple[int, str | None]] = {
    "BOOL": (8, "bool"), "U8": (8, "uint8"), "I8": (8, "int8"),
    "F8_E5M2": (8, "float8_e5m2"), "F8_E4M3": (8, "float8_e4m3fn"), "F8_E8M0": (8, "float8_e8m0fnu"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"), "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "I16": (16, "int16"), "U16": (16, "uint16"), "F16": (16, "float16"), "BF16": (16, "bfloat16"),
    "I32": (32, "int32"), "U32": (32, "uint32"), "F32": (32, "float32"),
    "C64": (64, "complex64"), "F64": (64, "float64"), "I64": (64, "int64"), "U64": (64, "uint64"),
    "F4": (4, None), "F6_E2M3": (6, None), "F6_E3M2": (6, None),  # packed: torch's shapes differ
}
_FROM_TORCH = {name: code for code, (_, name) in DTYPES.items() if name is not None}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the header: offsets relative to the data section."""

    name: str
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> str:
        """``float32``: torch's name where there is one, else safetensors' (``F4``)."""
        return DTYPES[self.dtype][1] or self.dtype


@dataclass(frozen=True)
class Header:
    """A validated safetensors header; ``tensors`` in the header's order."""

    path: Path
    size: int
    header_length: int
    tensors: tuple[TensorInfo, ...]
    metadata: Mapping[str, str] | None
    stamp: Stamp | None

    @property
    def data_start(self) -> int:
        return 8 + self.header_length

    @property
    def data_length(self) -> int:
        return self.size - self.data_start

    @property
    def user_metadata(self) -> dict[str, str]:
        """``__metadata__`` without envkit's own entry."""
        return {k: v for k, v in (self.metadata or {}).items() if k != STAMP_KEY}


def looks_like_safetensors(head: bytes) -> bool:
    """The first bytes of a file: an 8-byte length, then the header's opening brace."""
    return len(head) >= 9 and head[8:9] == b"{"


def _bad(path: Path, what: str) -> MalformedSafetensors:
    return MalformedSafetensors(
        f"{path}: not a usable safetensors file: {what}; it is damaged or was not written by safetensors, "
        "re-save it or fetch it again"
    )


def _name(key: object) -> str:
    text = repr(key)
    return text if len(text) <= _NAME_SHOWN else text[:_NAME_SHOWN] + "..."


def read_header(path: Path, fh: BinaryIO, size: int) -> Header:
    """The header of an open safetensors file of ``size`` bytes, in at most two reads of the file:
    the reader's sniff has filled the file object's buffer (8 KiB, which holds most headers whole),
    and a longer header is one more read of the rest. N is checked against the 100,000,000 byte cap
    and the file's size before anything is allocated for it; the data section is never read."""
    if size < 10:
        raise _bad(path, f"the file has {size} bytes, too few for a length and a header")
    fh.seek(0)
    n = int.from_bytes(fh.read(8), "little")
    if n > MAX_HEADER_BYTES:
        raise _bad(path, f"the header claims {n:,} bytes, over the {MAX_HEADER_BYTES:,} byte limit of safetensors")
    if n < 2 or 8 + n > size:
        raise _bad(path, f"the header claims {n:,} bytes, the file has {size - 8:,} after the length (truncated?)")
    data = bytearray(n)
    got = fh.readinto(data)  # type: ignore[attr-defined]  # what the buffer holds, then the rest in one read
    if got != n:
        raise _bad(path, f"the header is cut short ({got} of {n:,} bytes read; the file changed while it was read?)")
    return parse_header(data, path=path, size=size)


def _no_duplicates(path: Path) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise _bad(path, f"the key {_name(duplicate)} appears twice in one object of the header")
        return out

    return build


def _bounded_int(path: Path) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > _MAX_INT_DIGITS:
            raise _bad(path, f"a number of {len(text)} digits in the header")
        return int(text)

    return parse


def _refuse_constant(path: Path) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        raise _bad(path, f"{text} in the header, which is not JSON")

    return parse


def parse_header(data: bytes | bytearray, *, path: Path, size: int) -> Header:
    """Validate the N header bytes as safetensors does (and refuse duplicate keys, which it does not)."""
    if data[:1] != b"{":
        raise _bad(path, "the header does not start with '{'")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(path, "the header is not UTF-8") from None
    try:
        # Python's own limit on the digits of an int (4,300 by default) bounds the work of a hostile
        # number; only where it is switched off does every number pass through a Python check
        limited = 0 < getattr(sys, "get_int_max_str_digits", lambda: 0)() <= 10_000
        doc = json.loads(text, object_pairs_hook=_no_duplicates(path), parse_int=None if limited else _bounded_int(path),
                         parse_constant=_refuse_constant(path))
    except RecursionError:
        raise _bad(path, "the header's JSON is nested too deeply") from None
    except ValueError as exc:
        raise _bad(path, f"the header is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(doc, dict):
        raise _bad(path, f"the header is a JSON {type(doc).__name__}, not an object")
    metadata = doc.pop(METADATA_KEY, None)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad(path, f"{METADATA_KEY} is a JSON {type(metadata).__name__}, not a string-to-string map")
        wrong = next((k for k, v in metadata.items() if not isinstance(v, str)), None)
        if wrong is not None:
            raise _bad(path, f"{METADATA_KEY}[{_name(wrong)}] is not a string (safetensors metadata maps strings to strings)")
    data_length = size - 8 - len(data)
    tensors = tuple(_entry(path, name, entry, data_length) for name, entry in doc.items())
    _check_coverage(path, tensors, data_length)
    return Header(path, size, len(data), tensors, metadata, _stamp_of(metadata, path))


def _entry(path: Path, name: str, entry: Any, data_length: int) -> TensorInfo:
    """One tensor's entry, checked as safetensors checks it (exact types: a bool is not a dimension)."""
    if type(entry) is not dict:
        raise _bad(path, f"the entry of tensor {_name(name)} is not an object")
    try:
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    except KeyError:
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
        raise _bad(path, f"tensor {_name(name)} has no {' and no '.join(missing)}") from None
    known = DTYPES.get(dtype) if type(dtype) is str else None
    if known is None:
        raise _bad(path, f"tensor {_name(name)} has the unknown dtype {_name(dtype)} (known: {', '.join(DTYPES)})")
    if type(shape) is not list or any(type(d) is not int or d < 0 for d in shape):
        raise _bad(path, f"the shape of tensor {_name(name)} is not a list of non-negative integers")
    if type(offsets) is not list or len(offsets) != 2:
        raise _bad(path, f"the data_offsets of tensor {_name(name)} are not [begin, end] with 0 <= begin <= end")
    begin, end = offsets
    if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
        raise _bad(path, f"the data_offsets of tensor {_name(name)} are not [begin, end] with 0 <= begin <= end")
    if end > data_length:
        raise _bad(path, f"tensor {_name(name)} ends at {end:,}, past the {data_length:,} bytes of the data section")
    bits, want_bits = known[0], (end - begin) * 8
    numel = 0 if 0 in shape else 1
    for d in shape if numel else ():
        numel *= d
        if numel * bits > want_bits:
            break  # the product only grows: a mismatch, without multiplying out a hostile shape
    if numel * bits != want_bits:
        raise _bad(path, f"tensor {_name(name)} is {dtype} of shape {shape[:8]}, which is not the {end - begin:,} bytes its offsets hold")
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def _check_coverage(path: Path, tensors: tuple[TensorInfo, ...], data_length: int) -> None:
    """In offset order, each tensor starts where the previous ended and the last ends where the file does."""
    position = 0
    for t in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if t.begin != position:
            what = "overlaps the tensor before it" if t.begin < position else f"leaves a gap of {t.begin - position:,} bytes before it"
            raise _bad(path, f"tensor {_name(t.name)} (data_offsets [{t.begin}, {t.end}]) {what}")
        position = t.end
    if position != data_length:
        raise _bad(path, f"the tensors cover {position:,} bytes of a {data_length:,} byte data section")


def _stamp_of(metadata: Mapping[str, str] | None, path: Path) -> Stamp | None:
    """The stamp in ``__metadata__["envkit"]``; None when there is none (or it is someone else's entry)."""
    text = (metadata or {}).get(STAMP_KEY)
    if text is None or not text.lstrip().startswith("{"):
        return None
    if len(text) > MAX_STAMP_BYTES:
        raise MalformedStamp(f"{path}: the envkit stamp is {len(text):,} characters, over the {MAX_STAMP_BYTES:,} limit; "
                             "the file was not written by envkit or was tampered with")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedStamp(f"{path}: the envkit stamp in {METADATA_KEY} is not valid JSON ({exc}); re-save the file") from None
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("envkit.stamp"):
        return None  # somebody else's "envkit" entry
    return Stamp.from_json(doc, source=str(path))


def header_digest(tensors: tuple[TensorInfo, ...] | list[TensorInfo], metadata: Mapping[str, str], algorithm: str) -> str:
    """The digest of the tensor table (by name) and the metadata other than the stamp."""
    from envkit.checkpoint.hashing import new_hasher

    table = sorted([t.name, t.dtype, list(t.shape), t.begin, t.end] for t in tensors)
    others = {k: v for k, v in metadata.items() if k != STAMP_KEY}
    hasher = new_hasher(algorithm)
    hasher.update(json.dumps([table, others], sort_keys=True, separators=(",", ":")).encode())
    return f"{algorithm}:{hasher.hexdigest()}"


# -- verify -------------------------------------------------------------------------


def header_problem(path: Path, header: Header, stamp: Stamp) -> str | None:
    """Why the header does not match the stamp (None: it does): the data length, the header digest."""
    payload = stamp.payload
    assert payload is not None
    if payload.length != header.data_length:
        return f"{path}: the stamp records {payload.length:,} data bytes, the data section has {header.data_length:,}"
    recorded = stamp.meta.get(HEADER_DIGEST)
    if isinstance(recorded, str) and header_digest(header.tensors, header.metadata or {}, recorded.split(":", 1)[0]) != recorded:
        return f"{path}: the header's tensor table or metadata changed after saving (its digest does not match the stamp)"
    return None


def verify_problem(path: Path, fh: BinaryIO, size: int, stamp: Stamp, progress: Progress | None = None) -> str | None:
    """Why a stamped safetensors file is not whole (None: it is): the header again, then the data
    section streamed once against the payload digest. Raises the header's MalformedSafetensors."""
    from envkit.checkpoint.hashing import new_hasher

    header = read_header(path, fh, size)
    payload = stamp.payload
    assert payload is not None
    problem = header_problem(path, header, stamp)
    if problem is not None:
        return problem
    hasher = new_hasher(payload.algorithm)
    fh.seek(header.data_start)
    done, buffer = 0, bytearray(min(_CHUNK, max(payload.length, 1)))
    view = memoryview(buffer)
    while done < payload.length:
        n = fh.readinto(view[: min(_CHUNK, payload.length - done)])  # type: ignore[attr-defined]
        if not n:
            return f"{path}: truncated: {done:,} of {payload.length:,} data bytes could be read"
        hasher.update(view[:n])
        done += n
        if progress is not None:
            progress(done, payload.length)
    actual = f"{payload.algorithm}:{hasher.hexdigest()}"
    if actual != payload.digest:
        return f"{path}: payload digest mismatch (recorded {payload.digest}, found {actual}): the bytes changed after saving"
    return None


# -- load ---------------------------------------------------------------------------


def _import_torch(what: str) -> Any:
    try:
        import torch
    except ImportError:
        raise TorchNotInstalled(f"{what} needs torch; install it with `pip install envkit[torch]`") from None
    return torch


def load_tensors(path: str | os.PathLike[str], *, map_location: Any = None, verify: bool = True) -> dict[str, Any]:
    """The tensors of a safetensors file, each read into its own buffer in one pass over the file,
    hashed on the way when ``verify`` and the file is stamped (CorruptCheckpoint before any tensor
    is returned). ``map_location``: None or a device ("cpu", "cuda:0", a torch.device)."""
    from envkit.checkpoint.hashing import new_hasher

    torch = _import_torch("envkit.load")
    p = Path(path)
    if map_location is not None and not isinstance(map_location, (str, torch.device)):
        raise BadInput(f"{p}: map_location for a safetensors file is a device (\"cpu\", \"cuda:0\"), not {type(map_location).__name__}")
    if sys.byteorder != "little":
        raise BadInput(f"{p}: envkit reads safetensors files on little-endian machines only; use safetensors.torch.load_file")
    with open(p, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        header = read_header(p, fh, size)
        stamp = header.stamp if verify else None
        payload = stamp.payload if stamp is not None else None
        if payload is not None and stamp is not None:
            problem = None
            if payload.length != header.data_length:
                problem = f"the stamp records {payload.length:,} data bytes, the data section has {header.data_length:,}"
            recorded = stamp.meta.get(HEADER_DIGEST)
            if isinstance(recorded, str) and header_digest(header.tensors, header.metadata or {}, recorded.split(":", 1)[0]) != recorded:
                problem = "the header's tensor table or metadata changed after saving"
            if problem:
                raise CorruptCheckpoint(f"{p}: {problem}; resume from an earlier checkpoint")
        hasher = new_hasher(payload.algorithm) if payload is not None else None
        buffers: dict[str, bytearray] = {}
        fh.seek(header.data_start)
        for t in sorted(header.tensors, key=lambda t: (t.begin, t.end)):
            buffer = bytearray(t.end - t.begin)
            if fh.readinto(buffer) != len(buffer):
                raise CorruptCheckpoint(f"{p}: truncated while tensor {_name(t.name)} was read; resume from an earlier checkpoint")
            if hasher is not None:
                hasher.update(buffer)
            buffers[t.name] = buffer
    if hasher is not None and payload is not None:
        actual = f"{payload.algorithm}:{hasher.hexdigest()}"
        if actual != payload.digest:
            raise CorruptCheckpoint(f"{p}: payload digest mismatch (recorded {payload.digest}, found {actual}): "
                                    "the bytes changed after saving; resume from an earlier checkpoint")
    out = {}
    for t in header.tensors:
        dtype = getattr(torch, DTYPES[t.dtype][1] or "", None)
        if dtype is None:
            raise BadInput(f"{p}: tensor {_name(t.name)} is {t.dtype}, which this torch ({torch.__version__}) cannot hold; "
                           "load it with a newer torch through safetensors.torch.load_file")
        buffer = buffers.pop(t.name)
        tensor = torch.frombuffer(buffer, dtype=dtype).reshape(t.shape) if buffer else torch.empty(t.shape, dtype=dtype)
        out[t.name] = tensor.to(map_location) if map_location is not None and str(map_location) != "cpu" else tensor
    return out


# -- write --------------------------------------------------------------------------


_SHARED_ADVICE = (
    "A potential way to correctly save your model is to use `safetensors.torch.save_model`. "
    "More information at https://huggingface.co/docs/safetensors/torch_shared_tensors"
)


def _prepare(tensors: Any, path: Path, torch: Any) -> list[tuple[str, str, tuple[int, ...], Any]]:
    """(name, safetensors dtype, shape, a contiguous CPU tensor) in the order the data is written;
    BadInput for anything safetensors.torch.save_file refuses (shared memory with its advice)."""
    from collections.abc import Mapping

    if not isinstance(tensors, Mapping):
        raise BadInput(f"{path}: a safetensors file holds a flat dict of name -> tensor, not {type(tensors).__name__}; "
                       "save a model's state_dict(), or other objects to a .pt file")
    prepared = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise BadInput(f"{path}: the key {_name(name)} is not a string; safetensors names every tensor with a string")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInput(f"{path}: the name {_name(name)} is not valid Unicode text; safetensors names are UTF-8") from None
        if name == METADATA_KEY:
            raise BadInput(f"{path}: {METADATA_KEY} is reserved by safetensors for the metadata; rename that tensor")
        if not isinstance(value, torch.Tensor):
            hint = " (a nested dict: flatten it, or save it to a .pt file)" if isinstance(value, Mapping) else ""
            raise BadInput(f"{path}: {_name(name)} is a {type(value).__name__}, not a tensor{hint}; a safetensors file holds tensors only")
        if value.layout != torch.strided:
            raise BadInput(f"{path}: {_name(name)} is a sparse tensor, which safetensors does not hold; make it dense with .to_dense()")
        code = _FROM_TORCH.get(str(value.dtype).rsplit(".", 1)[-1])
        if code is None:
            raise BadInput(f"{path}: {_name(name)} is {value.dtype}, which envkit cannot write to safetensors; convert it, "
                           "or use safetensors.torch.save_file")
        if value.device.type == "meta":
            raise BadInput(f"{path}: {_name(name)} is on the meta device and has no data to save")
        prepared.append((name, code, value))
    _refuse_shared(prepared, path, torch)
    out = []
    for name, code, value in prepared:
        tensor = value.detach().to("cpu").contiguous()
        out.append((name, code, tuple(tensor.shape), tensor))
    out.sort(key=lambda item: (-DTYPES[item[1]][0], item[0]))  # widest first: every tensor stays aligned
    return out


def _refuse_shared(prepared: list[tuple[str, str, Any]], path: Path, torch: Any) -> None:
    """As safetensors.torch.save_file: tensors whose memory overlaps (tied weights) are refused."""
    groups: dict[tuple[Any, int, int], list[tuple[int, int, str]]] = {}
    for name, _, t in prepared:
        storage = t.untyped_storage()
        if storage.data_ptr() == 0 or storage.nbytes() == 0:
            continue
        extent = 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride(), strict=True)) if t.numel() else 0
        end = t.data_ptr() + extent * t.element_size()
        groups.setdefault((t.device, storage.data_ptr(), storage.nbytes()), []).append((t.data_ptr(), end, name))
    failing = []
    for areas in groups.values():
        areas.sort()
        current, last_stop = {areas[0][2]}, areas[0][1]
        for start, stop, name in areas[1:]:
            if start >= last_stop:
                if len(current) > 1:
                    failing.append(sorted(current))
                current = {name}
            else:
                current.add(name)
            last_stop = max(last_stop, stop)
        if len(current) > 1:
            failing.append(sorted(current))
    if failing:
        shown = "; ".join(", ".join(group) for group in failing[:3])
        raise BadInput(f"{path}: some tensors share memory, which would be duplicated on disk and differ when loaded again "
                       f"({shown}). {_SHARED_ADVICE}")


def _header_bytes(entries: list[tuple[str, str, tuple[int, ...], int, int]], metadata: Mapping[str, str], minimum: int = 0) -> bytes:
    doc: dict[str, Any] = {METADATA_KEY: dict(metadata)}
    for name, code, shape, begin, end in entries:
        doc[name] = {"dtype": code, "shape": list(shape), "data_offsets": [begin, end]}
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    length = max(len(text), minimum)
    length += -(8 + length) % 8  # the data section starts 8-byte aligned, as safetensors writes it
    return text + b" " * (length - len(text))


class _Plan:
    """What a save writes, worked out before its first byte: the tensors in file order, their
    entries in the header, the user's metadata and the stamp's builder."""

    def __init__(self, tensors: Any, path: Path, *, stamp_for: Callable[[Payload], Stamp], digest: str,
                 metadata: Mapping[str, str] | None) -> None:
        torch = _import_torch("envkit.save")
        if sys.byteorder != "little":
            raise BadInput(f"{path}: envkit writes safetensors files on little-endian machines only")
        user = dict(metadata or {})
        for k, v in user.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise BadInput(f"{path}: safetensors metadata maps strings to strings; {_name(k)}: {_name(v)} is not")
        if STAMP_KEY in user:
            raise BadInput(f"{path}: the metadata key {STAMP_KEY!r} is envkit's stamp; use another name")
        user.setdefault("format", "pt")  # transformers refuses a file without it
        self.path, self.digest, self.user, self._stamp_for = path, digest, user, stamp_for
        self.prepared = _prepare(tensors, path, torch)
        self.entries: list[tuple[str, str, tuple[int, ...], int, int]] = []
        position = 0
        for name, code, shape, tensor in self.prepared:
            nbytes = tensor.numel() * tensor.element_size()
            self.entries.append((name, code, shape, position, position + nbytes))
            position += nbytes
        self.length = position
        self.index = header_digest([TensorInfo(*entry) for entry in self.entries], user, digest)

    def stamped(self, payload: Payload) -> Stamp:
        stamp = self._stamp_for(payload)
        meta = {**stamp.meta, HEADER_DIGEST: self.index, "storage_devices": ["cpu"]}
        return Stamp(stamp.fingerprint_doc, payload, meta, stamp.schema, stamp.source)

    def header(self, stamp: Stamp, minimum: int = 0) -> bytes:
        return _header_bytes(self.entries, {**self.user, STAMP_KEY: stamp.to_bytes().decode()}, minimum=minimum)

    def data(self) -> Iterator[memoryview]:
        """Each tensor's bytes in file order, without a copy."""
        import ctypes

        for _, _, _, tensor in self.prepared:
            nbytes = tensor.numel() * tensor.element_size()
            if nbytes:
                yield memoryview((ctypes.c_ubyte * nbytes).from_address(tensor.data_ptr())).cast("B")


def write(
    tensors: Any,
    path: Path,
    *,
    stamp_for: Callable[[Payload], Stamp],
    digest: str,
    metadata: Mapping[str, str] | None = None,
) -> Stamp:
    """Write ``tensors`` to ``path`` as a stamped safetensors file, atomically, in one pass.

    The header is sized with a placeholder digest of the same length, written, the data written
    after it through the hashing writer (hashed on a second core as the kernel copies), and the
    header rewritten in place with the real digest; then fsync, rename, folder fsync.
    """
    from envkit.atomic import atomic_file, write_target
    from envkit.checkpoint.hashing import HashingWriter, new_hasher
    from envkit.errors import CheckpointWriteError

    plan = _Plan(tensors, path, stamp_for=stamp_for, digest=digest, metadata=metadata)
    position = plan.length
    placeholder = Payload(f"{digest}:" + "0" * len(new_hasher(digest).hexdigest()), position)
    first = plan.header(plan.stamped(placeholder))
    target = write_target(path)
    try:
        with atomic_file(target) as fh:
            fh.write(len(first).to_bytes(8, "little") + first)
            writer = HashingWriter(fh, digest)  # type: ignore[arg-type]  # a binary file, opened "w+b"
            try:
                for view in plan.data():
                    writer.write(view)
            finally:
                writer.close()
            if writer.position != position:
                raise CheckpointWriteError(f"{path}: {writer.position} data bytes written, {position} expected; save again")
            stamp = plan.stamped(Payload(writer.digest_at(position), position))
            final = plan.header(stamp, minimum=len(first))
            if len(final) != len(first):  # the digest has a fixed length: never
                raise CheckpointWriteError(f"{path}: the header changed size while it was written; save again")
            fh.seek(8)
            fh.write(final)
    except OSError as exc:
        raise CheckpointWriteError(
            f"{path}: save failed ({exc.strerror or exc}); earlier checkpoints are untouched and the temporary file "
            "was removed; free space or fix the folder, then save again"
        ) from exc
    return stamp


def write_url(
    tensors: Any,
    location: Path,
    *,
    stamp_for: Callable[[Payload], Stamp],
    digest: str,
    metadata: Mapping[str, str] | None = None,
) -> Stamp:
    """``write`` to a URL (``s3://bucket/x.safetensors``): one upload to the final key that appears
    whole when it completes, or, on any failure, not at all (remote.upload_stream aborts it).

    An upload cannot go back to rewrite its header, so the data section is hashed first, in
    memory, and the header with the real digest goes up first, then the data a part at a time.
    """
    from envkit.checkpoint.hashing import new_hasher
    from envkit.checkpoint.remote import PART_BYTES, upload_stream

    plan = _Plan(tensors, location, stamp_for=stamp_for, digest=digest, metadata=metadata)
    hasher = new_hasher(digest)
    for view in plan.data():
        hasher.update(view)
    stamp = plan.stamped(Payload(f"{digest}:{hasher.hexdigest()}", plan.length))
    header = plan.header(stamp)

    def send(out: Any) -> Stamp:
        out.write(len(header).to_bytes(8, "little") + header)
        for view in plan.data():
            for at in range(0, len(view), PART_BYTES):
                out.write(view[at : at + PART_BYTES])
        return stamp

    return upload_stream(location, send)


__all__ = [
    "DTYPES", "FORMAT", "MAX_HEADER_BYTES", "STAMP_KEY", "SUFFIX", "Header", "TensorInfo", "header_digest", "header_problem",
    "load_tensors", "looks_like_safetensors", "parse_header", "read_header", "verify_problem", "write", "write_url",
]
