from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

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
    assert code == expected, f"{name} ({row['edge_case']}): {report.to_text() if report else ''}"
    if report is not None:
        found = {f.code for f in report.findings}
        assert EDGE_CASE_CODES.get(name, set()) <= found, report.to_text()
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
    assert report.findings == (), report.to_text()


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
    assert report.to_text() == f"{tmp_path / 'environment.yml'}: ok"


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
