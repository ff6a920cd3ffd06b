"""envkit.entry: `envkit check` without click, and the same answers as the click command line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from envkit.cli import main as click_main
from envkit.entry import parse_check, run_check
from envkit.fingerprint import collect
from envkit.fingerprint.schema import TorchInfo

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "examples" / "reference-torch20-cu118.fingerprint.json"


@pytest.fixture
def files(stamped: Path, tmp_path: Path, data_dir: Path) -> dict[str, str]:
    (tmp_path / "prefix").mkdir()
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    # this environment with an older torch: refuses whichever torch runs the tests
    older = dataclasses.replace(collect(), torch=TorchInfo(version="1.13.1"))
    (tmp_path / "older-torch.json").write_text(json.dumps(older.to_json()))
    corrupt = bytearray(stamped.read_bytes())
    corrupt[100] ^= 0xFF  # inside the payload: the stamp still reads, the digest does not match
    (tmp_path / "corrupt.pth").write_bytes(bytes(corrupt))
    (tmp_path / "not-a-fingerprint.json").write_text('{"a": 1}')
    venv = tmp_path / "venv-no-torch"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    os.mkfifo(tmp_path / "fifo")
    return {
        "long": str(tmp_path / ("x" * 300)),
        "not-fp": str(tmp_path / "not-a-fingerprint.json"),
        "venv": str(venv),
        "fifo": str(tmp_path / "fifo"),
        "ck": str(stamped),
        "old": str(data_dir / "stamp-v1.pth"),
        "ref": str(REFERENCE),
        "older": str(tmp_path / "older-torch.json"),
        "prefix": str(tmp_path / "prefix"),
        "missing": str(tmp_path / "missing.pth"),
        "garbage": str(tmp_path / "garbage.pth"),
        "corrupt": str(tmp_path / "corrupt.pth"),
    }


FAST = {
    "plain": ["{ck}"],
    "json": ["--json", "{ck}"],
    "strict": ["{ck}", "--policy", "strict"],
    "equals-forms": ["--policy=warn", "{ck}", "--json"],
    "against-refuses": ["--against", "{older}", "{ck}"],
    "against-reference": ["--against", "{ref}", "{ck}"],
    "against-json-fail-on-warn": ["--against={ref}", "--fail-on", "warn", "--json", "{ck}"],
    "prefix": ["--prefix", "{prefix}", "{ck}"],
    "fail-on-warn": ["--fail-on=warn", "{old}"],
    "old-fixture": ["{old}", "--json"],
    "missing-file": ["{missing}"],
    "not-a-checkpoint": ["--json", "{garbage}"],
    "against-and-prefix": ["--against", "{ref}", "--prefix", "{prefix}", "{ck}"],
    "against-missing": ["--against", "{missing}", "{ck}"],
    "verify": ["--verify", "{ck}"],
    "verify-json": ["{ck}", "--json", "--verify"],
    "verify-corrupt": ["--verify", "{corrupt}"],
    "verify-corrupt-json": ["--verify", "--json", "{corrupt}"],
    "verify-old-fixture-fail-on-warn": ["--verify", "--fail-on", "warn", "{old}"],
    "corrupt-without-verify": ["{corrupt}"],
    # issue 10: OS errors, --json errors, a prefix that is no environment, one without torch, --fail-on warn
    "name-too-long": ["{long}"],
    "name-too-long-json": ["--json", "{long}"],
    "missing-json": ["{missing}", "--json"],
    "against-fifo": ["--against", "{fifo}", "{ck}"],
    "against-not-a-fingerprint": ["--against", "{not-fp}", "{ck}"],
    "prefix-name-too-long": ["--prefix", "{long}", "{ck}", "--json"],
    "prefix-without-torch": ["--prefix", "{venv}", "{ck}"],
    "prefix-without-torch-warn": ["--prefix={venv}", "--policy", "warn", "{ck}", "--json"],
    "prefix-is-a-file": ["--prefix", "{ck}", "{ck}"],
    "fail-on-warn-human": ["--fail-on", "warn", "{old}"],
}

CLICK_ONLY = {
    "help": ["--help"],
    "short-help": ["-h"],
    "nothing": [],
    "bad-choice": ["--policy", "bogus", "{ck}"],
    "repeated-flag": ["--json", "--json", "{ck}"],
    "repeated-option": ["--policy", "warn", "--policy", "strict", "{ck}"],
    "missing-value": ["{ck}", "--policy"],
    "two-checkpoints": ["{ck}", "{old}"],
    "double-dash": ["--", "{ck}"],
    "empty-value": ["--against=", "{ck}"],
    "unknown-option": ["--verbose", "{ck}"],
    "flag-with-value": ["--json=1", "{ck}"],
    "repeated-verify": ["--verify", "--verify", "{ck}"],
    "verify-with-value": ["--verify=yes", "{ck}"],
}


def _args(template: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in template]


def _comparable(stdout: str) -> str:
    """The live fingerprint's collection time differs between two runs; nothing else may."""
    if not stdout.lstrip().startswith("{"):
        return stdout
    doc = json.loads(stdout)
    for side in ("live", "stored"):
        if isinstance(doc.get(side), dict):
            doc[side]["host"].pop("collected_at", None)
    return json.dumps(doc, sort_keys=True)


@pytest.mark.parametrize("case", FAST)
def test_fast_path_answers_exactly_as_click_does(case: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(FAST[case], files)
    options = parse_check(args)
    assert options is not None, "this command line should take the fast path"
    code = run_check(options)
    fast = capsys.readouterr()
    slow = CliRunner().invoke(click_main, ["check", *args])
    assert slow.exception is None or isinstance(slow.exception, SystemExit), slow.exception  # no escaped error
    assert (code, _comparable(fast.out), fast.err) == (slow.exit_code, _comparable(slow.stdout), slow.stderr)


def test_the_matrix_covers_every_outcome(files: dict[str, str]) -> None:
    codes = {case: CliRunner().invoke(click_main, ["check", *_args(args, files)]).exit_code for case, args in FAST.items()}
    assert {0, 1, 2} <= set(codes.values()), codes
    assert codes["plain"] == 0 and codes["against-refuses"] == 1 and codes["missing-file"] == 2
    assert codes["verify"] == 0 and codes["verify-corrupt"] == 1 and codes["corrupt-without-verify"] == 0
    assert codes["prefix"] == 2 and codes["prefix-without-torch"] == 1 and codes["prefix-without-torch-warn"] == 1
    assert codes["name-too-long"] == 2 and codes["against-fifo"] == 2 and codes["fail-on-warn-human"] == 1


def test_the_fast_path_offers_the_policy_presets_the_library_has() -> None:
    from envkit.entry import POLICY_PRESETS
    from envkit.policy import PRESETS

    assert POLICY_PRESETS == PRESETS


@pytest.mark.parametrize("case", CLICK_ONLY)
def test_anything_unusual_is_left_to_click(case: str, files: dict[str, str]) -> None:
    assert parse_check(_args(CLICK_ONLY[case], files)) is None


def _console(args: list[str], probe: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys\nfrom envkit.entry import main\nsys.argv = ['envkit', *sys.argv[1:]]\ntry:\n    main()\nfinally:\n    {probe or 'pass'}\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_console_script_never_imports_click_or_torch_for_check(files: dict[str, str]) -> None:
    done = _console(["check", "--json", files["ck"]], probe="print('MODULES', 'click' in sys.modules, 'torch' in sys.modules, file=sys.stderr)")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "ok"
    assert "MODULES False False" in done.stderr


def test_console_script_hands_other_command_lines_to_click(files: dict[str, str]) -> None:
    bad = _console(["check", "--policy", "bogus", files["ck"]])
    assert bad.returncode == 2 and "Invalid value for '--policy'" in bad.stderr and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("envkit: error: ")  # one line, not click's usage block
    version = _console(["--version"])
    assert version.returncode == 0 and version.stdout.startswith("envkit, version ")


def test_python_dash_m_envkit_takes_the_same_entry(files: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "envkit", "check", files["missing"]], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"envkit: error: {files['missing']}: no such file; pass the path of a checkpoint written by torch.save or envkit.save\n"
