"""Builders for the hostile and broken checkpoints of ``test_hostile.py``.

Everything here is made from bytes: a tiny pickle assembler (so that payloads can
use exactly the opcodes an attacker would, GLOBAL/STACK_GLOBAL/BINGET/BUILD...),
the zip layout ``torch.save`` writes, the legacy (pre-1.6) layout, and a few
header patches for zip members. Nothing here imports torch or envkit.

Every code-running payload tries to create a canary file; the suite proves each
file *does* create it under ``torch.load(weights_only=False)`` (``test_payloads_are_live``)
before it trusts that envkit not creating it means something.
"""

from __future__ import annotations

import io
import pickle
import shlex
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
LEGACY_SYS_INFO = {"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
PREFIX = "archive"


# -- a pickle assembler ---------------------------------------------------------------


class Asm:
    """Append pickle opcodes; ``done()`` adds STOP and returns the bytes."""

    def __init__(self, proto: int | None = 2) -> None:
        self.b = bytearray()
        if proto is not None:
            self.b += pickle.PROTO + bytes([proto])

    def raw(self, data: bytes) -> Asm:
        self.b += data
        return self

    # values
    def str(self, s: str) -> Asm:
        data = s.encode("utf-8")
        self.b += pickle.BINUNICODE + struct.pack("<I", len(data)) + data
        return self

    def short_str(self, s: str) -> Asm:  # protocol 4
        data = s.encode("utf-8")
        assert len(data) < 256
        self.b += pickle.SHORT_BINUNICODE + bytes([len(data)]) + data
        return self

    def bytes_(self, data: bytes) -> Asm:  # protocol 3
        self.b += pickle.BINBYTES + struct.pack("<I", len(data)) + data
        return self

    def int(self, n: int) -> Asm:
        if 0 <= n < 256:
            self.b += pickle.BININT1 + bytes([n])
        elif -(2**31) <= n < 2**31:
            self.b += pickle.BININT + struct.pack("<i", n)
        else:
            data = pickle.encode_long(n)
            self.b += pickle.LONG4 + struct.pack("<i", len(data)) + data
        return self

    def none(self) -> Asm:
        self.b += pickle.NONE
        return self

    def value(self, v: Any) -> Asm:
        """Push a plain value (str, int, bytes, None, bool, list, tuple, dict)."""
        if v is None:
            return self.none()
        if isinstance(v, bool):
            self.b += pickle.NEWTRUE if v else pickle.NEWFALSE
            return self
        if isinstance(v, int):
            return self.int(v)
        if isinstance(v, str):
            return self.str(v)
        if isinstance(v, bytes):
            return self.bytes_(v)
        if isinstance(v, list):
            self.b += pickle.EMPTY_LIST
            if v:
                self.mark()
                for x in v:
                    self.value(x)
                self.b += pickle.APPENDS
            return self
        if isinstance(v, tuple):
            self.mark()
            for x in v:
                self.value(x)
            return self.tuple()
        if isinstance(v, dict):
            self.b += pickle.EMPTY_DICT
            if v:
                self.mark()
                for k, x in v.items():
                    self.value(k).value(x)
                self.b += pickle.SETITEMS
            return self
        raise TypeError(type(v))

    # structure
    def mark(self) -> Asm:
        self.b += pickle.MARK
        return self

    def tuple(self) -> Asm:
        self.b += pickle.TUPLE
        return self

    def tuple1(self) -> Asm:
        self.b += pickle.TUPLE1
        return self

    def tuple2(self) -> Asm:
        self.b += pickle.TUPLE2
        return self

    def empty_dict(self) -> Asm:
        self.b += pickle.EMPTY_DICT
        return self

    def empty_list(self) -> Asm:
        self.b += pickle.EMPTY_LIST
        return self

    def append(self) -> Asm:
        self.b += pickle.APPEND
        return self

    def setitem(self) -> Asm:
        self.b += pickle.SETITEM
        return self

    def setitems(self) -> Asm:
        self.b += pickle.SETITEMS
        return self

    def frozenset(self) -> Asm:  # protocol 4
        self.b += pickle.FROZENSET
        return self

    def dup(self) -> Asm:
        self.b += pickle.DUP
        return self

    def pop(self) -> Asm:
        self.b += pickle.POP
        return self

    def put(self, i: int, *, long: bool = False) -> Asm:
        self.b += pickle.BINPUT + bytes([i]) if i < 256 and not long else pickle.LONG_BINPUT + struct.pack("<I", i)
        return self

    def get(self, i: int, *, long: bool = False) -> Asm:
        self.b += pickle.BINGET + bytes([i]) if i < 256 and not long else pickle.LONG_BINGET + struct.pack("<I", i)
        return self

    # code
    def glob(self, module: str, name: str) -> Asm:
        self.b += pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n"
        return self

    def stack_global(self) -> Asm:  # protocol 4
        self.b += pickle.STACK_GLOBAL
        return self

    def reduce(self) -> Asm:
        self.b += pickle.REDUCE
        return self

    def build(self) -> Asm:
        self.b += pickle.BUILD
        return self

    def call(self, module: str, name: str, *args: Any) -> Asm:
        """GLOBAL module.name, then REDUCE with args (plain values)."""
        self.glob(module, name).mark()
        for a in args:
            self.value(a)
        return self.tuple().reduce()

    def persid(self) -> Asm:
        self.b += pickle.BINPERSID
        return self

    def done(self) -> bytes:
        return bytes(self.b + pickle.STOP)


# -- structures that explode when walked ------------------------------------------------


def dag_list(a: Asm, depth: int) -> Asm:
    """[[...], [...]] of ``depth`` levels, each level the previous one twice: 2**depth paths."""
    a.empty_list()
    for _ in range(depth):
        a.put(0).pop().empty_list().get(0).append().get(0).append()
    return a


def dag_tuple(a: Asm, depth: int) -> Asm:
    """((...), (...)) of ``depth`` levels made with DUP: hashing or printing it takes 2**depth steps."""
    a.mark().tuple()
    for _ in range(depth):
        a.dup().tuple2()
    return a


def dag_frozenset(a: Asm, depth: int) -> Asm:
    """frozenset({f, frozenset({f})}) nested ``depth`` times: hashing is cheap, str() is 2**depth."""
    a.mark().frozenset()
    for _ in range(depth):
        a.put(0).pop().mark().get(0).mark().get(0).frozenset().frozenset()
    return a


def nested_list(a: Asm, depth: int) -> Asm:
    """[[[...]]] ``depth`` deep, built without recursion on either side."""
    a.empty_list()
    for _ in range(depth):
        a.put(0).pop().empty_list().get(0).append()
    return a


# -- code-running payloads ----------------------------------------------------------------


def shell_touch(canary: Path) -> str:
    return f"touch {shlex.quote(str(canary))}"


def _evil_os_system(a: Asm, canary: Path) -> None:
    a.call("os", "system", shell_touch(canary))


def _evil_posix_system(a: Asm, canary: Path) -> None:
    a.call("posix", "system", shell_touch(canary))


def _evil_stack_global(a: Asm, canary: Path) -> None:
    a.short_str("os").short_str("system").stack_global().mark().str(shell_touch(canary)).tuple().reduce()


def _evil_popen(a: Asm, canary: Path) -> None:
    a.call("subprocess", "Popen", ["touch", str(canary)])


def _evil_check_output(a: Asm, canary: Path) -> None:
    a.call("subprocess", "check_output", ["touch", str(canary)])


def _evil_eval(a: Asm, canary: Path) -> None:
    a.call("builtins", "eval", f"__import__('os').system({shell_touch(canary)!r})")


def _evil_exec(a: Asm, canary: Path) -> None:
    a.call("builtins", "exec", f"open({str(canary)!r}, 'w').close()")


def _evil_py2_builtin_eval(a: Asm, canary: Path) -> None:
    # protocol 2 readers map __builtin__ to builtins (fix_imports)
    a.call("__builtin__", "eval", f"open({str(canary)!r}, 'w').close()")


def _evil_getattr_chain(a: Asm, canary: Path) -> None:
    # getattr(__import__('os'), 'system')('touch canary')
    a.glob("builtins", "getattr").mark()
    a.call("builtins", "__import__", "os").str("system").tuple().reduce()
    a.mark().str(shell_touch(canary)).tuple().reduce()


def _evil_memo_hidden(a: Asm, canary: Path) -> None:
    # the names go into the memo early (BINPUT, LONG_BINPUT), are popped, and come back
    # through BINGET / LONG_BINGET only at the STACK_GLOBAL: no "os"/"system" near it
    a.value({"note": "harmless", "n": 3}).pop()
    a.short_str("os").put(1).pop()
    a.value(["padding"] * 4).pop()
    a.short_str("system").put(2, long=True).pop()
    a.get(1).get(2, long=True).stack_global().mark().str(shell_touch(canary)).tuple().reduce()


def _evil_build_rewrites_torch_utils(a: Asm, canary: Path) -> None:
    # torch._utils.__dict__.update({"_rebuild_tensor": os.system}); torch._utils._rebuild_tensor(cmd)
    a.glob("torch", "_utils").empty_dict().str("_rebuild_tensor").glob("os", "system").setitem().build().pop()
    a.call("torch._utils", "_rebuild_tensor", shell_touch(canary))


def _evil_build_slotstate_torch_utils(a: Asm, canary: Path) -> None:
    # setattr(torch._utils, "_rebuild_tensor_v2", posix.system) through BUILD's slot state
    a.glob("torch", "_utils").none().empty_dict().str("_rebuild_tensor_v2").glob("posix", "system").setitem()
    a.tuple2().build().pop()
    a.call("torch._utils", "_rebuild_tensor_v2", shell_touch(canary))


def _evil_collect_env_run(a: Asm, canary: Path) -> None:
    a.call("torch.utils.collect_env", "run", shell_touch(canary))


def _inner_file(canary: Path) -> Path:
    """A plain hostile zip checkpoint next to the canary, for the nested loads to open."""
    inner = canary.with_name(canary.name + ".inner.pt")
    inner.write_bytes(zip_checkpoint(payload("os_system", canary)))
    return inner


def _evil_torch_load(a: Asm, canary: Path, module: str = "torch", name: str = "load") -> None:
    # torch.load(inner, None, pickle): a pickle_module turns weights_only off
    a.glob(module, name).mark().str(str(_inner_file(canary))).none().glob("torch.serialization", "pickle")
    a.tuple().reduce()


def _evil_serialization_load(a: Asm, canary: Path) -> None:
    _evil_torch_load(a, canary, "torch.serialization", "load")


def _evil_load_from_bytes(a: Asm, canary: Path) -> None:
    # torch.load(io.BytesIO(b), weights_only=False); b is a legacy file (an embedded zip
    # can make torch take the whole outer legacy file for a zip archive)
    a.call("torch.storage", "_load_from_bytes", legacy_checkpoint(payload("os_system", canary)))


_EVIL: dict[str, tuple[int, Callable[[Asm, Path], None]]] = {
    "os_system": (2, _evil_os_system),
    "posix_system": (2, _evil_posix_system),
    "stack_global_os_system": (4, _evil_stack_global),
    "subprocess_popen": (2, _evil_popen),
    "subprocess_check_output": (2, _evil_check_output),
    "builtins_eval": (2, _evil_eval),
    "builtins_exec": (2, _evil_exec),
    "py2_builtin_eval": (2, _evil_py2_builtin_eval),
    "getattr_import_chain": (2, _evil_getattr_chain),
    "memo_hidden_names": (4, _evil_memo_hidden),
    "build_rewrites_torch_utils": (2, _evil_build_rewrites_torch_utils),
    "build_slotstate_torch_utils": (2, _evil_build_slotstate_torch_utils),
    "torch_collect_env_run": (2, _evil_collect_env_run),
    "nested_torch_load": (2, _evil_torch_load),
    "nested_serialization_load": (2, _evil_serialization_load),
    "storage_load_from_bytes": (3, _evil_load_from_bytes),
}
PAYLOADS = tuple(_EVIL)
# payloads that need torch importable to run under a plain unpickler
TORCH_PAYLOADS = frozenset(n for n in PAYLOADS if "torch" in n or "load" in n)


def payload(name: str, canary: Path, *, placement: str = "top", layout: str = "zip") -> bytes:
    """A complete pickle that runs code creating ``canary`` when loaded normally.

    placement "top": the pickle is the call. "nested": the call is a value in a dict
    that first holds what a real checkpoint holds (a tensor rebuilt from a storage, an
    int), so the hostile global comes after allowed ones. ``layout`` picks the form of
    the storage reference (zip: 5 fields, legacy: 6), as torch.load would expect it.
    """
    proto, evil = _EVIL[name]
    a = Asm(proto)
    if placement == "top":
        evil(a, canary)
    elif placement == "nested":
        a.empty_dict().mark()
        a.str("weight")
        a.glob("torch._utils", "_rebuild_tensor_v2").mark()
        a.mark().str("storage").glob("torch", "FloatStorage").str("0").str("cpu").int(4)
        if layout == "legacy":
            a.none()  # view metadata
        a.tuple().persid()
        a.int(0).value((4,)).value((1,)).value(False).glob("collections", "OrderedDict").mark().tuple().reduce()
        a.tuple().reduce()
        a.str("epoch").int(3)
        a.str("envkit")
        evil(a, canary)
        a.setitems()
    else:
        raise ValueError(placement)
    return a.done()


# -- layouts --------------------------------------------------------------------------------


STAMP_MEMBER = f"{PREFIX}/extra/envkit.json"


def zip_checkpoint(
    data_pkl: bytes,
    *,
    prefix: str = PREFIX,
    stamp: bytes | None = None,
    version: bytes = b"3\n",
    extra: dict[str, bytes] | None = None,
    compress: dict[str, int] | None = None,
) -> bytes:
    """The members torch.save writes (data.pkl first, byteorder, version), optionally
    envkit's stamp member. ``compress`` maps a member name under the prefix (``data.pkl``,
    ``extra/envkit.json``) to a zipfile compression; everything else is stored, as torch
    stores it."""
    compress = compress or {}
    members = {"data.pkl": data_pkl, "byteorder": b"little", **(extra or {}), "version": version}
    if stamp is not None:
        members["extra/envkit.json"] = stamp
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(f"{prefix}/{name}", data, compress_type=compress.get(name, zipfile.ZIP_STORED))
    return buf.getvalue()


def legacy_header(*, protocol: Any = LEGACY_PROTOCOL_VERSION, sys_info: Any = None) -> bytes:
    """The three pickles a legacy torch.save starts with: magic, protocol version, sys_info."""
    info = LEGACY_SYS_INFO if sys_info is None else sys_info
    return pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2) + pickle.dumps(protocol, protocol=2) + pickle.dumps(info, protocol=2)


def legacy_checkpoint(obj_pickle: bytes) -> bytes:
    """Legacy layout: header pickles, the object pickle, then the storage keys list."""
    return legacy_header() + obj_pickle + pickle.dumps([], protocol=2)


def hostile_file(name: str, layout: str, placement: str, canary: Path) -> bytes:
    data = payload(name, canary, placement=placement, layout=layout)
    return zip_checkpoint(data, extra={"data/0": bytes(16)}) if layout == "zip" else legacy_checkpoint(data)


# -- zip header surgery ----------------------------------------------------------------------


def patch_zip_flags(blob: bytes, member: str, *, set_bits: int = 0, local: bool = True, central: bool = True) -> bytes:
    """OR ``set_bits`` into the general-purpose flags of ``member``'s local and/or central header."""
    out = bytearray(blob)
    zf = zipfile.ZipFile(io.BytesIO(blob))
    info = zf.getinfo(member)
    if local:
        off = info.header_offset
        assert out[off : off + 4] == b"PK\x03\x04"
        (flags,) = struct.unpack_from("<H", out, off + 6)
        struct.pack_into("<H", out, off + 6, flags | set_bits)
    if central:
        name = member.encode()
        pos = zf.start_dir
        while True:
            pos = out.index(b"PK\x01\x02", pos)
            (nlen,) = struct.unpack_from("<H", out, pos + 28)
            if bytes(out[pos + 46 : pos + 46 + nlen]) == name:
                break
            pos += 4
        (flags,) = struct.unpack_from("<H", out, pos + 8)
        struct.pack_into("<H", out, pos + 8, flags | set_bits)
    return bytes(out)


def patch_local_name(blob: bytes, member: str, new_name: bytes) -> bytes:
    """Replace the file name in ``member``'s local header by bytes of the same length."""
    out = bytearray(blob)
    info = zipfile.ZipFile(io.BytesIO(blob)).getinfo(member)
    off = info.header_offset
    (nlen,) = struct.unpack_from("<H", out, off + 26)
    assert nlen == len(new_name)
    out[off + 30 : off + 30 + nlen] = new_name
    return bytes(out)
