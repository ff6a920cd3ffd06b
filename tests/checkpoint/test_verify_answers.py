"""verify's four answers (ok, unstamped, corrupt, unreadable), their exit codes, `check --verify`,
and the progress line on a terminal (issue 10, item 7)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import envkit
from envkit.cli import main as cli

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


def flipped(source: Path, target: Path, offset: int = 100) -> Path:
    data = bytearray(source.read_bytes())
    data[offset] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


@pytest.fixture
def kinds(stamped: Path, tmp_path: Path, data_dir: Path) -> dict[str, Path]:
    """One file of every kind verify must tell apart."""
    torch.save({"w": torch.ones(3)}, tmp_path / "plain.pth")
    torch.save({"w": torch.ones(3)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(stamped.read_bytes()[:-40])
    (tmp_path / "folder").mkdir()
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (tmp_path / "empty.pth").write_bytes(b"")
    return {
        "ok": stamped,
        "plain": tmp_path / "plain.pth",
        "legacy": tmp_path / "legacy.pth",
        "fixture": data_dir / "gpu-h200-cuda_saved.pth",
        "flipped": flipped(stamped, tmp_path / "flipped.pth"),
        "truncated": truncated,
        "missing": tmp_path / "missing.pth",
        "folder": tmp_path / "folder",
        "png": tmp_path / "cat.png",
        "empty": tmp_path / "empty.pth",
    }


EXPECTED = {
    "ok": "ok",
    "plain": "unstamped",
    "legacy": "unstamped",
    "fixture": "unstamped",
    "flipped": "corrupt",
    "truncated": "corrupt",
    "missing": "unreadable",
    "folder": "unreadable",
    "png": "unreadable",
    "empty": "unreadable",
}


def test_each_kind_of_file_gets_its_own_answer(kinds: dict[str, Path]) -> None:
    got = {name: envkit.verify(path).status for name, path in kinds.items()}
    assert got == EXPECTED
    for name, path in kinds.items():
        result = envkit.verify(path)
        assert result.to_json()["status"] == EXPECTED[name]
        assert result.ok == (EXPECTED[name] == "ok")
        if EXPECTED[name] != "ok":
            assert str(path) in result.problem


@pytest.mark.filterwarnings("ignore::envkit.EphemeralDirectoryWarning")
def test_a_stamp_without_a_digest_is_unstamped(tmp_path: Path) -> None:
    """A dict saved by envkit and re-saved with plain torch.save keeps only the `envkit` key."""
    with envkit.CheckpointManager(tmp_path / "run", project="p") as mgr:
        saved = mgr.save(epoch=0, step=1, model=torch.nn.Linear(2, 2))
    state = torch.load(saved, weights_only=True)
    torch.save(state, tmp_path / "resaved.pth")
    result = envkit.verify(tmp_path / "resaved.pth")
    assert result.status == "unstamped" and result.info.stamped and "no payload digest" in result.problem
    assert envkit.load(tmp_path / "resaved.pth")["step"] == 1  # not corrupt: load does not refuse it
    with pytest.raises(envkit.CorruptCheckpoint, match="payload digest mismatch"):
        envkit.load(flipped(saved, tmp_path / "flipped.pth"))


def verify_cli(*paths: Path, as_json: bool = False) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "envkit", "verify", *(["--json"] if as_json else []), *map(str, paths)]
    return subprocess.run(args, check=False, capture_output=True, text=True, cwd=ROOT)


def test_verify_command_exit_codes(kinds: dict[str, Path]) -> None:
    done = verify_cli(kinds["ok"], kinds["plain"], kinds["legacy"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok ") and len(lines) == 3
    assert lines[1] == f"unstamped  {kinds['plain']}: unstamped (nothing to verify against; stamp it by saving with envkit.save)"
    done = verify_cli(kinds["ok"], kinds["flipped"], kinds["truncated"], kinds["plain"])
    assert done.returncode == 1 and done.stderr == ""
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["ok", "CORRUPT", "CORRUPT", "unstamped"]
    # any unreadable input is bad input: exit 2, one error line each on stderr, naming the file
    done = verify_cli(kinds["flipped"], kinds["missing"], kinds["png"], kinds["ok"])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("envkit: error: ") for e in errors)
    assert str(kinds["missing"]) in errors[0] and str(kinds["png"]) in errors[1]
    assert "CORRUPT" in done.stdout and str(kinds["flipped"]) in done.stdout


def test_verify_json_carries_the_status(kinds: dict[str, Path]) -> None:
    done = verify_cli(*kinds.values(), as_json=True)
    doc = json.loads(done.stdout)
    assert done.returncode == 2 and doc["exit_code"] == 2 and doc["ok"] is False
    assert [c["status"] for c in doc["checkpoints"]] == list(EXPECTED.values())
    done = verify_cli(kinds["ok"], kinds["plain"], as_json=True)
    doc = json.loads(done.stdout)
    assert done.returncode == 0 and doc["ok"] is True and [c["status"] for c in doc["checkpoints"]] == ["ok", "unstamped"]


@pytest.mark.parametrize(
    "name, code, line",
    [
        ("ok", 0, "verified: the payload matches its stamp"),
        ("flipped", 1, "CORRUPT: {path}: payload digest mismatch"),
        ("plain", 0, "verify: unstamped, nothing to verify against"),
    ],
)
def test_check_verify_rehashes_the_payload(kinds: dict[str, Path], name: str, code: int,
                                           line: str) -> None:
    path = kinds[name]
    plain = CliRunner().invoke(cli, ["check", str(path)])
    assert plain.exit_code == 0  # the stamp alone says nothing of the payload
    result = CliRunner().invoke(cli, ["check", "--verify", str(path)])
    assert result.exit_code == code and result.stdout.splitlines()[-1].startswith(line.format(path=path)), result.stdout
    doc = json.loads(CliRunner().invoke(cli, ["check", "--verify", "--json", str(path)]).stdout)
    assert doc["verify"]["status"] == {"ok": "ok", "flipped": "corrupt", "plain": "unstamped"}[name]
    console = subprocess.run([sys.executable, "-m", "envkit", "check", "--verify", str(path)], capture_output=True, text=True, cwd=ROOT,
                             timeout=120)  # the console script answers the same
    assert console.returncode == code
    assert console.stdout.rstrip("\n") == result.stdout.rstrip("\n")


def test_check_verify_through_the_console_script(kinds: dict[str, Path]) -> None:
    done = subprocess.run([sys.executable, "-c", "import sys; from envkit.cli import main; sys.argv = ['envkit', *sys.argv[1:]]; main()",
                           "check", "--verify", str(kinds["flipped"])], check=False, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and f"CORRUPT: {kinds['flipped']}" in done.stdout and "Traceback" not in done.stderr


# -- progress on a terminal --------------------------------------------------------------------


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stamped checkpoint just over the 100 MB progress threshold (zeros: cheap to write)."""
    path = tmp_path_factory.mktemp("large") / "big.pth"
    envkit.save({"w": torch.zeros(27_600_000)}, path)  # 110.4 MB of float32
    assert path.stat().st_size > 100 * 1000 * 1000
    return path


def run_with_stderr_on_a_terminal(args: list[str]) -> tuple[int, bytes, bytes]:
    """Run `python -m envkit ARGS` with stderr on a real pseudo-terminal; return (rc, stdout, terminal bytes)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "envkit", *args], stdout=subprocess.PIPE, stderr=slave, cwd=ROOT)
        os.close(slave)
        seen = bytearray()
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        out = proc.stdout.read() if proc.stdout else b""
        return proc.wait(), out, bytes(seen)
    finally:
        os.close(master)


@pytest.mark.slow
@pytest.mark.parametrize("command", [["verify"], ["check", "--verify"]])
def test_progress_on_a_terminal_for_a_large_file(large: Path, command: list[str]) -> None:
    rc, out, terminal = run_with_stderr_on_a_terminal([*command, str(large)])
    assert rc == 0, terminal
    assert b"\rverifying big.pth: 0% of 110.4 MB" in terminal and b"\rverifying big.pth: 100% of 110.4 MB" in terminal
    assert terminal.endswith(b"\r") and b"\n" not in terminal.strip()  # the line is erased, not left behind
    assert b"verifying" not in out


@pytest.mark.parametrize("command", [["verify"], ["check", "--verify"]])
def test_no_progress_without_a_terminal_or_with_json(large: Path, stamped: Path, command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "envkit", *command, str(large)], check=False, capture_output=True, cwd=ROOT)
    assert done.returncode == 0 and done.stderr == b"" and b"verifying" not in done.stdout
    rc, out, terminal = run_with_stderr_on_a_terminal([*command, "--json", str(large)])
    assert rc == 0 and terminal == b"" and json.loads(out)
    rc, _, terminal = run_with_stderr_on_a_terminal([*command, str(stamped)])  # small: no progress
    assert rc == 0 and terminal == b""


# -- sharded folders -----------------------------------------------------------------------------


def make_sharded_folder(folder: Path, *, with_payload: bool = True) -> Path:
    """A committed sharded checkpoint folder, laid out as envkit writes one (without torch.distributed)."""
    from envkit.checkpoint.dcp_format import STAMP_NAME, file_digest, manifest_digest
    from envkit.checkpoint.stamp import Payload, Stamp
    from envkit.fingerprint import collect

    folder.mkdir()
    (folder / "__0_0.distcp").write_bytes(os.urandom(4096))
    torch.save({"rank": 0}, folder / "rank0.pt")
    files = {n: {"size": (folder / n).stat().st_size, "digest": file_digest(folder / n, "xxh3_128")} for n in sorted(os.listdir(folder))}
    payload = Payload(manifest_digest(files, "xxh3_128"), sum(r["size"] for r in files.values())) if with_payload else None
    doc = {**Stamp(collect(), payload, {"epoch": 0, "step": 1, "format": "dcp"}).to_json(), "files": files}
    (folder / STAMP_NAME).write_text(json.dumps(doc))
    return folder


def test_sharded_folders_get_the_four_answers(tmp_path: Path) -> None:
    good = make_sharded_folder(tmp_path / "good.dcp")
    assert envkit.verify(good).status == "ok"
    unstamped = make_sharded_folder(tmp_path / "nodigest.dcp", with_payload=False)
    assert envkit.verify(unstamped).status == "unstamped"
    bad = make_sharded_folder(tmp_path / "bad.dcp")
    flipped(bad / "__0_0.distcp", bad / "__0_0.distcp", 10)
    result = envkit.verify(bad)
    assert result.status == "corrupt" and "__0_0.distcp digest mismatch" in result.problem
    (bad / "envkit.json").unlink()
    assert envkit.verify(bad).status == "unreadable"  # an interrupted save: not a checkpoint
    done = verify_cli(good, unstamped, bad)
    assert done.returncode == 2 and done.stdout.splitlines()[0].startswith("ok ") and str(bad) in done.stderr


@pytest.mark.parametrize("command", ["verify", "check --verify"])
def test_verifying_does_not_import_torch(kinds: dict[str, Path], command: str) -> None:
    code = (
        "import sys\nfrom envkit.cli import main\n"
        f"try:\n    main([*{command.split()!r}, {str(kinds['flipped'])!r}])\nexcept SystemExit as e:\n    rc = e.code\n"
        "print(rc, 'torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT)
    assert done.stderr.split() == ["1", "False"], done.stderr
