"""Issue 10 item 13/14: cost that does not grow with the number of tensors, and inspect's tensors.

The stamp is read from the archive's tail (ziptail.last_stamp_member) when it is the last
record; every other layout takes the full zipfile path, so these tests hold the two paths
equal on normal files and show the tail reader stepping aside on hostile tails. No timings:
the bounded read is counted in bytes (/proc/self/io), speed is measured in benchmarks/.
"""

from __future__ import annotations

import inspect
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import xxhash

import envkit
from envkit.checkpoint import reader
from envkit.checkpoint.hashing import HashingWriter
from envkit.checkpoint.stamp import MEMBER
from envkit.checkpoint.ziptail import last_stamp_member
from envkit.errors import EnvkitError

torch = pytest.importorskip("torch")

MANY = 66_000  # > 65,535 records: torch and the stamp writer both use zip64 end records


def _full_path(path: Path) -> reader.CheckpointFile:
    """What zipfile's parse of the whole directory says (the path every other layout takes)."""
    return reader._read_zip(path, path.stat().st_size, deep=False).info


def _tail(path: Path) -> tuple[str, bytes, str] | None:
    with open(path, "rb") as fh:
        return last_stamp_member(fh, path.stat().st_size)


def _same_answer(path: Path) -> None:
    """read_stamp (tail or full) and the full path give the same stamp, or the same refusal."""
    try:
        full: Any = _full_path(path)
    except EnvkitError as exc:
        with pytest.raises(type(exc)):
            envkit.read_stamp(path)
        return
    got = envkit.read_stamp(path)
    assert (got.stamp, got.prefix, got.format, got.serialization_version, got.stamp_source) == (
        full.stamp, full.prefix, full.format, full.serialization_version, full.stamp_source,
    )


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("many") / "many.pth"
    envkit.save({f"layer{i}.weight": torch.full((2,), float(i)) for i in range(MANY)}, path, meta={"epoch": 4, "step": 9})
    return path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.pth"
    envkit.save({"w": torch.ones(3, 2), "b": torch.zeros(2)}, path, meta={"epoch": 1, "step": 2})
    return path


# -- the tail reader agrees with zipfile ----------------------------------------------


@pytest.mark.slow
def test_tail_reader_equals_full_parse_on_small_and_zip64_files(small: Path, many: Path, data_dir: Path) -> None:
    with zipfile.ZipFile(many) as zf:
        infos = zf.infolist()
    assert len(infos) > 0xFFFF and infos[-1].filename == f"archive/{MEMBER}"
    assert many.read_bytes()[-42:-38] == b"PK\x06\x07"  # zip64 locator before the end record
    for path in (small, many, data_dir / "stamp-v1.pth"):  # stamp-v1: written by zipfile's append mode
        tail = _tail(path)
        assert tail is not None, path
        full = _full_path(path)
        assert tail[0] == full.prefix and tail[2] == full.serialization_version
        info = envkit.read_stamp(path)
        assert info.stamp == full.stamp and info.serialization_version == full.serialization_version == "3"


@pytest.mark.slow
def test_many_tensor_file_loads_and_verifies(many: Path) -> None:
    loaded = torch.load(many, weights_only=True)
    assert len(loaded) == MANY and float(loaded[f"layer{MANY - 1}.weight"][0]) == MANY - 1
    mmap = {"mmap": True} if "mmap" in inspect.signature(torch.load).parameters else {}  # torch >= 2.1
    assert torch.load(many, weights_only=True, **mmap)["layer7.weight"].tolist() == [7.0, 7.0]
    assert envkit.verify(many).ok
    with zipfile.ZipFile(many) as zf:
        assert zf.testzip() is None


def test_check_reads_a_bounded_number_of_bytes(many: Path, small: Path) -> None:
    """rchar of the reading process: the tail, not the 4 MB central directory."""
    if not Path("/proc/self/io").exists():
        pytest.skip("needs /proc/self/io (Linux)")
    code = (
        "import sys\n"
        "from envkit.checkpoint.reader import read_stamp\n"
        "def rchar():\n"
        "    with open('/proc/self/io') as f:\n"
        "        return int(next(l for l in f if l.startswith('rchar')).split()[1])\n"
        "read_stamp(sys.argv[2])\n"  # imports and first-call work, on a small file
        "before = rchar(); info = read_stamp(sys.argv[1]); after = rchar()\n"
        "print(after - before, info.stamped)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(many), str(small)], capture_output=True, text=True, check=True)
    read, stamped = out.stdout.split()
    with zipfile.ZipFile(many) as zf:
        directory = many.stat().st_size - zf.start_dir
    assert stamped == "True" and directory > 3_000_000
    assert int(read) < 600_000  # 256 KiB of directory tail, the end records and the stamp


# -- hostile tails: the tail reader steps aside, the answer is the full path's --------------


def _eocd_at(blob: bytes) -> int:
    return len(blob) - 22


def _patch_eocd(blob: bytes, **fields: int) -> bytes:
    names = ["disk", "cd_disk", "n_disk", "n_total", "cd_size", "cd_offset", "comment"]
    at = _eocd_at(blob)
    values = dict(zip(names, struct.unpack_from("<4H2LH", blob, at + 4), strict=True))
    values.update(fields)
    return blob[: at + 4] + struct.pack("<4H2LH", *(values[n] for n in names)) + blob[at + 22 :]


def _rewrite(small: Path, tmp_path: Path, members: list[tuple[str, bytes]], *, compress: int = zipfile.ZIP_STORED) -> Path:
    """small's torch records, then ``members`` in order (zipfile writes them)."""
    out = tmp_path / "rewritten.pth"
    with zipfile.ZipFile(small) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith(MEMBER):
                dst.writestr(info, src.read(info))
        for name, data in members:
            dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, compress_type=compress)
    return out


def _stamp_bytes(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(f"archive/{MEMBER}")


def _hostile_tails(small: Path, tmp_path: Path) -> dict[str, bytes]:
    blob = small.read_bytes()
    stamp = _stamp_bytes(small)
    at = _eocd_at(blob)
    cd_size, cd_offset = struct.unpack_from("<2L", blob, at + 12)
    cases: dict[str, bytes] = {
        "stamp-not-last": _rewrite(small, tmp_path, [(f"archive/{MEMBER}", stamp), ("archive/zzz", b"x")]).read_bytes(),
        "eocd-comment": _patch_eocd(blob, comment=7) + b"comment",
        "eocd-signature-in-comment": _patch_eocd(blob, comment=22) + b"PK\x05\x06" + bytes(18),
        "truncated-directory": blob[: cd_offset + cd_size // 2],
        "directory-offset-beyond-file": _patch_eocd(blob, cd_offset=len(blob) + 1000),
        "directory-size-too-small": _patch_eocd(blob, cd_size=cd_size - 1),
        "data-between-directory-and-end": blob[:at] + b"\0" * 8 + _patch_eocd(blob[at:], cd_offset=cd_offset),
        "stamp-crc-wrong": blob.replace(stamp, stamp[:-2] + b"!}", 1),
        "stamp-compressed": _rewrite(small, tmp_path, [(f"archive/{MEMBER}", stamp)], compress=zipfile.ZIP_DEFLATED).read_bytes(),
        "stamp-name-twice-last-wins": _rewrite(small, tmp_path, [(f"archive/{MEMBER}", b"{}"), (f"archive/{MEMBER}", stamp)]).read_bytes(),
        "stamp-name-twice-first-good": _rewrite(small, tmp_path, [(f"archive/{MEMBER}", stamp), (f"archive/{MEMBER}", b"{}")]).read_bytes(),
        "other-prefix-stamp": _rewrite(small, tmp_path, [(f"other/{MEMBER}", stamp)]).read_bytes(),
        "fake-zip64-locator": blob[:at] + struct.pack("<4sLQL", b"PK\x06\x07", 0, 12345, 1) + blob[at:],
    }
    # a record hidden in the last record's comment, claiming the stamp name: two candidates end at the directory's end
    fake_name = f"archive/{MEMBER}".encode()
    fake = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 33, zlib.crc32(stamp), len(stamp), len(stamp), len(fake_name),
                       0, 0, 0, 0, 0, 0) + fake_name
    base = _rewrite(small, tmp_path, [("archive/zzz", b"x")]).read_bytes()
    at_b = _eocd_at(base)
    b_size, b_offset = struct.unpack_from("<2L", base, at_b + 12)
    last = base.rfind(b"PK\x01\x02", b_offset, at_b)
    record = bytearray(base[last:at_b])
    struct.pack_into("<H", record, 32, len(fake))  # the comment length: the fake record is the comment
    ambiguous = base[:last] + bytes(record) + fake
    cases["record-hidden-in-last-comment"] = _patch_eocd(ambiguous + base[at_b:], cd_size=b_size + len(fake))
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "stamp-not-last", "eocd-comment", "eocd-signature-in-comment", "truncated-directory",
        "directory-offset-beyond-file", "directory-size-too-small", "data-between-directory-and-end",
        "stamp-crc-wrong", "stamp-compressed", "other-prefix-stamp",
        "fake-zip64-locator", "record-hidden-in-last-comment",
    ],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_tail_reader_steps_aside_on_hostile_tails(small: Path, tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.pth"
    path.write_bytes(_hostile_tails(small, tmp_path)[case])
    assert _tail(path) is None
    _same_answer(path)


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("case", ["stamp-name-twice-last-wins", "stamp-name-twice-first-good"])
def test_stamp_name_twice_reads_the_last_as_zipfile_does(small: Path, tmp_path: Path, case: str) -> None:
    path = tmp_path / "twice.pth"
    path.write_bytes(_hostile_tails(small, tmp_path)[case])
    assert _tail(path) is not None
    _same_answer(path)
    if case == "stamp-name-twice-last-wins":
        assert envkit.read_stamp(path).stamp == envkit.read_stamp(small).stamp
    else:  # the last one is "{}": refused as zipfile's path refuses it
        with pytest.raises(EnvkitError):
            envkit.read_stamp(path)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_hostile_tails_are_exit_2_or_read_through_the_cli(small: Path, tmp_path: Path) -> None:
    for case, blob in _hostile_tails(small, tmp_path).items():
        path = tmp_path / f"cli-{case}.pth"
        path.write_bytes(blob)
        done = subprocess.run([sys.executable, "-m", "envkit", "check", str(path)], capture_output=True, text=True, check=False)
        assert done.returncode in (0, 1, 2) and "Traceback" not in done.stderr, (case, done.stderr)
        if done.returncode == 2:
            assert len(done.stderr.strip().splitlines()) == 1, (case, done.stderr)


# -- the writer's small-write buffer ----------------------------------------------------


def test_hashing_writer_digest_at_every_offset_of_small_and_large_writes(tmp_path: Path) -> None:
    chunks = [bytes([i % 251]) * n for i, n in enumerate([30, 16, 70_000, 5, 1, 3 << 20, 17, 900, 64 * 1024 - 1, 2])]
    data = b"".join(chunks)
    with open(tmp_path / "out", "w+b") as fh:
        writer = HashingWriter(fh, "xxh3_128")
        for chunk in chunks:
            assert writer.write(memoryview(chunk)) == len(chunk)
        writer.close()
        fh.flush()
        assert writer.position == len(data)
        offsets = [0, 30, 46, 70_046, 70_050, len(data) - 2, len(data) - 900, len(data)]
        for offset in offsets:
            assert writer.digest_at(offset) == f"xxh3_128:{xxhash.xxh3_128(data[:offset]).hexdigest()}", offset
    assert (tmp_path / "out").read_bytes() == data


# -- inspect shows tensors -------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_inspect_shows_dtype_and_shape(tmp_path: Path, legacy: bool) -> None:
    base = torch.arange(40, dtype=torch.float32)
    state = {
        "model": {
            "weight": torch.zeros(4, 8),
            "steps": torch.arange(3),
            "half": torch.ones(2, 3, dtype=torch.bfloat16),
            "mask": torch.ones(5, dtype=torch.bool),
            "view": base[7:19].view(3, 4),
            "column": base.view(5, 8)[:, 2],
        },
        "layers": [torch.zeros(1, 2, 3, dtype=torch.float64), torch.zeros((), dtype=torch.int32)],
        "param": torch.nn.Parameter(torch.ones(6)),
        "epoch": 3,
    }
    path = tmp_path / "t.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    insp = envkit.inspect_checkpoint(path)
    got = {t.name: (t.dtype, t.shape) for t in insp.tensors}
    assert got == {
        "model.weight": ("float32", (4, 8)),
        "model.steps": ("int64", (3,)),
        "model.half": ("bfloat16", (2, 3)),
        "model.mask": ("bool", (5,)),
        "model.view": ("float32", (3, 4)),
        "model.column": ("float32", (5,)),
        "layers.0": ("float64", (1, 2, 3)),
        "layers.1": ("int32", ()),
        "param": ("float32", (6,)),
    }
    assert insp.tensor_count == 9 and insp.tensors_complete
    assert dict(insp.top_level)["param"] == "float32 [6] parameter"
    out = subprocess.run([sys.executable, "-m", "envkit", "inspect", str(path)], capture_output=True, text=True, check=True).stdout
    assert "model.weight  float32 [4, 8]" in out and "model.half    bfloat16 [2, 3]" in out
    assert "rebuild_tensor" not in out
    doc = json.loads(subprocess.run([sys.executable, "-m", "envkit", "inspect", "--json", str(path)], capture_output=True, text=True, check=True).stdout)
    assert doc["tensors"]["count"] == 9
    assert {"name": "model.view", "dtype": "float32", "shape": [3, 4]} in doc["tensors"]["listed"]


def test_inspect_output_is_bounded(tmp_path: Path) -> None:
    n = reader.MAX_TENSORS_LISTED + 200
    path = tmp_path / "wide.pth"
    envkit.save({f"t{i}": torch.zeros(i % 3 + 1) for i in range(n)}, path)
    out = subprocess.run([sys.executable, "-m", "envkit", "inspect", str(path)], capture_output=True, text=True, check=True).stdout
    assert "\n  t0   float32 [1]\n" in out and f"... and {n - 50} more" in out and "t50 " not in out
    assert len(out.splitlines()) < 120
    doc = json.loads(subprocess.run([sys.executable, "-m", "envkit", "inspect", "--json", str(path)], capture_output=True, text=True, check=True).stdout)
    assert doc["tensors"]["count"] == n and len(doc["tensors"]["listed"]) == reader.MAX_TENSORS_LISTED
    assert doc["records_total"] > n and len(doc["records"]) == reader.MAX_JSON_RECORDS


@pytest.mark.slow
def test_tensor_listing_of_a_dag_is_bounded() -> None:
    """A few hundred bytes of pickle can describe 2**60 paths to one tensor: the walk stops at its bound."""
    from envkit.checkpoint.safe_pickle import TensorPlaceholder

    node: Any = TensorPlaceholder("torch._utils._rebuild_tensor_v2", "float32", (2,))
    for _ in range(60):
        node = [node, node]
    listed, count, complete = reader._tensor_listing({"x": node})
    assert not complete and 0 < count <= reader._MAX_LISTING_VISITS and len(listed) == reader.MAX_TENSORS_LISTED


# -- what check no longer walks, verify still does ---------------------------------------


def _restamped(small: Path, out: Path, extra: list[tuple[str, bytes]]) -> Path:
    """small's records plus ``extra`` after the second, with a stamp whose payload digest is right for the new bytes."""
    from envkit.checkpoint.stamp import Payload, Stamp

    old = envkit.read_stamp(small).stamp
    with zipfile.ZipFile(small) as src, zipfile.ZipFile(out, "w") as dst:
        for i, info in enumerate(i for i in src.infolist() if not i.filename.endswith(MEMBER)):
            if i == 2:
                for name, data in extra:
                    dst.writestr(name, data)
            dst.writestr(info, src.read(info))
        dst.fp.flush()  # type: ignore[union-attr]
        length = dst.fp.tell()  # type: ignore[union-attr]
        digest = f"xxh3_128:{xxhash.xxh3_128(out.read_bytes()[:length]).hexdigest()}"
        stamp = Stamp(old.fingerprint, Payload(digest, length), dict(old.meta))
        prefix = src.namelist()[0].split("/", 1)[0]  # "archive" since torch 2.1, the file's stem before (torch 2.0.1)
        dst.writestr(zipfile.ZipInfo(f"{prefix}/{MEMBER}", date_time=(1980, 1, 1, 0, 0, 0)), stamp.to_bytes())
    return out


def test_verify_still_refuses_an_archive_torch_cannot_load(small: Path, tmp_path: Path) -> None:
    """A second top folder makes torch.load fail; read_stamp reads the tail only, verify walks the directory."""
    path = _restamped(small, tmp_path / "mixed.pth", [("other/evil.pkl", b"x")])
    with pytest.raises(RuntimeError, match="not in a subdirectory"):
        torch.load(path, weights_only=True)
    assert envkit.read_stamp(path).stamped
    result = envkit.verify(path)
    assert not result.ok and "not one torch.save wrote" in (result.problem or "")
    done = subprocess.run([sys.executable, "-m", "envkit", "check", "--verify", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr


def test_verify_reports_a_damaged_middle_record_without_raising(small: Path, tmp_path: Path) -> None:
    # Records enough that the damaged one lies before the tail reader's window whichever torch wrote
    # `small` (torch 2.0.1 writes 4 records, too few: the window would reach the damage, and the full path refuse it).
    path = _restamped(small, tmp_path / "ok.pth", [(f"archive/data/pad{i}", b"x") for i in range(8)])
    assert envkit.verify(path).ok
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        second = zf.start_dir + blob[zf.start_dir + 1 :].index(b"PK\x01\x02") + 1  # the directory's second record
    blob[second : second + 4] = b"XXXX"
    path.write_bytes(bytes(blob))
    assert envkit.read_stamp(path).stamped  # the tail is whole
    result = envkit.verify(path)
    assert not result.ok and result.problem
