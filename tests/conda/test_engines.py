"""Real conda/mamba/micromamba engines, exercised through stand-in executables on PATH.

No real conda exists here and nothing may download one, so each test that runs an
external engine puts a stand-in script (tests/conda/stand_in_engine.py) on PATH
under the tool's name; it records its argv and builds the environment the way the
real tool does from an @EXPLICIT list.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from envkit.cli import main
from envkit.conda.engines import EXTERNAL_PREFERENCE, explicit_install_command, pick_engine
from tests.conda.conftest import write_spec
from tests.conda.stand_in_engine import install_stand_ins

DEPS = "  - python=3.11\n  - numpy\n"


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """install(*names) puts stand-ins on a PATH that holds nothing else; returns the argv log."""
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("STAND_IN_LOG", str(log))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))

    def install(*names: str) -> Path:
        install_stand_ins(bin_dir, *names)
        return log

    return install


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything opens a network socket or lets ensureconda install an executable.

    (Importing conda-lock calls ``ensureconda(no_install=True)``, a PATH lookup; that is allowed.)"""
    import sys

    import conda_lock  # noqa: F401 - its import-time lookup happens here, before the patch
    import ensureconda.api

    real_ensureconda = ensureconda.api.ensureconda

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"tried to reach the network or fetch a conda executable: {args!r} {kwargs!r}")

    def lookup_only(*args: object, **kwargs: object) -> object:
        if not kwargs.get("no_install"):
            refuse(*args, **kwargs)
        return real_ensureconda(*args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "ensureconda", None) is real_ensureconda:
            monkeypatch.setattr(module, "ensureconda", lookup_only)
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def calls(log: Path) -> list[list[str]]:
    """The stand-ins' `create` calls; the only other call allowed is a `--version` lookup."""
    every = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert all(c[1:] in (["create", *c[2:]], ["--version"]) for c in every), every
    return [c for c in every if c[1] == "create"]


def locked(tmp_path: Path, channel: Path) -> Path:
    spec = write_spec(tmp_path, channel, DEPS)
    run("lock", "-f", str(spec), "-p", "linux-64")
    return spec


@pytest.mark.parametrize(
    ("on_path", "expected"),
    [
        (("micromamba", "mamba", "conda"), "micromamba"),
        (("mamba", "conda"), "mamba"),
        (("conda", "micromamba"), "micromamba"),
        (("conda",), "conda"),
        ((), "rattler"),
    ],
)
def test_auto_prefers_micromamba_then_mamba_then_conda_stand_in(stand_ins, on_path: tuple[str, ...], expected: str) -> None:
    stand_ins(*on_path)
    engine = pick_engine("auto")
    assert EXTERNAL_PREFERENCE == ("micromamba", "mamba", "conda")
    assert engine.name == expected
    assert engine.embedded == (expected == "rattler")
    if not engine.embedded:
        assert engine.executable is not None and engine.executable.name == expected


def test_explicit_install_command_is_the_tools_own_cli() -> None:
    engine = pick_engine("rattler")
    with pytest.raises(Exception, match="embedded"):
        explicit_install_command(engine, Path("/p"), Path("/x.txt"))
    from envkit.conda.engines import Engine

    mm = Engine("micromamba", Path("/opt/bin/micromamba"))
    assert explicit_install_command(mm, Path("/envs/a"), Path("/t/explicit.txt")) == [
        "/opt/bin/micromamba", "create", "-y", "-p", "/envs/a", "--file", "/t/explicit.txt",
    ]
    assert explicit_install_command(mm, Path("/envs/a"), Path("/t/explicit.txt"), offline=True)[-1] == "--offline"


@pytest.mark.parametrize("tool", EXTERNAL_PREFERENCE)
def test_create_uses_the_tool_on_path_stand_in(tmp_path: Path, channel: Path, stand_ins, no_downloads, tool: str) -> None:
    log = stand_ins(tool)
    spec = locked(tmp_path, channel)
    prefix = tmp_path / "envs" / "train"
    out = run("create", str(spec), "-p", str(prefix))
    assert f"with {tool}" in out

    [argv] = calls(log)
    assert argv[:5] == [tool, "create", "-y", "-p", str(prefix)]
    assert argv[5] == "--file" and argv[-1] == "--offline"  # every package is a file:// URL
    assert not Path(argv[6]).exists()  # the explicit list was temporary
    meta = json.loads((prefix / "conda-meta" / "envkit.json").read_text())
    assert meta["engine"] == tool
    names = sorted(p.name.rsplit("-", 2)[0] for p in (prefix / "conda-meta").glob("*.json") if p.name != "envkit.json")
    assert names == ["numpy", "python"]
    assert (prefix / "share" / "numpy" / "VERSION").is_file()
    run("doctor", "-p", str(prefix))
    assert not list(prefix.parent.glob(".*envkit-tmp*"))


def test_create_uses_micromamba_on_path_stand_in_explicit_list(tmp_path: Path, channel: Path, stand_ins, monkeypatch) -> None:
    """The list handed to the tool is exactly the lock's packages with their md5s."""
    from envkit.conda.lock import read_lock

    log = stand_ins("micromamba")
    spec = locked(tmp_path, channel)
    seen: list[str] = []
    import envkit.conda.create as create_mod

    real_run = create_mod.subprocess.run

    def spy(cmd, *a, **kw):
        seen.append(Path(cmd[cmd.index("--file") + 1]).read_text())
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(create_mod.subprocess, "run", spy)
    run("create", str(spec), "-p", str(tmp_path / "env"))
    lock = read_lock(tmp_path / "conda-lock.yml")
    entries = [ln for ln in seen[0].splitlines() if not ln.startswith("#") and ln != "@EXPLICIT"]
    assert sorted(entries) == sorted(f"{p.url}#{p.md5}" for p in lock.packages_for("linux-64"))
    assert len(calls(log)) == 1


def test_engine_rattler_forces_the_embedded_one_stand_in(tmp_path: Path, channel: Path, stand_ins, no_downloads) -> None:
    log = stand_ins("micromamba", "mamba", "conda")
    spec = locked(tmp_path, channel)
    prefix = tmp_path / "env"
    run("create", str(spec), "-p", str(prefix), "--engine", "rattler")
    assert calls(log) == []
    assert json.loads((prefix / "conda-meta" / "envkit.json").read_text())["engine"] == "rattler"


def test_engine_named_but_not_on_path_exits_2(tmp_path: Path, channel: Path, stand_ins, no_downloads) -> None:
    log = stand_ins("conda")  # conda is there, micromamba is not
    spec = locked(tmp_path, channel)
    prefix = tmp_path / "env"
    result = CliRunner().invoke(main, ["create", str(spec), "-p", str(prefix), "--engine", "micromamba"])
    assert result.exit_code == 2, result.output
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("envkit: error:")]
    assert "--engine micromamba: not found on PATH" in line and "--engine rattler" in line
    assert "Traceback" not in result.output
    assert not prefix.exists() and calls(log) == []


def test_engine_failure_removes_the_prefix_stand_in(tmp_path: Path, channel: Path, stand_ins, monkeypatch) -> None:
    log = stand_ins("mamba")
    spec = locked(tmp_path, channel)
    monkeypatch.setenv("STAND_IN_FAIL_AFTER_FIRST", "1")
    prefix = tmp_path / "envs" / "x"
    prefix.mkdir(parents=True)  # an empty folder the user made is fine, and stays as it was
    result = CliRunner().invoke(main, ["create", str(spec), "-p", str(prefix)])
    assert result.exit_code == 1, result.output
    assert "mamba failed to create" in result.output and "failing on purpose" in result.output
    assert "nothing was created" in result.output and "Traceback" not in result.output
    assert len(calls(log)) == 1
    assert prefix.is_dir() and not any(prefix.iterdir())
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["x"]


@pytest.mark.slow
@pytest.mark.parametrize("on_path", [(), ("micromamba", "mamba", "conda")])
def test_lock_always_solves_with_rattler_whatever_engine_stand_in(tmp_path: Path, channel: Path, stand_ins, no_downloads, on_path) -> None:
    """`lock --engine X` needs no X on PATH, never runs one, and writes the same lock as rattler."""
    from envkit.conda.lock import read_lock

    log = stand_ins(*on_path)
    spec = write_spec(tmp_path, channel, DEPS)
    run("lock", "-f", str(spec), "-p", "linux-64", "--engine", "rattler", "--lockfile", str(tmp_path / "rattler.yml"))
    for engine in ("auto", "micromamba", "mamba", "conda"):
        result = CliRunner().invoke(main, ["lock", "-f", str(spec), "-p", "linux-64", "--engine", engine, "--lockfile", str(tmp_path / f"{engine}.yml")])
        assert result.exit_code == 0, result.output
        assert "with rattler" in result.output
        if engine != "auto":
            assert f"--engine {engine} applies to `envkit create`" in result.output
        a, b = read_lock(tmp_path / "rattler.yml"), read_lock(tmp_path / f"{engine}.yml")
        assert (a.content_hash, a.packages) == (b.content_hash, b.packages)
    assert calls(log) == []


def test_lock_help_says_the_solver_is_always_rattler() -> None:
    out = run("lock", "--help")
    assert "always solved by the embedded rattler solver" in " ".join(out.split())
