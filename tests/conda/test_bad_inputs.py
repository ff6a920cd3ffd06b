"""Every bad input: one line naming the file and the fix, the right exit code, nothing half-made."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

from click.testing import CliRunner

from envkit.cli import main
from tests.conda.conftest import write_spec


def fails(*args: str, code: int) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("envkit: error:")]
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


def test_no_network_on_a_local_channel(tmp_path: Path, channel: Path) -> None:
    """lock + create as whole processes with every proxy pointing at a closed port (cheap; the
    real proof, a network namespace with no interface, is tests/conda/test_no_network.py)."""
    spec = write_spec(tmp_path, channel, "  - python=3.11\n  - pytorch\n")
    env = dict(os.environ, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", ALL_PROXY="http://127.0.0.1:9")
    exe = [sys.executable, "-m", "envkit"]
    for args in (["lock", "-f", str(spec), "-p", "linux-64", "-p", "osx-arm64"], ["create", str(spec), "-p", str(tmp_path / "env")]):
        done = subprocess.run(exe + args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr


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
    try:
        install_pip(prefix, ("tinypkg==1.0",))
    finally:
        del os.environ["PIP_NO_INDEX"], os.environ["PIP_FIND_LINKS"]
    from envkit.conda.prefixes import pip_dists

    (prefix / "conda-meta").mkdir()
    assert pip_dists(prefix) == {"tinypkg": "1.0"}
