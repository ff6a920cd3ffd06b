"""safetensors files end to end: ``envkit.save`` writes them stamped (``__metadata__["envkit"]``
beside ``format: pt``), atomically and in one pass; the real ``safetensors`` library loads them;
``load``, ``check``, ``inspect``, ``verify``, ``diff`` and ``ls`` read them, and files written by
``safetensors.torch.save_file`` itself (unstamped)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

import envkit
from envkit import errors
from envkit.cli import main

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")
from safetensors import safe_open  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.weight": torch.randn(8, 16, generator=g),
        "model.bias": torch.randn(8, generator=g).to(torch.bfloat16),
        "half": torch.randn(3, 3, generator=g).half(),
        "double": torch.randn(2, generator=g).double(),
        "steps": torch.arange(5),
        "ints": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "bytes": torch.arange(7, dtype=torch.uint8),
        "signed": torch.tensor([-1, 2], dtype=torch.int8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(1.5),
        "empty": torch.empty(0, 4),
    }


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    envkit.save(tensors(), path, meta={"epoch": 3, "step": 30, "metrics": {"loss": 0.5}}, metadata={"note": "hello"})
    return path


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain.safetensors"
    st.save_file(tensors(), str(path), metadata={"format": "pt"})
    return path


def test_save_writes_a_file_the_real_library_loads_with_format_pt_and_the_stamp(saved: Path) -> None:
    assert _equal(st.load_file(str(saved)), tensors())
    with safe_open(str(saved), "pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "pt" and metadata["note"] == "hello"
    stamp = json.loads(metadata["envkit"])
    assert stamp["schema"] == "envkit.stamp/1" and stamp["meta"]["step"] == 30
    info = envkit.read_stamp(saved)
    assert info.format == "safetensors" and info.stamp_source == "metadata"
    assert info.stamp is not None and info.stamp.step == 30 and info.stamp.metrics == {"loss": 0.5}
    assert info.stamp.fingerprint.digest == envkit.collect().digest
    raw = saved.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0 and info.stamp.payload is not None and info.stamp.payload.length == len(raw) - 8 - n


def test_the_returned_stamp_is_the_one_in_the_file_and_the_digest_covers_the_data_section(tmp_path: Path) -> None:
    import xxhash

    path = tmp_path / "m.safetensors"
    stamp = envkit.save(tensors(), path)
    assert envkit.read_stamp(path).stamp == stamp
    raw = path.read_bytes()
    data = raw[8 + int.from_bytes(raw[:8], "little"):]
    assert stamp.payload is not None and stamp.payload.digest == f"xxh3_128:{xxhash.xxh3_128(data).hexdigest()}"
    stamp256 = envkit.save(tensors(), tmp_path / "s.safetensors", digest="sha256")
    assert stamp256.payload is not None and stamp256.payload.digest.startswith("sha256:") and envkit.verify(tmp_path / "s.safetensors").ok


def test_format_safetensors_on_any_name_and_torch_on_a_safetensors_name(tmp_path: Path) -> None:
    envkit.save(tensors(), tmp_path / "weights.bin", format="safetensors")
    assert envkit.read_stamp(tmp_path / "weights.bin").format == "safetensors"
    assert _equal(st.load_file(str(tmp_path / "weights.bin")), tensors())
    envkit.save({"x": torch.ones(2)}, tmp_path / "odd.safetensors", format="torch")
    assert envkit.read_stamp(tmp_path / "odd.safetensors").format == "zip"
    with pytest.raises(errors.BadInput, match="unknown format 'onnx'"):
        envkit.save(tensors(), tmp_path / "m.onnx", format="onnx")
    with pytest.raises(errors.BadInput, match="metadata= is for safetensors"):
        envkit.save(tensors(), tmp_path / "m.pt", metadata={"a": "b"})


def test_load_guards_verifies_and_returns_the_tensors(saved: Path, plain: Path) -> None:
    assert _equal(envkit.load(saved), tensors())
    assert _equal(envkit.load(saved, map_location="cpu"), tensors())
    assert _equal(envkit.load(saved, map_location=torch.device("cpu")), tensors())
    with pytest.warns(envkit.EnvironmentDriftWarning, match="no envkit stamp"):
        assert _equal(envkit.load(plain), tensors())
    with pytest.raises(errors.BadInput, match="map_location for a safetensors file is a device"):
        envkit.load(saved, map_location=lambda storage, loc: storage)


def test_load_refuses_a_checkpoint_written_by_an_environment_the_policy_refuses(tmp_path: Path) -> None:
    from envkit.fingerprint.schema import TorchInfo

    newer = dataclasses.replace(envkit.collect(), torch=TorchInfo(version="2.99.0"))  # another minor, newer than this torch
    path = tmp_path / "newer.safetensors"
    envkit.save(tensors(), path, fingerprint=newer)
    assert envkit.read_stamp(path).format == "safetensors"
    with pytest.raises(envkit.EnvironmentMismatch):
        envkit.load(path)
    assert CliRunner().invoke(main, ["check", str(path)]).exit_code == 1


def test_an_unstamped_file_from_safetensors_is_unstamped_not_an_error(plain: Path) -> None:
    info = envkit.read_stamp(plain)
    assert info.format == "safetensors" and info.stamp is None
    assert envkit.verify(plain).status == "unstamped"
    report = envkit.check(plain)
    assert report.verdict in ("ok", "warn") and not report.info.stamped
    for args in (["check", str(plain)], ["verify", str(plain)], ["inspect", str(plain)], ["check", "--verify", str(plain)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)


def test_a_changed_data_byte_is_corrupt_for_verify_and_refused_by_load(saved: Path) -> None:
    raw = bytearray(saved.read_bytes())
    raw[-3] ^= 0x40  # inside the data section: the header, and so the stamp, still read
    saved.write_bytes(bytes(raw))
    result = envkit.verify(saved)
    assert result.status == "corrupt" and "payload digest mismatch" in (result.problem or "")
    with pytest.raises(envkit.CorruptCheckpoint, match="payload digest mismatch"):
        envkit.load(saved)
    assert CliRunner().invoke(main, ["verify", str(saved)]).exit_code == 1
    assert CliRunner().invoke(main, ["check", "--verify", str(saved)]).exit_code == 1
    assert CliRunner().invoke(main, ["check", str(saved)]).exit_code == 0  # check alone reads the header only


def test_a_changed_header_is_corrupt_though_the_data_is_not(saved: Path) -> None:
    """Two tensor names swapped (same length, same data): the payload digest alone would say ok."""
    raw = saved.read_bytes()
    swapped = raw.replace(b'"ints"', b'"XXXX"').replace(b'"mask"', b'"ints"').replace(b'"XXXX"', b'"mask"')
    assert swapped != raw and len(swapped) == len(raw)
    saved.write_bytes(swapped)
    assert envkit.read_stamp(saved).stamp is not None
    result = envkit.verify(saved)
    assert result.status == "corrupt" and "tensor table" in (result.problem or "")
    with pytest.raises(envkit.CorruptCheckpoint, match="tensor table"):
        envkit.load(saved)


def test_a_truncated_file_is_corrupt_for_verify_and_bad_input_for_check(saved: Path) -> None:
    saved.write_bytes(saved.read_bytes()[:-10])
    assert envkit.verify(saved).status == "corrupt"
    with pytest.raises(errors.MalformedSafetensors, match="data section"):
        envkit.read_stamp(saved)
    assert CliRunner().invoke(main, ["check", str(saved)]).exit_code == 2


def test_inspect_lists_names_dtypes_and_shapes_from_the_header(saved: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", "--json", str(saved)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    listed = {t["name"]: (t["dtype"], t["shape"]) for t in doc["tensors"]["listed"]}
    assert listed == {k: (str(v.dtype).split(".")[1], list(v.shape)) for k, v in tensors().items()}
    assert doc["format"] == "safetensors" and doc["stamped"] and doc["meta"]["step"] == 30
    assert doc["metadata"] == {"format": "pt", "note": "hello"}
    text = CliRunner().invoke(main, ["inspect", str(saved)]).stdout
    assert "model.weight" in text and "float32 [8, 16]" in text and "bfloat16 [8]" in text and "safetensors" in text


def test_ls_lists_safetensors_files_and_diff_takes_one_as_a_side(saved: Path, plain: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ls", "--json", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {Path(r["checkpoint"]).name: r for r in json.loads(result.stdout)["checkpoints"]}
    assert rows["model.safetensors"]["valid"] is True and rows["model.safetensors"]["step"] == 30
    assert rows["plain.safetensors"]["valid"] is False and "no envkit stamp" in rows["plain.safetensors"]["problem"]
    diff = CliRunner().invoke(main, ["diff", "--json", str(saved), "live"])
    assert diff.exit_code == 0 and json.loads(diff.stdout)["differences"] == []
    assert CliRunner().invoke(main, ["diff", str(plain), str(saved)]).exit_code in (0, 1)


def test_non_contiguous_tensors_are_saved_contiguous(tmp_path: Path) -> None:
    base, other = torch.arange(12.0).reshape(3, 4), torch.arange(20).reshape(4, 5)
    path = tmp_path / "t.safetensors"
    envkit.save({"t": base.t(), "col": other[:, 1]}, path)
    back = envkit.load(path)
    assert torch.equal(back["t"], base.t()) and torch.equal(back["col"], other[:, 1]) and back["t"].is_contiguous()
    assert _equal(st.load_file(str(path)), back)


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ([torch.ones(2)], "flat dict of name -> tensor, not list"),
        ({"a": {"b": torch.ones(2)}}, "a nested dict"),
        ({"a": 3}, "'a' is a int, not a tensor"),
        ({1: torch.ones(2)}, "the key 1 is not a string"),
        ({"__metadata__": torch.ones(2)}, "reserved by safetensors"),
        ({"s": torch.eye(3).to_sparse()}, "sparse tensor"),
    ],
)
def test_what_safetensors_cannot_hold_is_refused_before_anything_is_written(tmp_path: Path, obj: object, fragment: str) -> None:
    path = tmp_path / "m.safetensors"
    with pytest.raises(errors.BadInput, match=fragment):
        envkit.save(obj, path)
    assert os.listdir(tmp_path) == []


def test_tied_weights_are_refused_with_the_advice_safetensors_gives(tmp_path: Path) -> None:
    weight = torch.randn(4, 4)
    with pytest.raises(errors.BadInput, match="share memory.*save_model.*torch_shared_tensors"):
        envkit.save({"embed": weight, "head": weight}, tmp_path / "m.safetensors")
    with pytest.raises(RuntimeError, match="share memory"):  # what safetensors itself says
        st.save_file({"embed": weight, "head": weight}, str(tmp_path / "real.safetensors"))
    whole = torch.arange(8.0)
    envkit.save({"lo": whole[:4], "hi": whole[4:]}, tmp_path / "halves.safetensors")  # same storage, no overlap: allowed
    assert torch.equal(envkit.load(tmp_path / "halves.safetensors")["hi"], whole[4:])
    assert sorted(os.listdir(tmp_path)) == ["halves.safetensors"]


def test_a_refused_save_leaves_the_earlier_file_as_it_was(saved: Path) -> None:
    before = saved.read_bytes()
    with pytest.raises(errors.BadInput):
        envkit.save({"bad": "not a tensor"}, saved)
    assert saved.read_bytes() == before and sorted(os.listdir(saved.parent)) == ["model.safetensors"]
    with pytest.raises(errors.BadInput, match="metadata maps strings to strings"):
        envkit.save(tensors(), saved, metadata={"n": 3})  # type: ignore[dict-item]
    with pytest.raises(errors.BadInput, match="envkit's stamp"):
        envkit.save(tensors(), saved, metadata={"envkit": "mine"})
    assert saved.read_bytes() == before


@pytest.mark.slow
def test_check_of_a_safetensors_file_does_not_import_torch_or_safetensors(saved: Path) -> None:
    probe = "print('MODULES', *sorted(sys.modules), file=sys.stderr)"
    code = f"import sys\nfrom envkit.cli import main\nsys.argv = ['envkit', *sys.argv[1:]]\ntry:\n    main()\nfinally:\n    {probe}\n"
    for command in (["check", "--json"], ["inspect", "--json"], ["verify", "--json"]):
        done = subprocess.run([sys.executable, "-c", code, *command, str(saved)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)
        modules = set(done.stderr.split("MODULES", 1)[1].split())
        assert not {m for m in modules if m.split(".")[0] in ("torch", "numpy", "safetensors")}, command


@pytest.mark.slow
def test_in_a_real_process_check_and_verify_answer_with_their_exit_codes(saved: Path, plain: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)

    ok = run("check", str(saved))
    assert ok.returncode == 0 and "(safetensors," in ok.stdout and "ok: this environment may resume it" in ok.stdout
    assert run("verify", str(saved), str(plain)).returncode == 0
    raw = bytearray(saved.read_bytes())
    raw[-1] ^= 1
    saved.write_bytes(bytes(raw))
    corrupt = run("verify", str(saved))
    assert corrupt.returncode == 1 and corrupt.stdout.startswith("CORRUPT")


def test_the_first_safetensors_stamp_keeps_reading(data_dir: Path) -> None:
    """tests/data/stamp-v1.safetensors, written by envkit 0.1.0: every later envkit reads, verifies and loads it."""
    path = data_dir / "stamp-v1.safetensors"
    info = envkit.read_stamp(path)
    assert info.format == "safetensors" and info.stamp is not None and info.stamp.schema == "envkit.stamp/1"
    assert info.stamp.step == 7 and info.stamp.meta["header_digest"].startswith("xxh3_128:")
    assert envkit.verify(path).ok
    expected = {"model.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "model.bias": torch.arange(3).to(torch.bfloat16),
                "step": torch.tensor(7)}
    assert _equal(st.load_file(str(path)), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", envkit.EnvironmentDriftWarning)  # a later environment drifts from the fixture's
        assert _equal(envkit.load(path, policy="warn"), expected)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == "pt" and f.metadata()["note"] == "fixture"
