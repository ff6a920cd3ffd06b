from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from envkit.cli import main
from tests.fakes import make_reference_prefix

REFERENCE = Path(__file__).parents[1] / "examples" / "reference-torch20-cu118.fingerprint.json"


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str, path: Path | str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("envkit: error: ") and str(path) in lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def test_help_lists_commands() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for command in ("check", "diff", "inspect", "fingerprint", "verify"):
        assert command in out


def test_check_ok_human_and_json(stamped: Path) -> None:
    code, out, _ = run("check", stamped)
    assert code == 0 and "ok: this environment may resume it" in out
    code, out, _ = run("check", "--json", stamped)
    doc = json.loads(out)
    assert code == 0 and doc["verdict"] == "ok" and doc["stamped"] is True and doc["format"] == "zip"
    assert doc["stored"]["digest"] == doc["live"]["digest"]


def test_check_against_reference_refuses_with_exit_1(stamped: Path) -> None:
    code, out, _ = run("check", "--json", "--against", REFERENCE, stamped)
    doc = json.loads(out)
    assert code == 1 and doc["verdict"] == "refuse"
    rows = {d["field"]: d for d in doc["differences"]}
    assert rows["torch.version"]["severity"] == "refuse"
    assert rows["torch.version"]["live"] == "2.0.1" and rows["torch.cuda"]["live"] == "11.8"
    code, out, _ = run("check", "--against", REFERENCE, stamped)
    assert code == 1 and "REFUSE" in out and "refuse: this environment may not resume it" in out


def test_check_against_a_prefix(stamped: Path, tmp_path: Path) -> None:
    prefix = make_reference_prefix(tmp_path / "env")
    code, out, _ = run("check", "--json", "--prefix", prefix, stamped)
    assert code == 1 and json.loads(out)["live"]["torch"]["cudnn"] == "8.7.0"


def test_fail_on_warn(data_dir: Path) -> None:
    unstamped = data_dir / "gpu-h200-cuda_saved.pth"
    code, out, _ = run("check", "--json", unstamped)
    assert code == 0 and json.loads(out)["verdict"] == "warn" and json.loads(out)["stored"] is None
    code, _, _ = run("check", "--fail-on", "warn", unstamped)
    assert code == 1
    code, _, _ = run("check", "--policy", "strict", unstamped)
    assert code == 1


def test_check_bad_inputs_exit_2(tmp_path: Path, stamped: Path) -> None:
    code, _, err = run("check", tmp_path / "missing.pth")
    assert code == 2 and "no such file" in one_error_line(err, tmp_path / "missing.pth")
    bad = tmp_path / "fp.json"
    bad.write_text("[1, 2")
    code, _, err = run("check", "--against", bad, stamped)
    assert code == 2 and "not valid JSON" in one_error_line(err, bad)
    code, _, err = run("check", "--against", bad, "--prefix", tmp_path, stamped)
    assert code == 2 and "not both" in err
    code, _, err = run("check", "--policy", "lenient", stamped)
    assert code == 2 and "Traceback" not in err


def test_bad_config_is_exit_2(stamped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "envkit.toml").write_text("preset = [")
    monkeypatch.chdir(tmp_path)
    code, _, err = run("check", stamped)
    assert code == 2 and "invalid TOML" in one_error_line(err, "envkit.toml")


def test_diff_sides(stamped: Path, tmp_path: Path) -> None:
    code, out, _ = run("diff", "--json", stamped, "live")
    assert code == 0 and json.loads(out)["differences"] == []
    code, out, _ = run("diff", "--json", stamped, REFERENCE)
    doc = json.loads(out)
    fields = {d["field"] for d in doc["differences"]}
    assert {"torch.version", "torch.cuda", "torch.cudnn", "python.version"} <= fields
    # torch 2.0.1 may not resume what a newer torch wrote: diff grades as check does, and exits so
    assert code == 1 and doc["verdict"] == "refuse" and doc["policy"] == "compatible"
    code, out, _ = run("diff", REFERENCE, stamped)
    assert code == 0 and "torch.version" in out and out.rstrip().splitlines()[-1].startswith("warn: ")


def test_inspect_human_and_json(stamped: Path) -> None:
    code, out, _ = run("inspect", stamped)
    assert code == 0 and "stamped" in out and "epoch          2" in out
    doc = json.loads(run("inspect", "--json", stamped)[1])
    assert doc["meta"]["step"] == 20 and doc["storages"] == 2 and doc["prefix"] == "archive"


def test_fingerprint_outputs(tmp_path: Path) -> None:
    code, out, _ = run("fingerprint", "--json")
    assert code == 0 and json.loads(out)["schema"] == "envkit.fingerprint/1"
    target = tmp_path / "fp.json"
    code, out, _ = run("fingerprint", "-o", target)
    assert code == 0 and json.loads(target.read_text())["digest"] in out
    prefix = make_reference_prefix(tmp_path / "env")
    doc = json.loads(run("fingerprint", "--json", "--prefix", prefix)[1])
    assert doc["torch"]["version"] == "2.0.1" and doc["torch"]["cuda"] == "11.8"
    code, _, err = run("fingerprint", "-o", tmp_path / "no" / "fp.json")
    assert code == 2 and "does not exist" in err


def test_verify_exit_codes(stamped: Path, tmp_path: Path) -> None:
    code, out, _ = run("verify", stamped)
    assert code == 0 and out.startswith("ok")
    broken = tmp_path / "broken.pth"
    data = bytearray(stamped.read_bytes())
    data[100] ^= 0xFF
    broken.write_bytes(bytes(data))
    code, out, _ = run("verify", "--json", stamped, broken)
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    assert [c["ok"] for c in doc["checkpoints"]] == [True, False]


def test_real_process_check_does_not_import_torch(stamped: Path) -> None:
    code = (
        "import sys\nfrom envkit.cli import main\n"
        f"try:\n    main(['check', '--json', {str(stamped)!r}])\nexcept SystemExit as e:\n    rc = e.code\n"
        "print(rc, 'torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stderr.split() == ["0", "False"]
    assert json.loads(done.stdout)["verdict"] == "ok"


def test_real_process_bad_input_one_line_exit_2(tmp_path: Path) -> None:
    png = tmp_path / "cat.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    done = subprocess.run([sys.executable, "-m", "envkit", "check", str(png)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert "PNG" in one_error_line(done.stderr, png)
