from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from envkit import render
from envkit.cli import main
from envkit.conda.lint import LintReport, lint
from envkit.errors import SpecError

ROOT = Path(__file__).parents[2]
ENVIRONMENTS = ROOT / "environments"
FIXTURES = Path(__file__).parents[1] / "data" / "envfiles-conda"

# ---------------------------------------------------------------------------------------------
# conda's own test files: each row of MANIFEST.tsv says whether `conda env create` accepts it.

with open(FIXTURES / "MANIFEST.tsv", newline="") as _fh:
    ROWS = list(csv.DictReader(_fh, delimiter="\t"))

ACCEPTED, REJECTED, NOT_AN_ENV_FILE = "accepted", "rejected", "not an environment file"
EXIT_FOR = {ACCEPTED: 0, REJECTED: 1, NOT_AN_ENV_FILE: 2}


def conda_outcome(accepts: str) -> str:
    """MANIFEST's `conda_env_create_accepts` -> the outcome envkit lint should mirror."""
    if accepts == "n/a":  # a companion file, not an environment file at all
        return NOT_AN_ENV_FILE
    if accepts.startswith("no"):
        return REJECTED
    if accepts.startswith(("yes", "parses", "warns")):  # "parses; pip fails later" is still a valid file
        return ACCEPTED
    raise AssertionError(f"unknown MANIFEST value {accepts!r}")


# Where envkit lint deliberately differs from conda: file -> (envkit's exit code, why).
DIFFERS = {
    "INDEX_testfiles_v2__simple.yml": (
        1, "conda warns and creates an empty environment; `requirements:` instead of `dependencies:` "
           "silently drops every package, so envkit makes it an error (unknown-key, suggesting `dependencies`)"),
    "invalid_keys.yml": (
        1, "conda warns about names/chanels/dependecies/prefis and installs nothing; envkit makes each "
           "misspelled key an error and names the key it meant"),
    "explicit.txt": (
        2, "an @EXPLICIT list is valid input for `conda create --file`, but it is not an environment.yml, "
           "the only format envkit lint reads"),
    "requirements.txt": (
        2, "a requirements text file is valid input for `conda create --file`, but it is not an environment.yml"),
}

# The finding each file's edge case should produce (a subset of what lint reports).
EDGE_CASE_CODES = {
    "INDEX_example__environment_unknown_installer.yml": {"unknown-installer"},
    "INDEX_missing_required_keys.yml": {"prefix", "no-dependencies"},
    "INDEX_req.yaml": {"unknown-key"},
    "INDEX_testfiles_v2__simple.yml": {"unknown-key"},
    "INDEX_yaml_file.random": {"file-extension"},
    "add-pip.yml": {"pip-without-pip"},
    "channels_with_envvars.yml": {"channel-env-var"},
    "dependent.yml": {"no-name", "no-channels"},
    "empty_deps.yml": {"no-dependencies"},
    "empty_env.yml": {"no-dependencies"},
    "invalid_keys.yml": {"unknown-key"},
    "just_vars.yml": {"no-dependencies"},
    "valid_keys.yml": {"prefix"},
}


def lint_exit(path: Path) -> tuple[int, LintReport | None]:
    try:
        report = lint(path)
    except SpecError as exc:
        assert exc.message.startswith(f"{path}:") and "\n" not in exc.message
        return exc.exit_code, None
    return report.exit_code, report


def test_manifest_lists_every_fixture() -> None:
    files = {p.name for p in FIXTURES.iterdir()} - {"MANIFEST.tsv"}
    assert len(ROWS) == 33 and {r["file"] for r in ROWS} == files
    for name, (code, _why) in DIFFERS.items():  # the table of differences cannot go stale
        row = next(r for r in ROWS if r["file"] == name)
        assert EXIT_FOR[conda_outcome(row["conda_env_create_accepts"])] != code


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_conda_fixture_outcome_matches_the_manifest(row: dict[str, str]) -> None:
    name = row["file"]
    expected = DIFFERS[name][0] if name in DIFFERS else EXIT_FOR[conda_outcome(row["conda_env_create_accepts"])]
    code, report = lint_exit(FIXTURES / name)
    assert code == expected, f"{name} ({row['edge_case']}): {render.lint_text(report) if report else ''}"
    if report is not None:
        found = {f.code for f in report.findings}
        assert EDGE_CASE_CODES.get(name, set()) <= found, render.lint_text(report)
        assert "invalid-spec" not in found  # every dependency line in conda's own tests is a valid spec


# ---------------------------------------------------------------------------------------------
# the environments/ files


BLOG_POST = """\
name: pytorch_train_env
channels:
  - pytorch
  - defaults
dependencies:
  - python=3.11
  - pytorch=2.0.1
  - torchvision
  - torchaudio
  - cudatoolkit=11.8
  - numpy
  - matplotlib
  - jupyter
  - pip
  - pip:
    - torch-summary
"""


def test_blog_post_file_is_the_one_users_copy_and_its_cudatoolkit_is_an_error() -> None:
    path = ENVIRONMENTS / "blog-post.yml"
    assert path.read_bytes() == BLOG_POST.encode()
    report = lint(path)
    assert report.exit_code == 1 and not report.warnings
    (error,) = report.errors
    assert (error.line, error.code) == (10, "cudatoolkit-pytorch2")  # `  - cudatoolkit=11.8` is line 10
    assert "`pytorch-cuda=11.8`" in error.message and "CPU build" in error.message and "nvidia" in error.message


@pytest.mark.parametrize("name", ["environment.yml", "environment-cpu.yml"])
def test_reference_environments_are_clean(name: str) -> None:
    report = lint(ENVIRONMENTS / name)
    assert report.findings == (), render.lint_text(report)


def test_reference_environment_pins_the_target_runtime() -> None:
    from envkit.conda.spec import load_spec

    cuda, cpu = load_spec(ENVIRONMENTS / "environment.yml"), load_spec(ENVIRONMENTS / "environment-cpu.yml")
    assert cuda.name == "pytorch_train_env" and cuda.channels[:2] == ["pytorch", "nvidia"]
    for spec in (cuda, cpu):
        assert {"python=3.11", "pytorch=2.0.1", "torchvision=0.15.2", "torchaudio=2.0.2", "pip"} <= set(spec.conda_specs)
        assert spec.pip_specs == ["torch-summary==1.4.5"]
    assert "pytorch-cuda=11.8" in cuda.conda_specs and "cpuonly" not in cuda.conda_specs
    assert "cpuonly" in cpu.conda_specs and not any("cuda" in s for s in cpu.conda_specs)


# ---------------------------------------------------------------------------------------------
# one test per rule, on small files


def lint_text(tmp_path: Path, text: str, name: str = "environment.yml") -> LintReport:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return lint(path)


def found(report: LintReport) -> list[tuple[str, int, str]]:
    return [(f.code, f.line, f.severity) for f in report.findings]


HEAD = "name: x\nchannels:\n  - conda-forge\n"  # lines 1-3


def deps(*lines: str, head: str = HEAD) -> str:
    return head + "dependencies:\n" + "".join(f"  {line}\n" for line in lines)  # first item on line 5


def test_a_plain_file_has_no_findings(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- python=3.11", "- numpy>=1.21,<2", "- pip", "- pip:", "  - rich==13.7.1"))
    assert report.findings == () and report.exit_code == 0
    assert render.lint_text(report) == f"{tmp_path / 'environment.yml'}: ok"


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("dependecies", "did you mean `dependencies`?"), ("chanels", "did you mean `channels`?"),
     ("requirements", "did you mean `dependencies`?"), ("prefis", "did you mean `prefix`?"),
     ("colour", "the keys are name, channels, dependencies")],
)
def test_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path, key: str, suggestion: str) -> None:
    report = lint_text(tmp_path, HEAD + f"dependencies:\n  - numpy\n{key}:\n  - x\n")
    (error,) = report.errors
    assert (error.code, error.line) == ("unknown-key", 6) and f"`{key}`" in error.message and suggestion in error.message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- numpy") + "dependencies:\n  - scipy\n")
    assert found(report) == [("duplicate-key", 6, "error")] and "first at line 4" in report.errors[0].message


def test_unknown_installer_and_second_pip_section_are_errors(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- pip", "- pip:", "  - a", "- npm:", "  - express", "- pip:", "  - b"))
    assert found(report) == [("unknown-installer", 8, "error"), ("duplicate-pip", 10, "error")]
    assert "only `pip:`" in report.errors[0].message and "first at line 6" in report.errors[1].message


@pytest.mark.parametrize(
    ("spec", "says"),
    [("numpy=>1.2", "did you mean `>=`?"), ("numpy = 1.2", "no space"), ("numpy>=1.0,", "empty constraint"),
     ("numpy[version=>=1,<2]", "quoting values"), (">=1.0", "no package name"), ("num$py", "not a package name")],
)
def test_invalid_spec_is_an_error_at_its_line(tmp_path: Path, spec: str, says: str) -> None:
    report = lint_text(tmp_path, deps("- python=3.11", f"- {json.dumps(spec)}"))
    (error,) = report.errors
    assert (error.code, error.line) == ("invalid-spec", 6) and f"`{spec}`" in error.message and says in error.message


# -- a dependency line as rattler's MatchSpec reads it (moved from test_matchspec.py: envkit's own
# grammar is gone); rattler's version is its canonical form: `=1.26` is `1.26.*`, `1.26.4` is `==1.26.4`

ANACONDA = "https://conda.anaconda.org/"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("numpy", ("numpy", None, None, None)),
        ("numpy=1.26", ("numpy", "1.26.*", None, None)),
        ("flask==2.0.2", ("flask", "==2.0.2", None, None)),
        ("numpy>=1.21,<2", ("numpy", ">=1.21,<2", None, None)),
        ("numpy >=1.0 , <2.0 =py34_0", ("numpy", ">=1.0,<2.0", "py34_0", None)),  # conda's `VERSION =BUILD`
        ("numpy>= 1.2", ("numpy", ">=1.2", None, None)),
        ("python 3.11.*", ("python", "3.11.*", None, None)),
        ("python>=3.8,<3.12|3.7.*", ("python", ">=3.8,<3.12|3.7.*", None, None)),
        ("numpy 1.26.4 py311_0", ("numpy", "==1.26.4", "py311_0", None)),
        ("pytorch=2.0.1=*cuda*", ("pytorch", "==2.0.1", "*cuda*", None)),
        ("pytorch=*=*cuda*", ("pytorch", "*", "*cuda*", None)),
        ("openssl=3.0.8=h0a4308_0", ("openssl", "==3.0.8", "h0a4308_0", None)),
        ("pytorch::pytorch=2.0.1", ("pytorch", "2.0.1.*", None, ANACONDA + "pytorch/")),
        ("conda-forge/label/dev::numpy", ("numpy", None, None, ANACONDA + "conda-forge/label/dev/")),
        ("https://104.17.92.24:443::flask=1.0.2", ("flask", "1.0.2.*", None, "https://104.17.92.24/")),
        ("pytorch[version='>=2', build=*cuda*]", ("pytorch", ">=2", "*cuda*", None)),
        ('numpy[version=">=1,<2"]', ("numpy", ">=1,<2", None, None)),
        ("numpy[build_number='>=3', channel=conda-forge]", ("numpy", None, None, ANACONDA + "conda-forge/")),
        ("_libgcc_mutex", ("_libgcc_mutex", None, None, None)),
        ("mkl<2024.1", ("mkl", "<2024.1", None, None)),
        ("openssl 1.1.1w", ("openssl", "==1.1.1w", None, None)),
        ("https://repo.anaconda.com/pkgs/main/linux-64/ca-certificates-2025.2.25-h06a4308_0.conda", ("ca-certificates", None, None, None)),
        ("NumPy>=1.2", ("numpy", ">=1.2", None, None)),  # names are case-insensitive
        ("numpy =1.2", ("numpy", "1.2.*", None, None)),  # `=1.2` after a space is still 1.2.*, not a build
        ("numpy 1.2 =py_0", ("numpy", "==1.2", "py_0", None)),
        # conda reads an empty channel before `::` as no channel, and so does rattler (envkit's old grammar refused it)
        ("::numpy", ("numpy", None, None, None)),
    ],
)
def test_valid_specs_are_read_by_rattler(text: str, expected: tuple[str, str | None, str | None, str | None]) -> None:
    from envkit.conda.lint import parse_dependency

    spec = parse_dependency(text)
    assert not isinstance(spec, str), spec
    assert (spec.name.normalized, spec.version, spec.build, spec.channel.base_url if spec.channel else None) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("numpy=>1.2", "did you mean `>=`?"),
        ("numpy=<1", "did you mean `<=`?"),
        ("numpy=", "`=` is not followed by a version"),
        # conda and rattler read this as numpy 1.2.*; lint keeps calling the spaced `=` a typo
        ("numpy = 1.2", "no space"),
        ("numpy>=", "`>=` is not followed by a version"),
        (">=1.0", "no package name"),
        ("numpy,>=1", "not a package name"),
        ("num$py", "not a package name"),
        ("*", "not a package name"),
        # rattler accepts the next five by guessing (a build of `=`, `.`, `py$`, `py36 extra`; a
        # version 1.2.* for `=1.2=`); conda rejects `==1.2==` and `=1.2=`, and reads `=1.2.` as 1.2.*
        ("numpy==1.2==", "not a version"),
        ("numpy=1.2=", "ends with '='"),
        ("numpy=1.2.", "empty version part"),
        ("numpy 1.2 py36 extra", "too many space-separated parts"),
        ("numpy=1.2=py$", "not a build string"),
        ("numpy=1..2", "empty version part"),
        ("numpy>=1.0,", "empty constraint"),
        ("numpy>=1|", "empty constraint"),
        ("numpy (>=1", "unbalanced parentheses"),
        ("numpy >=1.2 <2", "not a build string"),  # rattler: build `<2`; conda: no such version
        ("python>=3.8;python_version<3", "not a build string"),  # a pip marker in a conda line
        ("bad chan::numpy", "not a channel"),  # rattler: the URL-quoted channel `bad%20chan`
        ("numpy[version=>=1,<2]", "quoting values that hold a comma"),
        ("numpy[colour=red]", "unknown field 'colour'"),
        # conda knows these fields, rattler (which solves envkit's locks) does not: the lock would fail
        ("numpy[features=mkl]", "unknown field 'features'"),
        ("numpy[name=numpy]", "unknown field 'name'"),
        ("numpy[version='1'", "brackets must close and come last"),
        ("numpy[version='']", "has no value"),
        ("numpy[build='']", "has no value"),  # rattler accepts an empty build
        ("numpy[build_number=x]", "not a number"),
    ],
)
def test_invalid_specs_say_why(text: str, says: str) -> None:
    from envkit.conda.lint import parse_dependency

    reason = parse_dependency(text)
    assert isinstance(reason, str) and says in reason, reason


def test_duplicate_packages(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- numpy", "- NumPy", "- scipy=1.11", "- scipy>=1.12", "- pip", "- pip:",
                                      "  - rich", "  - Rich", "  - attrs==23.1", "  - attrs==23.2"))
    assert found(report) == [("duplicate-package", 6, "warning"), ("duplicate-package", 8, "error"),
                             ("duplicate-package", 12, "warning"), ("duplicate-package", 14, "error")]
    assert "line 7" in report.errors[0].message and "only one of them takes effect" in report.errors[0].message


def test_pip_list_without_pip(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- python", "- pip:", "  - rich"))
    assert found(report) == [("pip-without-pip", 6, "warning")] and "add `- pip`" in report.warnings[0].message
    assert lint_text(tmp_path, deps("- python", "- pip: []")).findings == ()


def test_same_package_from_conda_and_pip(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- numpy", "- pytorch=2.0.1", "- pip", "- pip:", "  - numpy==1.26.4", "  - torch==2.0.1",
                                      "  - -e ./local", "  - git+https://github.com/a/b.git"))
    assert found(report) == [("conda-and-pip", 9, "warning"), ("conda-and-pip", 10, "warning")]
    assert "conda's `pytorch=2.0.1` (line 6)" in report.warnings[1].message


def test_cudatoolkit_next_to_the_pytorch_channels_pytorch_2(tmp_path: Path) -> None:
    head = "name: x\nchannels:\n  - pytorch\n  - nvidia\n"
    report = lint_text(tmp_path, deps("- pytorch=2.1", "- cudatoolkit=11.7", head=head))
    (error,) = report.errors
    assert (error.code, error.line) == ("cudatoolkit-pytorch2", 7)
    assert "`pytorch-cuda=11.7`" in error.message and "add the `nvidia` channel" not in error.message
    unpinned = lint_text(tmp_path, deps("- pytorch", "- cudatoolkit", head=head))
    assert "an unpinned `pytorch`" in unpinned.errors[0].message and "`pytorch-cuda=X.Y`" in unpinned.errors[0].message
    below_2_1 = lint_text(tmp_path, deps("- pytorch>=1.12,<2.1", "- cudatoolkit=11.8", head=head))  # admits 2.0.x
    assert [f.code for f in below_2_1.errors] == ["cudatoolkit-pytorch2"]
    explicit = lint_text(tmp_path, deps("- pytorch::pytorch>=2", "- cudatoolkit=11.8"))  # conda-forge listed, pytorch:: wins
    assert [f.code for f in explicit.errors] == ["cudatoolkit-pytorch2"]


@pytest.mark.parametrize(
    ("head", "torch"),
    [("name: x\nchannels:\n  - pytorch\n  - defaults\n", "pytorch=1.13.1"),  # 1.x used cudatoolkit
     ("name: x\nchannels:\n  - pytorch\n  - defaults\n", "pytorch>=1.12,<2"),
     ("name: x\nchannels:\n  - conda-forge\n  - pytorch\n", "pytorch=2.0.1")],  # conda-forge's pytorch uses cudatoolkit
    ids=["pytorch-1.13", "below-2", "conda-forge-first"],
)
def test_cudatoolkit_is_right_elsewhere(tmp_path: Path, head: str, torch: str) -> None:
    report = lint_text(tmp_path, deps(f"- {torch}", "- cudatoolkit=11.7", head=head))
    assert report.errors == ()


def test_pytorch_cuda_needs_the_nvidia_channel(tmp_path: Path) -> None:
    without = lint_text(tmp_path, deps("- pytorch=2.0.1", "- pytorch-cuda=11.8", head="name: x\nchannels:\n  - pytorch\n"))
    assert found(without) == [("cuda-needs-nvidia", 6, "error")] and "add `- nvidia`" in without.errors[0].message
    url = "name: x\nchannels:\n  - pytorch\n  - https://conda.anaconda.org/nvidia/\n"
    assert lint_text(tmp_path, deps("- pytorch=2.0.1", "- pytorch-cuda=11.8", head=url)).findings == ()
    build = lint_text(tmp_path, deps("- pytorch=2.0.1=*cuda*", "- cuda-version=11.8", head="name: x\nchannels:\n  - pytorch\n"))
    assert [f.code for f in build.errors] == ["cuda-needs-nvidia"]


def test_cuda_build_without_a_cuda_pin(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- pytorch=2.1.2=*cuda*"))  # conda-forge's CUDA build: no nvidia channel needed
    assert found(report) == [("cuda-unpinned", 5, "warning")] and "`pytorch-cuda=11.8`" in report.warnings[0].message
    assert lint_text(tmp_path, deps("- pytorch=2.1.2=*cuda*", "- cuda-version=11.8")).findings == ()
    assert lint_text(tmp_path, deps("- pytorch=2.1.2=cuda118*")).findings == ()  # the build string pins it
    nvidia = "name: x\nchannels:\n  - pytorch\n  - nvidia\n"
    assert [f.code for f in lint_text(tmp_path, deps("- pytorch=2.0.1", "- pytorch-cuda", head=nvidia)).findings] == ["cuda-unpinned"]


def test_unpinned_pytorch_is_a_warning(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- pytorch", "- pip", "- pip:", "  - torch"))
    assert found(report) == [("unpinned-pytorch", 5, "warning"), ("unpinned-pytorch", 8, "warning"),
                             ("conda-and-pip", 8, "warning")]
    assert report.exit_code == 0 and "`pytorch=2.0.1`" in report.warnings[0].message
    assert "`torch==2.0.1`" in report.warnings[1].message
    assert lint_text(tmp_path, deps("- pytorch=*")).warnings[0].code == "unpinned-pytorch"


def test_exact_build_string_is_a_warning(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- openssl=3.0.8=h0a4308_0", "- numpy 1.26.4 py311_0"))
    assert found(report) == [("build-string", 5, "warning"), ("build-string", 6, "warning")]
    assert "--no-builds" in report.warnings[0].message


def test_environment_variable_in_a_channel_is_a_warning(tmp_path: Path) -> None:
    head = "name: x\nchannels:\n  - https://repo.example/t/${TOKEN}/main\n  - conda-forge\n"
    report = lint_text(tmp_path, deps("- numpy", head=head))
    assert found(report) == [("channel-env-var", 3, "warning")] and "${TOKEN}" in report.warnings[0].message


def test_selectors_are_a_warning(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- pywin32  # [win]", "- c  # pinned for speed", "- pip", "- pip:", "  - uvloop # [unix]"))
    assert found(report) == [("selector", 5, "warning"), ("selector", 9, "warning")]
    assert "`# [win]`" in report.warnings[0].message and "every platform" in report.warnings[0].message


def test_prefix_is_a_warning(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- numpy") + "prefix: /home/me/miniconda3/envs/x\n")
    assert found(report) == [("prefix", 6, "warning")] and report.exit_code == 0


def test_missing_name_channels_and_dependencies_are_warnings(tmp_path: Path) -> None:
    report = lint_text(tmp_path, "variables:\n  A: b\n")
    assert sorted(f.code for f in report.warnings) == ["no-channels", "no-dependencies", "no-name"]
    assert report.exit_code == 0


@pytest.mark.parametrize(("name", "error"), [("env.txt", True), ("environment", True), ("env.yaml", False), ("env.YML", False)])
def test_file_extension(tmp_path: Path, name: str, error: bool) -> None:
    report = lint_text(tmp_path, deps("- numpy"), name=name)
    assert [f.code for f in report.errors] == (["file-extension"] if error else [])
    if error:
        assert "rename it to" in report.errors[0].message


def test_every_finding_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    report = lint_text(tmp_path, "chanels: [\"${X}\"]\n" + "dependencies:\n  - numpy=>1\n  - pytorch  # [linux]\n  - cudatoolkit\n"
                       "  - pip:\n    - torch\n  - npm:\n    - a\nprefix: /p\n")
    assert report.errors and report.warnings
    assert [f.line for f in report.findings] == sorted(f.line for f in report.findings)
    for f in report.findings:
        assert f.path == str(tmp_path / "environment.yml") and f.line >= 1 and "\n" not in f.message
        assert str(f).startswith(f"{f.path}:{f.line}: {f.severity}: ")


# ---------------------------------------------------------------------------------------------
# the command


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_exit_codes_and_human_output(tmp_path: Path) -> None:
    code, out, _ = run("lint", ENVIRONMENTS / "environment.yml")
    assert code == 0 and out.strip().endswith("environment.yml: ok")
    blog = ENVIRONMENTS / "blog-post.yml"
    code, out, _ = run("lint", blog)
    assert code == 1 and f"{blog}:10: error: `cudatoolkit=11.8`" in out and out.strip().endswith("1 error, 0 warnings")
    warned = tmp_path / "environment.yml"
    warned.write_text(deps("- pytorch"))
    code, out, _ = run("lint", warned)
    assert code == 0 and f"{warned}:5: warning: `pytorch` has no version" in out


def test_cli_json(tmp_path: Path) -> None:
    blog = ENVIRONMENTS / "blog-post.yml"
    code, out, _ = run("lint", "--json", blog)
    doc = json.loads(out)
    assert code == 1 and set(doc) == {"file", "errors", "warnings", "findings"}
    assert doc["file"] == str(blog) and (doc["errors"], doc["warnings"]) == (1, 0)
    assert doc["findings"] == [{"path": str(blog), "line": 10, "severity": "error", "code": "cudatoolkit-pytorch2",
                                "message": doc["findings"][0]["message"]}]
    code, out, _ = run("lint", "--json", ENVIRONMENTS / "environment-cpu.yml")
    assert code == 0 and json.loads(out)["findings"] == []


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_bad_yaml_exits_2_with_one_line(tmp_path: Path, as_json: bool) -> None:
    bad = tmp_path / "environment.yml"
    bad.write_text("name: x\ndependencies:\n  - numpy\n\t- scipy\n")
    code, out, err = run("lint", *(["--json"] if as_json else []), bad)
    (line,) = err.strip().splitlines()
    # with --json, stdout holds the one document the contract promises: the same error, exit_code 2
    assert code == 2 and (json.loads(out) == {"error": line.removeprefix("envkit: error: "), "exit_code": 2} if as_json else out == "")
    assert line.startswith(f"envkit: error: {bad}:4: not valid YAML") and "indent with spaces" in line


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    code, out, err = run("lint", tmp_path / "nope.yml")
    assert code == 2 and out == "" and err.strip() == f"envkit: error: {tmp_path / 'nope.yml'}: no such file; check the path"


def test_cli_in_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "environment.yml"
    bad.write_text("- numpy\n")
    proc = subprocess.run([sys.executable, "-m", "envkit", "lint", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (f"envkit: error: {bad}:1: the top level is a list, not a mapping; an environment.yml has "
                                   "`name:`, `channels:` and `dependencies:` keys (a requirements .txt is not an environment.yml)")


def test_help_lists_lint() -> None:
    code, out, _ = run("--help")
    assert code == 0 and "lint" in out


# ---------------------------------------------------------------------------------------------
# issue 10, item 3: what conda refuses is an error; advice only where it applies


LOCAL = "name: x\nchannels:\n  - file:///srv/conda/local\n"


@pytest.mark.parametrize(
    "channels",
    ["pytorch", "https://conda.anaconda.org/pytorch", "https://conda.anaconda.org/pytorch/", "pytorch/label/nightly",
     "pytorch-nightly", "https://anaconda.org/pytorch"],
)
@pytest.mark.parametrize("cuda", ["- pytorch-cuda=11.8", "- pytorch=2.0.1=*cuda*"])
def test_cuda_needs_nvidia_where_the_public_pytorch_channel_is_listed(tmp_path: Path, channels: str, cuda: str) -> None:
    torch = () if "pytorch=" in cuda else ("- pytorch=2.0.1",)
    report = lint_text(tmp_path, deps(*torch, cuda, "- cuda-version=11.8", head=f"name: x\nchannels:\n  - {channels}\n"))
    assert [f.code for f in report.errors] == ["cuda-needs-nvidia"], render.lint_text(report)


@pytest.mark.parametrize(
    "head",
    [LOCAL, "name: x\nchannels:\n  - file:///srv/conda/pytorch\n",
     "name: x\nchannels:\n  - https://mirror.example.org/pytorch\n",
     "name: x\nchannels:\n  - https://mirrors.tuna.tsinghua.edu.cn/anaconda/cloud/pytorch/\n",
     "name: x\nchannels:\n  - https://artifactory.example/api/conda/pytorch-remote\n",
     "name: x\nchannels:\n  - conda-forge\n  - pytorch\n"],  # conda-forge first: its CUDA pytorch needs no nvidia
    ids=["local", "local-named-pytorch", "mirror", "tuna-mirror", "artifactory", "conda-forge-first"],
)
def test_cuda_needs_nvidia_does_not_judge_local_or_mirror_channels(tmp_path: Path, head: str) -> None:
    report = lint_text(tmp_path, deps("- pytorch=2.0.1=py3.11_cuda11.8_cudnn8.7.0_0", "- pytorch-cuda=11.8=h0_5", head=head))
    if "conda-forge" in head:  # pytorch-cuda exists only on the public pytorch channel, which is listed
        assert [f.code for f in report.errors] == ["cuda-needs-nvidia"] and report.errors[0].line == 7
        report = lint_text(tmp_path, deps("- pytorch=2.0.1=py3.11_cuda11.8_cudnn8.7.0_0", "- cuda-version=11.8", head=head))
    assert report.errors == (), render.lint_text(report)


def test_an_explicit_public_channel_on_the_package_is_judged(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps("- pytorch::pytorch-cuda=11.8", "- pytorch::pytorch=2.0.1", head=LOCAL))
    assert [(f.code, f.line) for f in report.errors] == [("cuda-needs-nvidia", 5)]
    report = lint_text(tmp_path, deps("- pytorch::pytorch-cuda=11.8", "- nvidia::cuda-cudart", head=LOCAL))
    assert report.errors == ()


@pytest.mark.parametrize("name", ["my env", "a/b", "a:b", "a#b", "base", "root", '"tab\\there"', "''", ".", ".."])
def test_names_conda_refuses_are_errors(tmp_path: Path, name: str) -> None:  # `name` as written in YAML
    report = lint_text(tmp_path, deps("- numpy", head=f"name: {name}\nchannels:\n  - conda-forge\n"))
    (error,) = report.errors
    assert (error.code, error.line) == ("invalid-name", 1), render.lint_text(report)
    assert "-p PREFIX" in error.message or "choose another name" in error.message or "write a name" in error.message


@pytest.mark.parametrize("name", ["train", "train-1.0", "py3.11_env", "Base", "base2", "ünïcode", "'5'"])
def test_names_conda_takes_are_fine(tmp_path: Path, name: str) -> None:
    assert lint_text(tmp_path, deps("- numpy", head=f"name: {name}\nchannels:\n  - conda-forge\n")).findings == ()


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        (deps("- numpy", "- 5"), 6, "`5` under `dependencies:` is a number"),
        (deps("- numpy", "- 1.5"), 6, "`1.5` under `dependencies:` is a number"),
        (deps("- numpy", "- 3.10"), 6, "is a number (3.1)"),
        (deps("- numpy", "- true"), 6, "is true/false"),
        (deps("- numpy", "- yes"), 6, "is true/false"),
        (deps("- numpy", "- 2024-01-01"), 6, "is a date"),
        (deps("- pip", "- pip:", "  - rich", "  - 5"), 8, "`5` under `pip:` is a number"),
        (deps("- numpy", head="name: 5\nchannels:\n  - conda-forge\n"), 1, "`5` in `name:` is a number"),
        (deps("- numpy", head="name: 3.10\nchannels:\n  - conda-forge\n"), 1, "(3.1)"),
        (deps("- numpy", head="name: x\nchannels: [5]\n\n"), 2, "`5` under `channels:` is a number"),
        (deps("- numpy") + "platforms:\n  - 64\n", 7, "`64` under `platforms:` is a number"),
    ],
)
def test_values_that_are_not_text_are_errors_at_their_line(tmp_path: Path, text: str, line: int, says: str) -> None:
    report = lint_text(tmp_path, text)
    (error,) = report.errors
    assert (error.code, error.line) == ("not-text", line) and says in error.message, render.lint_text(report)
    assert "in quotes" in error.message and report.warnings == ()  # no second finding about the same value


def test_quoted_values_are_text(tmp_path: Path) -> None:
    report = lint_text(tmp_path, deps('- "5"', "- '1.5'", "- pip", "- pip:", '  - "rich"', head='name: "5"\nchannels:\n  - conda-forge\n'))
    assert report.errors == (), render.lint_text(report)


@pytest.mark.parametrize(
    ("line", "says"),
    [("requests>>2", "not a requirement pip can read"), ("foo bar", "not a requirement pip can read"),
     ("==1.0", "not a requirement pip can read"), ("numpy=1.26", "write `numpy==1.26`"),
     ("torch = 2.0.1", "write `torch==2.0.1`"), ("--frobnicate", "not an option pip accepts"),
     ("-e", "`-e` needs a value"), ("--index-url", "needs a value"), ("--pre yes-please", "takes no value"),
     ("requests==2.31 --nope", "`--nope` cannot follow a requirement"), ("requests[socks", "not a requirement")],
)
def test_pip_lines_pip_cannot_read_are_errors_at_their_line(tmp_path: Path, line: str, says: str) -> None:
    report = lint_text(tmp_path, deps("- pip", "- pip:", "  - rich==13.7.1", f"  - {json.dumps(line)}"))
    (error,) = report.errors
    assert (error.code, error.line) == ("invalid-pip", 8) and f"`{line}`" in error.message and says in error.message, render.lint_text(report)


GOOD_PIP_LINES = [
    "requests", "requests[socks]>=2,<3", "torch==2.0.1+cu118", "attrs==23.1; python_version >= '3.8'",
    "Foo_Bar.baz~=1.4", "b @ https://example.org/b-1.0.tar.gz", "git+https://github.com/a/b.git@v1#egg=b",
    "https://example.org/wheels/c-1.0-py3-none-any.whl", "./wheels/d-1.0-py3-none-any.whl", "./local-project",
    "-e ./local-project", "--editable=./local-project", "-r extra-requirements.txt", "-rextra-requirements.txt",
    "-c constraints.txt", "--index-url https://pypi.example.org/simple", "--extra-index-url=https://pypi.example.org/simple",
    "-f ./wheels", "--no-index", "--pre", "--prefer-binary", "--trusted-host pypi.example.org",
    "e==1.0 --hash=sha256:" + "a" * 64,
]


@pytest.mark.parametrize("line", GOOD_PIP_LINES)
def test_pip_lines_pip_accepts_are_fine(tmp_path: Path, line: str) -> None:
    report = lint_text(tmp_path, deps("- pip", "- pip:", f"  - {json.dumps(line)}"))
    assert report.errors == (), render.lint_text(report)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pip's own pkg_resources import
def test_the_pip_lines_called_fine_are_ones_real_pip_reads(tmp_path: Path) -> None:
    """Cross-check with pip's own requirements-file parser (what conda runs on the `pip:` list)."""
    req_file = pytest.importorskip("pip._internal.req.req_file")
    from pip._internal.network.session import PipSession
    from pip._internal.req.constructors import install_req_from_parsed_requirement

    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "d-1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "local-project").mkdir()
    (tmp_path / "local-project" / "pyproject.toml").write_text("[project]\nname = 'lp'\nversion = '1'\n")
    (tmp_path / "extra-requirements.txt").write_text("")
    (tmp_path / "constraints.txt").write_text("")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(GOOD_PIP_LINES) + "\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        parsed = [install_req_from_parsed_requirement(r) for r in req_file.parse_requirements(str(requirements), session=PipSession())]
    finally:
        os.chdir(cwd)
    assert len(parsed) == len([line for line in GOOD_PIP_LINES if not line.startswith("-") or line.startswith(("-e", "--editable"))])


@pytest.mark.parametrize(
    ("spec", "advice"),
    [("pytorch=2.0.1=py3.11_cuda11.8_cudnn8.7.0_0", "`*cuda*`"), ("pytorch 2.1.2 cuda118py311h1234567_0", "`*cuda*`"),
     ("pytorch=2.0.1=py3.11_cpu_0", "`*cpu*`"), ("numpy=1.25.0=py311h0_0", None), ("openssl=3.0.8=h0a4308_0", None),
     ("ucx=1.14=h1234_nocuda_0", None), ("magma=2.7=cuda_none_h0_0", None)],
)
def test_build_string_advice_names_the_variant_the_build_picks(tmp_path: Path, spec: str, advice: str | None) -> None:
    report = lint_text(tmp_path, deps(f"- {spec}", "- cuda-version=11.8", "- pytorch-cuda=11.8", head="name: x\nchannels:\n  - conda-forge\n  - nvidia\n"))
    (warning,) = [f for f in report.findings if f.code == "build-string"]
    assert "--no-builds" in warning.message
    assert ("*cuda*" in warning.message) == (advice == "`*cuda*`") and ("*cpu*" in warning.message) == (advice == "`*cpu*`")


@pytest.mark.parametrize("build", ["*nocuda*", "cpu_*", "*cpu*", "py3.11_0", "h1234_0", "cuda_none*"])
def test_build_patterns_that_do_not_pick_cuda_are_not_cuda_requests(tmp_path: Path, build: str) -> None:
    report = lint_text(tmp_path, deps(f"- pytorch=2.1.2={build}", head="name: x\nchannels:\n  - pytorch\n"))
    assert not {"cuda-unpinned", "cuda-needs-nvidia"} & {f.code for f in report.findings}, render.lint_text(report)


@pytest.mark.parametrize("build", ["*cuda*", "py3.11_cuda11.8*", "cuda118*", "*cu118*", "*_cuda"])
def test_build_patterns_that_pick_cuda_are_cuda_requests(tmp_path: Path, build: str) -> None:
    codes = {f.code for f in lint_text(tmp_path, deps(f"- pytorch=2.0.1={build}", head="name: x\nchannels:\n  - pytorch\n")).findings}
    assert "cuda-needs-nvidia" in codes


@pytest.mark.parametrize(
    ("torch", "error"),
    [("pytorch=1.13.*", False), ("pytorch<=1.99", False), ("pytorch<2.0.0", False), ("pytorch==1.13.1", False),
     ("pytorch=2", True), ("pytorch<=2.0", True), ("pytorch>=1.13", True), ("pytorch<1|>=2", True), ("pytorch<2.0.1", True)],
)
def test_cudatoolkit_rule_compares_versions_as_conda_does(tmp_path: Path, torch: str, error: bool) -> None:
    report = lint_text(tmp_path, deps(f"- {json.dumps(torch)}", "- cudatoolkit=11.7", head="name: x\nchannels:\n  - pytorch\n  - nvidia\n"))
    assert ("cudatoolkit-pytorch2" in {f.code for f in report.errors}) == error, render.lint_text(report)


def test_envkits_own_export_lints_clean_and_solves(tmp_path: Path, channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """create from a local channel (the CUDA build), export it three ways, lint each: no errors; the
    full export solves again. A folder name conda refuses ("my env") becomes a `name:` it takes."""
    from tests.conda.channel import CUDA_BUILD
    from tests.conda.conftest import write_spec

    spec = write_spec(tmp_path, channel, "  - python=3.11\n  - pytorch=2.0.1\n  - pytorch-cuda=11.8\n  - numpy\n  - pip\n")
    assert run("lint", spec)[0] == 0
    assert run("lock", "-f", spec, "-p", "linux-64", "--with-cuda", "11.8")[0] == 0
    prefix = tmp_path / "envs" / "my env"
    code, _, err = run("create", spec, "-p", prefix)
    assert code == 0, err
    exported = {}
    (tmp_path / "exported").mkdir()  # away from the first spec's conda-lock.yml
    for flags in ((), ("--no-builds",), ("--from-history",)):
        out = tmp_path / "exported" / f"export{''.join(flags) or '-full'}.yml"
        code, _, err = run("export", "-p", prefix, *flags, "-o", out)
        assert code == 0, err
        code, text, _ = run("lint", "--json", out)
        doc = json.loads(text)
        assert (code, doc["errors"]) == (0, 0), (out.read_text(), doc)
        assert {f["code"] for f in doc["findings"]} <= {"build-string"}, doc  # exact builds: a warning, by design
        exported[flags] = out.read_text()
    assert f"pytorch=2.0.1={CUDA_BUILD}" in exported[()] and "name: my-env" in exported[()]
    # the full export installs the same environment again: it solves, CUDA build included
    code, plan, err = run("create", tmp_path / "exported" / "export-full.yml", "-p", tmp_path / "again", "--dry-run", "--with-cuda", "11.8")
    assert code == 0 and CUDA_BUILD in plan, err
    # without -n/-p, export takes the active environment (as conda env export does) and says so
    monkeypatch.setenv("CONDA_PREFIX", str(prefix))
    code, text, err = run("export")
    assert code == 0 and text == run("export", "-p", prefix)[1] and f"exporting the active environment {prefix}" in err


@pytest.mark.parametrize("cuda", ["- pytorch-cuda=11.8", "- pytorch-cuda=11.8=h7e8668a_5"])
def test_cudatoolkit_beside_pytorch_cuda_is_not_an_error(tmp_path: Path, cuda: str) -> None:
    """What `envkit export --no-builds` writes for an environment from the pytorch channel: pytorch-cuda picks the
    CUDA build, so the cudatoolkit it pulled in is harmless."""
    head = "name: x\nchannels:\n  - pytorch\n  - nvidia\n"
    report = lint_text(tmp_path, deps("- pytorch=2.0.1", cuda, "- cudatoolkit=11.8.0", head=head))
    assert report.errors == (), render.lint_text(report)
    report = lint_text(tmp_path, deps("- pytorch=2.0.1=py3.11_cuda11.8_cudnn8.7.0_0", "- cudatoolkit=11.8.0", head=head))
    assert report.errors == (), render.lint_text(report)


@pytest.mark.parametrize(("entry", "fix"), [("- numpy: 1.26", "write `- numpy=1.26`"), ("- python: '3.11'", "write `- python=3.11`")])
def test_a_package_written_as_a_mapping_is_an_invalid_spec(tmp_path: Path, entry: str, fix: str) -> None:
    report = lint_text(tmp_path, deps("- pip", entry))
    (error,) = report.errors
    assert (error.code, error.line) == ("invalid-spec", 6) and fix in error.message, render.lint_text(report)
