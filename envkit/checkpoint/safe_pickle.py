"""A restricted unpickler that reads a checkpoint's structure without running any of it.

``find_class`` resolves a short list of names. Everything torch or numpy would
rebuild (tensors, storages, dtypes, arrays) becomes an inert placeholder made fresh
for each load, so nothing a pickle does (BUILD, attribute writes) can reach a real
module. Any other global is refused with ``UnsafeCheckpoint`` naming it. Storage
references (``persistent_load``) are recorded, never read.

Walking the result is bounded too: a few hundred bytes of pickle can describe a
structure with 2**60 paths through it.
"""

from __future__ import annotations

import collections
import gc
import io
import pickle
import pickletools
import struct
from typing import Any, BinaryIO, NamedTuple

from envkit.errors import NotACheckpoint, UnsafeCheckpoint

MAX_WALK_NODES = 200_000
MAX_WALK_DEPTH = 64
MAX_INT_BITS = 14_000  # about the 4300 digits json and int() accept

# Real constructors: they cannot run code, and the result must be walkable.
_REAL = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
}

_TORCH_REBUILDERS = {
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_qtensor",
    "_rebuild_sparse_tensor",
    "_rebuild_nested_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_wrapper_subclass",
}
_TORCH_TOP = {
    "Size", "device", "dtype", "layout", "memory_format", "Tensor", "UntypedStorage", "TypedStorage",
    "strided", "sparse_coo", "sparse_csr", "contiguous_format", "channels_last", "preserve_format",
    "float", "float16", "float32", "float64", "bfloat16", "half", "double", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool", "complex32", "complex64", "complex128", "cfloat", "cdouble",
    "long", "int", "short", "qint8", "quint8", "qint32", "quint4x2", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz",
    "per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
    "per_channel_affine_float_qparams",
}  # fmt: skip
_STORAGE_SUFFIX = "Storage"

_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def _is_allowed_stub(module: str, name: str) -> bool:
    if module == "torch._utils" and name in _TORCH_REBUILDERS:
        return True
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return True
    if module == "torch.serialization" and name == "_get_layout":  # sparse tensors' layout
        return True
    if module == "torch" and (name in _TORCH_TOP or name.endswith(_STORAGE_SUFFIX)):
        return True
    if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
        return True
    if module == "torch.nn.parameter" and name == "Parameter":
        return True
    if module == "numpy.dtypes" and name.endswith("DType"):
        return True
    return (module, name) in _NUMPY


class Opaque:
    """Stands for something torch or numpy would have built. Records nothing it is given."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


class StoragePlaceholder(Opaque):
    """Stands for a storage reference: its element type (``float32``; None when untyped), length and key."""

    __slots__ = ("dtype", "key", "numel")

    def __init__(self, dtype: str | None, numel: int | None, key: str | None = None) -> None:
        self.qualname, self.dtype, self.numel, self.key = "storage", dtype, numel, key


class TensorPlaceholder(Opaque):
    """Stands for a tensor torch would rebuild: dtype (None when unknown) and shape (None when unreadable);
    ``storage`` (its StoragePlaceholder), ``offset`` and ``stride`` where the rebuilder's arguments say them."""

    __slots__ = ("dtype", "offset", "parameter", "shape", "storage", "stride")

    def __init__(
        self, qualname: str, dtype: str | None, shape: tuple[int, ...] | None, parameter: bool = False,
        storage: StoragePlaceholder | None = None, offset: int | None = None, stride: tuple[int, ...] | None = None,
    ) -> None:  # fmt: skip
        self.qualname, self.dtype, self.shape, self.parameter = qualname, dtype, shape, parameter
        self.storage, self.offset, self.stride = storage, offset, stride


def _placement(args: tuple[Any, ...]) -> tuple[StoragePlaceholder | None, int | None, tuple[int, ...] | None]:
    """(storage, offset, stride) of ``_rebuild_tensor*(storage, storage_offset, size, stride, ...)``."""
    storage = args[0] if type(args[0]) is StoragePlaceholder else None
    offset = args[1] if len(args) > 1 and type(args[1]) is int and 0 <= args[1] < _MAX_DIM else None
    stride = args[3] if len(args) > 3 and type(args[3]) is tuple and len(args[3]) <= _MAX_DIMS else None
    if stride is not None and any(type(d) is not int or abs(d) >= _MAX_DIM for d in stride):
        stride = None
    return storage, offset, stride


# torch's legacy storage class names (torch.storage._dtype_to_storage_type_map) -> dtype names
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "QInt8Storage": "qint8", "QInt32Storage": "qint32",
    "QUInt8Storage": "quint8", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}  # fmt: skip
_MAX_DIMS = 64
_MAX_DIM = 1 << 63
# where each rebuilder takes (storage or dtype, size): _rebuild_tensor_v2(storage, offset, size, stride, ...)
_TENSOR_ARGS = {
    "_rebuild_tensor": (0, 2),
    "_rebuild_tensor_v2": (0, 2),
    "_rebuild_tensor_v3": (0, 2),
    "_rebuild_qtensor": (0, 2),
    "_rebuild_meta_tensor_no_storage": (0, 1),
}
_PARAMETER_REBUILDERS = {"_rebuild_parameter", "_rebuild_parameter_with_state"}


def _shape(value: Any) -> tuple[int, ...] | None:
    if type(value) is not tuple or len(value) > _MAX_DIMS:
        return None
    for d in value:
        if type(d) is not int or not 0 <= d < _MAX_DIM:
            return None
    return value


def _dtype_name(value: Any) -> str | None:
    """``torch.float32`` (a stub of this load), or the dtype of a storage placeholder."""
    if isinstance(value, StoragePlaceholder):
        return value.dtype
    qualname = getattr(value, "qualname", None) if isinstance(value, type) else None
    if isinstance(qualname, str) and qualname.startswith("torch.") and qualname[6:] in _TORCH_TOP:
        return qualname[6:]
    return None


def _tensor_of(name: str, qualname: str, args: tuple[Any, ...]) -> Opaque:
    """The placeholder a torch rebuilder's call yields: dtype and shape where the arguments say them."""
    if name in _TENSOR_ARGS:
        at_dtype, at_size = _TENSOR_ARGS[name]
        if len(args) <= at_size:
            return TensorPlaceholder(qualname, None, None)
        storage = args[at_dtype]
        dtype = storage.dtype if type(storage) is StoragePlaceholder else _dtype_name(storage)
        if name == "_rebuild_tensor_v3" and len(args) > 6:
            dtype = _dtype_name(args[6]) or dtype
        placement = _placement(args) if name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3") else ()
        return TensorPlaceholder(qualname, dtype, _shape(args[at_size]), False, *placement)
    if name in _PARAMETER_REBUILDERS and args and isinstance(args[0], TensorPlaceholder):
        inner = args[0]
        return TensorPlaceholder(qualname, inner.dtype, inner.shape, True, inner.storage, inner.offset, inner.stride)
    return Opaque(qualname)


def _stub_class(qualname: str) -> type:
    """A fresh class per name per load: calling or instantiating it yields an Opaque."""
    module, _, name = qualname.rpartition(".")
    if module == "torch._utils" and name == "_rebuild_tensor_v2":  # nearly every tensor: kept short

        def new(cls: type, *args: Any, **kwargs: Any) -> Opaque:
            if len(args) < 3:
                return TensorPlaceholder(qualname, None, None)
            storage = args[0]
            dtype = storage.dtype if type(storage) is StoragePlaceholder else _dtype_name(storage)
            return TensorPlaceholder(qualname, dtype, _shape(args[2]), False, *_placement(args))
    elif module == "torch._utils" and (name in _TENSOR_ARGS or name in _PARAMETER_REBUILDERS):

        def new(cls: type, *args: Any, **kwargs: Any) -> Opaque:
            return _tensor_of(name, qualname, args)
    elif qualname == "torch._tensor._rebuild_from_type_v2":

        def new(cls: type, *args: Any, **kwargs: Any) -> Opaque:
            # (func, new_type, args, state): a tensor subclass; func is one of this load's stubs or nothing
            func = args[0] if args else None
            inner = args[2] if len(args) > 2 else None
            if isinstance(func, type) and getattr(func, "_rebuilds_tensor", False) and isinstance(inner, tuple):
                rebuilt = func(*inner[:16])
                if isinstance(rebuilt, TensorPlaceholder):
                    return TensorPlaceholder(qualname, rebuilt.dtype, rebuilt.shape, rebuilt.parameter,
                                             rebuilt.storage, rebuilt.offset, rebuilt.stride)
            return Opaque(qualname)
    else:

        def new(cls: type, *args: Any, **kwargs: Any) -> Opaque:
            return Opaque(qualname)

    rebuilds = module == "torch._utils" and name in _TENSOR_ARGS
    return type("Stub", (), {"__new__": new, "__slots__": (), "qualname": qualname, "_rebuilds_tensor": rebuilds})


def _checked_class(real: type, budget: list[int], source: str) -> type:
    """set, frozenset or OrderedDict for one load, counting what hashing its argument's items costs
    first (``_scan_bytes`` cannot see into the list a pickle hands them); a fresh class, so BUILD
    cannot reach the real one. REDUCE calls it (its metaclass's ``__call__``: ``real(*args)``),
    NEWOBJ calls its ``__new__`` (``real.__new__(real, *args)``, which only frozenset fills)."""

    def check(args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], (list, tuple, dict, set, frozenset)):
            _charge_hashing(list(args[0]), budget, source)

    def call(cls: type, *args: Any, **kwargs: Any) -> Any:
        check(args)
        return real(*args, **kwargs)

    def new(cls: type, *args: Any, **kwargs: Any) -> Any:
        check(args)
        return real.__new__(real, *args, **kwargs)

    meta = type("Checked", (type,), {"__call__": call})
    return meta(real.__name__, (), {"__new__": new, "__slots__": ()})


def _charge_hashing(items: list[Any], budget: list[int], source: str) -> None:
    """Take from budget the nodes that hashing each of items visits: tuples item by item, shared parts
    each time they are reached, long ints by their length. Counted once per distinct tuple (by id,
    bottom-up, with no recursion), so a DAG of 2**60 paths costs its few hundred nodes to count."""
    known: dict[int, int] = {}
    left = budget[0]
    for item in items:
        left -= _hash_nodes(item, known)
        if left < 0:
            raise UnsafeCheckpoint(
                f"{source}: the pickle's set or dict items take more than {MAX_HASH_NODES:,} steps to hash "
                "(tuples built from shared parts); not a checkpoint"
            )
    budget[0] = left


def _hash_nodes(item: Any, known: dict[int, int]) -> int:
    if type(item) is not tuple:
        return 1 + item.bit_length() // 128 if type(item) is int else 1
    todo: list[tuple[tuple[Any, ...], bool]] = [(item, False)]
    while todo:
        node, children_done = todo.pop()
        if children_done:
            known[id(node)] = 1 + sum(known[id(c)] if type(c) is tuple else _hash_nodes(c, known) for c in node)
        elif id(node) not in known:
            todo.append((node, True))
            todo.extend((c, False) for c in node if type(c) is tuple and id(c) not in known)
    return known[id(item)]


def _encode_class() -> type:
    """``_codecs.encode`` for one load: a fresh class, so BUILD cannot reach a shared function."""

    def new(cls: type, *args: Any, **kwargs: Any) -> bytes:
        return _latin1_bytes(*args, **kwargs)

    return type("Encode", (), {"__new__": new, "__slots__": ()})


class StorageRef(NamedTuple):
    """One storage reference of the pickle (a NamedTuple: a 200,000-tensor file makes 200,000)."""

    key: str
    location: str
    dtype: str  # torch's storage type name: FloatStorage, UntypedStorage, ...
    numel: int | None


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpoint("_codecs.encode called with other than a latin1 string")
    return text.encode("latin-1")


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, *, source: str, checked_constructors: bool = False) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source
        self.storages: list[StorageRef] = []
        self._stubs: dict[tuple[str, str], Any] = {}
        self._checked = checked_constructors
        self._hash_budget = [MAX_HASH_NODES]

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _REAL:
            if not self._checked:
                return _REAL[key]
            if key not in self._stubs:
                self._stubs[key] = _checked_class(_REAL[key], self._hash_budget, self.source)
            return self._stubs[key]
        if key == ("_codecs", "encode"):
            if key not in self._stubs:
                self._stubs[key] = _encode_class()
            return self._stubs[key]
        if _is_allowed_stub(module, name):
            if key not in self._stubs:
                self._stubs[key] = _stub_class(f"{module}.{name}")
            return self._stubs[key]
        raise UnsafeCheckpoint(
            f"{self.source}: refuses to unpickle global {module}.{name!s:.100}; the file may run code when "
            "loaded: do not torch.load it without weights_only=True unless you trust who wrote it"
        )

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is tuple and len(pid) >= 5 and pid[0] == "storage":
            # str() of an arbitrary pickled object can recurse, fail or take 2**n steps
            qualname = getattr(pid[1], "qualname", None)
            storage_type = qualname if type(qualname) is str else _short(pid[1], self.source)
            numel = pid[4] if type(pid[4]) is int else None
            type_name = storage_type.rpartition(".")[2]
            if len(self.storages) < MAX_WALK_NODES:
                key, location = pid[2], pid[3]
                if type(key) is not str or len(key) > 200:
                    key = _short(key, self.source)
                if type(location) is not str or len(location) > 200:
                    location = _short(location, self.source)
                self.storages.append(StorageRef(key, location, type_name, numel))
            key = pid[2] if type(pid[2]) is str and len(pid[2]) <= 200 else None
            return StoragePlaceholder(_STORAGE_DTYPES.get(type_name), numel, key)
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            return Opaque("module")
        raise UnsafeCheckpoint(f"{self.source}: unknown persistent reference in the pickle; not a torch checkpoint")


def _short(value: Any, source: str) -> str:
    """A storage reference field (str or small int) as text."""
    if isinstance(value, str):
        return value[:200]
    if isinstance(value, int) and value.bit_length() <= 64:
        return str(value)
    raise UnsafeCheckpoint(f"{source}: a storage reference in the pickle holds a {type(value).__name__}; not a torch checkpoint")


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


class _Tee:
    """Reads through to a stream and keeps what was read (``tell`` is its length)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream, self.data = stream, bytearray()

    def read(self, n: int = -1) -> bytes:
        chunk = self._stream.read(n)
        self.data += chunk
        return chunk

    def readline(self) -> bytes:
        chunk = self._stream.readline()
        self.data += chunk
        return chunk

    def tell(self) -> int:
        return len(self.data)


def _scan(fileobj: Any, source: str) -> None:
    """Walk the opcodes of one pickle (up to STOP) before the C unpickler runs any of them.

    CPython's unpickler keeps its memo in an array that it grows to twice the largest
    slot a PUT names, zero-filled: LONG_BINPUT 0x7fffffff, a nine-byte pickle, makes it
    write 32 GiB. A slot can never lie beyond the number of bytes read so far.
    """
    try:
        for op, arg, pos in pickletools.genops(fileobj):
            if op.name in _MEMO_PUTS:
                assert isinstance(arg, int) and pos is not None  # a PUT names its slot; _Tee has tell(), so genops gives positions
                if arg > pos:
                    raise UnsafeCheckpoint(
                        f"{source}: the pickle stores into memo slot {arg} at byte {pos}; that asks for "
                        "gigabytes of memory, not a checkpoint"
                    )
    except (UnsafeCheckpoint, NotACheckpoint):
        raise
    except Exception as exc:  # noqa: BLE001 - every parse failure is one kind of bad input
        raise NotACheckpoint(f"{source}: the pickle is damaged or not torch's ({type(exc).__name__}: {str(exc)[:120]})") from None


def restricted_load(stream: BinaryIO, *, source: str) -> tuple[Any, RestrictedUnpickler]:
    """Unpickle the next object of stream (more may follow it) with the restricted unpickler."""
    tee = _Tee(stream)
    _scan(tee, source)  # finds where this pickle ends in the stream
    data = bytes(tee.data)
    checked = _scan_bytes(data, source)  # and bounds what hashing its keys costs
    return _load(io.BytesIO(data), source, checked)


def _argument_kinds() -> list[int | None]:
    """Per opcode byte: how its argument is laid out (pickletools' own table); None: no such opcode."""
    kinds: list[int | None] = [None] * 256
    for op in pickletools.opcodes:
        arg = op.arg
        if arg is None:
            kind = 0
        elif arg.name == "stringnl_noescape_pair":  # GLOBAL, INST: two lines
            kind = _TWO_LINES
        else:
            kind = arg.n  # > 0: that many bytes; < 0: one of pickletools' length markers
        kinds[ord(op.code.encode("latin-1"))] = kind
    return kinds


def _stack_effects() -> list[Any]:
    """Per opcode byte, what it does to the stack, from pickletools' own table: _PUSH (one item),
    _REPLACE (the top item by another), _NOTHING, or (pops to the mark, items popped, items pushed);
    None for the opcodes _scan_bytes simulates itself (tuples, keys, the memo)."""
    effects: list[Any] = [None] * 256
    for op in pickletools.opcodes:
        code = ord(op.code.encode("latin-1"))
        before, after = op.stack_before, op.stack_after
        if code in _SIMULATED:
            continue
        if pickletools.markobject in before:  # APPENDS keeps its list: what lies below the mark stays
            effects[code] = (True, 0, len(after) - before.index(pickletools.markobject))
        else:
            effects[code] = {(0, 1): _PUSH, (1, 1): _REPLACE, (0, 0): _NOTHING}.get((len(before), len(after)), (False, len(before), len(after)))
    return effects


_TWO_LINES = -100
_U32 = struct.Struct("<I")
_op = {op.name: ord(op.code.encode("latin-1")) for op in pickletools.opcodes}
_STOP, _PUT, _BINPUT, _LONG_BINPUT, _MEMOIZE = _op["STOP"], _op["PUT"], _op["BINPUT"], _op["LONG_BINPUT"], _op["MEMOIZE"]
_GET, _BINGET, _LONG_BINGET = _op["GET"], _op["BINGET"], _op["LONG_BINGET"]
_BININT1, _BINUNICODE, _MARK, _POP, _DUP = _op["BININT1"], _op["BINUNICODE"], _op["MARK"], _op["POP"], _op["DUP"]
_EMPTY_TUPLE, _TUPLE, _TUPLE1, _TUPLE2, _TUPLE3 = _op["EMPTY_TUPLE"], _op["TUPLE"], _op["TUPLE1"], _op["TUPLE2"], _op["TUPLE3"]
_SETITEM, _SETITEMS, _DICT, _ADDITEMS, _FROZENSET, _LONG4 = _op["SETITEM"], _op["SETITEMS"], _op["DICT"], _op["ADDITEMS"], _op["FROZENSET"], _op["LONG4"]
_REDUCE, _GLOBAL, _STACK_GLOBAL, _INST, _OBJ, _NEWOBJ, _NEWOBJ_EX = (
    _op["REDUCE"], _op["GLOBAL"], _op["STACK_GLOBAL"], _op["INST"], _op["OBJ"], _op["NEWOBJ"], _op["NEWOBJ_EX"]
)
_EXTS = {_op["EXT1"], _op["EXT2"], _op["EXT4"]}
del _op
_FAST = (_LONG_BINPUT, _BINGET, _BININT1, _MARK, _BINUNICODE, _TUPLE, _TUPLE1, _REDUCE)  # torch's commonest, in that order
_SIMULATED = {_STOP, _PUT, _BINPUT, _LONG_BINPUT, _MEMOIZE, _GET, _BINGET, _LONG_BINGET, _MARK, _POP, _DUP, _EMPTY_TUPLE, _TUPLE, _TUPLE1}
_SIMULATED |= {_TUPLE2, _TUPLE3, _SETITEM, _SETITEMS, _DICT, _ADDITEMS, _FROZENSET, _LONG4}
_SIMULATED |= {_REDUCE, _GLOBAL, _STACK_GLOBAL, _INST, _OBJ, _NEWOBJ, _NEWOBJ_EX, *_EXTS}
# On the simulated stack: a class that hashes the items of its argument (set, frozenset, OrderedDict),
# or one that may be (STACK_GLOBAL's and the extension registry's names are not looked at).
class _Constructor(tuple):  # (depth 0, one node) like any leaf, told apart by identity
    __slots__ = ()


_CONSTRUCTOR = _Constructor((0, 1))
_CONSTRUCTOR_LINES = {f"{module}\n{name}\n".encode() for module, name in _REAL}
_PUSH, _REPLACE, _NOTHING = 1, 2, 3
_KINDS = _argument_kinds()
_EFFECTS = _stack_effects()

# CPython hashes a tuple by hashing its items, recursively, with no depth check and no cache: a dict
# key or set item that is a tuple nested 200,000 deep overflows the C stack inside the unpickler,
# and one built from shared parts (DUP, memo GET) of depth 60 has 2**60 nodes to visit. The scan
# keeps, for every item on a simulated stack that is a tuple (or an int long enough to cost more
# than a step to hash), its nesting depth and its node count with shared parts counted each time
# they are reached; every other item is None, which hashes in one step (str, bytes and frozenset
# cache their hash, lists and dicts refuse to be hashed). Each key and set item the unpickler will
# hash is charged its node count against one budget per pickle.
MAX_TUPLE_DEPTH = 20_000  # about 1 MiB of C stack to hash; 8 MiB overflows near 150,000
MAX_HASH_NODES = 10_000_000  # plus one per byte of the pickle: hashing work linear in its size


def _scan_bytes(data: bytes, source: str) -> bool:
    """``_scan`` over a pickle held in memory, a few times faster than pickletools.genops: it
    steps over arguments by the same table and decodes only what the memo check and the
    simulated stack need. A state dict of 200,000 tensors is six million opcodes: the
    commonest ones come first and skip the general path.

    Returns whether the pickle calls set, frozenset or OrderedDict with arguments: then those are
    to be checked as they run (``checked_constructors``); torch's own pickles call ``OrderedDict()``."""
    constructed = False
    kinds, effects, end, i = _KINDS, _EFFECTS, len(data), 0
    find, from_bytes, u32 = data.find, int.from_bytes, _U32.unpack_from
    stack: list[Any] = []  # None, or (depth, nodes) for a tuple or a long int
    marks: list[int] = []
    memo: dict[int, Any] = {}
    push = stack.append
    budget = MAX_HASH_NODES + end
    LONG_BINPUT, BINGET, BININT1, MARK, BINUNICODE, TUPLE, TUPLE1, REDUCE = _FAST  # locals: read faster
    try:
        while True:  # data[i] past the end raises IndexError: the pickle breaks off
            op = data[i]
            if op == LONG_BINPUT:
                slot = u32(data, i + 1)[0]
                if slot > i:
                    _memo_refusal(source, slot, i)
                top = stack[-1]
                if top is not None or slot in memo:
                    memo[slot] = top
                i += 5
                continue
            if op == BINGET:
                push(memo.get(data[i + 1]))
                i += 2
                continue
            if op == BININT1:
                push(None)
                i += 2
                continue
            if op == MARK:
                marks.append(len(stack))
                i += 1
                continue
            if op == BINUNICODE:
                push(None)
                i += 5 + u32(data, i + 1)[0]
                continue
            if op == TUPLE:
                at = marks.pop()
                items = stack[at:]
                del stack[at:]
                n = len(items)
                push((1, n + 1) if items.count(None) == n else _tuple_of(items, source))
                i += 1
                continue
            if op == TUPLE1:
                item = stack[-1]
                stack[-1] = (1, 2) if item is None else _tuple_of([item], source)
                i += 1
                continue
            if op == REDUCE:
                args = stack.pop()
                if stack[-1] is _CONSTRUCTOR and args != (1, 1):
                    constructed = True
                stack[-1] = None
                i += 1
                continue
            kind = kinds[op]
            if kind is None:
                break
            # step over the argument
            start = i + 1
            if kind == 0:
                i = start
            elif kind > 0:
                i = start + kind
            elif kind == pickletools.UP_TO_NEWLINE:
                nl = find(b"\n", start)
                if nl < 0:
                    break
                i = nl + 1
            elif kind == _TWO_LINES:
                nl = find(b"\n", start)
                nl = find(b"\n", nl + 1) if nl >= 0 else -1
                if nl < 0:
                    break
                i = nl + 1
            elif kind == pickletools.TAKEN_FROM_ARGUMENT1:
                if start >= end:
                    break
                i = start + 1 + data[start]
            elif kind == pickletools.TAKEN_FROM_ARGUMENT4:
                length = from_bytes(data[start : start + 4], "little", signed=True)
                if length < 0:
                    break
                i = start + 4 + length
            elif kind == pickletools.TAKEN_FROM_ARGUMENT4U:
                i = start + 4 + from_bytes(data[start : start + 4], "little")
            elif kind == pickletools.TAKEN_FROM_ARGUMENT8U:
                i = start + 8 + from_bytes(data[start : start + 8], "little")
            else:
                break
            # what it does to the stack
            effect = effects[op]
            if effect is not None:
                if effect == _PUSH:
                    push(None)
                elif effect == _REPLACE:
                    stack[-1] = None
                elif effect != _NOTHING:
                    to_mark, pops, pushes = effect
                    if to_mark:
                        del stack[marks.pop() :]
                    elif pops:
                        if len(stack) < pops:
                            break
                        del stack[-pops:]
                    for _ in range(pushes):
                        push(None)
                continue
            if op == _STOP:
                return constructed
            if op == _BINPUT:
                top = stack[-1]
                if top is not None or data[start] in memo:
                    memo[data[start]] = top
            elif op == _PUT:
                slot = int(data[start : i - 1])
                if slot > start - 1:
                    _memo_refusal(source, slot, start - 1)
                memo[slot] = stack[-1]
            elif op == _MEMOIZE:
                memo[len(memo)] = stack[-1]
            elif op == _GET or op == _LONG_BINGET:
                push(memo.get(int(data[start : i - 1]) if op == _GET else from_bytes(data[start:i], "little")))
            elif op == _DUP:
                push(stack[-1])
            elif op == _POP:
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    stack.pop()
            elif op == _EMPTY_TUPLE:
                push((1, 1))
            elif op == _TUPLE2 or op == _TUPLE3:
                n = 2 if op == _TUPLE2 else 3
                if len(stack) < n:
                    break
                items = stack[-n:]
                del stack[-n:]
                push(_tuple_of(items, source))
            elif op == _SETITEM:
                key = stack[-2]
                if key is not None:
                    budget -= key[1]
                del stack[-2:]
            elif op == _LONG4:
                push((0, 1 + (i - start - 4) // 16))
            elif op == _GLOBAL:
                push(_CONSTRUCTOR if data[start:i] in _CONSTRUCTOR_LINES else None)
            elif op == _STACK_GLOBAL:
                del stack[-2:]
                push(_CONSTRUCTOR)
            elif op in _EXTS:
                push(_CONSTRUCTOR)
            elif op == _INST or op == _OBJ:
                at = marks.pop()
                if op == _INST and data[start:i] in _CONSTRUCTOR_LINES or op == _OBJ and stack[at] is _CONSTRUCTOR:
                    constructed = True
                del stack[at:]
                push(None)
            elif op == _NEWOBJ or op == _NEWOBJ_EX:
                n = 2 if op == _NEWOBJ else 3
                if len(stack) < n:
                    break
                if stack[-n] is _CONSTRUCTOR:
                    constructed = True
                del stack[-n:]
                push(None)
            else:  # SETITEMS, DICT, ADDITEMS, FROZENSET: each key or item is hashed
                at = marks.pop()
                for item in stack[at :: 1 if op == _ADDITEMS or op == _FROZENSET else 2]:
                    if item is not None:
                        budget -= item[1]
                del stack[at:]
                if op == _DICT or op == _FROZENSET:
                    push(None)
            if budget < 0:
                raise UnsafeCheckpoint(
                    f"{source}: the pickle's dict keys and set items take more than {MAX_HASH_NODES + end:,} steps "
                    "to hash (tuples built from shared parts); not a checkpoint"
                )
    except (IndexError, ValueError, struct.error):  # read or popped past the end, a memo slot not a number
        pass
    raise NotACheckpoint(f"{source}: the pickle is damaged or not torch's (it ends or breaks off at byte {min(i, end)})")


def _tuple_of(items: list[Any], source: str) -> tuple[int, int]:
    """(depth, nodes) of a tuple of items whose own (depth, nodes) the stack holds (None: (0, 1))."""
    depth, nodes = 1, 1 + len(items)
    for item in items:
        if item is not None:
            d, n = item
            nodes += n - 1
            if d >= depth:
                depth = d + 1
    if depth > MAX_TUPLE_DEPTH:
        raise UnsafeCheckpoint(
            f"{source}: the pickle nests tuples more than {MAX_TUPLE_DEPTH:,} deep; hashing one would overflow "
            "the stack, not a checkpoint"
        )
    return depth, nodes


def _memo_refusal(source: str, slot: int, pos: int) -> None:
    raise UnsafeCheckpoint(
        f"{source}: the pickle stores into memo slot {slot} at byte {pos}; that asks for "
        "gigabytes of memory, not a checkpoint"
    )


def restricted_loads(data: bytes, *, source: str) -> tuple[Any, RestrictedUnpickler]:
    """Unpickle the object pickled in data with the restricted unpickler."""
    checked = _scan_bytes(data, source)
    return _load(io.BytesIO(data), source, checked)


def _load(stream: BinaryIO, source: str, checked_constructors: bool) -> tuple[Any, RestrictedUnpickler]:
    unpickler = RestrictedUnpickler(stream, source=source, checked_constructors=checked_constructors)
    # Every object the load makes is live until it ends: the cycle collector, run again and again
    # as hundreds of thousands of placeholders appear, would find nothing (reader.py does the same).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return unpickler.load(), unpickler
    except (UnsafeCheckpoint, NotACheckpoint):
        raise
    except RecursionError:
        raise UnsafeCheckpoint(f"{source}: the pickle nests too deeply to read safely") from None
    except MemoryError:
        raise UnsafeCheckpoint(f"{source}: the pickle asks for more memory than a checkpoint header should") from None
    except Exception as exc:  # noqa: BLE001 - every parse failure is one kind of bad input
        raise NotACheckpoint(f"{source}: the pickle is damaged or not torch's ({type(exc).__name__}: {str(exc)[:120]})") from None
    finally:
        if collecting:
            gc.enable()


def to_plain(value: Any, *, source: str) -> Any:
    """Copy value into plain JSON types, refusing placeholders and bounding the walk."""
    budget = [MAX_WALK_NODES]

    def key(k: Any) -> str:
        if isinstance(k, str):
            return k
        if k is None or isinstance(k, (bool, float)) or (isinstance(k, int) and k.bit_length() <= 64):
            return str(k)
        raise UnsafeCheckpoint(f"{source}: the envkit entry has a {type(k).__name__} key, not plain data")

    def walk(v: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_WALK_DEPTH:
            raise UnsafeCheckpoint(f"{source}: the stamp inside the pickle is too large or deep to be envkit's")
        if isinstance(v, int) and v.bit_length() > MAX_INT_BITS:
            raise UnsafeCheckpoint(f"{source}: the envkit entry holds an integer of {v.bit_length()} bits, not envkit's")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, dict):
            return {key(k): walk(x, depth + 1) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x, depth + 1) for x in v]
        raise UnsafeCheckpoint(f"{source}: the envkit entry holds a {type(v).__name__}, not plain data")

    return walk(value, 0)
