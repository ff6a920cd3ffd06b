"""The loader ``envkit trial`` runs in another environment's interpreter (never imported by envkit).

Self-contained: the standard library and that environment's torch, nothing else, so that
it runs with ``python -I -s -c <this file's text>`` in any environment with torch (2.0 and
later, Python 3.8 and later). It reads one JSON document on stdin::

    {"checkpoints": [path, ...], "trust_pickles": false, "threads": 4}

and writes JSON lines on stdout: first ``{"environment": {...}}`` (or ``{"no_torch": "..."}``
and exit 3), then one line per checkpoint, in order::

    {"path": ..., "loaded": true, "complete": true, "tensors": {name: [dtype, shape, stride,
     offset, storage_bytes, "crc32:xxxxxxxx"], ...}, "values": {name: repr or null, ...}}
    {"path": ..., "loaded": false, "error": "<the exception, one line>"}

Each checkpoint is ``torch.load(path, map_location="cpu", weights_only=not trust_pickles)``.
Tensors are named as envkit's reader names them from the pickle alone (``walk_tensors`` and
``_key_label`` in envkit/checkpoint/reader.py; tests/checkpoint/test_trial.py holds the two
equal), and each storage's digest is the CRC-32 of its bytes, the digest torch's writer
records for every record of the archive, computed on several threads (zlib releases the GIL).
Every other leaf (``values``) is reported by name with its ``repr`` when it is a plain
number, string, bytes or None (null for an object: compared by presence only).
Anything the load prints goes to stderr: stdout carries the JSON lines only.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
import zlib
from typing import Any

_MAX_VISITS = 1_000_000
_MAX_DEPTH = 64
_MAX_NAME = 300
_CHUNK = 32 << 20  # a storage over twice this is digested in pieces on several threads


def _kind(v: Any) -> str:
    if isinstance(v, dict):
        return f"dict[{len(v)}]"
    if isinstance(v, (list, tuple)):
        return f"{type(v).__name__}[{len(v)}]"
    return type(v).__name__


def _key_label(k: Any) -> str:
    if isinstance(k, str):
        return k[:120]
    if k is None or isinstance(k, (bool, float)) or (isinstance(k, int) and k.bit_length() <= 64):
        return str(k)
    return f"<{_kind(k)}>"


def leaf_value(v: Any) -> str | None:
    """A plain value as text (compared across environments); None for an object (its presence only)."""
    if v is None or type(v) in (bool, int, float, str, bytes):
        return repr(v)[:200]
    return None


def walk_tensors(obj: Any, torch: Any, leaves: list[tuple[str, Any]] | None = None) -> tuple[list[tuple[str, Any]], bool]:
    """(name, tensor) pairs, and whether the walk saw everything; other leaves go to ``leaves``."""
    found: list[tuple[str, Any]] = []
    complete, visits = True, _MAX_VISITS
    stack: list[tuple[str, Any, int]] = [("", obj, 0)]
    while stack:
        name, value, depth = stack.pop()
        visits -= 1
        if visits < 0:
            return found, False
        if isinstance(value, torch.Tensor):
            found.append((name or "<object>", value))
            continue
        if isinstance(value, dict):
            children = [(_key_label(k), v) for k, v in list(value.items())[: visits + 1]]
        elif isinstance(value, (list, tuple)):
            children = [(str(i), v) for i, v in enumerate(value[: visits + 1])]
        else:
            if leaves is not None:
                leaves.append((name or "<object>", value))
            continue
        if depth >= _MAX_DEPTH:
            complete = False
            continue
        prefix = name + "." if name else ""
        stack.extend(((prefix + k)[:_MAX_NAME], v, depth + 1) for k, v in reversed(children))
    return found, complete


# -- CRC-32 of one buffer on several threads: zlib's crc32_combine, with the shift operator
# for a whole chunk computed once --------------------------------------------------------


def _gf2_times(mat: list[int], vec: int) -> int:
    total, i = 0, 0
    while vec:
        if vec & 1:
            total ^= mat[i]
        vec >>= 1
        i += 1
    return total


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def _shift_operator(length: int) -> list[int]:
    """The GF(2) matrix that appends ``length`` zero bytes to a CRC-32 (zlib's crc32_combine)."""
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two
    odd = _gf2_square(even)  # four
    result = [1 << n for n in range(32)]  # the identity
    while True:
        even = _gf2_square(odd)
        if length & 1:
            result = [_gf2_times(even, r) for r in result]
        length >>= 1
        if not length:
            return result
        odd = _gf2_square(even)
        if length & 1:
            result = [_gf2_times(odd, r) for r in result]
        length >>= 1
        if not length:
            return result


def crc32_combine(crc1: int, crc2: int, len2: int, operator: list[int] | None = None) -> int:
    """The CRC-32 of A + B from crc(A), crc(B) and len(B)."""
    if len2 == 0:
        return crc1
    return _gf2_times(operator or _shift_operator(len2), crc1) ^ crc2


def _buffer(storage: Any) -> Any:
    n = storage.nbytes()
    if n == 0:
        return b""
    return memoryview((ctypes.c_char * n).from_address(storage.data_ptr())).cast("B")


def crc_of_storages(storages: list[tuple[int, Any]], pool: Any) -> dict[int, int]:
    """{id: crc32} of each (id, storage) pair; large storages in chunks, all chunks on the pool."""
    jobs: list[tuple[int, int, Any]] = []  # (storage id, chunk index, future)
    lengths: dict[int, tuple[int, int]] = {}
    for sid, storage in storages:
        view = _buffer(storage)
        n = len(view)
        starts = range(0, n, _CHUNK) if n > 2 * _CHUNK else [0]
        lengths[sid] = (n, len(starts))
        for i, start in enumerate(starts):
            piece = view[start : start + _CHUNK] if len(starts) > 1 else view
            jobs.append((sid, i, pool.submit(zlib.crc32, piece)))
    pieces: dict[int, dict[int, int]] = {}
    for sid, i, future in jobs:
        pieces.setdefault(sid, {})[i] = future.result()
    operator = None
    out: dict[int, int] = {}
    for sid, (n, count) in lengths.items():
        crc = pieces[sid][0]
        for i in range(1, count):
            size = min(_CHUNK, n - i * _CHUNK)
            if size == _CHUNK:
                operator = operator or _shift_operator(_CHUNK)
                crc = crc32_combine(crc, pieces[sid][i], size, operator)
            else:
                crc = crc32_combine(crc, pieces[sid][i], size)
        out[sid] = crc
    return out


def _one_line(exc: BaseException) -> str:
    """The exception as one line: its type and the line of its message that says what failed."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else ""
    for candidate in lines:  # torch's weights_only refusal puts the cause after a paragraph of advice
        if "WeightsUnpickler error:" in candidate:
            line = candidate.split("WeightsUnpickler error:", 1)[1].strip()
            break
    return f"{type(exc).__name__}: {line}"[:500].rstrip(": ")


def describe(tensors: list[tuple[str, Any]], torch: Any, pool: Any) -> dict[str, list[Any]]:
    records: dict[str, list[Any]] = {}
    storages: list[tuple[int, Any]] = []
    ids: dict[tuple[int, int], int] = {}
    for name, t in tensors:
        try:
            storage = t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage().untyped()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in ids:
                ids[key] = len(ids)
                storages.append((ids[key], storage))
            sid, nbytes = ids[key], storage.nbytes()
            stride, offset = list(t.stride()), t.storage_offset()
        except Exception:  # noqa: BLE001 - sparse, nested, meta, ...: no plain storage to digest
            sid, nbytes, stride, offset = None, None, None, None
        records[name] = [str(t.dtype).replace("torch.", ""), list(t.shape), stride, offset, nbytes, sid]
    crcs = crc_of_storages(storages, pool)
    for record in records.values():
        sid = record[5]
        record[5] = None if sid is None else f"crc32:{crcs[sid]:08x}"
    return records


def main() -> int:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what a load prints goes to stderr
    sys.stdout = sys.stderr
    request = json.loads(sys.stdin.read())

    def send(doc: dict[str, Any]) -> None:
        out.write(json.dumps(doc) + "\n")
        out.flush()

    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any failure to import torch means no usable torch
        send({"no_torch": _one_line(exc)})
        return 3
    try:
        import numpy

        numpy_version = numpy.__version__
    except Exception:  # noqa: BLE001 - numpy is optional
        numpy_version = None
    send({"environment": {"python": sys.version.split()[0], "executable": sys.executable,
                          "torch": str(torch.__version__), "numpy": numpy_version}})
    from concurrent.futures import ThreadPoolExecutor

    trust = bool(request.get("trust_pickles"))
    with ThreadPoolExecutor(max_workers=max(1, int(request.get("threads") or os.cpu_count() or 1))) as pool:
        for path in request["checkpoints"]:
            start = time.monotonic()
            try:
                obj = torch.load(path, map_location="cpu", weights_only=not trust)
            except Exception as exc:  # noqa: BLE001 - the other environment's error is the answer
                send({"path": path, "loaded": False, "error": _one_line(exc), "seconds": time.monotonic() - start})
                continue
            except BaseException as exc:  # noqa: BLE001 - SystemExit from a pickle, ...: still an answer
                send({"path": path, "loaded": False, "error": _one_line(exc), "seconds": time.monotonic() - start})
                continue
            leaves: list[tuple[str, Any]] = []
            tensors, complete = walk_tensors(obj, torch, leaves)
            records = describe(tensors, torch, pool)
            values = {name: leaf_value(v) for name, v in leaves}
            del obj, tensors, leaves
            send({"path": path, "loaded": True, "complete": complete, "tensors": records, "values": values,
                  "seconds": time.monotonic() - start})
    return 0


if __name__ == "__main__":
    sys.exit(main())
