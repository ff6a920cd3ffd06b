"""Hostile and broken checkpoints: read without running them, rejected in one clean line.

``envkit check``, ``inspect``, ``diff`` and ``envkit.read_stamp`` read files nobody
vouches for. For every file here they must (a) raise a ``BadInput`` subclass naming
the file, (b) on the command line exit 2 with exactly one ``envkit: error:`` line on
stderr naming the file and no traceback, and (c) never run the pickle: each payload
tries to create a canary file, and ``test_payloads_are_live`` proves that a plain
``torch.load(weights_only=False)`` of the very same bytes does create it.

Every file is built in tmp_path, byte by byte (tests/checkpoint/hostile_files.py) or
with torch.save / torch.jit.save; nothing is downloaded. The positive controls at
the end show the restrictions still read real checkpoints.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import envkit
from envkit.checkpoint import safe_pickle
from envkit.checkpoint.safe_pickle import restricted_loads
from envkit.cli import main
from envkit.errors import BadInput, MalformedStamp, NotACheckpoint, UnsafeCheckpoint
from tests.checkpoint import hostile_files as H
from tests.checkpoint.hostile_files import Asm

ROOT = Path(__file__).resolve().parents[2]
SURFACES = ("read_stamp", "inspect_checkpoint", "cli-check", "cli-inspect", "cli-diff")
LIBRARY = {"read_stamp": envkit.read_stamp, "inspect_checkpoint": envkit.inspect_checkpoint}
MiB = 1024 * 1024

# the first global each payload asks for, which envkit must name when it refuses
REFUSED = {
    "os_system": "os.system",
    "posix_system": "posix.system",
    "stack_global_os_system": "os.system",
    "subprocess_popen": "subprocess.Popen",
    "subprocess_check_output": "subprocess.check_output",
    "builtins_eval": "builtins.eval",
    "builtins_exec": "builtins.exec",
    "py2_builtin_eval": "__builtin__.eval",
    "getattr_import_chain": "builtins.getattr",
    "memo_hidden_names": "os.system",
    "build_rewrites_torch_utils": "torch._utils",
    "build_slotstate_torch_utils": "torch._utils",
    "torch_collect_env_run": "torch.utils.collect_env.run",
    "nested_torch_load": "torch.load",
    "nested_serialization_load": "torch.serialization.load",
    "storage_load_from_bytes": "torch.storage._load_from_bytes",
}
assert set(REFUSED) == set(H.PAYLOADS)

_ALL_CANARIES: list[Path] = []


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary"
    _ALL_CANARIES.append(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _no_canary_ever(request: pytest.FixtureRequest) -> Any:
    """After the module: give asynchronous payloads (Popen) time, then look at every canary."""
    yield
    time.sleep(0.3)
    alive = [str(c) for c in _ALL_CANARIES if c.exists()]
    assert not alive, f"a payload ran: {alive}"


# -- assertions -------------------------------------------------------------------------


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error_line(result: Result, path: Path | str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an escaped exception
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("envkit: error: ") and line[len("envkit: error: ") :].strip()
    assert str(path) in line
    return line


def reject(path: Path, surface: str, expected: type[BadInput] = BadInput) -> str:
    """Run one surface on path, assert the clean rejection, return the message."""
    if surface in LIBRARY:
        with pytest.raises(BadInput) as info:
            LIBRARY[surface](path)
        err = info.value
        assert isinstance(err, expected), f"{type(err).__name__}: {err}"
        assert err.exit_code == 2
        message = str(err)
        assert str(path) in message and "\n" not in message
        return message
    command = surface.split("-", 1)[1]
    args = [command, str(path), "live"] if command == "diff" else [command, str(path)]
    return assert_one_error_line(cli(*args), path)


# -- 1. pickles that run code -----------------------------------------------------------


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("placement", ["top", "nested"])
@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("name", H.PAYLOADS)
def test_code_running_payload_is_refused(tmp_path: Path, canary: Path, name: str, layout: str, placement: str, surface: str) -> None:
    path = tmp_path / f"{name}.pt"
    path.write_bytes(H.hostile_file(name, layout, placement, canary))
    message = reject(path, surface, UnsafeCheckpoint)
    assert f"global {REFUSED[name]};" in message
    assert not canary.exists()


def _legacy_with_hostile_header(position: str, evil: bytes) -> bytes:
    magic = pickle.dumps(H.LEGACY_MAGIC_NUMBER, protocol=2)
    protocol = pickle.dumps(H.LEGACY_PROTOCOL_VERSION, protocol=2)
    sys_info = pickle.dumps(H.LEGACY_SYS_INFO, protocol=2)
    obj = pickle.dumps({"epoch": 1}, protocol=2)
    if position == "magic":  # the magic number, then POP and the payload before STOP
        assert magic.endswith(pickle.STOP)
        magic = magic[:-1] + pickle.POP + evil.split(pickle.PROTO + bytes([evil[1]]), 1)[1]
    elif position == "protocol":
        protocol = evil
    elif position == "sys_info":
        sys_info = evil
    return magic + protocol + sys_info + obj + pickle.dumps([], protocol=2)


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("name", ["os_system", "memo_hidden_names", "getattr_import_chain"])
@pytest.mark.parametrize("position", ["magic", "protocol", "sys_info"])
def test_payload_in_legacy_header_pickles_is_refused(tmp_path: Path, canary: Path, position: str, name: str, surface: str) -> None:
    path = tmp_path / "legacy.pt"
    path.write_bytes(_legacy_with_hostile_header(position, H.payload(name, canary)))
    assert path.read_bytes().startswith(bytes.fromhex("80028a0a6cfc9c46f9206aa85019"))  # sniffs as legacy
    message = reject(path, surface, UnsafeCheckpoint)
    assert f"global {REFUSED[name]};" in message
    assert not canary.exists()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to keep each payload's damage to itself")
def test_payloads_are_live(tmp_path: Path) -> None:
    """Each payload, in each layout and placement, runs under torch.load(weights_only=False).

    Run in a child process, never in this one; the payloads that rewrite torch._utils
    run in a fork of it each, so that they cannot disarm the others.
    """
    pytest.importorskip("torch")
    script = textwrap.dedent(
        """
        import json, os, sys, time, warnings
        from pathlib import Path
        sys.path.insert(0, sys.argv[1])
        warnings.simplefilter("ignore")
        import torch
        from tests.checkpoint import hostile_files as H
        work = Path(sys.argv[2])
        canaries = []
        for name in H.PAYLOADS:
            for layout in ("zip", "legacy"):
                for placement in ("top", "nested"):
                    canary = work / f"{name}-{layout}-{placement}.canary"
                    path = work / f"{name}-{layout}-{placement}.pt"
                    path.write_bytes(H.hostile_file(name, layout, placement, canary))
                    canaries.append(canary)
                    poisons = name.startswith("build_")
                    pid = os.fork() if poisons else 0
                    if pid == 0:
                        try:
                            torch.load(path, weights_only=False)
                        except BaseException as exc:
                            with open(work / "errors.txt", "a") as fh:
                                print(path.name, repr(exc)[:300], file=fh)
                        finally:
                            if poisons:
                                os._exit(0)
                    else:
                        os.waitpid(pid, 0)
        deadline = time.time() + 5
        while time.time() < deadline and not all(c.exists() for c in canaries):
            time.sleep(0.05)  # Popen runs touch in the background
        print(json.dumps([c.name for c in canaries if not c.exists()]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script, str(ROOT), str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    errors = tmp_path / "errors.txt"
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], errors.read_text() if errors.exists() else ""


# -- 2. zip members and stamps ------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    tmp_path: Path
    canary: Path
    request: pytest.FixtureRequest

    def torch_blob(self, name: str) -> bytes:
        return self.request.getfixturevalue("torch_blobs")[name]


BENIGN_PKL = Asm(2).value({"epoch": 3, "note": "xxxxxxxx"}).done()


def _stamp(**fields: Any) -> bytes:
    return json.dumps({"schema": "envkit.stamp/1", **fields}).encode()


def _data_pkl(build: Callable[[Asm], Any], proto: int = 2) -> bytes:
    a = Asm(proto)
    build(a)
    return a.done()


def _envkit_key(build: Callable[[Asm], Any], proto: int = 4) -> bytes:
    """data.pkl holding {"envkit": <built>} and no stamp member: read through the pickle."""
    return H.zip_checkpoint(_data_pkl(lambda a: (a.empty_dict().str("envkit"), build(a), a.setitem()), proto))


def _flip_in_data_pkl(blob: bytes) -> bytes:
    i = blob.index(b"xxxxxxxx")
    return blob[:i] + b"y" + blob[i + 1 :]


def _memo_slot(slot: int) -> bytes:
    return pickle.PROTO + b"\x02" + pickle.NONE + pickle.LONG_BINPUT + struct.pack("<I", slot) + pickle.STOP


# name -> (build(ctx) -> bytes, expected error, a fragment of the message)
BROKEN: dict[str, tuple[Callable[[Ctx], bytes], type[BadInput], str]] = {
    # compressed or encrypted members: refused before anything is read from them
    "data_pkl_deflated": (lambda c: H.zip_checkpoint(BENIGN_PKL, compress={"data.pkl": zipfile.ZIP_DEFLATED}), UnsafeCheckpoint, "compressed"),
    "hostile_data_pkl_deflated": (
        lambda c: H.zip_checkpoint(H.payload("os_system", c.canary), compress={"data.pkl": zipfile.ZIP_DEFLATED}),
        UnsafeCheckpoint,
        "compressed",
    ),
    "data_pkl_lzma": (lambda c: H.zip_checkpoint(BENIGN_PKL, compress={"data.pkl": zipfile.ZIP_LZMA}), UnsafeCheckpoint, "compressed"),
    "stamp_deflated": (
        lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=_stamp(), compress={"extra/envkit.json": zipfile.ZIP_DEFLATED}),
        UnsafeCheckpoint,
        "compressed",
    ),
    "data_pkl_encrypted": (lambda c: H.patch_zip_flags(H.zip_checkpoint(BENIGN_PKL), "archive/data.pkl", set_bits=0x1), UnsafeCheckpoint, "encrypted"),
    "hostile_data_pkl_encrypted": (
        lambda c: H.patch_zip_flags(H.zip_checkpoint(H.payload("os_system", c.canary)), "archive/data.pkl", set_bits=0x1),
        UnsafeCheckpoint,
        "encrypted",
    ),
    "stamp_encrypted": (lambda c: H.patch_zip_flags(H.zip_checkpoint(BENIGN_PKL, stamp=_stamp()), H.STAMP_MEMBER, set_bits=0x1), UnsafeCheckpoint, "encrypted"),
    "version_encrypted": (lambda c: H.patch_zip_flags(H.zip_checkpoint(BENIGN_PKL), "archive/version", set_bits=0x1), UnsafeCheckpoint, "encrypted"),
    "data_pkl_strong_encryption_flag": (
        lambda c: H.patch_zip_flags(H.zip_checkpoint(BENIGN_PKL), "archive/data.pkl", set_bits=0x40), UnsafeCheckpoint, "encrypted",
    ),
    "data_pkl_patched_data_flag": (lambda c: H.patch_zip_flags(H.zip_checkpoint(BENIGN_PKL), "archive/data.pkl", set_bits=0x20), UnsafeCheckpoint, "flag bits"),
    "version_patched_data_flag": (lambda c: H.patch_zip_flags(H.zip_checkpoint(BENIGN_PKL), "archive/version", set_bits=0x20), UnsafeCheckpoint, "flag bits"),
    "data_pkl_local_name_not_utf8": (
        lambda c: H.patch_local_name(
            H.patch_zip_flags(H.zip_checkpoint(BENIGN_PKL), "archive/data.pkl", set_bits=0x800, central=False),
            "archive/data.pkl",
            b"archive/data.pk\xff",
        ),
        NotACheckpoint,
        "damaged",
    ),
    "data_pkl_crc_mismatch": (lambda c: _flip_in_data_pkl(H.zip_checkpoint(BENIGN_PKL)), NotACheckpoint, "damaged"),
    # the stamp member
    "stamp_malformed_json": (lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=b'{"schema": "envkit.stamp/1", "fingerprint": {'), MalformedStamp, "not valid JSON"),
    "stamp_not_utf8": (lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=b"\xff\xfe\xfd{}"), MalformedStamp, "not valid JSON"),
    "stamp_not_an_object": (lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=b"[1, 2, 3]"), MalformedStamp, "not a JSON object"),
    "stamp_nested_100k_deep": (lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=b"[" * 100_000 + b"]" * 100_000), MalformedStamp, "stamp"),
    "stamp_over_8_MiB": (lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=_stamp(pad="x" * (8 * MiB))), MalformedStamp, "limit"),
    "stamp_unknown_schema": (
        lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=json.dumps({"schema": "envkit.stamp/99"}).encode()), MalformedStamp, "unknown stamp schema",
    ),
    "stamp_without_schema": (lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=b'{"fingerprint": {}}'), MalformedStamp, "unknown stamp schema"),
    "stamp_fingerprint_not_an_object": (lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=_stamp(fingerprint="x")), MalformedStamp, "fingerprint"),
    "stamp_bad_payload_digest": (
        lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=_stamp(payload={"digest": "md5:00", "length": 1})),
        MalformedStamp,
        "digest",
    ),
    "version_record_oversized": (lambda c: H.zip_checkpoint(BENIGN_PKL, version=b"3" * 100), BadInput, "version"),
    # the "envkit" key of data.pkl, read when there is no stamp member
    "pickle_stamp_unknown_schema": (lambda c: _envkit_key(lambda a: a.value({"schema": "envkit.stamp/99"})), MalformedStamp, "unknown stamp schema"),
    "pickle_stamp_dag_2_to_the_60": (lambda c: _envkit_key(lambda a: H.dag_list(a, 60)), UnsafeCheckpoint, "too large or deep"),
    "pickle_stamp_5000_deep": (lambda c: _envkit_key(lambda a: H.nested_list(a, 5000)), UnsafeCheckpoint, "too large or deep"),
    "pickle_stamp_huge_int": (
        lambda c: _envkit_key(
            lambda a: a.empty_dict().str("schema").str("envkit.stamp/1").setitem().str("meta").empty_dict().str("epoch").int(2**20_000).setitem().setitem()
        ),
        UnsafeCheckpoint,
        "integer",
    ),
    "pickle_stamp_frozenset_dag_key": (
        lambda c: _envkit_key(lambda a: (a.empty_dict(), H.dag_frozenset(a, 40), a.int(1).setitem())),
        UnsafeCheckpoint,
        "key",
    ),
    "pickle_stamp_is_a_tensor": (
        lambda c: _envkit_key(lambda a: a.call("torch._utils", "_rebuild_tensor_v2"), proto=2),
        UnsafeCheckpoint,
        "not plain data",
    ),
    # pickle machinery turned against the reader
    "storage_reference_dag": (
        lambda c: H.zip_checkpoint(_data_pkl(
            lambda a: (a.mark().str("storage").glob("torch", "FloatStorage"), H.dag_list(a, 60), a.str("cpu").int(1).tuple().persid())
        )),
        UnsafeCheckpoint,
        "storage reference",
    ),
    "unknown_persistent_id": (lambda c: H.zip_checkpoint(_data_pkl(lambda a: a.value(("module_or_what", 1)).persid())), UnsafeCheckpoint, "persistent"),
    "memo_slot_2_to_the_31": (lambda c: H.zip_checkpoint(_memo_slot(2**31 - 1)), UnsafeCheckpoint, "memo slot"),
    "memo_slot_text_put": (lambda c: H.zip_checkpoint(b"N" + pickle.PUT + b"99999999999\n" + pickle.STOP), UnsafeCheckpoint, "memo slot"),
    "legacy_memo_slot_2_to_the_31": (lambda c: H.legacy_checkpoint(_memo_slot(2**31 - 1)), UnsafeCheckpoint, "memo slot"),
    "bytes_of_2_to_the_62": (lambda c: H.zip_checkpoint(Asm(4).raw(pickle.BINBYTES8 + struct.pack("<Q", 2**62) + b"abc").done()), BadInput, "pickle"),
    "extension_code": (lambda c: H.zip_checkpoint(Asm(2).raw(pickle.EXT1 + b"\x01").done()), NotACheckpoint, "damaged"),
    "build_on_ordereddict_class": (
        lambda c: H.zip_checkpoint(_data_pkl(lambda a: a.glob("collections", "OrderedDict").none().value({"__repr__": "x"}).tuple2().build())),
        NotACheckpoint,
        "damaged",
    ),
    "build_on_set_class": (
        lambda c: H.zip_checkpoint(_data_pkl(lambda a: a.glob("builtins", "set").none().value({"poison": 1}).tuple2().build())),
        NotACheckpoint,
        "damaged",
    ),
    "pickle_without_stop": (lambda c: H.zip_checkpoint(BENIGN_PKL[:-1]), NotACheckpoint, "damaged"),
    # layouts torch never writes
    "zip_without_data_pkl": (lambda c: _zip({"archive/version": b"3\n"}), NotACheckpoint, "data.pkl"),
    "zip_with_two_prefixes": (lambda c: _zip({"a/data.pkl": BENIGN_PKL, "b/data.pkl": BENIGN_PKL}), NotACheckpoint, "data.pkl"),
    # legacy headers
    "legacy_cut_in_the_header": (lambda c: H.legacy_checkpoint(BENIGN_PKL)[:20], NotACheckpoint, "damaged"),
    "legacy_cut_in_the_object": (lambda c: H.legacy_header() + BENIGN_PKL[:10], NotACheckpoint, "damaged"),
    "legacy_protocol_of_20000_bits": (lambda c: _legacy_raw(protocol=Asm(2).int(2**20_000).done()), NotACheckpoint, "legacy"),
    "legacy_sys_info_not_a_dict": (lambda c: _legacy_raw(sys_info=pickle.dumps([1, 2], protocol=2)), NotACheckpoint, "legacy"),
    # 3. broken inputs
    "empty_file": (lambda c: b"", NotACheckpoint, "empty"),
    "random_bytes": (lambda c: b"\x00" + random.Random(7).randbytes(4095), NotACheckpoint, "neither"),
    "png_image": (lambda c: b"\x89PNG\r\n\x1a\n" + bytes(64), NotACheckpoint, "PNG"),
    "text_file": (lambda c: b"hello, checkpoint\n", NotACheckpoint, "neither"),
    "zip_magic_then_junk": (lambda c: b"PK\x03\x04" + bytes(200), NotACheckpoint, "zip"),
    "legacy_magic_then_junk": (lambda c: bytes.fromhex("80028a0a6cfc9c46f9206aa85019") + b"\xff" * 50, NotACheckpoint, "damaged"),
    "torch_zip_cut_in_half": (lambda c: (b := c.torch_blob("zip"))[: len(b) // 2], NotACheckpoint, "zip"),
    "torch_zip_without_its_last_byte": (lambda c: c.torch_blob("zip")[:-1], NotACheckpoint, "zip"),
    "torch_legacy_cut_in_its_object": (lambda c: c.torch_blob("legacy")[: len(H.legacy_header()) + 40], NotACheckpoint, "damaged"),
    "torchscript_archive": (lambda c: c.torch_blob("torchscript"), NotACheckpoint, "TorchScript"),
}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _legacy_raw(*, protocol: bytes | None = None, sys_info: bytes | None = None) -> bytes:
    return (
        pickle.dumps(H.LEGACY_MAGIC_NUMBER, protocol=2)
        + (protocol or pickle.dumps(H.LEGACY_PROTOCOL_VERSION, protocol=2))
        + (sys_info or pickle.dumps(H.LEGACY_SYS_INFO, protocol=2))
        + BENIGN_PKL
    )


@pytest.fixture(scope="module")
def torch_blobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A real torch.save (zip and legacy) of ordinary state, and a TorchScript archive."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("torch")
    out = {}
    for name, legacy in (("zip", False), ("legacy", True)):
        path = folder / f"{name}.pth"
        torch.save(legit_state(), path, _use_new_zipfile_serialization=not legacy)
        out[name] = path.read_bytes()

    class Scripted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x).relu()

    path = folder / "scripted.pt"
    torch.jit.save(torch.jit.script(Scripted()), str(path))
    out["torchscript"] = path.read_bytes()
    return out


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("case", BROKEN)
def test_broken_or_hostile_file_is_rejected_cleanly(tmp_path: Path, canary: Path, request: pytest.FixtureRequest, case: str, surface: str) -> None:
    build, expected, fragment = BROKEN[case]
    path = tmp_path / f"{case}.pt"
    path.write_bytes(build(Ctx(tmp_path, canary, request)))
    message = reject(path, surface, expected)
    assert fragment in message
    assert not canary.exists()


def test_the_suite_builds_what_it_claims(tmp_path: Path) -> None:
    """The header patches and layouts really produce what the cases above are named for."""
    blob = H.zip_checkpoint(BENIGN_PKL, stamp=_stamp())
    patched = zipfile.ZipFile(io.BytesIO(H.patch_zip_flags(blob, "archive/data.pkl", set_bits=0x1)))
    assert patched.getinfo("archive/data.pkl").flag_bits & 0x1 and not patched.getinfo("archive/version").flag_bits & 0x1
    local = H.patch_zip_flags(blob, "archive/data.pkl", set_bits=0x1)
    assert struct.unpack_from("<H", local, 6)[0] & 0x1  # data.pkl's local header comes first
    plain = zipfile.ZipFile(io.BytesIO(blob))
    assert all(i.compress_type == zipfile.ZIP_STORED for i in plain.infolist())
    assert plain.read("archive/version") == b"3\n" and plain.read(H.STAMP_MEMBER) == _stamp()
    deflated = zipfile.ZipFile(io.BytesIO(H.zip_checkpoint(BENIGN_PKL, compress={"data.pkl": zipfile.ZIP_DEFLATED})))
    assert deflated.getinfo("archive/data.pkl").compress_type == zipfile.ZIP_DEFLATED
    huge = zipfile.ZipFile(io.BytesIO(BROKEN["stamp_over_8_MiB"][0](Ctx(tmp_path, tmp_path / "c", None))))  # type: ignore[arg-type]
    assert huge.getinfo(H.STAMP_MEMBER).file_size > 8 * MiB
    legacy = io.BytesIO(H.legacy_checkpoint(BENIGN_PKL))
    assert [pickle.load(legacy) for _ in range(4)] == [H.LEGACY_MAGIC_NUMBER, 1001, H.LEGACY_SYS_INFO, {"epoch": 3, "note": "xxxxxxxx"}]
    # the DAG really is 2**60 paths: a plain walk would never finish
    dag = pickle.loads(_data_pkl(lambda a: H.dag_list(a, 60), proto=4))
    node, depth = dag, 0
    while node:
        assert node[0] is node[1]
        node, depth = node[0], depth + 1
    assert depth == 60


@pytest.mark.parametrize("surface", SURFACES)
def test_missing_file(tmp_path: Path, surface: str) -> None:
    assert "no such file" in reject(tmp_path / "nope.pt", surface)


@pytest.mark.parametrize("surface", SURFACES)
def test_directory(tmp_path: Path, surface: str) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    message = reject(folder, surface)
    assert "directory" in message or "Is a directory" in message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
@pytest.mark.parametrize("surface", ["read_stamp", "inspect_checkpoint", "cli-check", "cli-inspect"])
def test_fifo_is_not_a_regular_file(tmp_path: Path, surface: str) -> None:
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    assert "not a regular file" in reject(fifo, surface)


# -- hostile but harmless: read, quickly, without printing the hostile parts ------------------


HARMLESS: dict[str, Callable[[Path], bytes]] = {
    # str() of these keys recurses, fails or takes 2**40 steps; the labels must not call it
    "key_is_a_frozenset_dag": lambda c: H.zip_checkpoint(_data_pkl(lambda a: (a.empty_dict(), H.dag_frozenset(a, 40), a.int(1).setitem()), 4)),
    "key_is_a_20000_bit_int": lambda c: H.zip_checkpoint(_data_pkl(lambda a: a.empty_dict().int(2**20_000).int(1).setitem())),
    "key_is_a_tuple_10k_deep": lambda c: H.zip_checkpoint(
        _data_pkl(lambda a: (a.empty_dict().mark().tuple(), [a.tuple1() for _ in range(10_000)], a.int(1).setitem()))
    ),
    # a legacy file's storage-key list after the object is never unpickled
    "legacy_hostile_after_the_object": lambda c: H.legacy_header() + BENIGN_PKL + H.payload("os_system", c),
    # somebody else's "envkit" key is not a stamp
    "someone_elses_envkit_key": lambda c: _envkit_key(lambda a: a.value({"schema": "theirs/1", "x": [1, 2]})),
}


@pytest.mark.parametrize("case", HARMLESS)
def test_hostile_but_harmless_file_reads_quickly(tmp_path: Path, canary: Path, case: str) -> None:
    path = tmp_path / f"{case}.pt"
    path.write_bytes(HARMLESS[case](canary))
    start = time.perf_counter()
    info = envkit.read_stamp(path)
    insp = envkit.inspect_checkpoint(path)
    json.dumps(insp.to_json())
    result = cli("inspect", path)
    assert time.perf_counter() - start < 5
    assert not info.stamped and info.format in ("zip", "legacy")
    assert all(len(label) <= 120 for label, _ in insp.top_level)
    assert result.exit_code == 0 and result.stderr == "", (result.output, result.exception)
    assert not canary.exists()


def test_stamped_file_with_hostile_pickle(tmp_path: Path, canary: Path) -> None:
    """check and diff read only the stamp member and never the pickle; inspect reads the
    pickle and refuses it."""
    from envkit.checkpoint.stamp import Stamp
    from envkit.fingerprint import collect

    stamp = Stamp(collect(), None, {"epoch": 1}).to_bytes()
    path = tmp_path / "stamped.pt"
    path.write_bytes(H.zip_checkpoint(H.payload("os_system", canary), stamp=stamp))
    info = envkit.read_stamp(path)
    assert info.stamped and info.stamp_source == "member"
    assert cli("check", path).exit_code == 0
    assert cli("diff", path, "live").exit_code == 0
    assert "global os.system;" in reject(path, "inspect_checkpoint", UnsafeCheckpoint)
    assert "global os.system;" in reject(path, "cli-inspect")
    assert not canary.exists()


BAD_FINGERPRINTS = {
    "unknown_schema": ({"schema": "envkit.fingerprint/99"}, "unknown fingerprint schema"),
    "package_not_a_list": ({"schema": "envkit.fingerprint/1", "packages": {"items": ["numpy"]}}, "malformed"),
    "section_not_an_object": ({"schema": "envkit.fingerprint/1", "torch": "2.0.1"}, "malformed"),
}


@pytest.mark.parametrize("case", BAD_FINGERPRINTS)
def test_malformed_fingerprint_inside_a_good_stamp(tmp_path: Path, case: str) -> None:
    """The fingerprint is parsed on first use, so read_stamp (what latest() and verify read)
    accepts the stamp, and everything that looks at the environment refuses it cleanly."""
    fingerprint, fragment = BAD_FINGERPRINTS[case]
    path = tmp_path / "bad-fingerprint.pt"
    path.write_bytes(H.zip_checkpoint(BENIGN_PKL, stamp=_stamp(fingerprint=fingerprint, meta={"step": 3})))
    stamp = envkit.read_stamp(path).stamp
    assert stamp is not None and stamp.step == 3
    with pytest.raises(MalformedStamp) as info:
        stamp.fingerprint  # noqa: B018
    assert str(path) in str(info.value) and fragment in str(info.value)
    for command in ("check", "inspect", "diff"):
        args = (command, path, "live") if command == "diff" else (command, path)
        assert fragment in assert_one_error_line(cli(*args), path)


def test_build_cannot_reach_the_readers_own_objects(tmp_path: Path) -> None:
    """BUILD sets attributes on whatever find_class returned. Nothing it returns may be
    shared between loads: a poisoned load must leave the next one as it would have been."""
    encode = safe_pickle._latin1_bytes
    legit = _data_pkl(lambda a: a.value({"b": None}).str("b").glob("_codecs", "encode").mark().str("\xff").str("latin1").tuple().reduce().setitem())
    assert restricted_loads(legit, source="x")[0] == {"b": b"\xff"}
    attacks = [
        # slot state on the callable _codecs.encode resolves to: its defaults, a new attribute
        lambda a: a.glob("_codecs", "encode").none().value({"__defaults__": ("utf-8",), "poison": 1}).tuple2().build(),
        # dict state on it
        lambda a: a.glob("_codecs", "encode").value({"poison": 1}).build(),
        # __new__ of an allowed stub replaced, then the stub used
        lambda a: a.glob("torch._utils", "_rebuild_tensor_v2").none().empty_dict().str("__new__").glob("_codecs", "encode").setitem().tuple2().build(),
        # the real classes the allowlist hands out
        lambda a: a.glob("collections", "OrderedDict").none().value({"fromkeys": 1}).tuple2().build(),
        lambda a: a.glob("builtins", "frozenset").none().value({"poison": 1}).tuple2().build(),
    ]
    for attack in attacks:
        try:
            restricted_loads(_data_pkl(attack), source="x")
        except BadInput:
            pass
        assert encode.__defaults__ == ("latin1",) and not encode.__dict__
        assert collections.OrderedDict.fromkeys("a") == {"a": None} and not hasattr(frozenset, "poison")
        assert restricted_loads(legit, source="x")[0] == {"b": b"\xff"}
        obj, unpickler = restricted_loads(_data_pkl(lambda a: a.call("torch._utils", "_rebuild_tensor_v2")), source="x")
        assert isinstance(obj, safe_pickle.Opaque) and obj.qualname == "torch._utils._rebuild_tensor_v2"


# -- the real command line, in a process of its own ---------------------------------------------


SUBPROCESS_CASES = [
    ("check", lambda c: H.hostile_file("os_system", "zip", "nested", c)),
    ("inspect", lambda c: H.hostile_file("memo_hidden_names", "legacy", "top", c)),
    ("diff", lambda c: H.hostile_file("subprocess_popen", "zip", "top", c)),
    ("check", lambda c: H.zip_checkpoint(BENIGN_PKL, stamp=b"{nope")),
    ("inspect", lambda c: H.zip_checkpoint(_memo_slot(2**31 - 1))),
    ("diff", lambda c: _envkit_key(lambda a: H.dag_list(a, 60))),
]


@pytest.mark.slow
@pytest.mark.parametrize("command,build", SUBPROCESS_CASES, ids=[f"{cmd}-{i}" for i, (cmd, _) in enumerate(SUBPROCESS_CASES)])
def test_real_process_exits_2_with_one_line(tmp_path: Path, canary: Path, command: str, build: Callable[[Path], bytes]) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(build(canary))
    args = [sys.executable, "-m", "envkit", command, str(path)] + (["live"] if command == "diff" else [])
    out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("envkit: error: ") and str(path) in lines[0]
    time.sleep(0.1)
    assert not canary.exists()


def test_real_process_missing_file(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "envkit", "check", str(tmp_path / "nope.pt")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("envkit: error: ") and len(out.stderr.splitlines()) == 1


# -- fuzzing: damage a real checkpoint anywhere; only BadInput may come out -----------------------


@pytest.mark.parametrize("kind", ["zip-bytes", "legacy-bytes", "data-pkl"])
def test_damaged_checkpoints_fail_only_with_bad_input(tmp_path: Path, torch_blobs: dict[str, bytes], kind: str) -> None:
    rng = random.Random(f"envkit-{kind}")
    base = torch_blobs["legacy" if kind == "legacy-bytes" else "zip"]
    if kind == "data-pkl":
        zf = zipfile.ZipFile(io.BytesIO(base))
        base = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    path = tmp_path / "fuzz.pt"
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(150):
        blob = bytearray(base)
        if rng.random() < 0.15:
            del blob[rng.randrange(len(blob)) :]
        else:
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(blob))
                roll = rng.random()
                if roll < 0.6:
                    blob[i] = rng.randrange(256)
                elif roll < 0.8:
                    del blob[i]
                else:
                    blob[i:i] = bytes([rng.randrange(256)])
        path.write_bytes(H.zip_checkpoint(bytes(blob)) if kind == "data-pkl" else bytes(blob))
        for surface in ("read_stamp", "inspect_checkpoint"):
            try:
                LIBRARY[surface](path)
                outcomes["read"] += 1
            except BadInput as exc:
                assert str(path) in str(exc)
                outcomes[type(exc).__name__] += 1
            except BaseException as exc:  # noqa: BLE001 - this is what the test looks for
                kept = tmp_path / f"crash-{sum(outcomes.values())}.pt"
                kept.write_bytes(path.read_bytes())
                pytest.fail(f"{surface} raised {type(exc).__name__}: {exc} (input kept at {kept})")
    assert outcomes["NotACheckpoint"] > 0, outcomes


# -- hashing a dict key or set item: CPython recurses with no limit and caches no tuple's hash ------


def _run_reader(path: Path, timeout: float) -> subprocess.CompletedProcess[str] | None:
    code = "import sys, envkit\ntry:\n    envkit.read_stamp(sys.argv[1])\nexcept envkit.BadInput:\n    sys.exit(2)\n"
    try:
        return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_dict_key_nested_half_a_million_deep_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "deep_key.pt"
    path.write_bytes(H.zip_checkpoint(_data_pkl(lambda a: (a.empty_dict().mark().tuple(), [a.tuple1() for _ in range(500_000)], a.int(1).setitem()), 4)))
    out = _run_reader(path, timeout=30)
    assert out is not None and out.returncode in (0, 2), out and out.returncode


def test_dict_key_tuple_dag_is_rejected_quickly(tmp_path: Path) -> None:
    path = tmp_path / "dag_key.pt"
    path.write_bytes(H.zip_checkpoint(_data_pkl(lambda a: (a.empty_dict(), H.dag_tuple(a, 60), a.int(1).setitem()), 4)))
    out = _run_reader(path, timeout=1.5)
    assert out is not None and out.returncode in (0, 2)


def _deep_tuple(a: Asm, depth: int) -> Asm:
    """((((),),),) nesting ``depth`` tuples."""
    a.mark().tuple()
    for _ in range(depth - 1):
        a.tuple1()
    return a


def _flat_tuple(a: Asm, n: int) -> Asm:
    a.mark()
    for i in range(n):
        a.int(i % 256)
    return a.tuple()


def _flat_key_hashed(times: int) -> Callable[[Asm], Any]:
    """{key: 1} set again ``times`` times from the memo: the key, 100,001 nodes, is hashed each time."""

    def build(a: Asm) -> None:
        _flat_tuple(a.empty_dict(), 100_000).put(0).int(0).setitem()
        for _ in range(times):
            a.get(0).int(1).setitem()

    return build


def _flat_item_in_set(times: int) -> Callable[[Asm], Any]:
    """set([key, key, ...]) by REDUCE, as protocol 2 pickles a set: the set's constructor hashes them."""

    def build(a: Asm) -> None:
        _flat_tuple(a.glob("builtins", "set").empty_list(), 100_000).put(0).append()
        for _ in range(times - 1):
            a.get(0).append()
        a.tuple1().reduce()

    return build


# every way the unpickler hashes what a pickle hands it: (protocol, build(a, push_key))
HASH_SITES: dict[str, tuple[int, Callable[[Asm, Callable[[Asm], Any]], Any]]] = {
    "setitem": (2, lambda a, key: (a.empty_dict(), key(a), a.int(1).setitem())),
    "setitems": (2, lambda a, key: (a.empty_dict().mark(), key(a), a.int(1).setitems())),
    "dict": (2, lambda a, key: (a.mark(), key(a), a.int(1).raw(pickle.DICT))),
    "additems": (4, lambda a, key: (a.raw(pickle.EMPTY_SET).mark(), key(a), a.raw(pickle.ADDITEMS))),
    "frozenset": (4, lambda a, key: (a.mark(), key(a), a.frozenset())),
    "reduce-set": (2, lambda a, key: (a.glob("builtins", "set").empty_list(), key(a), a.append().tuple1().reduce())),
    "reduce-frozenset": (2, lambda a, key: (a.glob("builtins", "frozenset").mark(), key(a), a.tuple().tuple1().reduce())),
    "reduce-ordereddict": (2, lambda a, key: (a.glob("collections", "OrderedDict").empty_list(), key(a), a.int(1).tuple2().append().tuple1().reduce())),
    "newobj-frozenset": (2, lambda a, key: (a.glob("builtins", "frozenset").empty_list(), key(a), a.append().tuple1().raw(pickle.NEWOBJ))),
    "stack-global-set": (4, lambda a, key: (a.short_str("builtins").short_str("set").stack_global().empty_list(), key(a), a.append().tuple1().reduce())),
}
HOSTILE_KEYS: dict[str, Callable[[Asm], Any]] = {
    "30000_deep": lambda a: _deep_tuple(a, 30_000),
    "dag_60": lambda a: H.dag_tuple(a, 60),
    "dag_24_in_a_tuple": lambda a: (a.mark().int(1), H.dag_tuple(a, 24), a.str("x").tuple()),
}


@pytest.mark.parametrize("key", HOSTILE_KEYS)
@pytest.mark.parametrize("site", HASH_SITES)
def test_hashing_a_hostile_key_is_refused_before_it_runs(tmp_path: Path, site: str, key: str) -> None:
    proto, build = HASH_SITES[site]
    blob = _data_pkl(lambda a: build(a, HOSTILE_KEYS[key]), proto)
    with pytest.raises(UnsafeCheckpoint, match="nests tuples more than 20,000 deep|steps to hash"):
        restricted_loads(blob, source="x.pt")
    path = tmp_path / "key.pt"
    path.write_bytes(H.zip_checkpoint(blob))
    message = reject(path, "cli-inspect")
    assert "nests tuples" in message or "steps to hash" in message


@pytest.mark.parametrize("build", [_flat_key_hashed(150), _flat_item_in_set(150)], ids=["setitem", "reduce-set"])
def test_a_key_hashed_again_and_again_is_refused(build: Callable[[Asm], Any]) -> None:
    """Each hash of a 100,001-node tuple is cheap; 150 of them (15 million steps) are over the budget."""
    with pytest.raises(UnsafeCheckpoint, match="steps to hash"):
        restricted_loads(_data_pkl(build), source="x.pt")


def test_deep_tuple_as_a_value_is_refused_too() -> None:
    with pytest.raises(UnsafeCheckpoint, match="nests tuples more than 20,000 deep"):
        restricted_loads(_data_pkl(lambda a: (a.empty_dict().str("k"), _deep_tuple(a, 20_001), a.setitem())), source="x.pt")


@pytest.mark.parametrize("site", HASH_SITES)
@pytest.mark.parametrize(
    "key",
    [
        lambda a: _deep_tuple(a, safe_pickle.MAX_TUPLE_DEPTH - 2),  # some sites wrap the key in two more
        lambda a: _flat_tuple(a, 100_000),
        lambda a: H.dag_tuple(a, 20),  # 2 million nodes: under the budget
        lambda a: (H.dag_frozenset(a, 40), _deep_tuple(a, 1000), a.tuple2()),  # a frozenset caches its hash
    ],
    ids=["19998_deep", "flat_100000", "dag_20", "frozenset_dag_and_deep"],
)
def test_large_but_bounded_keys_are_read(site: str, key: Callable[[Asm], Any]) -> None:
    proto, build = HASH_SITES[site]
    obj, _ = restricted_loads(_data_pkl(lambda a: build(a, key), proto), source="x.pt")
    assert type(obj) in (dict, set, frozenset, collections.OrderedDict) and len(obj) == 1


@pytest.mark.parametrize("build", [_flat_key_hashed(50), _flat_item_in_set(50)], ids=["setitem", "reduce-set"])
def test_a_key_hashed_fifty_times_is_read(build: Callable[[Asm], Any]) -> None:
    obj, _ = restricted_loads(_data_pkl(build), source="x.pt")
    assert len(obj) == 1 and len(next(iter(obj))) == 100_000


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_sets_frozensets_and_tuple_keys_of_a_real_pickle_read_as_they_were(protocol: int) -> None:
    value = {
        ("layer", 1): 2,
        "pairs": {(i, i + 1) for i in range(1000)},
        "frozen": frozenset({(5, (6, 7)), frozenset({(8,)})}),
        "order": collections.OrderedDict([((1, 2), 3), ("b", {(4, 5): 6})]),
        "flat": tuple(range(100_000)),
    }
    obj, _ = restricted_loads(pickle.dumps(value, protocol=protocol), source="x.pt")
    assert obj == value
    assert type(obj["pairs"]) is set and type(obj["frozen"]) is frozenset and type(obj["order"]) is collections.OrderedDict


def test_the_checked_constructors_are_this_loads_own() -> None:
    """A pickle that calls set() with arguments gets a set of its own load: BUILD onto it reaches no real
    class; NEWOBJ of it makes what set.__new__ makes, an empty set, as the real class would."""
    attack = _data_pkl(
        lambda a: (
            a.mark(),
            a.glob("builtins", "set").empty_list().int(1).append().tuple1().reduce(),
            a.glob("builtins", "set").empty_list().int(1).append().tuple1().raw(pickle.NEWOBJ),
            a.glob("builtins", "set").none().value({"poison": 1}).tuple2().build(),
            a.glob("collections", "OrderedDict").none().value({"fromkeys": 1}).tuple2().build(),
            a.tuple(),
        )
    )
    obj, _ = restricted_loads(attack, source="x.pt")
    assert obj[0] == {1} and type(obj[0]) is set and obj[1] == set() and type(obj[1]) is set
    assert not hasattr(set, "poison") and collections.OrderedDict.fromkeys("a") == {"a": None}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_diff_of_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    try:
        out = subprocess.run([sys.executable, "-m", "envkit", "diff", str(fifo), "live"], capture_output=True, text=True, timeout=1.5)
    except subprocess.TimeoutExpired:
        out = None
    assert out is not None and out.returncode == 2


# -- positive controls: the restrictions still read real checkpoints ------------------------------


def legit_state() -> dict[str, Any]:
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return {
        "model_state_dict": model.state_dict(),  # an OrderedDict of tensors
        "optimizer_state_dict": optimizer.state_dict(),
        "param": torch.nn.Parameter(torch.ones(2)),
        "tensors": {str(dt): torch.zeros(2, dtype=dt) for dt in (torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64, torch.uint8)},
        "view": torch.arange(6.0)[2:],
        "epoch": 7,
        "lr": 1e-3,
        "name": "run-ü",
        "blob": bytes(range(256)),
        "none": None,
        "flags": (True, False),
        "set": {1, 2},
        "frozen": frozenset({"a"}),
        "size": torch.Size([2, 3]),
        "dtype": torch.float32,
        "device": torch.device("cpu"),
        "torch_rng": torch.get_rng_state(),
        "np_rng": np.random.get_state(),
        "np_array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "np_scalar": np.float64(1.5),
        "envkit": {"note": "a key of the same name that is not a stamp"},
    }


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_real_checkpoint_reads(tmp_path: Path, torch_blobs: dict[str, bytes], fmt: str) -> None:
    path = tmp_path / f"real-{fmt}.pth"
    path.write_bytes(torch_blobs[fmt])
    info = envkit.read_stamp(path)
    assert info.format == fmt and not info.stamped and info.size == len(torch_blobs[fmt])
    insp = envkit.inspect_checkpoint(path)
    top = dict(insp.top_level)
    assert list(top) == list(legit_state())
    assert top["model_state_dict"] == "dict[7]" and top["epoch"] == "int" and top["blob"] == "bytes"
    assert top["param"] == "float32 [2] parameter" and top["torch_rng"] == "uint8 [5056]" and top["np_array"] == "reconstruct"
    assert len(insp.storages) >= 15 and insp.devices == ("cpu",)
    json.dumps(insp.to_json())
    for args in (["inspect", path], ["inspect", "--json", path], ["check", path], ["diff", path, "live"]):
        result = cli(*args)
        assert result.exit_code == 0 and result.stderr == "", (args, result.output, result.exception)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_sparse_and_quantized_checkpoints_read(tmp_path: Path, legacy: bool) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "special.pth"
    state = {
        "coo": torch.eye(3).to_sparse(),
        "csr": torch.eye(3).to_sparse_csr(),
        "q": torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8),
        "qc": torch.quantize_per_channel(torch.ones(2, 3), torch.tensor([0.1, 0.2]), torch.tensor([0, 0]), 0, torch.quint8),
        "layout": torch.sparse_coo,
        "meta": torch.empty(2, device="meta"),
    }
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    top = dict(envkit.inspect_checkpoint(path).top_level)
    assert top["coo"] == top["csr"] == "rebuild_sparse_tensor" and top["q"] == "qint8 [3]" and top["qc"] == "quint8 [2, 3]"
    assert top["meta"] == "float32 [2]"


def test_stamped_checkpoint_still_reads_after_all_of_the_above(stamped: Path) -> None:
    info = envkit.read_stamp(stamped)
    assert info.stamped and info.stamp_source == "member" and info.stamp.meta["epoch"] == 2
    result = cli("check", stamped)
    assert result.exit_code == 0 and result.stderr == ""
