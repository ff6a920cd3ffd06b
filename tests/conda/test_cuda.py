"""Issue 10 item 1: the spec's own CUDA intent sets __cuda for lock and create alike, and a plan
that pairs a CPU build of pytorch with a CUDA pin is refused (exit 1), never a silent result.

Real rattler solves on local channels whose pytorch packages copy the public pytorch channel's
dependency structure (examples/local_channel.py); the plan check also runs on the published
records themselves (tests/data/pytorch-channel-py311-linux-64.json). No GPU is needed or mocked:
``__cuda`` is a virtual package the solve assumes, not something detected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from envkit.cli import main
from envkit.conda.lock import read_lock
from envkit.conda.platforms import CUDA_WITHOUT_VERSION, cuda_from_specs
from envkit.conda.solver import check_cuda_plan, cpu_builds_beside_cuda
from envkit.errors import CheckFailed, CpuBuildWithCudaPin
from tests.conda.channel import (
    CPU_BUILD,
    CUDA_BUILD,
    build_channel,
    reference_channels,
    reference_packages,
)
from tests.conda.conftest import write_spec
from tests.conda.pip_index import Wheel, build_index, index_environment

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "tests" / "data" / "pytorch-channel-py311-linux-64.json"
BOTH = ["-p", "linux-64", "-p", "win-64"]


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "panic" not in result.output
    return result.output


def builds(lock: Path, name: str = "pytorch") -> dict[str, str]:
    return {p.platform: p.build for p in read_lock(lock).packages if p.name == name}


# -- the intent, as a pure function --------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "cuda"),
    [
        (["python=3.11", "pytorch=2.0.1", "pytorch-cuda=11.8"], "11.8"),
        (["pytorch", "pytorch-cuda 11.7.*"], "11.7"),
        (["pytorch", "cuda-version>=12.1,<13"], "12.1"),
        (["pytorch", "cudatoolkit==11.3.1"], "11.3"),
        (["pytorch=2.0.1=py3.11_cuda11.8*"], "11.8"),
        (["pytorch 2.1.2 cuda118py311*"], "11.8"),
        (["pytorch[build=*cu121*]"], "12.1"),
        (["pytorch-cuda=11.8", "cuda-version=12.1"], "12.1"),  # the driver must cover the highest
        (["pytorch=2.0.1=*cuda*"], CUDA_WITHOUT_VERSION),  # a CUDA build with no version
        (["pytorch", "pytorch-cuda"], CUDA_WITHOUT_VERSION),
        (["pytorch-cuda<12"], CUDA_WITHOUT_VERSION),  # an upper bound says nothing about the driver
        (["python=3.11", "pytorch=2.0.1", "numpy"], None),
        (["pytorch", "cpuonly"], None),
        (["cudnn", "pytorch=2.0.1=*cpu*"], None),
    ],
)
def test_cuda_intent_of_a_spec(lines: list[str], cuda: str | None) -> None:
    assert cuda_from_specs(lines) == cuda


@pytest.mark.parametrize(
    ("lines", "cuda"),
    [
        (["pytorch-cuda>11.7"], "11.7"),  # the versions just above 11.7 are 11.7.x
        (["cuda-version=12"], "12.0"),  # `=12` is 12.*: its lowest is 12.0
        (["cuda-version>=11.7.1,<12"], "11.7"),
        (["cudatoolkit 11.8.0 h4ba93d1_12"], "11.8"),
        (["pytorch-cuda!=11.8"], CUDA_WITHOUT_VERSION),  # no lower bound: nothing said about the driver
        (["cuda-version[version='>=12.1']"], "12.1"),
        (["pytorch-cuda=11.8|12.1"], "11.8"),
    ],
)
def test_cuda_pins_are_matched_by_rattler(lines: list[str], cuda: str | None) -> None:
    """The lowest version a pin admits, by rattler's VersionSpec (conda's ordering), not by reading digits."""
    assert cuda_from_specs(lines) == cuda


@pytest.mark.parametrize(
    ("spec", "lowest", "admits_2"),
    [
        (">=1.13", "1.13", True), ("<2", None, False), ("1.13.*", "1.13", False), ("~=1.13", "1.13", False),
        ("!=2.0", None, True), ("==2.0.1", "2.0.1", True), ("<=2.0", None, True), ("<2.0.1", None, True),
        (">=1.12,<2|>=2.1", "1.12", True), (">2.5,<2.6", "2.5.1", True), ("*", None, True),
        (">=2.0.0a1,<2.0", "2.0.0a1", False),  # only pre-releases of 2.0: not 2.x
        ("2.*", "2", True), ("1.*|<2", None, False),
    ],
)
def test_conda_version_bounds(spec: str, lowest: str | None, admits_2: bool) -> None:
    from rattler import Version

    from envkit.conda.platforms import admits_at_least, lowest_version

    low = lowest_version(spec)
    assert (low if low is None else str(low)) == (lowest if lowest is None else str(Version(lowest)))
    assert admits_at_least(spec, "2") is admits_2


def test_with_cuda_wins_over_the_spec_and_empty_means_none() -> None:
    assert cuda_from_specs(["pytorch-cuda=11.8"], "12.1") == "12.1"
    assert cuda_from_specs(["pytorch-cuda=11.8"], "") is None
    assert cuda_from_specs(["pytorch"], " 11.8 ") == "11.8"


# -- the plan check, on the published records -----------------------------------------------


def published() -> dict[str, tuple[str, str, str]]:
    doc = json.loads(RECORDS.read_text())
    return {fn: (r["name"], r["version"], r["build"]) for fn, r in doc["packages"].items()}


def test_plan_check_refuses_the_published_cpu_build_next_to_pytorch_cuda() -> None:
    rec = published()
    cpu, cuda, pin = (rec["pytorch-2.0.1-py3.11_cpu_0.tar.bz2"], rec["pytorch-2.0.1-py3.11_cuda11.8_cudnn8.7.0_0.tar.bz2"],
                      rec["pytorch-cuda-11.8-h7e8668a_5.tar.bz2"])
    with pytest.raises(CpuBuildWithCudaPin) as refused:
        check_cuda_plan([cpu, pin, ("python", "3.11.4", "h0_0")], "linux-64", None, source=Path("env.yml"))
    assert isinstance(refused.value, CheckFailed) and refused.value.exit_code == 1
    message = refused.value.message
    assert "pytorch 2.0.1 py3.11_cpu_0" in message and "pytorch-cuda 11.8" in message and "linux-64" in message
    assert "--with-cuda 11.8" in message and message.startswith("env.yml: ")
    check_cuda_plan([cuda, pin], "linux-64", "11.8", source=Path("env.yml"))  # the CUDA build: fine
    check_cuda_plan([cpu], "linux-64", None, source=Path("env.yml"))  # a CPU environment: fine
    # torchvision/torchaudio CPU builds beside a CUDA pin are named too, and cudatoolkit is a pin
    tv_cpu = rec["torchvision-0.15.2-py311_cpu.tar.bz2"]
    found, pins = cpu_builds_beside_cuda([cuda, tv_cpu, ("cudatoolkit", "11.8.0", "h0_0")])
    assert found == ["torchvision 0.15.2 py311_cpu"] and pins == ["cudatoolkit 11.8.0"]
    assert cpu_builds_beside_cuda([cuda, rec["torchvision-0.15.2-py311_cu118.tar.bz2"], pin])[0] == []
    # conda-forge's build strings: cpu_mkl_... is a CPU build, cuda118py311... a CUDA one
    assert cpu_builds_beside_cuda([("pytorch", "2.1.2", "cpu_mkl_py311h0_100"), ("cuda-version", "11.8", "h0_0")])[0]
    assert not cpu_builds_beside_cuda([("pytorch", "2.1.2", "cuda118py311h0_300"), ("cuda-version", "11.8", "h0_0")])[0]


def test_test_channel_copies_the_published_dependency_structure() -> None:
    """The channel's pytorch records depend on what the published ones depend on (the packages
    it carries), plus `__cuda` on the CUDA build: the one addition its docstring names."""
    doc = json.loads(RECORDS.read_text())["packages"]
    ours = {(p.name, p.build): p for p in reference_packages(("linux-64",))}
    carried = {p.name for p in ours.values()}

    def names(deps: list[str] | tuple[str, ...]) -> set[str]:
        return {d.split()[0] for d in deps}

    for fn in ("pytorch-2.0.1-py3.11_cpu_0.tar.bz2", "pytorch-2.0.1-py3.11_cuda11.8_cudnn8.7.0_0.tar.bz2",
               "torchvision-0.15.2-py311_cu118.tar.bz2", "torchaudio-2.0.2-py311_cpu.tar.bz2"):
        real = doc[fn]
        mine = ours[(real["name"], real["build"])]
        assert names(real["depends"]) & carried <= names(mine.depends), fn
        assert list(mine.constrains) == real.get("constrains", []), fn
        assert {"pytorch-mutex"} & names(mine.depends)
        if "cuda" in real["build"] or "cu1" in real["build"]:
            assert [d for d in real["depends"] if d.startswith("pytorch-mutex")] == ["pytorch-mutex 1.0 cuda"]


# -- lock and create, on the real solver ----------------------------------------------------

CUDA_DEPS = "  - python=3.11\n  - pytorch=2.0.1\n  - pytorch-cuda=11.8\n"


def test_lock_of_a_pytorch_cuda_spec_picks_the_cuda_build_with_no_flag(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, CUDA_DEPS)
    run("lock", "-f", str(spec), *BOTH)
    lock = tmp_path / "conda-lock.yml"
    assert builds(lock) == {"linux-64": CUDA_BUILD, "win-64": CUDA_BUILD}
    assert {p.build for p in read_lock(lock).packages if p.name == "pytorch-mutex"} == {"cuda"}
    # recorded as --with-cuda is, so that the hash is conda-lock's for --with-cuda 11.8 ...
    assert read_lock(lock).with_cuda == "11.8"
    from conda_lock.content_hash import compute_content_hashes
    from conda_lock.src_parser.environment_yaml import parse_environment_file
    from conda_lock.virtual_package import default_virtual_package_repodata

    from envkit.conda.spec import PIP_MAPPING

    lock_spec = parse_environment_file(spec, ["linux-64", "win-64"], mapping_url=str(PIP_MAPPING))
    assert dict(read_lock(lock).content_hash) == compute_content_hashes(lock_spec, default_virtual_package_repodata(cuda_version="11.8"))
    # ... and `lock --check`, with or without the flag, and create-from-lock agree that it is fresh
    run("lock", "-f", str(spec), "--check")
    run("lock", "-f", str(spec), "--check", "--with-cuda", "11.8")
    assert "--with-cuda: 11.8 -> 12.1" in run("lock", "-f", str(spec), "--check", "--with-cuda", "12.1", code=1)
    plan = run("create", str(spec), "-p", str(tmp_path / "env"), "--dry-run")
    assert f"pytorch 2.0.1 {CUDA_BUILD}" in plan and "solved from the spec now" not in plan
    # create from that lock with another CUDA is what `lock --check --with-cuda 12.1` says: stale
    assert "--with-cuda: 11.8 -> 12.1" in run("create", str(spec), "-p", str(tmp_path / "env"), "--with-cuda", "12.1", code=1)
    assert not (tmp_path / "env").exists()


def test_a_lock_solved_without_cuda_is_stale_for_a_cuda_spec(tmp_path: Path, channel: Path) -> None:
    """A lock written before the spec's intent counted (it records no CUDA) is stale, not fresh."""
    spec = write_spec(tmp_path, channel, CUDA_DEPS)
    run("lock", "-f", str(spec), "-p", "linux-64")
    lock = tmp_path / "conda-lock.yml"
    text = lock.read_text()
    assert "envkit.with_cuda: '11.8'" in text
    lock.write_text(text.replace("envkit.with_cuda: '11.8'", "envkit.with_cuda: ''"))
    out = run("lock", "-f", str(spec), "--check", code=1)
    assert "--with-cuda: none -> 11.8" in out
    assert "stale" in run("create", str(spec), "-p", str(tmp_path / "env"), "--dry-run", code=1)


def test_create_refuses_a_lock_that_pairs_the_cpu_build_with_pytorch_cuda(tmp_path: Path, channel: Path) -> None:
    """Such a lock (from an older envkit, or edited) is refused before anything is made."""
    spec = write_spec(tmp_path, channel, CUDA_DEPS)
    run("lock", "-f", str(spec), "-p", "linux-64")
    lock = tmp_path / "conda-lock.yml"
    lock.write_text(lock.read_text().replace(CUDA_BUILD, CPU_BUILD))
    out = run("create", "--lockfile", str(lock), "-p", str(tmp_path / "env"), code=1)
    assert f"{lock}: locks the CPU build pytorch 2.0.1 {CPU_BUILD} next to pytorch-cuda 11.8" in out
    assert "`envkit lock`" in out and not (tmp_path / "env").exists()


@pytest.mark.parametrize(
    "deps",
    [CUDA_DEPS, "  - python=3.11\n  - pytorch=2.0.1=*cuda*\n", "  - python=3.11\n  - pytorch=2.0.1\n  - pytorch-cuda\n",
     "  - python=3.11\n  - pytorch=2.0.1\n  - cudatoolkit=11.8\n  - pytorch-cuda\n"],
    ids=["pytorch-cuda=11.8", "cuda-build-string", "pytorch-cuda-unpinned", "cudatoolkit"],
)
def test_create_without_a_lock_plans_the_cuda_build(tmp_path: Path, channel: Path, deps: str) -> None:
    spec = write_spec(tmp_path, channel, deps)
    plan = run("create", str(spec), "-p", str(tmp_path / "env"), "--dry-run")
    assert f"pytorch 2.0.1 {CUDA_BUILD}" in plan and CPU_BUILD not in plan
    assert not (tmp_path / "env").exists() and not (tmp_path / "conda-lock.yml").exists()


@pytest.mark.torch
def test_create_without_a_lock_installs_the_cuda_build(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, CUDA_DEPS)
    prefix = tmp_path / "env"
    run("create", str(spec), "-p", str(prefix))
    meta = json.loads((prefix / "conda-meta" / "envkit.json").read_text())
    assert meta["with_cuda"] == "11.8"
    assert [p.name for p in (prefix / "conda-meta").glob("pytorch-2.0.1-*.json")] == [f"pytorch-2.0.1-{CUDA_BUILD}.json"]
    run("doctor", "-p", str(prefix))


def test_cpu_build_next_to_a_cuda_pin_is_refused(tmp_path: Path, channel: Path) -> None:
    """--with-cuda 11.7 is below what the CUDA build needs (__cuda >=11.8): the solver pairs the
    CPU build with pytorch-cuda 11.8. Refused, by lock and create alike, and nothing is written."""
    spec = write_spec(tmp_path, channel, CUDA_DEPS)
    out = run("lock", "-f", str(spec), "-p", "linux-64", "--with-cuda", "11.7", code=1)
    assert f"pytorch 2.0.1 {CPU_BUILD}" in out and "pytorch-cuda 11.8" in out and "__cuda 11.7" in out and "--with-cuda" in out
    assert len([line for line in out.splitlines() if line.startswith("envkit: error:")]) == 1
    assert not (tmp_path / "conda-lock.yml").exists()
    out = run("create", str(spec), "-p", str(tmp_path / "env"), "--with-cuda", "11.7", code=1)
    assert f"pytorch 2.0.1 {CPU_BUILD}" in out and not (tmp_path / "env").exists()


def test_a_channel_without_the_cuda_build_is_refused_not_installed_as_cpu(tmp_path: Path) -> None:
    """A mirror that lacks the CUDA build (or a CUDA build only for other Pythons): the spec's
    pytorch-cuda pin would install next to the CPU build. With no flag: exit 1, the fix named."""
    pkgs = [p for p in reference_packages(("linux-64",)) if not (p.name == "pytorch" and p.build == CUDA_BUILD)]
    channel = build_channel(tmp_path / "cpu-only", pkgs)
    spec = write_spec(tmp_path, channel, CUDA_DEPS)
    out = run("create", str(spec), "-p", str(tmp_path / "env"), "--dry-run", code=1)
    assert f"pytorch 2.0.1 {CPU_BUILD}" in out and "pytorch-cuda 11.8" in out and "CUDA build on the channels" in out
    out = run("lock", "-f", str(spec), "-p", "linux-64", code=1)
    assert "envkit: error:" in out and not (tmp_path / "conda-lock.yml").exists()


def test_a_cpu_environment_stays_cpu(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, "  - python=3.11\n  - pytorch=2.0.1\n  - cpuonly\n")
    run("lock", "-f", str(spec), *BOTH)
    assert builds(tmp_path / "conda-lock.yml") == {"linux-64": CPU_BUILD, "win-64": CPU_BUILD}
    assert read_lock(tmp_path / "conda-lock.yml").with_cuda is None


# -- the shipped environment ---------------------------------------------------------------


@pytest.mark.slow
def test_shipped_environment_yml_plans_the_cuda_118_build_with_no_flag(tmp_path: Path) -> None:
    """environments/environment.yml as shipped, its channels (pytorch, nvidia, conda-forge) mirrored
    to local folders by [tool.envkit.mirrors], since public channels are not reachable here, and its
    `pip:` part resolved against a local index the test builds (no PyPI either)."""
    channels = reference_channels(tmp_path / "channels", ("linux-64", "win-64"))
    index = build_index(tmp_path / "index", [Wheel("torch-summary", "1.4.5")])
    (tmp_path / "environment.yml").write_text((ROOT / "environments" / "environment.yml").read_text())
    mirrors = "\n".join(f'"{name}" = "{path.as_uri()}"' for name, path in channels.items())
    (tmp_path / "pyproject.toml").write_text(f"[tool.envkit.mirrors]\n{mirrors}\n")
    env = index_environment(index, {**os.environ, "PYTHONPATH": str(ROOT)})
    envkit = [sys.executable, "-m", "envkit"]
    plan = subprocess.run(check=False, args=[*envkit, "create", "environment.yml", "-p", str(tmp_path / "env"), "--dry-run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr
    assert "pytorch 2.0.1 py3.11_cuda11.8_cudnn8.7.0_0" in plan.stdout and "torchvision 0.15.2 py311_cu118" in plan.stdout
    assert "pytorch-mutex 1.0 cuda" in plan.stdout and "_cpu" not in plan.stdout
    assert "torch-summary==1.4.5" in plan.stdout
    done = subprocess.run(check=False, args=[*envkit, "lock", "-p", "linux-64", "-p", "win-64"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert builds(tmp_path / "conda-lock.yml") == {"linux-64": CUDA_BUILD, "win-64": CUDA_BUILD}


# -- --with-cuda that is not a CUDA version --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("value", ["abc", "11", "11.8x", "cuda11.8", "-1"])
@pytest.mark.parametrize("command", ["lock", "lock --check", "create"])
def test_with_cuda_that_is_not_a_version_is_exit_2_before_any_solve(tmp_path: Path, channel: Path, command: str, value: str) -> None:
    spec = write_spec(tmp_path, channel, CUDA_DEPS)
    args = {"lock": ["lock", "-f", str(spec), "-p", "linux-64"], "lock --check": ["lock", "-f", str(spec), "--check"],
            "create": ["create", str(spec), "-p", str(tmp_path / "env")]}[command]
    done = subprocess.run(check=False, args=[sys.executable, "-m", "envkit", *args, f"--with-cuda={value}"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--with-cuda" in lines[0] and "11.8" in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["environment.yml"]
