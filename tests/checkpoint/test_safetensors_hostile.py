"""Hostile and broken safetensors headers, crafted byte by byte: each is a ``BadInput`` naming the
file and the problem (exit 2, one line, no traceback), read within what the file holds, and one
the real ``safetensors`` library refuses too (duplicate keys aside: it keeps the last one, envkit
refuses them). The controls at the end show the same checks accept what safetensors writes."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

import envkit
from envkit import errors
from envkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
U8 = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}


def sf(header: dict | bytes, data: bytes = b"\0" * 4, n: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if n is None else n) + raw + data


# name -> (file bytes, a fragment of the message that names the problem)
CASES: dict[str, tuple[bytes, str]] = {
    "n-over-the-cap": (struct.pack("<Q", 100_000_001) + b"{" + b" " * 200, "over the 100,000,000 byte limit"),
    "n-past-the-end": (sf({"x": U8}, n=5000), "the file has"),
    "n-tiny": (struct.pack("<Q", 1) + b"{" + b"\0" * 10, "the header claims 1 bytes"),
    "not-json": (sf(b'{"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]'), "not valid JSON"),
    "not-utf8": (sf(b'{"\xff\xfe": 1}'), "not UTF-8"),
    "nan": (sf(b'{"x": {"dtype": "U8", "shape": [NaN], "data_offsets": [0, 4]}}'), "NaN"),
    "huge-integer": (sf(b'{"x": {"dtype": "U8", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'), "digit"),
    "deep-nesting": (sf(b'{"x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"), "nested too deeply"),
    "entry-not-object": (sf({"x": [1, 2]}), "is not an object"),
    "no-dtype": (sf({"x": {"shape": [4], "data_offsets": [0, 4]}}), "has no dtype"),
    "no-shape": (sf({"x": {"dtype": "U8", "data_offsets": [0, 4]}}), "has no shape"),
    "no-offsets": (sf({"x": {"dtype": "U8", "shape": [4]}}), "has no data_offsets"),
    "unknown-dtype": (sf({"x": {**U8, "dtype": "Q7"}}), "unknown dtype 'Q7'"),
    "dtype-not-string": (sf({"x": {**U8, "dtype": 8}}), "unknown dtype 8"),
    "negative-dimension": (sf({"x": {**U8, "shape": [-4]}}), "not a list of non-negative integers"),
    "float-dimension": (sf({"x": {**U8, "shape": [4.0]}}), "not a list of non-negative integers"),
    "offsets-reversed": (sf({"x": {**U8, "data_offsets": [4, 0]}}), "0 <= begin <= end"),
    "offsets-three": (sf({"x": {**U8, "data_offsets": [0, 2, 4]}}), "0 <= begin <= end"),
    "offsets-out-of-range": (sf({"x": {**U8, "shape": [8], "data_offsets": [0, 8]}}), "past the 4 bytes of the data section"),
    "overlapping": (sf({"x": U8, "y": {**U8, "shape": [2], "data_offsets": [2, 4]}}), "overlaps the tensor before it"),
    "gap": (sf({"x": {**U8, "shape": [2], "data_offsets": [0, 2]}, "y": {**U8, "shape": [1], "data_offsets": [3, 4]}}),
            "leaves a gap of 1 bytes"),
    "not-covering-the-end": (sf({"x": {**U8, "shape": [2], "data_offsets": [0, 2]}}), "cover 2 bytes of a 4 byte data section"),
    "size-mismatch": (sf({"x": {**U8, "dtype": "F32"}}), "not the 4 bytes its offsets hold"),
    "hostile-shape": (sf({"x": {**U8, "shape": [2**62] * 10_000}}), "not the 4 bytes its offsets hold"),
    "metadata-not-object": (sf({"__metadata__": ["format", "pt"], "x": U8}), "not a string-to-string map"),
    "metadata-value-not-string": (sf({"__metadata__": {"format": "pt", "epoch": 3}, "x": U8}), "__metadata__['epoch'] is not a string"),
    "metadata-nested": (sf({"__metadata__": {"envkit": {"schema": "envkit.stamp/1"}}, "x": U8}), "is not a string"),
    "duplicate-tensor": (sf(b'{"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, '
                            b'"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}'), "the key 'x' appears twice"),
    "duplicate-field": (sf(b'{"x": {"dtype": "U8", "dtype": "I8", "shape": [4], "data_offsets": [0, 4]}}'), "'dtype' appears twice"),
}
SAFETENSORS_ACCEPTS = {"duplicate-tensor"}  # it keeps the last tensor of a name; envkit refuses
STAMPS = {  # a header safetensors reads, with a broken envkit stamp: MalformedStamp, exit 2
    "stamp-not-json": (sf({"__metadata__": {"format": "pt", "envkit": "{not json"}, "x": U8}), "not valid JSON"),
    "stamp-unknown-schema": (sf({"__metadata__": {"envkit": json.dumps({"schema": "envkit.stamp/9"})}, "x": U8}),
                             "unknown stamp schema"),
    "stamp-without-fingerprint": (sf({"__metadata__": {"envkit": json.dumps({"schema": "envkit.stamp/1", "payload": None})}, "x": U8}),
                                  "fingerprint is not a JSON object"),
}


@pytest.fixture(params=sorted(CASES))
def hostile(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, str]:
    data, fragment = CASES[request.param]
    path = tmp_path / f"{request.param}.safetensors"
    path.write_bytes(data)
    return request.param, path, fragment


def _safetensors_refuses(name: str, path: Path) -> None:
    """The file is one the real library refuses too (the duplicate tensor name aside: it keeps the last)."""
    safetensors = pytest.importorskip("safetensors")
    if name in SAFETENSORS_ACCEPTS:
        with safetensors.safe_open(str(path), "np") as f:
            assert list(f.keys()) == ["x"]
        return
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own SafetensorError
        with safetensors.safe_open(str(path), "np") as f:
            f.keys()


def test_each_hostile_header_is_a_malformed_safetensors_error_naming_the_file_and_the_problem(hostile: tuple[str, Path, str]) -> None:
    name, path, fragment = hostile
    _safetensors_refuses(name, path)
    with pytest.raises(errors.MalformedSafetensors) as caught:
        envkit.read_stamp(path)
    assert isinstance(caught.value, errors.BadInput) and caught.value.exit_code == 2
    message = caught.value.message
    assert message.startswith(f"{path}: not a usable safetensors file") and fragment in message, message
    assert "\n" not in message and len(message) < 600


def test_each_hostile_header_is_exit_2_one_line_for_check_inspect_and_diff(hostile: tuple[str, Path, str]) -> None:
    _, path, fragment = hostile
    for args in (["check", str(path)], ["inspect", str(path)], ["diff", str(path), "live"], ["check", "--json", str(path)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
        if "--json" in args:
            assert json.loads(result.stdout)["exit_code"] == 2 and fragment in json.loads(result.stdout)["error"]
        else:
            assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
            assert result.stderr.startswith(f"envkit: error: {path}: ") and fragment in result.stderr


def test_verify_says_corrupt_for_a_file_shaped_like_safetensors_and_never_raises(hostile: tuple[str, Path, str]) -> None:
    _, path, fragment = hostile
    result = envkit.verify(path)
    assert result.status == "corrupt" and fragment in (result.problem or ""), result
    assert CliRunner().invoke(main, ["verify", str(path)]).exit_code == 1


@pytest.mark.parametrize("name", sorted(STAMPS))
def test_a_broken_envkit_stamp_in_a_valid_header_is_a_malformed_stamp(name: str, tmp_path: Path) -> None:
    data, fragment = STAMPS[name]
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    with pytest.raises(errors.MalformedStamp) as caught:
        envkit.read_stamp(path)
    assert caught.value.message.startswith(str(path)) and fragment in caught.value.message
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


def test_someone_elses_envkit_entry_reads_as_unstamped(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(sf({"__metadata__": {"format": "pt", "envkit": "made by a tool called envkit"}, "x": U8}))
    info = envkit.read_stamp(path)
    assert info.format == "safetensors" and info.stamp is None
    assert envkit.verify(path).status == "unstamped"


def test_a_header_length_just_under_the_cap_in_a_small_file_is_refused_without_reading_or_allocating_it(tmp_path: Path) -> None:
    path = tmp_path / "claims-99999999.safetensors"
    path.write_bytes(struct.pack("<Q", 99_999_999) + b'{"x": 1}' + b" " * 1000)
    tracemalloc.start()
    try:
        with pytest.raises(errors.MalformedSafetensors, match="the header claims 99,999,999 bytes, the file has 1,008"):
            envkit.read_stamp(path)
        assert envkit.verify(path).status == "corrupt"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak  # nothing of the claimed 100 MB was allocated


@pytest.mark.parametrize("tensors", [1, 3000])  # a header inside the first 8 KiB buffer, and one of ~200 kB
def test_the_header_is_read_in_at_most_two_reads_of_the_file_and_the_data_never(tensors: int, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from envkit.checkpoint import reader

    header = {"__metadata__": {"format": "pt"}, **{f"layer.{i}.weight": {"dtype": "F32", "shape": [64], "data_offsets": [256 * i, 256 * (i + 1)]}
                                                   for i in range(tensors)}}
    path = tmp_path / "m.safetensors"
    path.write_bytes(sf(header, b"\0" * (256 * tensors)))
    n = int.from_bytes(path.read_bytes()[:8], "little")
    reads: list[int] = []

    class CountingRaw(io.FileIO):
        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
            got = super().readinto(buffer)
            reads.append(got or 0)
            return got  # type: ignore[return-value]

    monkeypatch.setattr(reader, "_open", lambda p: io.BufferedReader(CountingRaw(p, "r")))
    inspection = envkit.inspect_checkpoint(path)
    assert inspection.tensor_count == tensors and inspection.info.format == "safetensors"
    assert len(reads) <= 2 and sum(reads) <= max(8 + n, io.DEFAULT_BUFFER_SIZE), (reads, n)


def test_a_file_is_safetensors_by_its_bytes_not_its_name(tmp_path: Path) -> None:
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(sf({"__metadata__": {"format": "pt"}, "x": U8}))
    assert envkit.read_stamp(renamed).format == "safetensors"
    disguised = tmp_path / "not-really.safetensors"
    disguised.write_bytes(b"hello, this is text and not a checkpoint")
    with pytest.raises(errors.NotACheckpoint) as caught:
        envkit.read_stamp(disguised)
    assert not isinstance(caught.value, errors.MalformedSafetensors)


def test_positive_controls_what_safetensors_writes_is_read(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    tensors = {
        "f32": torch.randn(3, 5), "bf16": torch.ones(7, dtype=torch.bfloat16), "i64": torch.arange(4), "bool": torch.tensor([True]),
        "scalar": torch.tensor(2.5), "empty": torch.empty(0, 4), "empty2": torch.empty(3, 0, dtype=torch.int8),
        "ünï": torch.zeros(2, dtype=torch.float16),
    }
    path = tmp_path / "m.safetensors"
    st.save_file(tensors, str(path), metadata={"format": "pt", "note": "hi"})
    inspection = envkit.inspect_checkpoint(path)
    listed = {t.name: (t.dtype, t.shape) for t in inspection.tensors}
    assert listed == {k: (str(v.dtype).split(".")[1], tuple(v.shape)) for k, v in tensors.items()}
    assert inspection.extra["metadata"] == {"format": "pt", "note": "hi"}
    st.save_file({}, str(tmp_path / "none.safetensors"))
    assert envkit.inspect_checkpoint(tmp_path / "none.safetensors").tensor_count == 0


@pytest.mark.slow
def test_in_a_real_process_check_of_a_hostile_header_is_exit_2_one_line(tmp_path: Path) -> None:
    for name in ("n-over-the-cap", "overlapping"):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(CASES[name][0])
        done = subprocess.run([sys.executable, "-m", "envkit", "check", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 2 and done.stdout == "", done
        assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"envkit: error: {path}: not a usable safetensors file")
        assert CASES[name][1] in done.stderr and "Traceback" not in done.stderr
