"""conda's .condarc (and CONDA_* variables) in conda's search order: channel_alias, custom_channels,
default_channels, envs_dirs; [tool.envkit.mirrors] first. Every file is written here under a
temporary HOME, and every lock is a real rattler solve against the local channel (file:// URLs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from envkit.cli import main
from envkit.conda.condarc import load_condarc, search_path


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own: no .condarc but the ones a test writes, no CONDA_* variable."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    for var in list(os.environ):
        if var.startswith("CONDA_") or var in ("CONDARC", "XDG_CONFIG_HOME", "MAMBARC"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    return folder


def _spec(folder: Path, channels: str, name: str = "train") -> Path:
    spec = folder / "environment.yml"
    spec.write_text(f"name: {name}\nchannels:\n{channels}dependencies:\n  - python=3.11\n")
    return spec


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _ours(paths: list[Path], root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in paths if root in p.parents]


# -- the search path and the merge ----------------------------------------------------------------

def test_search_order_and_merge_follow_conda(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, xdg, prefix, rc = tmp_path / "root", tmp_path / "xdg", tmp_path / "prefix", tmp_path / "explicit.yml"
    files = {
        root / ".condarc": "channel_alias: https://root.example\nchannels: [a]\n",
        xdg / "conda" / ".condarc": "custom_channels:\n  pytorch: https://xdg.example\n  nvidia: https://xdg.example\n",
        home / ".config" / "conda" / "condarc": "envs_dirs: [~/first-envs]\n",
        home / ".conda" / "condarc.d" / "b.yaml": "channels: [b, a]\n",
        home / ".conda" / "condarc.d" / "a.yml": "channels: [c]\n",
        home / ".conda" / "condarc.d" / "ignored.txt": "channels: [not-yaml-suffix]\n",
        home / ".condarc": "channel_alias: https://home.example/\ncustom_channels:\n  pytorch: https://home.example/mirror\n",
        prefix / ".condarc": "default_channels: [https://prefix.example/main]\nenvs_dirs: [$ENVS_BASE/envs]\n",
        rc: "channels: [d]\n",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setenv("CONDA_ROOT", str(root))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("CONDA_PREFIX", str(prefix))
    monkeypatch.setenv("CONDARC", str(rc))
    monkeypatch.setenv("ENVS_BASE", str(tmp_path / "base"))
    assert _ours(search_path(), tmp_path) == [
        "root/.condarc", "xdg/conda/.condarc", "home/.config/conda/condarc",
        "home/.conda/condarc.d/a.yml", "home/.conda/condarc.d/b.yaml", "home/.condarc", "prefix/.condarc", "explicit.yml",
    ]
    config = load_condarc()
    assert config.channel_alias is not None and config.channel_alias.value == "https://home.example"  # the last file's
    assert config.channel_alias.source == str(home / ".condarc")
    # a map merges key by key, the later file winning
    assert {k: (v.value, Path(v.source).name) for k, v in config.custom_channels.items()} == {
        "pytorch": ("https://home.example/mirror", ".condarc"), "nvidia": ("https://xdg.example", ".condarc")}
    assert config.custom_channels["nvidia"].source == str(xdg / "conda" / ".condarc")
    # a list: the later files' entries first, each once
    assert [(s.value, Path(s.source).name) for s in config.channels] == [("d", "explicit.yml"), ("b", "b.yaml"), ("a", "b.yaml"),
                                                                         ("c", "a.yml")]
    assert [s.value for s in config.envs_dirs] == [str(tmp_path / "base" / "envs"), str(home / "first-envs")]
    assert [s.value for s in config.default_channels] == ["https://prefix.example/main"]
    # the CONDA_* variables beat every file
    monkeypatch.setenv("CONDA_CHANNEL_ALIAS", "https://variable.example")
    monkeypatch.setenv("CONDA_CHANNELS", "e, a")
    monkeypatch.setenv("CONDA_ENVS_DIRS", os.pathsep.join([str(tmp_path / "v1"), str(tmp_path / "v2")]))
    config = load_condarc()
    assert (config.channel_alias.value, config.channel_alias.source) == ("https://variable.example", "$CONDA_CHANNEL_ALIAS")
    assert [s.value for s in config.channels] == ["e", "a", "d", "b", "c"]
    assert [s.value for s in config.envs_dirs][:2] == [str(tmp_path / "v1"), str(tmp_path / "v2")]
    assert config.envs_dirs[0].source == "$CONDA_ENVS_DIRS"


def test_no_condarc_changes_nothing(tmp_path: Path) -> None:
    config = load_condarc()
    assert _ours(list(config.files), tmp_path) == [] and config.channel_alias is None and not config.custom_channels


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("channels:\n  - conda-forge\n - defaults\n", 3, "invalid YAML"),
        ("channel_alias: https://m.example\ncustom_channels: {pytorch: https://m\n", 3, "invalid YAML"),
        ("channels:\n\t- conda-forge\n", 2, "invalid YAML"),
        ("ssl_verify: true\nchannels: conda-forge\n", 2, "`channels` must be a list"),
        ("channel_alias: [https://a]\n", 1, "`channel_alias` must be a URL"),
        ("custom_channels:\n  - pytorch\n", 1, "`custom_channels` must be a mapping"),
        ("- conda-forge\n", 1, "a YAML mapping"),
    ],
)
def test_a_malformed_condarc_is_exit_2_naming_file_and_line(tmp_path: Path, home: Path, text: str, line: int, says: str) -> None:
    (home / ".condarc").write_text(text)
    spec = _spec(tmp_path, "  - local\n")
    for args in (["lock", "-f", str(spec), "-p", "linux-64"], ["create", str(spec), "-n", "x", "--dry-run"]):
        code, out, err = _run(*args)
        assert code == 2 and out == "", (args, out, err)
        assert err.count("\n") == 1 and err.startswith(f"envkit: error: {home / '.condarc'}:{line}: ") and says in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "conda-lock.yml").exists()


def test_condarc_named_by_condarc_variable_is_read_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc = tmp_path / "team.condarc.yml"
    rc.write_text("channel_alias: 'https://unterminated\n")
    monkeypatch.setenv("CONDARC", str(rc))
    code, _, err = _run("lock", "-f", str(_spec(tmp_path, "  - local\n")), "-p", "linux-64")
    assert code == 2 and f"{rc}:" in err


# -- real solves through .condarc -----------------------------------------------------------------

def test_channel_alias_maps_a_name_to_the_mirror(tmp_path: Path, home: Path, channel: Path) -> None:
    """`local` resolves as <channel_alias>/local: the mirror is the folder the channel lives in."""
    (home / ".condarc").write_text(f"channel_alias: {channel.parent.as_uri()}/\n")
    spec = _spec(tmp_path, "  - local\n")
    code, out, err = _run("lock", "-f", str(spec), "-p", "linux-64", "-v")
    assert code == 0, err
    assert f"channel  local -> {channel.as_uri()}  (channel_alias in {home / '.condarc'})" in out
    text = (tmp_path / "conda-lock.yml").read_text()
    assert f"url: {channel.as_uri()}/linux-64/python-3.11" in text and "- url: local" in text  # the spec's name is kept


def test_custom_channels_beat_the_alias_and_mirrors_beat_both(tmp_path: Path, home: Path, channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    (home / ".condarc").write_text(f"channel_alias: {nowhere.as_uri()}\ncustom_channels:\n  local: {channel.parent.as_uri()}\n")
    spec = _spec(tmp_path, "  - local\n")
    code, out, err = _run("lock", "-f", str(spec), "-p", "linux-64", "-v")
    assert code == 0, err
    assert f"local -> {channel.as_uri()}  (custom_channels.local in {home / '.condarc'})" in out
    # [tool.envkit.mirrors] takes precedence over .condarc: here it points at a folder with no channel,
    # so the lock fails, naming the mirror and where it was set
    (tmp_path / "envkit.toml").write_text(f'[tool.envkit.mirrors]\n"local" = "{nowhere.as_uri()}/local"\n')
    code, _, err = _run("lock", "-f", str(spec), "-p", "linux-64")
    assert code == 2 and f"{nowhere.as_uri()}/local" in err and "[tool.envkit.mirrors]" in err and str(tmp_path / "envkit.toml") in err
    (tmp_path / "envkit.toml").write_text(f'[tool.envkit.mirrors]\n"local" = "{channel.as_uri()}"\n')
    (home / ".condarc").write_text(f"custom_channels:\n  local: {nowhere.as_uri()}\n")
    code, out, err = _run("lock", "-f", str(spec), "-p", "linux-64", "-v")
    assert code == 0, err
    assert f"local -> {channel.as_uri()}  ([tool.envkit.mirrors] in {tmp_path / 'envkit.toml'})" in out


def test_defaults_are_the_default_channels(tmp_path: Path, home: Path, channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc = home / ".conda" / ".condarc"
    rc.parent.mkdir()
    rc.write_text(f"default_channels:\n  - {channel.as_uri()}\n")
    spec = _spec(tmp_path, "  - defaults\n")
    code, out, err = _run("lock", "-f", str(spec), "-p", "linux-64", "-v")
    assert code == 0, err
    assert f"channel  defaults -> {channel.as_uri()}  (default_channels in {rc})" in out
    assert f"url: {channel.as_uri()}/linux-64/python-3.11" in (tmp_path / "conda-lock.yml").read_text()
    # a CONDA_CHANNEL_ALIAS variable beats the files, and a name under it resolves there
    monkeypatch.setenv("CONDA_CHANNEL_ALIAS", channel.parent.as_uri())
    (home / ".condarc").write_text("channel_alias: https://unreachable.example\n")
    code, out, err = _run("lock", "-f", str(_spec(tmp_path, "  - local\n")), "-p", "linux-64", "-v")
    assert code == 0, err
    assert "(channel_alias in $CONDA_CHANNEL_ALIAS)" in out


def test_create_dry_run_says_where_channels_and_the_folder_came_from(tmp_path: Path, home: Path, channel: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVKIT_ENVS_DIR", raising=False)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    envs = tmp_path / "team-envs"
    (home / ".condarc").write_text(f"channel_alias: {channel.parent.as_uri()}\nenvs_dirs:\n  - {blocked}/envs\n  - {envs}\n")
    spec = _spec(tmp_path, "  - local\n")
    code, out, err = _run("create", str(spec), "-n", "exp1", "--dry-run")
    assert code == 0, err
    assert f"prefix:   {envs / 'exp1'}  (envs_dirs in {home / '.condarc'})" in out  # the first that can be written
    assert f"local -> {channel.as_uri()}  (channel_alias in {home / '.condarc'})" in out
    assert not envs.exists()
    # CONDA_ENVS_DIRS beats the file
    monkeypatch.setenv("CONDA_ENVS_DIRS", str(tmp_path / "from-variable"))
    code, out, err = _run("create", str(spec), "--dry-run")  # the spec's name, under the variable's folder
    assert code == 0 and f"prefix:   {tmp_path / 'from-variable' / 'train'}  (envs_dirs in $CONDA_ENVS_DIRS)" in out, out + err
    # no envs_dirs entry can be written: exit 2, naming them
    monkeypatch.setenv("CONDA_ENVS_DIRS", f"{blocked}/envs")
    (home / ".condarc").write_text(f"channel_alias: {channel.parent.as_uri()}\n")
    code, _, err = _run("create", str(spec), "-n", "exp1", "--dry-run")
    assert code == 2 and "envs_dirs" in err and f"{blocked}/envs" in err


@pytest.mark.slow
def test_create_and_doctor_by_name_use_envs_dirs(tmp_path: Path, home: Path, channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVKIT_ENVS_DIR", raising=False)
    first, second = tmp_path / "envs-a", tmp_path / "envs-b"
    (home / ".condarc").write_text(f"custom_channels:\n  local: {channel.parent.as_uri()}\nenvs_dirs: [{first}, {second}]\n")
    spec = _spec(tmp_path, "  - local\n")
    code, out, err = _run("create", str(spec), "-n", "exp2", "-v")
    assert code == 0, err
    assert f"created {first / 'exp2'}" in out and f"(custom_channels.local in {home / '.condarc'})" in out
    assert (first / "exp2" / "conda-meta").is_dir()
    # doctor -n finds it in whichever envs_dirs entry holds it
    (home / ".condarc").write_text(f"envs_dirs: [{second}, {first}]\n")
    code, out, err = _run("doctor", "-n", "exp2", "--json")
    assert code == 0, out + err
    assert f'"prefix": "{first / "exp2"}"' in out
