"""`envkit check`, the command run before every resume: one command line (click), the same answers
in a real console-script process as in click's test runner, and nothing heavy imported."""

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


# command line -> its exit code (the click command line's answers before and after issue 11)
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

# command lines the click-free path of issue 10 left to click
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
    """The live fingerprint's collection time differs between two runs; nothing else may. The
    runner runs in this process, where torch is imported, so only there does the live side carry
    torch's process state (``runtime``, outside the digest); the console process never imports it."""
    if not stdout.lstrip().startswith("{"):
        return stdout
    doc = json.loads(stdout)
    for side in ("live", "stored"):
        if isinstance(doc.get(side), dict):
            doc[side]["host"].pop("collected_at", None)
    if isinstance(doc.get("live"), dict):
        doc["live"].pop("runtime", None)
    return json.dumps(doc, sort_keys=True)


def _console(args: list[str], probe: str = "") -> subprocess.CompletedProcess[str]:
    """``envkit ARGS`` as the console script runs it (``envkit.cli:main``), in a real process."""
    code = f"import sys\nfrom envkit.cli import main\nsys.argv = ['envkit', *sys.argv[1:]]\ntry:\n    main()\nfinally:\n    {probe or 'pass'}\n"
    env = {**os.environ, "COLUMNS": "80"}  # help text is wrapped to the terminal's width
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize("case", [*FAST, *CLICK_ONLY])
def test_the_console_script_answers_exactly_as_the_click_runner_does(case: str, files: dict[str, str]) -> None:
    args = _args({**FAST, **CLICK_ONLY}[case], files)
    console = _console(["check", *args])
    runner = CliRunner().invoke(click_main, ["check", *args], prog_name="envkit", terminal_width=78)  # the console's: COLUMNS=80
    assert runner.exception is None or isinstance(runner.exception, SystemExit), runner.exception  # no escaped error
    assert "Traceback" not in console.stderr, console.stderr
    assert (console.returncode, _comparable(console.stdout), console.stderr) == (runner.exit_code, _comparable(runner.stdout), runner.stderr)


def test_the_matrix_covers_every_outcome(files: dict[str, str]) -> None:
    codes = {case: CliRunner().invoke(click_main, ["check", *_args(args, files)]).exit_code for case, args in FAST.items()}
    assert {0, 1, 2} <= set(codes.values()), codes
    assert codes["plain"] == 0 and codes["against-refuses"] == 1 and codes["missing-file"] == 2
    assert codes["verify"] == 0 and codes["verify-corrupt"] == 1 and codes["corrupt-without-verify"] == 0
    assert codes["prefix"] == 2 and codes["prefix-without-torch"] == 1 and codes["prefix-without-torch-warn"] == 1
    assert codes["name-too-long"] == 2 and codes["against-fifo"] == 2 and codes["fail-on-warn-human"] == 1


def test_unusual_command_lines_are_click_usage_errors_or_clicks_answers(files: dict[str, str]) -> None:
    """What the click-free path left to click: help exits 0, a usage error is one line and exit 2."""
    results = {case: CliRunner().invoke(click_main, ["check", *_args(args, files)], prog_name="envkit") for case, args in CLICK_ONLY.items()}
    assert results["help"].exit_code == 0 and results["help"].stdout.startswith("Usage: envkit check")
    assert results["short-help"].stdout == results["help"].stdout
    for case in ("nothing", "bad-choice", "missing-value", "two-checkpoints", "empty-value", "unknown-option", "flag-with-value",
                 "verify-with-value"):
        result = results[case]
        assert result.exit_code == 2 and result.stdout == "", (case, result.stdout)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("envkit: error: "), (case, result.stderr)


def test_the_command_line_offers_the_policy_presets_the_library_has() -> None:
    from envkit.commands import POLICY_PRESETS
    from envkit.policy import PRESETS

    assert POLICY_PRESETS == PRESETS


# what `envkit check` may import: click, and what the library's check reads; nothing of the
# other commands, and none of the heavy libraries (torch, numpy, yaml, conda-lock, rattler)
HEAVY = ("torch", "numpy", "yaml", "conda_lock", "rattler", "pydantic", "importlib.metadata", "pkg_resources", "envkit.conda",
         "envkit.commands.checkpoints", "envkit.commands.environments", "envkit.checkpoint.manager", "envkit.distributed")


def test_console_script_imports_click_and_nothing_heavy_for_check(files: dict[str, str]) -> None:
    done = _console(["check", "--json", files["ck"]], probe="print('MODULES', *sorted(sys.modules), file=sys.stderr)")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "ok"
    modules = set(done.stderr.split("MODULES", 1)[1].split())
    assert {"click", "envkit.cli", "envkit.commands.check"} <= modules
    assert not {m for m in modules if m.split(".")[0] in HEAVY or any(m == h or m.startswith(h + ".") for h in HEAVY)}


def test_console_script_hands_usage_errors_to_click_as_one_line(files: dict[str, str]) -> None:
    bad = _console(["check", "--policy", "bogus", files["ck"]])
    assert bad.returncode == 2 and "Invalid value for '--policy'" in bad.stderr and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("envkit: error: ")  # one line, not click's usage block
    version = _console(["--version"])
    assert version.returncode == 0 and version.stdout.startswith("envkit, version ")


def test_every_command_resolves_by_name() -> None:
    """The lazy group's table names real commands: each imports, under its own name."""
    import click

    from envkit.cli import COMMANDS, main

    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name


def test_python_dash_m_envkit_takes_the_same_entry(files: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "envkit", "check", files["missing"]], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"envkit: error: {files['missing']}: no such file; pass the path of a checkpoint written by torch.save or envkit.save\n"


def test_an_in_process_caller_keeps_its_gc_threshold(files: dict[str, str]) -> None:
    """The command line raises the collector's first threshold for its start-up; a caller in the
    same process (this test runner) gets its own back."""
    import gc

    before = gc.get_threshold()
    assert CliRunner().invoke(click_main, ["check", "--json", files["ck"]]).exit_code == 0
    assert gc.get_threshold() == before
