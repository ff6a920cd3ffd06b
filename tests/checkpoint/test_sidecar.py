"""Checksum sidecars (ckpt.pth.md5 / .sha256, as md5sum and sha256sum write them) and `envkit stamp FILE`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

import envkit  # noqa: E402
from envkit.checkpoint.adopt import adopt  # noqa: E402
from envkit.cli import main as cli  # noqa: E402
from envkit.errors import MalformedSidecar  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::envkit.EnvironmentDriftWarning")  # unstamped files: the guard warns


def _plain(folder: Path, name: str = "ckpt.pth", *, legacy: bool = False) -> Path:
    """An unstamped checkpoint, as plain torch.save writes it."""
    torch.manual_seed(0)
    path = folder / name
    torch.save({"model": torch.nn.Linear(4, 3).state_dict(), "epoch": 5}, path, _use_new_zipfile_serialization=not legacy)
    return path


def _sum(path: Path, algorithm: str, *, binary: bool = False) -> Path:
    """The sidecar the coreutils tool writes (``md5sum ckpt.pth > ckpt.pth.md5``), run in the file's folder."""
    tool = shutil.which(f"{algorithm}sum")
    args = ["-b"] if binary else []
    if tool is not None:
        text = subprocess.run([tool, *args, path.name], cwd=path.parent, check=True, capture_output=True, text=True).stdout
    else:  # the same format, by hand, where coreutils is missing
        text = f"{hashlib.new(algorithm, path.read_bytes()).hexdigest()} {'*' if binary else ' '}{path.name}\n"
    sidecar = path.with_name(f"{path.name}.{algorithm}")
    sidecar.write_text(text)
    return sidecar


def _flip(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _tensor_offset(path: Path) -> int:
    """Where the first tensor's bytes start (a flip there leaves the archive readable: only a digest sees it)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        record = next(i for i in zf.infolist() if "/data/" in i.filename)
    with open(path, "rb") as fh:
        fh.seek(record.header_offset)
        head = fh.read(30)
    name_len, extra_len = struct.unpack_from("<HH", head, 26)
    return record.header_offset + 30 + name_len + extra_len + 4


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- verify and load ------------------------------------------------------------------------------

@pytest.mark.parametrize(("algorithm", "binary"), [("md5", False), ("sha256", False), ("md5", True)])
def test_verify_checks_the_sidecar(tmp_path: Path, algorithm: str, binary: bool) -> None:
    path = _plain(tmp_path)
    sidecar = _sum(path, algorithm, binary=binary)
    result = envkit.verify(path)
    assert result.status == "ok" and result.ok and result.sidecar is not None
    code, out, _ = _run("verify", str(path))
    assert code == 0 and out.strip().endswith(f"(sidecar {algorithm})")
    code, out, _ = _run("verify", "--json", str(path))
    doc = json.loads(out)["checkpoints"][0]
    assert code == 0 and doc["status"] == "ok" and doc["stamped"] is False
    assert doc["sidecar"] == [{"path": str(sidecar), "algorithm": algorithm,
                               "digest": f"{algorithm}:{hashlib.new(algorithm, path.read_bytes()).hexdigest()}"}]


def test_bare_digest_sidecar_and_a_legacy_file(tmp_path: Path) -> None:
    path = _plain(tmp_path, "old.pt", legacy=True)
    (tmp_path / "old.pt.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest().upper() + "\n")
    assert envkit.verify(path).status == "ok"
    _flip(path, path.stat().st_size - 3)
    assert envkit.verify(path).status == "corrupt"


def test_without_a_sidecar_the_file_stays_unstamped(tmp_path: Path) -> None:
    path = _plain(tmp_path)
    (tmp_path / "other.pth.md5").write_text("0" * 32 + "  other.pth\n")  # another file's sidecar
    assert envkit.verify(path).status == "unstamped"


@pytest.mark.parametrize("where", ["tensor", "comment"])  # a tensor's bytes, and the zip's end record
def test_a_sidecar_that_does_not_match_is_corrupt(tmp_path: Path, where: str) -> None:
    path = _plain(tmp_path)
    if where == "comment":  # the archive stays whole; only the sidecar can tell
        data = path.read_bytes()
        path.write_bytes(data[:-2] + b"\x01\x00x")  # the end record's comment length, and a one-byte comment
        sidecar = _sum(path, "md5")
        path.write_bytes(data[:-2] + b"\x01\x00y")
    else:
        sidecar = _sum(path, "md5")
        _flip(path, _tensor_offset(path))
    code, out, _ = _run("verify", str(path))
    assert code == 1 and out.startswith("CORRUPT") and str(sidecar) in out and "md5 mismatch" in out
    with pytest.raises(envkit.CorruptCheckpoint, match="sidecar"):
        envkit.load(path)


def test_load_checks_the_sidecar_and_loads(tmp_path: Path) -> None:
    path = _plain(tmp_path)
    _sum(path, "sha256")
    _sum(path, "md5")  # both: one pass, both checked
    state = envkit.load(path)
    assert state["epoch"] == 5 and state["model"]["weight"].shape == (3, 4)
    md5 = tmp_path / "ckpt.pth.md5"
    md5.write_text("0" * 32 + "  ckpt.pth\n")
    with pytest.raises(envkit.CorruptCheckpoint, match="ckpt.pth.md5"):
        envkit.load(path)


@pytest.mark.parametrize(
    "text",
    [
        "",                                   # empty
        "d41d8cd98f00b204e9800998ecf8427\n",  # 31 digits
        "zz" * 16 + "  ckpt.pth\n",           # not hex
        "d41d8cd98f00b204e9800998ecf8427e  other.pth\n",  # names another file only
        "d41d8cd98f00b204e9800998ecf8427e\tckpt.pth\n",   # not the separator md5sum writes
        "\udcff",                             # not text
    ],
)
def test_a_malformed_sidecar_is_bad_input_naming_it(tmp_path: Path, text: str) -> None:
    path = _plain(tmp_path)
    sidecar = tmp_path / "ckpt.pth.md5"
    sidecar.write_bytes(text.encode("utf-8", "surrogateescape"))
    code, out, err = _run("verify", str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("envkit: error: ") and str(sidecar) in err
    with pytest.raises(MalformedSidecar, match="ckpt.pth.md5"):
        envkit.load(path)
    before = path.read_bytes()
    code, _, err = _run("stamp", str(path))
    assert code == 2 and str(sidecar) in err and path.read_bytes() == before


# -- envkit stamp FILE ----------------------------------------------------------------------------

def test_stamp_adopts_a_plain_checkpoint(tmp_path: Path) -> None:
    path = _plain(tmp_path)
    sidecar = _sum(path, "md5")
    old = path.read_bytes()
    before = torch.load(path, weights_only=True)
    code, out, _ = _run("stamp", str(path))
    assert code == 0 and "adopted" in out and "unknown" in out and "ckpt.pth.md5" in out
    info = envkit.read_stamp(path)
    assert info.stamp is not None and info.stamp_source == "member"
    assert info.stamp.meta["adopted"] is True and info.stamp.meta["adopted_at"]
    assert info.stamp.meta["adopted_sidecars"] == ["ckpt.pth.md5"]
    assert info.stamp.fingerprint.digest == envkit.collect().digest
    import io
    import zipfile

    start_dir = zipfile.ZipFile(io.BytesIO(old)).start_dir
    assert info.stamp.payload is not None and info.stamp.payload.length == start_dir
    assert path.read_bytes()[:start_dir] == old[:start_dir]  # torch's bytes stay as they were, the stamp follows
    result = envkit.verify(path)
    assert result.status == "ok" and result.sidecar is None  # by its stamp now
    after = envkit.load(path)
    assert torch.equal(after["model"]["weight"], before["model"]["weight"]) and after["epoch"] == 5
    # the sidecar now describes the stamped bytes, in the form md5sum wrote it
    assert sidecar.read_text() == f"{hashlib.md5(path.read_bytes()).hexdigest()}  ckpt.pth\n"
    if shutil.which("md5sum"):
        subprocess.run(["md5sum", "--check", "--quiet", sidecar.name], cwd=tmp_path, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "ckpt.pth.md5"]  # no temporary file left


def test_stamp_without_a_sidecar_and_twice(tmp_path: Path) -> None:
    path = _plain(tmp_path)
    code, out, _ = _run("stamp", "--json", str(path))
    doc = json.loads(out)
    assert code == 0 and doc["adopted"] is True and doc["sidecar"] is None and doc["meta"]["adopted"] is True
    stamped = path.read_bytes()
    code, out, _ = _run("stamp", "--json", str(path))
    assert code == 0 and json.loads(out)["already_stamped"] is True and path.read_bytes() == stamped
    assert adopt(path).already_stamped


def test_stamp_refuses_when_the_sidecar_does_not_match(tmp_path: Path) -> None:
    path = _plain(tmp_path)
    sidecar = _sum(path, "sha256")
    _flip(path, _tensor_offset(path))
    damaged, recorded = path.read_bytes(), sidecar.read_text()
    code, _, err = _run("stamp", str(path))
    assert code == 1 and err.count("\n") == 1 and str(sidecar) in err and "left the file as it was" in err
    assert path.read_bytes() == damaged and sidecar.read_text() == recorded
    assert envkit.read_stamp(path).stamp is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "ckpt.pth.sha256"]


def test_stamp_replaces_the_file_and_never_writes_the_old_bytes(tmp_path: Path) -> None:
    """The stamped copy is renamed over the name: another link to the old file keeps the old bytes whole."""
    path = _plain(tmp_path)
    old = path.read_bytes()
    os.link(path, tmp_path / "hardlink.pth")
    adopt(path)
    assert (tmp_path / "hardlink.pth").read_bytes() == old
    assert envkit.read_stamp(path).stamp is not None and path.stat().st_ino != (tmp_path / "hardlink.pth").stat().st_ino


@pytest.mark.parametrize("what", ["legacy", "not-a-checkpoint", "folder"])
def test_stamp_refuses_what_it_cannot_adopt(tmp_path: Path, what: str) -> None:
    if what == "legacy":
        path = _plain(tmp_path, legacy=True)
        advice = "weights_only=True"
    elif what == "not-a-checkpoint":
        path = tmp_path / "notes.pth"
        path.write_text("hello")
        advice = "notes.pth"
    else:
        path = tmp_path / "run"
        path.mkdir()
        advice = "folder"
    before = path.read_bytes() if path.is_file() else None
    code, _, err = _run("stamp", str(path))
    assert code == 2 and err.count("\n") == 1 and advice in err
    assert (path.read_bytes() if path.is_file() else None) == before


@pytest.mark.slow
def test_stamp_and_verify_in_a_real_process(tmp_path: Path) -> None:
    path = _plain(tmp_path)
    _sum(path, "md5")
    env = {**os.environ, "PYTHONPATH": str(Path(envkit.__file__).parent.parent)}
    run = [sys.executable, "-m", "envkit"]
    verified = subprocess.run([*run, "verify", str(path)], capture_output=True, text=True, env=env)
    assert verified.returncode == 0 and "(sidecar md5)" in verified.stdout
    stamped = subprocess.run([*run, "stamp", str(path)], capture_output=True, text=True, env=env)
    assert stamped.returncode == 0 and "adopted" in stamped.stdout
    again = subprocess.run([*run, "verify", str(path)], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "xxh3_128:" in again.stdout


def test_the_first_adopted_checkpoint_still_reads(data_dir: Path) -> None:
    """tests/data/adopted-v1.pth: what `envkit stamp` of envkit 0.1.0 wrote (fixture of the adopted meta)."""
    path = data_dir / "adopted-v1.pth"
    info = envkit.read_stamp(path)
    assert info.stamp is not None and info.stamp.schema == "envkit.stamp/1" and info.stamp_source == "member"
    meta = info.stamp.meta
    assert meta["adopted"] is True and meta["adopted_sidecars"] == ["adopted-v1.pth.md5"]
    assert meta["adopted_at"] >= meta["saved_at"]  # saved_at: the file's mtime, before it was adopted
    assert envkit.verify(path).ok
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and state["model"]["weight"].shape == (2, 2)
