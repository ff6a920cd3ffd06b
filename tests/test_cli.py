from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from envkit.cli import main
from tests.fakes import make_conda_prefix, make_reference_prefix

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


# -- issue 10, item 6: a target without torch refuses; a --prefix that is no environment is exit 2 ---------


@pytest.fixture(scope="module")
def venv_without_torch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real venv (python -m venv), with nothing installed in it."""
    root = tmp_path_factory.mktemp("venv") / "no-torch"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    return root


@pytest.mark.parametrize("preset", ["strict", "compatible", "warn"])
def test_check_prefix_without_torch_refuses_under_every_preset(stamped: Path, venv_without_torch: Path, preset: str) -> None:
    code, out, err = run("check", "--policy", preset, "--prefix", venv_without_torch, stamped)
    assert code == 1, (out, err)
    assert "torch is not installed in this environment" in out and "install torch" in out
    assert "may resume" not in out and out.rstrip().splitlines()[-1].startswith("refuse: ")
    doc = json.loads(run("check", "--json", "--policy", preset, "--prefix", venv_without_torch, stamped)[1])
    rows = {d["field"]: d for d in doc["differences"]}
    assert doc["verdict"] == "refuse" and rows["torch.version"]["severity"] == "refuse"
    assert not any(f.startswith("torch.") and f != "torch.version" for f in rows)  # no "a CPU build" rows


def test_no_project_override_lets_a_target_without_torch_pass(
    stamped: Path, venv_without_torch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "envkit.toml").write_text('preset = "warn"\n[policy]\n"torch.*" = "ok"\n"*" = "info"\n')
    monkeypatch.chdir(tmp_path)
    code, out, _ = run("check", "--prefix", venv_without_torch, stamped)
    assert code == 1 and "refuse: " in out
    conda_env = make_conda_prefix(tmp_path / "conda-env", [("python", "3.11.7", "h0_0"), ("numpy", "1.26.4", "py311_0")])
    code, out, _ = run("check", "--prefix", conda_env, stamped)
    assert code == 1 and "torch is not installed in this environment" in out


@pytest.mark.parametrize("command", ["check", "fingerprint"])
@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: (tmp / "plain").mkdir() or tmp / "plain", "not a Python environment"),
        (lambda tmp: (tmp / "f").write_text("x") and tmp / "f", "not a folder"),
        (lambda tmp: tmp / "missing", "no such environment folder"),
    ],
    ids=["plain-folder", "a-file", "missing"],
)
def test_a_prefix_that_is_not_an_environment_is_exit_2(stamped: Path, tmp_path: Path, command: str, make, says: str) -> None:  # type: ignore[no-untyped-def]
    prefix = make(tmp_path)
    args = ["check", "--prefix", prefix, stamped] if command == "check" else ["fingerprint", "--prefix", prefix]
    code, out, err = run(*args)
    line = one_error_line(err, prefix)
    assert code == 2 and out == "" and says in line and "pass the folder of an installed environment" in line


def test_collect_refuses_a_folder_that_is_no_environment(tmp_path: Path) -> None:
    from envkit.errors import BadInput
    from envkit.fingerprint import collect

    with pytest.raises(BadInput, match="not a Python environment"):
        collect(tmp_path)


# -- issue 10, item 12: each message says what happened and what to do --------------------------------------


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"a": 1}, 'not an envkit fingerprint (it has no "schema" key)'),
        ({"schema": "conda-lock/1"}, "not an envkit fingerprint (its schema is 'conda-lock/1')"),
        ({"schema": "envkit.fingerprint/99"}, "upgrade envkit"),
    ],
    ids=["no-schema", "other-schema", "newer-envkit"],
)
def test_against_a_json_that_is_no_fingerprint(stamped: Path, tmp_path: Path, doc: dict, says: str) -> None:
    fp = tmp_path / "fp.json"
    fp.write_text(json.dumps(doc))
    code, _, err = run("check", "--against", fp, stamped)
    line = one_error_line(err, fp)
    assert code == 2 and says in line
    assert ("upgrade" in line) == (says == "upgrade envkit")


def test_fail_on_warn_final_line_agrees_with_the_exit_code(data_dir: Path, stamped: Path) -> None:
    unstamped = data_dir / "gpu-h200-cuda_saved.pth"
    code, out, _ = run("check", "--fail-on", "warn", unstamped)
    last = out.rstrip().splitlines()[-1]
    assert code == 1 and "may resume" not in last and "--fail-on warn" in last
    code, out, _ = run("check", unstamped)
    assert code == 0 and out.rstrip().splitlines()[-1].startswith("warn: this environment may resume it")
    code, out, _ = run("check", "--fail-on", "warn", stamped)
    assert code == 0 and out.rstrip().splitlines()[-1] == "ok: this environment may resume it"


def test_unstamped_rows_say_so(data_dir: Path, stamped: Path) -> None:
    unstamped = data_dir / "gpu-h200-cuda_saved.pth"
    for args in (("check", unstamped), ("diff", unstamped, "live"), ("diff", stamped, unstamped), ("diff", unstamped, unstamped)):
        out = run(*args)[1]
        assert "-> present" not in out and "stamp  -" not in out, out
        assert "unstamped" in out and "no environment recorded" in out
    assert "the second checkpoint has no envkit stamp" in run("diff", stamped, unstamped)[1]
    assert "neither side has an envkit stamp" in run("diff", unstamped, unstamped)[1]


def test_diff_names_what_each_side_may_be(stamped: Path, tmp_path: Path) -> None:
    code, _, err = run("diff", stamped, tmp_path / "missing.json")
    line = one_error_line(err, tmp_path / "missing.json")
    assert code == 2 and "fingerprint JSON" in line and "`live`" in line and "torch.save" not in line


def test_diff_exit_code_follows_its_policy(data_dir: Path) -> None:
    unstamped = data_dir / "gpu-h200-cuda_saved.pth"
    code, out, _ = run("diff", "--policy", "strict", unstamped, "live")
    assert code == 1 and "REFUSE" in out and out.rstrip().splitlines()[-1].startswith("refuse: ")
    code, out, _ = run("diff", "--json", "--policy", "strict", unstamped, "live")
    assert code == 1 and json.loads(out)["verdict"] == "refuse" and json.loads(out)["policy"] == "strict"
    code, out, _ = run("diff", "--policy", "warn", unstamped, "live")
    assert code == 0 and "REFUSE" not in out and out.rstrip().splitlines()[-1].startswith("warn: ")
