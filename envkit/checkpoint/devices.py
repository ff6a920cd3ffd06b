"""Where a checkpoint's storages live (cpu, cuda:0, ...), known without unpickling at check time.

What the stamp records is the CPU and CUDA locations (other device types are not searched for:
each costs a pass over the bytes); what the reader reports for an unstamped file is every location.

``envkit.save`` records the set in the stamp's meta (``storage_devices``) while it writes: the
locations are read from the ``data.pkl`` torch just wrote, by a pattern over the bytes of
torch's persistent ids, not by unpickling, so the cost is a scan of that one member (well under
1% of ``torch.save``). ``check`` reads it from the stamp; for an unstamped file the reader has
walked ``data.pkl`` with the restricted unpickler anyway and knows the storages exactly.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from envkit.checkpoint.reader import CheckpointFile
    from envkit.checkpoint.stamp import Stamp

META_KEY = "storage_devices"

# torch.save pickles each storage as the persistent id ('storage', <type>, key, location, numel):
# <str location> [memo put] <int numel> TUPLE [memo put] BINPERSID. Protocol 2 (torch's default)
# writes a string as BINUNICODE (X + 4-byte length), protocols >= 4 may use SHORT_BINUNICODE
# (\x8c + 1-byte length). BINPERSID ('Q') follows only a persistent id, so a user string that
# merely reads "cuda:0" does not match. Each search starts with a literal (the device family), so
# the regex engine skips through the bytes at memchr speed: a few milliseconds for the data.pkl
# of 100,000 tensors, where one pattern over every string header takes twenty times that.
# A location pickled before is memoised (a BINGET) and not seen again; torch builds CUDA tags
# afresh per storage ('cuda:' + index), so a CUDA location is always seen.
_PUT = rb"(?:q[\x00-\xff]|r[\x00-\xff]{4}|\x94)?"
_INT = rb"(?:K[\x00-\xff]|M[\x00-\xff]{2}|J[\x00-\xff]{4}|\x8a[\x00-\xff])"
_AFTER = rb"(?=" + _PUT + _INT + rb")"
_TAIL = re.compile(_PUT + rb"(?:K[\x00-\xff]|M[\x00-\xff]{2}|J[\x00-\xff]{4}|\x8a[\x00-\xff][\x00-\xff]{1,8}?)t" + _PUT + rb"Q", re.DOTALL)
# Each family searched costs one pass over the bytes, so only the two a resume decision needs.
_INDEXED = (b"cuda",)
_PLAIN = (b"cpu",)


def _is_location(data: bytes, start: int, tag: bytes) -> bool:
    """The tag at ``start`` is a whole pickled string and a persistent id's location."""
    n = len(tag)
    header = data[start - 5 : start] == b"X" + n.to_bytes(4, "little") or data[start - 2 : start] == bytes((0x8C, n))
    if not header:
        return False
    return _TAIL.match(data, start + n) is not None


def locations_in_pickle(data: bytes) -> tuple[str, ...]:
    """The sorted set of storage locations named by the persistent ids in a torch data.pkl."""
    found: set[bytes] = set()
    for family in _INDEXED + _PLAIN:
        indexed = family in _INDEXED
        pos = 0
        while True:
            skip = b"".join(rb"(?!" + re.escape(t[len(family):]) + rb"(?![0-9]))" for t in found if t.startswith(family + b":"))
            suffix = rb"(?::[0-9]{1,5})" if indexed else b""
            m = re.compile(re.escape(family) + skip + suffix + _AFTER, re.DOTALL).search(data, pos)
            if m is None:
                break
            if _is_location(data, m.start(), m.group(0)):
                found.add(m.group(0))
                if not indexed:
                    break
            pos = m.end()
    return tuple(sorted(t.decode("ascii") for t in found))


def with_storage_devices(stamp: Stamp, data_pkl: bytes | None) -> Stamp:
    """The stamp, its meta naming the storage locations that ``data_pkl`` (the archive's) names."""
    if data_pkl is None:
        return stamp
    return replace(stamp, meta={**stamp.meta, META_KEY: list(locations_in_pickle(data_pkl))})


def data_pkl_of(zf: zipfile.ZipFile, prefix: str) -> bytes | None:
    try:
        return zf.read(f"{prefix}/data.pkl")
    except (KeyError, OSError, zipfile.BadZipFile):
        return None


def storage_devices(info: CheckpointFile) -> tuple[str, ...] | None:
    """The storage locations of a checkpoint: what the reader saw, else what its stamp recorded;
    None when unknown (a stamp of an envkit that did not record them)."""
    seen = getattr(info, "storage_devices", None)
    if seen is not None:
        return tuple(seen)
    recorded = info.stamp.meta.get(META_KEY) if info.stamp is not None else None
    if isinstance(recorded, list) and all(isinstance(x, str) for x in recorded):
        return tuple(recorded)
    return None
