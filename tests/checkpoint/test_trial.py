"""envkit trial and the stamp's storage digests (issue 14), with real torch and real interpreters.

The other environment here is this one's own interpreter (``--python sys.executable``), a real
second venv whose numpy is 1.25 (numpy 2 pickles name ``numpy._core``, which numpy 1.25 does
not have; 1.26 has a shim), and, in tests/test_trial_cross_version.py, torch 2.0.1.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import envkit  # noqa: E402
from envkit.checkpoint import trial_child  # noqa: E402
from envkit.checkpoint.reader import read_stamp, read_structure, walk_tensors  # noqa: E402
from envkit.checkpoint.stamp import StorageDigests  # noqa: E402
from envkit.checkpoint.trial import TensorRecord, compare  # noqa: E402
from envkit.checkpoint.ziptail import directory_records, end_of_directory  # noqa: E402
from envkit.errors import MalformedStamp  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OLD_NUMPY = "1.25.2"


def state() -> dict:
    torch.manual_seed(0)
    m = torch.nn.Linear(8, 4)
    return {"model": m.state_dict(), "step": 3, "views": [torch.arange(10.0)[2:7], torch.ones(2, 3).t()],
            7: torch.zeros(2, dtype=torch.int64), None: torch.tensor(1.5, dtype=torch.float16)}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "envkit", "trial", *args], capture_output=True, text=True, env=env, timeout=600)


def flip_byte_of(path: Path, member_suffix: str) -> None:
    """Change one byte of a storage's data in place (its CRC in the directory stays as saved)."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset)
        head = fh.read(30)
        n, m = struct.unpack("<2H", head[26:30])
        start = info.header_offset + 30 + n + m
        fh.seek(start)
        byte = fh.read(1)
        fh.seek(start)
        fh.write(bytes([byte[0] ^ 0xFF]))


# -- the stamp's storage digests (envkit.storages/1) ---------------------------------------


def test_save_records_storage_digests_that_pin_every_storage_crc(tmp_path: Path) -> None:
    path = tmp_path / "a.pth"
    stamp = envkit.save(state(), path)
    assert stamp.storages is not None and stamp.storages.format == "envkit.storages/1"
    assert read_stamp(path).stamp == stamp  # read back, storages included
    with open(path, "rb") as fh:
        cd_offset, _ = end_of_directory(fh, path.stat().st_size)  # type: ignore[misc]
        fh.seek(cd_offset)
        directory = fh.read(stamp.storages.length)
    members = directory_records(directory)
    assert members is not None and len(members) == stamp.storages.records
    with zipfile.ZipFile(path) as zf:
        data = [i for i in zf.infolist() if "/data/" in i.filename]
        assert len(data) == 6
        for info in data:
            assert members[info.filename] == (zlib.crc32(zf.read(info)), info.file_size)
    assert envkit.verify(path).ok


def test_old_stamp_fixture_still_loads_and_has_no_storage_digests(data_dir: Path) -> None:
    info = read_stamp(data_dir / "stamp-v1.pth")
    assert info.stamp is not None and info.stamp.schema == "envkit.stamp/1"
    assert info.stamp.storages is None and "storages" not in info.stamp.to_json()


def test_storage_digests_of_an_unknown_format_are_ignored_and_malformed_ones_refused() -> None:
    good = StorageDigests("xxh3_128:" + "0" * 32, 10, 2)
    assert StorageDigests.from_json(good.to_json(), source="f") == good
    assert StorageDigests.from_json({**good.to_json(), "format": "envkit.storages/9"}, source="f") is None
    for bad in ({**good.to_json(), "length": -1}, {**good.to_json(), "directory": "md5:00"}, {**good.to_json(), "records": True}, [1]):
        with pytest.raises(MalformedStamp):
            StorageDigests.from_json(bad, source="f")


def test_no_storage_digests_when_torch_is_told_not_to_compute_crcs(tmp_path: Path) -> None:
    if not hasattr(torch.serialization, "set_crc32_options"):
        pytest.skip("this torch always computes its records' CRC-32")
    torch.serialization.set_crc32_options(False)
    try:
        stamp = envkit.save({"w": torch.ones(3)}, tmp_path / "nocrc.pth")
    finally:
        torch.serialization.set_crc32_options(True)
    assert stamp.storages is None


# -- the child names and digests what it loads as envkit's reader does ---------------------


def test_child_names_every_tensor_as_the_reader_names_it_from_the_pickle(tmp_path: Path) -> None:
    path = tmp_path / "names.pth"
    obj = {**state(), "x" * 200: torch.ones(1), (1, 2): torch.ones(1), 2.5: [{"deep": torch.ones(1)}], True: torch.ones(1)}
    torch.save(obj, path)
    _, placeholders = read_structure(path)
    static = {name: (t.dtype, list(t.shape), list(t.stride), t.offset) for name, t in walk_tensors(placeholders)}
    loaded = torch.load(path, weights_only=True)
    found, complete = trial_child.walk_tensors(loaded, torch)
    child = {name: (str(t.dtype).replace("torch.", ""), list(t.shape), list(t.stride()), t.storage_offset()) for name, t in found}
    assert complete and child == static and len(static) == 10
    from envkit.checkpoint.safe_pickle import TensorPlaceholder

    static_leaves = {n: trial_child.leaf_value(v) for n, v in walk_tensors(placeholders, leaves=True) if not isinstance(v, TensorPlaceholder)}
    leaves: list = []
    trial_child.walk_tensors(loaded, torch, leaves)
    assert {n: trial_child.leaf_value(v) for n, v in leaves} == static_leaves == {"step": "3"}
    torch.save(torch.ones(2), tmp_path / "bare.pth")
    assert [n for n, _ in walk_tensors(read_structure(tmp_path / "bare.pth")[1])] == ["<object>"]
    assert [n for n, _ in trial_child.walk_tensors(torch.ones(2), torch)[0]] == ["<object>"]


def test_child_crc_of_a_storage_in_pieces_equals_zlib_crc_of_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(trial_child, "_CHUNK", 1000)  # so that small storages take the many-piece path
    with ThreadPoolExecutor(2) as pool:
        for n in (0, 1, 999, 2000, 2001, 4000, 10_007):
            t = torch.randint(0, 255, (n,), dtype=torch.uint8)
            crcs = trial_child.crc_of_storages([(0, t.untyped_storage())], pool)
            assert crcs[0] == zlib.crc32(bytes(t.tolist())), n


def test_compare_names_each_differing_field_and_missing_and_added_keys() -> None:
    a = TensorRecord("float32", (2, 3), (3, 1), 0, 24, "crc32:00000001")
    expected = {"w": a, "b": a, "gone": a, "known": TensorRecord(None, (2,), None, None, None, None)}
    got = {"w": a, "b": TensorRecord("float16", (3, 2), (1, 3), 0, 24, "crc32:00000002"), "new": a,
           "known": TensorRecord("int8", (2,), (1,), 5, 2, "crc32:00000009")}
    differing, missing, added = compare(expected, got)
    assert [(d.name, d.fields) for d in differing] == [("b", ("dtype", "shape", "stride", "bytes"))]
    assert missing == ["gone"] and added == ["new"]  # "known": only what the expectation knows is compared
    leaf = TensorRecord(leaf=True, text="3")
    expected = {"epoch": leaf, "lr": TensorRecord(leaf=True, text="0.1"), "obj": TensorRecord(leaf=True), "w": a, "dropped": leaf}
    got = {"epoch": TensorRecord(leaf=True, text="4"), "lr": leaf, "obj": TensorRecord(leaf=True, text="'x'"), "w": leaf}
    differing, missing, added = compare(expected, got)
    assert [(d.name, d.fields) for d in differing] == [("epoch", ("value",)), ("lr", ("value",)), ("w", ("kind",))]
    assert missing == ["dropped"] and added == []


# -- envkit trial, real processes -----------------------------------------------------------


@pytest.mark.slow
def test_trial_in_this_environment_stamped_tampered_and_unstamped(tmp_path: Path) -> None:
    """One child loads three files: the same values, a changed storage, and a plain torch.save."""
    good, tampered, plain = tmp_path / "good.pth", tmp_path / "tampered.pth", tmp_path / "plain.pth"
    envkit.save(state(), good)
    shutil.copy(good, tampered)
    flip_byte_of(tampered, "/data/0")
    torch.save(state(), plain)
    done = run(str(good), str(tampered), str(plain), "--python", sys.executable, "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["weights_only"] is True and report["environment"]["torch"] == str(torch.__version__)
    rows = {Path(r["checkpoint"]).name: r for r in report["checkpoints"]}
    assert rows["good.pth"]["ok"] and rows["good.pth"]["compared_with"] == "stamp" and rows["good.pth"]["tensors"] == 6
    assert rows["good.pth"]["other_keys"] == 1
    bad = rows["tampered.pth"]
    assert bad["loads"] is True and bad["same_values"] is False and bad["error"] is None  # differs, not a load failure
    assert [(d["key"], d["fields"]) for d in bad["differing"]] == [(_first_storage_tensor(good), ["bytes"])]
    assert rows["plain.pth"]["ok"] and rows["plain.pth"]["compared_with"] == "current environment"
    text = run(str(good), "--prefix", str(Path(sys.executable).parents[1]))
    assert text.returncode == 0 and "same values (6 tensors, 1 other key" in text.stdout


def _first_storage_tensor(path: Path) -> str:
    _, obj = read_structure(path)
    return next(name for name, t in walk_tensors(obj) if t.storage is not None and t.storage.key == "0")


@pytest.mark.slow
def test_a_hostile_checkpoint_is_refused_before_any_child_starts(tmp_path: Path) -> None:
    canary, marker = tmp_path / "pwned", tmp_path / "child-started"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {canary}",))

    stamped, plain = tmp_path / "stamped.pth", tmp_path / "plain.pth"
    envkit.save({"w": torch.ones(2), "x": Evil()}, stamped)  # a stamp member, and a hostile pickle under it
    torch.save({"x": Evil()}, plain)
    python = tmp_path / "python"  # a real interpreter wrapper that records being started
    python.write_text(f"#!/bin/sh\ntouch {marker}\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    for path in (stamped, plain):
        done = run(str(path), "--python", str(python))
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "refuses to unpickle global posix.system" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not marker.exists() and not canary.exists()
    assert run(str(tmp_path / "good.pth"), "--python", str(python)).returncode == 2  # no such file
    envkit.save({"w": torch.ones(2)}, tmp_path / "good.pth")
    assert run(str(tmp_path / "good.pth"), "--python", str(python)).returncode == 0 and marker.exists()  # the wrapper works


@pytest.mark.slow
def test_bad_interpreters_are_bad_input_and_the_child_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "a.pth"
    envkit.save({"w": torch.ones(2)}, path)
    for args, words in (
        (["--python", str(tmp_path / "nope")], "no such interpreter"),
        (["--prefix", str(tmp_path)], "no bin/python"),
        (["--python", str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")], "no usable torch"),
        ([], "--python PATH or --prefix DIR"),
    ):  # fmt: skip
        done = run(str(path), *args, "--json")
        assert done.returncode == 2 and words in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert json.loads(done.stdout)["exit_code"] == 2
    # a real address-space cap: 0.3 GB is too little to import torch, named as such (exit 2)
    capped = run(str(path), "--python", sys.executable, "--memory-limit", "0.3")
    assert capped.returncode == 2 and "no usable torch" in capped.stderr, capped.stderr
    # a real timeout: the child is killed, the checkpoint fails (exit 1)
    slow = run(str(path), "--python", sys.executable, "--timeout", "0.05", "--json")
    assert slow.returncode == 1, slow.stderr
    row = json.loads(slow.stdout)["checkpoints"][0]
    assert row["loads"] is False and row["error"].startswith("timed out after 0.05 s")


@pytest.fixture(scope="session")
def old_numpy_python() -> str:
    """A venv of this Python that sees this one's packages (torch) except numpy, which is 1.25
    (built once from pip as tests/distributed/test_consistency.py builds .venv-numpy-other)."""
    venv = ROOT / ".venv-numpy125"
    python, marker = venv / "bin" / "python", venv / ".envkit-ready"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        if subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], capture_output=True).returncode != 0:
            pytest.skip(f"cannot create a second venv with {base}")
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, f"numpy=={OLD_NUMPY}"],
                             capture_output=True, text=True)
        if got.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.skip(f"cannot install numpy {OLD_NUMPY} (no wheel reachable): {got.stderr.strip()[-200:]}")
        ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        Path(site, "zz-envkit-base.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
        marker.touch()
    return str(python)


@pytest.mark.slow
def test_a_numpy2_scalar_fails_in_numpy1_with_the_real_numpy_core_error(tmp_path: Path, old_numpy_python: str) -> None:
    np = pytest.importorskip("numpy")
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("this environment's numpy is not 2: its pickles do not name numpy._core")
    path = tmp_path / "np2.pth"
    envkit.save({"w": torch.ones(3), "best": np.float64(0.25)}, path)
    done = run(str(path), "--python", old_numpy_python, "--trust-pickles", "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["weights_only"] is False and report["environment"]["numpy"] == OLD_NUMPY
    row = report["checkpoints"][0]
    assert row["loads"] is False and "ModuleNotFoundError" in row["error"] and "numpy._core" in row["error"]
    assert "\n" not in row["error"]
    here = run(str(path), "--python", sys.executable, "--trust-pickles")
    assert here.returncode == 0 and "weights_only=False (--trust-pickles)" in here.stdout


def test_child_error_is_one_line_with_the_cause_of_a_weights_only_refusal() -> None:
    exc = RuntimeError("Weights only load failed. Advice...\n(1) blah\n WeightsUnpickler error: Unsupported global: GLOBAL x.y\n\nSee")
    assert trial_child._one_line(exc) == "RuntimeError: Unsupported global: GLOBAL x.y"
    assert trial_child._one_line(ModuleNotFoundError("No module named 'numpy._core'")) == "ModuleNotFoundError: No module named 'numpy._core'"
    assert "\n" not in trial_child._one_line(exc)


def test_read_structure_walks_the_pickle_of_a_stamped_file(tmp_path: Path) -> None:
    path = tmp_path / "a.pth"
    envkit.save(state(), path)
    info, obj = read_structure(path)
    keys = sorted(t.storage.key for _, t in walk_tensors(obj))
    assert info.stamped and keys == ["0", "1", "2", "3", "4", "5"]
    buf = io.BytesIO()
    torch.save({"w": torch.ones(1)}, buf, _use_new_zipfile_serialization=False)
    (tmp_path / "legacy.pth").write_bytes(buf.getvalue())
    assert [n for n, _ in walk_tensors(read_structure(tmp_path / "legacy.pth")[1])] == ["w"]
