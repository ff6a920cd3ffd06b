from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from envkit.conda.spec import EnvironmentSpec, Item, load_spec
from envkit.errors import EXIT_BAD_INPUT, SpecError

ENVIRONMENTS = Path(__file__).parents[2] / "environments"


def write(tmp_path: Path, text: str, name: str = "environment.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_reference_environment_keeps_every_line() -> None:
    spec = load_spec(ENVIRONMENTS / "environment.yml")
    assert isinstance(spec, EnvironmentSpec)
    assert spec.name == "pytorch_train_env"
    assert spec.channels == ["pytorch", "nvidia", "conda-forge"]
    assert spec.conda_specs[:5] == ["python=3.11", "pytorch=2.0.1", "pytorch-cuda=11.8", "torchvision=0.15.2", "torchaudio=2.0.2"]
    assert "pip" in spec.conda_specs
    assert spec.pip_specs == ["torch-summary==1.4.5"]
    lines = (ENVIRONMENTS / "environment.yml").read_text().splitlines()
    for text in (*spec.conda_specs, *spec.pip_specs, *spec.channels, "name", "dependencies"):
        line = spec.source_line(text)
        assert line is not None and text in lines[line - 1]
    assert spec.source_line("cudatoolkit") is None
    assert spec.prefix is None and dict(spec.variables) == {} and spec.platforms == ()
    assert [s.text for s in spec.sections] == ["pip"]


def test_every_field_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        name: 2024
        channels: [conda-forge, "nvidia"]
        dependencies:
          - python=3.10
          - pywin32  # [win]
          - pip
          - pip:
            - torch-summary==1.4.5
        variables:
          OMP_NUM_THREADS: 4
          EMPTY:
        prefix: /opt/envs/x
        platforms:
          - linux-64
    """)
    spec = load_spec(path)
    assert spec.path == path
    assert spec.name == "2024"  # as written, not the int YAML would make of it
    assert spec.channel_items == (Item("conda-forge", 2), Item("nvidia", 2))
    assert spec.conda_items[0] == Item("python=3.10", 4)  # not the float 3.1
    assert spec.conda_items[1] == Item("pywin32", 5, "# [win]")
    assert spec.pip_items == (Item("torch-summary==1.4.5", 8),)
    assert dict(spec.variables) == {"OMP_NUM_THREADS": "4", "EMPTY": ""}
    assert spec.prefix == "/opt/envs/x" and spec.platforms == ("linux-64",)
    assert [(k.text, k.line) for k in spec.keys] == [
        ("name", 1), ("channels", 2), ("dependencies", 3), ("variables", 9), ("prefix", 12), ("platforms", 13)]
    assert spec.sections == (Item("pip", 7),)
    assert spec.key_line("prefix") == 12 and spec.key_line("nope") is None


def test_a_quoted_hash_is_not_a_comment(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, 'dependencies:\n  - "b # [x]"\n  - c   # plain comment\n'))
    assert spec.conda_items == (Item("b # [x]", 2), Item("c", 3, "# plain comment"))


def test_repeated_keys_and_pip_sections_keep_the_last_like_conda(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, """\
        dependencies:
          - numpy
          - pip:
            - a
          - pip:
            - b
        dependencies:
          - scipy
    """))
    assert spec.conda_specs == ["scipy"]
    assert [(k.text, k.line) for k in spec.keys] == [("dependencies", 1), ("dependencies", 7)]
    assert spec.key_line("dependencies") == 7


def test_null_and_empty_sections_are_empty(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "name:\nchannels: []\ndependencies:\n  - pip:\nprefix:\n"))
    assert spec.name is None and spec.channels == [] and spec.conda_specs == [] and spec.pip_specs == []
    assert spec.prefix is None and [s.text for s in spec.sections] == ["pip"]


def test_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_bytes(b"\xef\xbb\xbfname: x\ndependencies:\n  - numpy\n")
    assert load_spec(path).source_line("numpy") == 3


def test_the_hash_is_of_the_bytes_that_were_parsed(tmp_path: Path) -> None:
    """lock records it; read_spec takes it from the one read, so an edit in between cannot split them."""
    import hashlib

    from envkit.conda.spec import read_spec

    path = write(tmp_path, "name: x\nchannels: [conda-forge]\ndependencies:\n  - numpy\n")
    spec = load_spec(path)
    assert spec.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_spec(path).sha256 == spec.sha256
    path.write_text(path.read_text() + "  - scipy\n")
    assert load_spec(path).sha256 != spec.sha256


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("name: x\ndependencies:\n\t- numpy\n", 3, "indent with spaces, not tabs"),
        ("name: x\ndependencies: [numpy\n", 3, "not valid YAML"),
        ("name: x\n---\nname: y\n", 2, "keep one document per file"),
        ("", 1, "the file is empty"),
        ("# nothing but a comment\n", 1, "the file is empty"),
        ("- numpy\n- scipy\n", 1, "the top level is a list, not a mapping"),
        ("just some text\n", 1, "not a mapping"),
        ("name: x\nchannels: conda-forge\n", 2, "`channels` must be a list"),
        ("dependencies:\n  numpy: 1\n", 2, "`dependencies` must be a list"),
        ("dependencies:\n  - [numpy, scipy]\n", 2, "a nested list in `dependencies`"),
        ("dependencies:\n  - numpy\n  -\n", 3, "an empty `-` entry in `dependencies`"),
        ("dependencies:\n  - pip:\n      torch: 2\n", 3, "`pip` must be a list"),
        ("dependencies:\n  - pip:\n    - [a]\n", 3, "each entry of `pip` must be a single value"),
        ("name: [a, b]\n", 1, "`name` must be a single value"),
        ("variables:\n  - A\n", 2, "`variables` must be a mapping"),
        ("variables:\n  A: [1]\n", 2, "`NAME: value`"),
        ("? [a]\n: b\n", 1, "a top-level key must be a plain word"),
        ("# exported\n@EXPLICIT\nhttps://x/linux-64/a-1-0.conda\n", 2, "an @EXPLICIT package list"),
        ("name: x\x01\n", 1, "control character U+0001"),
    ],
)
def test_unusable_files_raise_one_line_naming_file_and_line(tmp_path: Path, text: str, line: int, says: str) -> None:
    path = tmp_path / "environment.yml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.exit_code == EXIT_BAD_INPUT
    message = info.value.message
    assert message.startswith(f"{path}:{line}: ") and says in message and "\n" not in message
    assert "; " in message  # problem; fix


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_bytes(b"name: x\ndependencies:\n  - caf\xe9\n")
    with pytest.raises(SpecError, match=r"environment\.yml:3: not UTF-8 text; save the file as UTF-8"):
        load_spec(path)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: tmp / "missing.yml", "no such file; check the path"),
        (lambda tmp: tmp, "is a folder; give the path of the environment.yml file"),
        (lambda tmp: (tmp / "f.yml").write_text("a: 1") and tmp / "f.yml" / "environment.yml", "a part of the path is a file, not a folder"),
    ],
    ids=["missing", "folder", "under-a-file"],
)
def test_unreadable_paths(tmp_path: Path, make, says: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert info.value.message.startswith(f"{path}: ") and says in info.value.message


# issue 10, item 3: values conda refuses are Problems with their line; lock and create refuse them


def test_values_that_are_not_text_are_problems_with_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        name: 5
        channels:
          - conda-forge
          - 7
        dependencies:
          - numpy
          - 1.5
          - true
          - "2.0"
          - 2024-01-01
          - pip:
            - rich
            - 5
        """)
    spec = load_spec(path)
    assert [(p.line, p.code) for p in spec.problems] == [(1, "not-text"), (4, "not-text"), (7, "not-text"), (8, "not-text"),
                                                         (10, "not-text"), (13, "not-text")]
    assert spec.name == "5" and spec.conda_specs == ["numpy", "1.5", "true", "2.0", "2024-01-01"]  # still as written
    with pytest.raises(SpecError) as info:
        spec.require_usable()
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert info.value.message.startswith(f"{path}:1: `5` in `name:` is a number") and "in quotes" in info.value.message
    assert "and 5 more; `envkit lint" in info.value.message and "\n" not in info.value.message


def test_unknown_installers_and_pip_lines_pip_cannot_read_are_problems(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        dependencies:
          - numpy
          - npm:
            - express
          - pip:
            - requests>>2
            - ok-package==1.0
            - numpy=1.26
        """)
    spec = load_spec(path)
    assert [(p.line, p.code) for p in spec.problems] == [(3, "unknown-installer"), (6, "invalid-pip"), (8, "invalid-pip")]
    assert "`numpy==1.26`" in spec.problems[2].message


def test_a_clean_file_has_no_problems(tmp_path: Path) -> None:
    spec = load_spec(ENVIRONMENTS / "environment.yml")
    assert spec.problems == ()
    spec.require_usable()  # does not raise


@pytest.mark.parametrize(
    ("line", "problem"),
    [("requests", None), ("-e .", None), ("--index-url https://x/simple", None), ("git+https://h/a/b.git", None),
     ("./pkg", None), ("${PKG}==1.0", None), ("requests  # a comment", None),
     ("requests>>2", "not a requirement pip can read"), ("foo bar", "not a requirement"), ("", "it is empty"),
     ("--nope", "not an option pip accepts"), ("--pre x", "takes no value"), ("-r", "needs a value")],
)
def test_pip_line_problem(line: str, problem: str | None) -> None:
    from envkit.conda.spec import pip_line_problem

    found = pip_line_problem(line)
    assert (found is None) if problem is None else (found is not None and problem in found), found


# -- issue 11: one spec model --------------------------------------------------------------------------


def test_lock_and_create_read_the_same_model_lint_does(tmp_path: Path) -> None:
    """read_spec is load_spec plus the checks a lock needs: the same EnvironmentSpec, lines kept."""
    import importlib.util

    from envkit.conda.spec import read_spec

    path = write(tmp_path, 'name: x\nchannels:\n  - conda-forge\n  - nodefaults\ndependencies:\n  - numpy\n  - " scipy "\n'
                 '  - pip:\n    - requests==2.31.0\nvariables:\n  B: "2"\n  A: "1"\n')
    spec = read_spec(path)
    assert isinstance(spec, EnvironmentSpec) and spec == load_spec(path)
    assert spec.source_line("numpy") == 6 and spec.source_line("requests==2.31.0") == 9
    assert spec.channels == ["conda-forge", "nodefaults"] and spec.package_channels == ("conda-forge",)
    assert spec.conda_specs == ["numpy", "scipy"] and [i.text for i in spec.conda_items] == ["numpy", " scipy "]
    assert spec.pip_specs == ["requests==2.31.0"] and dict(spec.variables) == {"B": "2", "A": "1"}
    assert importlib.util.find_spec("envkit.conda.specfile") is None


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("name: x\nchannels: [conda-forge]\ndependencies:\n  - pip:\n    - requests\n", 3, "`dependencies:` lists no conda package"),
        ("name: x\nchannels: [nodefaults]\ndependencies:\n  - numpy\n", 2, "no channels; add `channels:`"),
        ("name: x\ndependencies:\n  - numpy\n", 1, "no channels; add `channels:`"),
        ("channels: [conda-forge]\ndependencies:\n  - numpy\n  - pip:\n    - numpy=1.26\n", 5, "pip pins a version with `==`"),
    ],
)
def test_read_spec_refuses_what_cannot_be_locked_naming_the_line(tmp_path: Path, text: str, line: int, says: str) -> None:
    from envkit.conda.spec import read_spec

    path = write(tmp_path, text)
    load_spec(path)  # lint can still read it
    with pytest.raises(SpecError) as caught:
        read_spec(path)
    assert caught.value.message.startswith(f"{path}:{line}: ") and says in caught.value.message
    assert caught.value.exit_code == EXIT_BAD_INPUT
