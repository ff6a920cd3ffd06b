"""The stamp as a zip archive's last record: read and written from the archive's tail.

envkit's writer appends the stamp after torch's records, so its central-directory record
is the last one. Reading the end records and that one record costs a few reads however many
tensors the archive holds; zipfile parses every record (200,000 for a 200,000-tensor state
dict), and its append mode parses and rewrites all of them.

The reader never decides that a file is bad: anything it does not recognise as exactly that
layout (a comment, a record that does not fit, two candidates for the last record, a damaged
member, zip64 end records that disagree) returns None, and the caller takes the full zipfile
path, which names the problem.
"""

from __future__ import annotations

import struct
import zipfile
import zlib

from envkit.checkpoint.stamp import MAX_STAMP_BYTES, MEMBER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

# envkit's writer appends the stamp after torch's records, so its central-directory record
# is the last one. Reading the end records and that one record costs a few reads however many
# tensors the archive holds; zipfile parses every record (200,000 for a 200,000-tensor state
# dict). Anything this reader does not recognise as exactly that layout returns None, and the
# caller takes the full zipfile path, which names the problem: the fast path never decides
# that a file is bad, it only recognises the good ones.

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
# the whole of the last central record always lies in this much of the directory's tail
_LAST_RECORD_MAX = _CENTRAL.size + 3 * 0xFFFF
_TAIL_WINDOW = 256 * 1024
_VERSION_WITHIN = 6  # torch writes its version record among the last few


def _read_at(fh: BinaryIO, offset: int, n: int) -> bytes | None:
    fh.seek(offset)
    data = fh.read(n)
    return data if len(data) == n else None


def end_of_directory(fh: BinaryIO, size: int) -> tuple[int, int] | None:
    """(offset, size) of the central directory, when the archive ends in plain end records."""
    if size < _EOCD.size + _LOCAL.size:
        return None
    raw = _read_at(fh, size - _EOCD.size, _EOCD.size)
    if raw is None:
        return None
    sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment = _EOCD.unpack(raw)
    if sig != b"PK\x05\x06" or comment != 0:
        return None  # a comment (or a signature inside one) is not what envkit writes
    end = size - _EOCD.size
    loc = _read_at(fh, end - _ZIP64_LOCATOR.size, _ZIP64_LOCATOR.size) if end >= _ZIP64_LOCATOR.size else None
    if loc is not None and loc[:4] == b"PK\x06\x07":
        _, loc_disk, record_at, disks = _ZIP64_LOCATOR.unpack(loc)
        end -= _ZIP64_LOCATOR.size + _ZIP64_EOCD.size
        if loc_disk != 0 or disks not in (0, 1) or record_at != end or end < 0:
            return None
        raw64 = _read_at(fh, end, _ZIP64_EOCD.size)
        if raw64 is None:
            return None
        sig64, rec_size, _, _, disk64, cd_disk64, n_disk64, n_total64, cd_size64, cd_offset64 = _ZIP64_EOCD.unpack(raw64)
        if sig64 != b"PK\x06\x06" or rec_size != _ZIP64_EOCD.size - 12:
            return None
        for short, full, most in (
            (disk, disk64, 0xFFFF), (cd_disk, cd_disk64, 0xFFFF), (n_disk, n_disk64, 0xFFFF),
            (n_total, n_total64, 0xFFFF), (cd_size, cd_size64, 0xFFFFFFFF), (cd_offset, cd_offset64, 0xFFFFFFFF),
        ):  # fmt: skip
            if short not in (full, most):
                return None  # the two end records disagree
        disk, cd_disk, n_disk, n_total, cd_size, cd_offset = disk64, cd_disk64, n_disk64, n_total64, cd_size64, cd_offset64
    elif 0xFFFF in (disk, cd_disk, n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset):
        return None  # zip64 values without zip64 end records
    if disk != 0 or cd_disk != 0 or n_disk != n_total or n_total < 2 or cd_offset + cd_size != end:
        return None  # split archives, data between the directory and its end, or no room for torch's records
    return cd_offset, cd_size


def _last_records(fh: BinaryIO, cd_offset: int, cd_size: int, most: int) -> list[bytes] | None:
    """Up to ``most`` records from the directory's end, last first.

    Each is the one candidate in the tail that ends exactly where the record after it starts.
    A name or extra field can hold bytes that look like a record; when two candidates fit, or
    the window read cannot rule out a longer one, the layout is ambiguous and None sends the
    caller to the full parse.
    """
    window = min(cd_size, _TAIL_WINDOW)
    tail = _read_at(fh, cd_offset + cd_size - window, window)
    if tail is None:
        return None
    # every place in the tail that could start a record, by where that record would end
    ends: dict[int, int] = {}
    ambiguous: set[int] = set()
    three = struct.Struct("<3H").unpack_from
    pos = tail.find(b"PK\x01\x02")
    while 0 <= pos <= len(tail) - _CENTRAL.size:
        n, m, k = three(tail, pos + 28)
        end = pos + _CENTRAL.size + n + m + k
        if end in ends:
            ambiguous.add(end)
        ends[end] = pos
        pos = tail.find(b"PK\x01\x02", pos + 1)
    records: list[bytes] = []
    end = len(tail)
    while len(records) < most and end > 0:
        if end - _LAST_RECORD_MAX < 0 and window < cd_size:
            return None  # a record ending here could start before the window
        if end in ambiguous or end not in ends:
            return None
        start = ends[end]
        records.append(tail[start:end])
        end = start
    return records


def _zip64_fields(extra: bytes, wanted: int) -> list[int] | None:
    """The ``wanted`` 8-byte values of the zip64 extra field, in order."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag == 1:
            if length < 8 * wanted or pos + 4 + length > len(extra):
                return None
            return list(struct.unpack_from(f"<{wanted}Q", extra, pos + 4))
        pos += 4 + length
    return None


def _stored_member(fh: BinaryIO, record: bytes, cd_offset: int, limit: int) -> tuple[str, bytes] | None:
    """(name, data) of the member a central record describes: stored, plain, whole, under ``limit``."""
    (_, _, _, _, _, flags, method, _, _, crc, csize, usize, n, m, _, disk_start, _, _, offset) = _CENTRAL.unpack_from(record)
    raw_name = record[_CENTRAL.size : _CENTRAL.size + n]
    extra = record[_CENTRAL.size + n : _CENTRAL.size + n + m]
    if flags & ~0x0808 or method != zipfile.ZIP_STORED or disk_start != 0:
        return None  # encrypted, compressed, ...: the full path refuses it by name
    wide = [v for v in (usize, csize, offset) if v == 0xFFFFFFFF]
    if wide:
        values = _zip64_fields(extra, len(wide))
        if values is None:
            return None
        if usize == 0xFFFFFFFF:
            usize = values.pop(0)
        if csize == 0xFFFFFFFF:
            csize = values.pop(0)
        if offset == 0xFFFFFFFF:
            offset = values.pop(0)
    try:
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
    except UnicodeDecodeError:
        return None
    if csize != usize or usize > limit:
        return None
    local = _read_at(fh, offset, _LOCAL.size + n)
    if local is None or local[:4] != b"PK\x03\x04" or local[_LOCAL.size :] != raw_name:
        return None
    start = offset + _LOCAL.size + n + struct.unpack_from("<H", local, 28)[0]
    if start + usize > cd_offset:
        return None
    data = _read_at(fh, start, usize)
    if data is None or zlib.crc32(data) != crc:
        return None  # damaged: the full path says so
    return name, data


def last_stamp_member(fh: BinaryIO, size: int, *, first_from_directory: bool = False) -> tuple[str, bytes, str] | None:
    """(prefix, bytes of ``<prefix>/extra/envkit.json``, serialization version) when the stamp
    is the archive's last record, whole and unusual in nothing, and torch's ``version`` record
    is among the few before it; None otherwise (the caller parses the whole archive).

    That torch wrote the archive (``<prefix>/data.pkl`` first, at offset 0) is read from the
    local header at offset 0; ``first_from_directory``: from the directory's first record
    instead, which lies in the tail of an archive with a small directory. An object in a bucket
    is read so (remote.RangeView: one GET of the tail instead of two), where ``size`` is the
    object's own (the GET's Content-Range), so that the directory's offsets are the object's.
    The bytes at offset 0 are then not read: like every other payload byte, they are verify's
    to check (it streams the payload and checks every local header)."""
    located = end_of_directory(fh, size)
    if located is None:
        return None
    cd_offset, cd_size = located
    records = _last_records(fh, cd_offset, cd_size, _VERSION_WITHIN + 1)
    if not records:
        return None
    stamp = _stored_member(fh, records[0], cd_offset, MAX_STAMP_BYTES)
    if stamp is None:
        return None
    name, data = stamp
    prefix, slash, rest = name.partition("/")
    if not prefix or not slash or rest != MEMBER:
        return None
    version = None
    for record in records[1:]:
        if record[_CENTRAL.size : _CENTRAL.size + struct.unpack_from("<H", record, 28)[0]] == f"{prefix}/version".encode():
            member = _stored_member(fh, record, cd_offset, 64)
            version = member[1].decode("ascii", "replace").strip() if member else None
            break
    if version is None:
        return None
    first_name = f"{prefix}/data.pkl".encode()
    if first_from_directory:
        entry = _read_at(fh, cd_offset, _CENTRAL.size + len(first_name))
        if entry is None or entry[:4] != b"PK\x01\x02" or entry[_CENTRAL.size :] != first_name:
            return None  # not torch's layout: torch writes data.pkl first
        n, at = struct.unpack_from("<H", entry, 28)[0], struct.unpack_from("<L", entry, 42)[0]
        if n != len(first_name) or at != 0:
            return None
        return prefix, data, version
    first = _read_at(fh, 0, _LOCAL.size + len(first_name))
    if first is None or struct.unpack_from("<H", first, 26)[0] != len(first_name) or first[_LOCAL.size :] != first_name:
        return None  # not torch's layout: torch writes data.pkl first
    return prefix, data, version


# -- writing ------------------------------------------------------------------------

# torch's (miniz's) thresholds: zip64 only for a value that does not fit its 32-bit field. zipfile's
# (2**31 - 1) made every archive between 2 and 4 GiB zip64, and torch 2.0.1's reader refuses those
# ("PytorchStreamReader failed reading zip archive: invalid header"), found by `envkit trial`.
_ZIP64_LIMIT = 0xFFFFFFFF - 1
_FILECOUNT_LIMIT = (1 << 16) - 1
_DOS_DATE_1980 = (1 << 5) | 1  # 1980-01-01, time 00:00:00


def torch_layout(fh: BinaryIO, size: int) -> tuple[str, int, int, int] | None:
    """(prefix, directory offset, directory size, records) of an archive torch just wrote; None
    when it does not end in plain end records or does not start with ``<prefix>/data.pkl``."""
    located = end_of_directory(fh, size)
    if located is None:
        return None
    cd_offset, cd_size = located
    first = _read_at(fh, 0, _LOCAL.size)
    if first is None or first[:4] != b"PK\x03\x04":
        return None
    n = struct.unpack_from("<H", first, 26)[0]
    raw = _read_at(fh, _LOCAL.size, n)
    try:
        name = raw.decode("utf-8") if raw is not None else ""
    except UnicodeDecodeError:
        return None
    prefix, _, rest = name.partition("/")
    if not prefix or rest != "data.pkl":
        return None
    raw_end = _read_at(fh, size - _EOCD.size, _EOCD.size)
    assert raw_end is not None
    count = _EOCD.unpack(raw_end)[4]
    if count == 0xFFFF:
        raw64 = _read_at(fh, cd_offset + cd_size, _ZIP64_EOCD.size)
        assert raw64 is not None
        count = _ZIP64_EOCD.unpack(raw64)[7]
    return prefix, cd_offset, cd_size, count


def first_member(fh: BinaryIO, cd_offset: int, limit: int) -> tuple[str, bytes] | None:
    """(name, bytes) of the archive's first member, located by the first record of the central
    directory at ``cd_offset``, when it is stored whole at offset 0 (as torch writes
    ``<prefix>/data.pkl``: sizes in a data descriptor, so only the record has them); None otherwise
    or when over ``limit``."""
    record = _read_at(fh, cd_offset, _CENTRAL.size)
    if record is None or record[:4] != b"PK\x01\x02":
        return None
    (_, _, _, _, _, _, method, _, _, _, csize, usize, n, _, _, _, _, _, offset) = _CENTRAL.unpack(record)
    if method != zipfile.ZIP_STORED or csize != usize or csize > limit or offset != 0:
        return None
    raw_name = _read_at(fh, cd_offset + _CENTRAL.size, n)
    head = _read_at(fh, 0, _LOCAL.size)
    if raw_name is None or head is None or head[:4] != b"PK\x03\x04":
        return None
    nlen, elen = _LOCAL.unpack(head)[10:12]
    data = _read_at(fh, _LOCAL.size + nlen + elen, csize)
    return None if data is None else (raw_name.decode("utf-8", "replace"), data)


def append_last_member(
    fh: BinaryIO, layout: tuple[str, int, int, int], name: str, data: bytes, *, directory: bytes | None = None
) -> None:
    """Append a stored member after the records of the archive in ``fh`` (read-write, positioned
    anywhere), as zipfile's append mode would, without parsing the directory: its bytes move
    behind the new member unchanged and one record and new end records follow them.
    ``directory``: the directory's bytes when the caller has read them already."""
    _, cd_offset, cd_size, count = layout
    raw_name = name.encode("utf-8")
    flags = 0 if raw_name.isascii() else 0x800
    crc = zlib.crc32(data)
    local = _LOCAL.pack(b"PK\x03\x04", 20, 0, flags, zipfile.ZIP_STORED, 0, _DOS_DATE_1980, crc, len(data), len(data), len(raw_name), 0)
    extra, offset, version = b"", cd_offset, 20
    if cd_offset > _ZIP64_LIMIT:
        extra, offset, version = struct.pack("<2HQ", 1, 8, cd_offset), 0xFFFFFFFF, 45
    central = _CENTRAL.pack(
        b"PK\x01\x02", version, 3, version, 0, flags, zipfile.ZIP_STORED, 0, _DOS_DATE_1980, crc, len(data), len(data),
        len(raw_name), len(extra), 0, 0, 0, 0, offset,
    ) + raw_name + extra
    if directory is None:
        fh.seek(cd_offset)
        directory = fh.read(cd_size)
    if len(directory) != cd_size:
        raise OSError(f"short read of the central directory ({len(directory)} of {cd_size} bytes)")
    new_offset = cd_offset + len(local) + len(raw_name) + len(data)
    new_size, new_count = cd_size + len(central), count + 1
    end = b""
    if new_count > _FILECOUNT_LIMIT or new_offset > _ZIP64_LIMIT or new_size > _ZIP64_LIMIT:
        end = _ZIP64_EOCD.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, new_count, new_count, new_size, new_offset)
        end += _ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, new_offset + new_size, 1)
    end += _EOCD.pack(
        b"PK\x05\x06", 0, 0, min(new_count, 0xFFFF), min(new_count, 0xFFFF), min(new_size, 0xFFFFFFFF),
        min(new_offset, 0xFFFFFFFF), 0,
    )
    fh.seek(cd_offset)
    fh.write(b"".join((local, raw_name, data, directory, central, end)))
    fh.truncate()


def directory_records(directory: bytes) -> dict[str, tuple[int, int]] | None:
    """name -> (CRC-32, size) of every record in the central-directory bytes ``directory``; None
    when they do not parse as whole records (the caller says the directory is not what was saved)."""
    out: dict[str, tuple[int, int]] = {}
    pos, end, unpack = 0, len(directory), _CENTRAL.unpack_from
    while pos < end:
        if end - pos < _CENTRAL.size or directory[pos : pos + 4] != b"PK\x01\x02":
            return None
        fields = unpack(directory, pos)
        crc, usize, n, m, k = fields[9], fields[11], fields[12], fields[13], fields[14]
        name_end = pos + _CENTRAL.size + n
        if usize == 0xFFFFFFFF:
            wide = [v for v in (fields[11], fields[10], fields[18]) if v == 0xFFFFFFFF]
            values = _zip64_fields(directory[name_end : name_end + m], len(wide))
            if values is None:
                return None
            usize = values[0]
        out[directory[pos + _CENTRAL.size : name_end].decode("utf-8", "replace")] = (crc, usize)
        pos = name_end + m + k
    return out if pos == end else None
