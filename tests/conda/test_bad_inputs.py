"""Every bad input: one line naming the file and the fix, the right exit code, nothing half-made."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from click.testing import CliRunner

from envkit.cli import main
from tests.conda.conftest import write_spec


def fails(*args: str, code: int) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("envkit: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    spec = tmp_path / "environment.yml"
    spec.write_text("name: x\nchannels:\n  - a\ndependencies:\n  - python\n   - bad: [\n")
    line = fails("lock", "-f", str(spec), code=2)
    assert f"{spec}:6:" in line and "not valid YAML" in line
    assert not (tmp_path / "conda-lock.yml").exists()


def test_unsolvable_spec_exits_1_and_writes_no_lock(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, "  - pytorch=9.9\n")
    line = fails("lock", "-f", str(spec), "-p", "linux-64", code=1)
    assert "cannot be solved for linux-64" in line and str(spec) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["environment.yml"]


def test_unknown_channel_exits_2(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, tmp_path / "no-such-channel", "  - python\n")
    line = fails("lock", "-f", str(spec), code=2)
    assert "no-such-channel" in line and "not found" in line


def test_missing_lock_exits_2(tmp_path: Path) -> None:
    line = fails("create", "--lockfile", str(tmp_path / "conda-lock.yml"), "-p", str(tmp_path / "env"), code=2)
    assert "no lock file" in line and "envkit lock" in line
    assert not (tmp_path / "env").exists()


def test_lock_for_another_platform_exits_2(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, "  - python=3.11\n")
    CliRunner().invoke(main, ["lock", "-f", str(spec), "-p", "win-64"])
    line = fails("create", str(spec), "-p", str(tmp_path / "env"), code=2)
    assert "not linux-64" in line and "envkit lock -p linux-64" in line
    assert not (tmp_path / "env").exists()


def test_stale_lock_refuses_create(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, "  - python=3.11\n")
    CliRunner().invoke(main, ["lock", "-f", str(spec), "-p", "linux-64"])
    spec.write_text(spec.read_text() + "  - numpy\n")
    line = fails("create", str(spec), "-p", str(tmp_path / "env"), code=1)
    assert "stale" in line and "+conda: numpy" in line
    assert not (tmp_path / "env").exists()


def test_failed_install_leaves_nothing(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, "  - python=3.11\n")
    CliRunner().invoke(main, ["lock", "-f", str(spec), "-p", "linux-64"])
    lock = tmp_path / "conda-lock.yml"
    lock.write_text(lock.read_text().replace("sha256: ", "sha256: 00", 1).replace("md5: ", "md5: 00", 1))
    spec_bytes = spec.read_bytes()
    env = tmp_path / "envs" / "x"
    line = fails("create", "--lockfile", str(lock), "-p", str(env), code=1)
    assert "nothing was created" in line
    assert spec.read_bytes() == spec_bytes and not env.exists() and not (tmp_path / "envs").exists()  # the parent made for it too


def test_mirror_from_config_replaces_the_channel(tmp_path: Path, channel: Path, monkeypatch) -> None:
    spec = tmp_path / "environment.yml"
    spec.write_text("channels:\n  - my-mirrored\ndependencies:\n  - python=3.11\n")
    (tmp_path / "envkit.toml").write_text(f'[tool.envkit.mirrors]\n"my-mirrored" = "{channel.as_uri()}"\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["lock", "-p", "linux-64"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "conda-lock.yml").read_text()
    assert f"url: {channel.as_uri()}/linux-64/python-3.11.4" in text and "- url: my-mirrored" in text


@pytest.mark.slow
def test_no_network_on_a_local_channel(tmp_path: Path, channel: Path) -> None:
    """lock + create as whole processes with every proxy pointing at a closed port (cheap; the
    real proof, a network namespace with no interface, is tests/conda/test_no_network.py)."""
    spec = write_spec(tmp_path, channel, "  - python=3.11\n  - pytorch\n")
    env = dict(os.environ, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", ALL_PROXY="http://127.0.0.1:9")
    exe = [sys.executable, "-m", "envkit"]
    for args in (["lock", "-f", str(spec), "-p", "linux-64", "-p", "osx-arm64"], ["create", str(spec), "-p", str(tmp_path / "env")]):
        done = subprocess.run(exe + args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_pip_part_uses_the_new_environments_python_real_venv_stand_in(tmp_path: Path) -> None:
    """The test channel's python is not an interpreter, so the pip step runs with a real one:
    a venv (no pip of its own, the base interpreter's pip via system site-packages)
    installing a tiny wheel built here, from a local folder (no index)."""
    import zipfile

    from envkit.conda.create import install_pip

    prefix = tmp_path / "env"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(prefix)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "tinypkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("tinypkg/__init__.py", "")
        zf.writestr("tinypkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        zf.writestr("tinypkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("tinypkg-1.0.dist-info/RECORD", "")
    os.environ["PIP_NO_INDEX"], os.environ["PIP_FIND_LINKS"] = "1", str(wheels)
    from envkit.conda.pip_lock import PipPackage

    wheel = wheels / "tinypkg-1.0-py3-none-any.whl"
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    try:
        install_pip(prefix, (PipPackage("tinypkg", "1.0", wheel.as_uri(), digest, "linux-64"),))
    finally:
        del os.environ["PIP_NO_INDEX"], os.environ["PIP_FIND_LINKS"]
    from envkit.conda.prefixes import pip_dists

    (prefix / "conda-meta").mkdir()
    assert pip_dists(prefix) == {"tinypkg": "1.0"}


# issue 10, item 3: what lint calls an error in a spec, lock and create refuse with its line (exit 2)

NOT_TEXT = [
    ("  - python=3.11\n  - 5\n", 6, "`5` under `dependencies:` is a number"),
    ("  - python=3.11\n  - 1.5\n", 6, "`1.5` under `dependencies:` is a number"),
    ("  - python=3.11\n  - true\n", 6, "is true/false"),
    ("  - python=3.11\n  - pip\n  - pip:\n    - 5\n", 8, "`5` under `pip:` is a number"),
    ("  - python=3.11\n  - pip\n  - pip:\n    - requests>>2\n", 8, "pip line `requests>>2`: not a requirement"),
    ("  - python=3.11\n  - pip\n  - pip:\n    - foo bar\n", 8, "pip line `foo bar`"),
    ("  - python=3.11\n  - npm:\n    - express\n", 6, "`npm:` is not an installer"),
    ("  - python=3.11\n  - numpy: 1.26\n", 6, "`numpy: 1.26` is a YAML mapping, not a package spec"),
]


@pytest.mark.parametrize(("deps", "line", "says"), NOT_TEXT, ids=[t[2] for t in NOT_TEXT])
@pytest.mark.parametrize("command", ["lock", "create", "create --dry-run"])
def test_lock_and_create_refuse_what_lint_calls_unusable(tmp_path: Path, channel: Path, deps: str, line: int, says: str, command: str) -> None:
    spec = write_spec(tmp_path, channel, deps)
    args = ["lock", "-f", str(spec), "-p", "linux-64"] if command == "lock" else [*command.split(), str(spec), "-p", str(tmp_path / "env")]
    message = fails(*args, code=2)
    assert message.startswith(f"envkit: error: {spec}:{line}: ") and says in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["environment.yml"]  # no lock, no env


def test_name_5_is_refused_not_stringified(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, "  - python=3.11\n", name="5")
    message = fails("create", str(spec), code=2)
    assert message.startswith(f"envkit: error: {spec}:1: `5` in `name:` is a number") and '"5"' in message
    assert not Path(os.environ["ENVKIT_ENVS_DIR"], "5").exists()


BAD_NAMES = [("my env", "a space"), ("a/b", "'/'"), ("a:b", "':'"), ("a#b", "'#'"), ("base", "reserves"),
             ("root", "reserves"), ("..", "use -p PREFIX"), ("", "cannot be empty")]


@pytest.mark.parametrize(("name", "says"), BAD_NAMES, ids=[n or "empty" for n, _ in BAD_NAMES])
def test_a_name_conda_refuses_is_exit_2_for_every_command(tmp_path: Path, channel: Path, name: str, says: str) -> None:
    spec = write_spec(tmp_path, channel, "  - python=3.11\n")
    envs = Path(os.environ["ENVKIT_ENVS_DIR"])
    before = sorted(envs.iterdir()) if envs.is_dir() else []
    for args in (["create", str(spec), "-n", name], ["create", str(spec), "-n", name, "--dry-run"],
                 ["export", "-n", name], ["doctor", "-n", name]):
        message = fails(*args, code=2)
        assert message.startswith(f"envkit: error: -n {name!r}: ") and says in message, message
    assert (sorted(envs.iterdir()) if envs.is_dir() else []) == before


@pytest.mark.parametrize("name", ["base", "my env"])
def test_the_specs_name_is_held_to_the_same_rules(tmp_path: Path, channel: Path, name: str) -> None:
    spec = write_spec(tmp_path, channel, "  - python=3.11\n", name=f'"{name}"')
    message = fails("create", str(spec), code=2)
    assert message.startswith(f"envkit: error: `name: {name}` in the spec (the name used without -n/-p): ")
    assert CliRunner().invoke(main, ["lint", str(spec)]).exit_code == 1


def test_export_without_n_or_p_and_no_active_environment_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    message = fails("export", code=2)
    assert "no environment given and none is active ($CONDA_PREFIX is not set)" in message
    assert "pass -n NAME" in message and "-p PREFIX" in message and "name:" not in message
