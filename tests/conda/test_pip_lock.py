"""The `pip:` part of a spec is locked (the whole resolved set, sha256, per platform), installed
exactly from the lock, checked by doctor and by `lock --check`.

Real parts throughout: pip's own resolver (`pip install --dry-run --report`) against a PEP 503
index of real wheels the test builds in a folder (file://), conda-lock's models and parser, the
rattler solver and installer on a local conda channel. The channel's python is a stand-in (no
interpreter can be packaged here): `bin/python` logs its argv and execs the host's python with
the same arguments plus `--target` the environment's site-packages, so the real pip installs.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from envkit.cli import main
from examples.local_channel import with_python_stand_in
from tests.conda.channel import build_channel, reference_packages
from tests.conda.conftest import write_spec
from tests.conda.pip_index import Wheel, build_index, use_index

PIP_DEPS = "  - python=3.11\n  - numpy\n  - pip\n  - pip:\n    - app\n    - tool>=1\n"
BASE_WHEELS = [
    Wheel("app", "1.0", ("lib>=1",)),
    Wheel("lib", "1.0"),
    Wheel("lib", "2.0"),
    Wheel("tool", "1.0", ("numpy>=1.24",)),  # numpy comes from conda: pip must leave it alone
    Wheel("numpy", "9.9"),
]



@pytest.fixture(scope="module")
def pip_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference channel, with a linux-64 python 3.11.4 whose bin/python runs the host's pip."""
    packages = with_python_stand_in(reference_packages(), sys.executable)
    return build_channel(tmp_path_factory.mktemp("pipchannel") / "local", packages)


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local index, and a pip that reads nothing but it (no config files, no find-links)."""
    root = tmp_path / "index"
    use_index(monkeypatch, build_index(root, BASE_WHEELS))
    monkeypatch.setenv("STAND_IN_PIP_LOG", str(tmp_path / "pip-argv.log"))
    return root


def run(*args: str, code: int = 0) -> CliRunner:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pip_entries(lockfile: Path) -> dict[str, dict[str, tuple[str, str, str]]]:
    doc = yaml.safe_load(lockfile.read_text())
    out: dict[str, dict[str, tuple[str, str, str]]] = {}
    for p in doc["package"]:
        if p["manager"] == "pip":
            out.setdefault(p["platform"], {})[p["name"]] = (p["version"], p["hash"]["sha256"], p["url"])
    return out


@pytest.mark.slow
def test_lock_pins_the_whole_pip_set_per_platform_with_sha256(tmp_path: Path, pip_channel: Path, index: Path) -> None:
    spec = write_spec(tmp_path, pip_channel, PIP_DEPS)
    run("lock", "-f", str(spec), "-p", "linux-64", "-p", "win-64", "-p", "osx-arm64")
    lockfile = tmp_path / "conda-lock.yml"
    files = index / "files"
    want = {
        "app": ("1.0", sha(files / "app-1.0-py3-none-any.whl"), (files / "app-1.0-py3-none-any.whl").as_uri()),
        "lib": ("2.0", sha(files / "lib-2.0-py3-none-any.whl"), (files / "lib-2.0-py3-none-any.whl").as_uri()),
        "tool": ("1.0", sha(files / "tool-1.0-py3-none-any.whl"), (files / "tool-1.0-py3-none-any.whl").as_uri()),
    }
    # lib, asked for by app only, is pinned too; numpy is conda's (1.25.0), not pip's 9.9
    assert pip_entries(lockfile) == {"linux-64": want, "win-64": want, "osx-arm64": want}

    # conda-lock's own parser takes the entries, and renders them as hash-pinned pip lines
    from conda_lock.lockfile import parse_conda_lock_file

    parsed = parse_conda_lock_file(lockfile)
    app = next(p for p in parsed.package if p.manager == "pip" and p.name == "app" and p.platform == "win-64")
    assert app.dependencies == {"lib": ">=1"} and app.hash.sha256 == want["app"][1] and app.categories == {"main"}

    from envkit.conda.lock import read_lock

    lock = read_lock(lockfile)
    assert {(p.name, p.version) for p in lock.pip_for("osx-arm64")} == {("app", "1.0"), ("lib", "2.0"), ("tool", "1.0")}
    assert {p.name for p in lock.packages_for("linux-64")} >= {"python", "numpy", "pip"}

    # --check covers the pip part: fresh now, stale (naming the lines) when it changes
    run("lock", "-f", str(spec), "--check")
    spec.write_text(spec.read_text().replace("    - app\n", "    - app==1.0\n    - lib<2\n"))
    out = run("lock", "-f", str(spec), "--check", code=1).stderr
    assert "linux-64: content hash differs" in out and "win-64" in out
    assert "+pip: app ==1.0" in out and "-pip: app" in out and "+pip: lib <2" in out
    run("lock", "-f", str(spec))
    assert pip_entries(lockfile)["linux-64"]["lib"][0] == "1.0"  # the resolver honours the new pin


@pytest.mark.slow
def test_check_is_stale_for_a_lock_that_does_not_pin_the_pip_part(tmp_path: Path, pip_channel: Path, index: Path) -> None:
    """A lock without pip entries (as envkit wrote them before) is not the lock of a spec with `pip:`."""
    spec = write_spec(tmp_path, pip_channel, PIP_DEPS)
    run("lock", "-f", str(spec), "-p", "linux-64", "-p", "win-64")
    lockfile = tmp_path / "conda-lock.yml"
    doc = yaml.safe_load(lockfile.read_text())
    doc["package"] = [p for p in doc["package"] if p["manager"] != "pip"]
    doc["metadata"]["custom_metadata"].pop("envkit.pip_locked", None)
    lockfile.write_text(yaml.safe_dump(doc))
    out = run("lock", "-f", str(spec), "--check", code=1).stderr
    assert "linux-64: the `pip:` part is not pinned in the lock" in out and "win-64: the `pip:` part" in out
    # and create refuses it rather than installing whatever the index has today
    result = run("create", str(spec), "-p", str(tmp_path / "env"), code=1)
    assert "stale" in result.stderr and not (tmp_path / "env").exists()


@pytest.mark.slow
def test_create_installs_exactly_the_locked_pip_set_and_doctor_sees_pip_drift(tmp_path: Path, pip_channel: Path, index: Path) -> None:
    spec = write_spec(tmp_path, pip_channel, PIP_DEPS)
    run("lock", "-f", str(spec), "-p", "linux-64")
    # newer releases appear after the lock was made: create must not pick them up
    build_index(index, [Wheel("app", "2.0", ("lib>=3",)), Wheel("lib", "3.0"), Wheel("tool", "1.1", ("numpy>=1.24",))])
    prefix = tmp_path / "envs" / "train"
    plan = run("create", str(spec), "-p", str(prefix), "--dry-run").stdout
    assert f"app==1.0 sha256:{sha(index / 'files' / 'app-1.0-py3-none-any.whl')}" in plan and "lib==2.0" in plan
    run("create", str(spec), "-p", str(prefix))

    from envkit.conda.prefixes import pip_dists

    assert pip_dists(prefix) == {"app": "1.0", "lib": "2.0", "tool": "1.0"}
    calls = [json.loads(line) for line in (tmp_path / "pip-argv.log").read_text().splitlines()]
    assert len(calls) == 1
    argv = calls[0]["argv"]
    assert argv[:3] == ["-m", "pip", "install"] and "--no-deps" in argv and "--require-hashes" in argv
    assert not any(a in ("app", "tool>=1") for a in argv)  # never the spec's loose lines
    files = index / "files"
    assert calls[0]["requirements"].splitlines() == [
        f"app==1.0 --hash=sha256:{sha(files / 'app-1.0-py3-none-any.whl')}",
        f"lib==2.0 --hash=sha256:{sha(files / 'lib-2.0-py3-none-any.whl')}",
        f"tool==1.0 --hash=sha256:{sha(files / 'tool-1.0-py3-none-any.whl')}",
    ]

    run("doctor", "-p", str(prefix))
    site = prefix / "lib" / "python3.11" / "site-packages"
    import shutil

    shutil.rmtree(site / "lib-2.0.dist-info")
    (site / "app-1.0.dist-info").rename(site / "app-2.0.dist-info")
    (site / "extra-0.1.dist-info").mkdir()
    report = json.loads(run("doctor", "-p", str(prefix), "--json", code=1).stdout)
    drift = {(d["kind"], d["manager"], d["name"], d["expected"], d["found"]) for d in report["drift"]}
    assert drift == {
        ("missing", "pip", "lib", "2.0", None),
        ("changed", "pip", "app", "1.0", "2.0"),
        ("extra", "pip", "extra", None, "0.1"),
    }


@pytest.mark.slow
def test_create_without_a_lock_locks_the_pip_part_too(tmp_path: Path, pip_channel: Path, index: Path) -> None:
    spec = write_spec(tmp_path, pip_channel, PIP_DEPS)
    prefix = tmp_path / "envs" / "fly"
    plan = run("create", str(spec), "-p", str(prefix), "--dry-run").stdout
    pins = [line.strip().split(" ")[0] for line in plan.split("pip packages (3):\n", 1)[1].splitlines()]
    assert pins == ["app==1.0", "lib==2.0", "tool==1.0"]
    run("create", str(spec), "-p", str(prefix))
    kept = prefix / "conda-meta" / "envkit-lock.yml"
    assert set(pip_entries(kept)["linux-64"]) == {"app", "lib", "tool"}
    run("doctor", "-p", str(prefix))


def one_error_line(result: object, *needles: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("envkit: error:")]  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stderr  # type: ignore[attr-defined]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_a_pip_package_without_a_wheel_for_one_platform_is_exit_2(tmp_path: Path, pip_channel: Path, index: Path) -> None:
    build_index(index, [Wheel("native", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")])
    spec = write_spec(tmp_path, pip_channel, PIP_DEPS + "    - native\n")
    run("lock", "-f", str(spec), "-p", "linux-64")  # there is a wheel for linux-64
    before = (tmp_path / "conda-lock.yml").read_bytes()
    result = run("lock", "-f", str(spec), "-p", "linux-64", "-p", "win-64", code=2)
    one_error_line(result, "native", "win-64", "python 3.11.4", str(spec))
    assert (tmp_path / "conda-lock.yml").read_bytes() == before  # the old lock, untouched
    assert not list(tmp_path.glob(".conda-lock.yml.tmp*"))
    # a pin no wheel meets: the same answer, and the versions that are there
    spec.write_text(spec.read_text().replace("    - native\n", "    - lib>=5\n"))
    one_error_line(run("lock", "-f", str(spec), "-p", "linux-64", code=2), "lib>=5", "linux-64", "1.0, 2.0")


@pytest.mark.slow
def test_an_unreachable_index_is_exit_2_naming_it_and_the_platform(tmp_path: Path, pip_channel: Path, index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path, pip_channel, PIP_DEPS)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url in (f"http://127.0.0.1:{port}/simple", (tmp_path / "no-such-index").as_uri()):
        monkeypatch.setenv("PIP_INDEX_URL", url)
        result = run("lock", "-f", str(spec), "-p", "win-64", code=2)
        one_error_line(result, url, "cannot be reached", "win-64")
        assert not (tmp_path / "conda-lock.yml").exists()


@pytest.mark.slow
def test_a_pip_requirement_the_conda_version_does_not_meet_is_exit_2(tmp_path: Path, pip_channel: Path, index: Path) -> None:
    build_index(index, [Wheel("newtool", "1.0", ("numpy>=2",))])
    spec = write_spec(tmp_path, pip_channel, PIP_DEPS + "    - newtool\n")
    one_error_line(run("lock", "-f", str(spec), "-p", "linux-64", code=2), "newtool", "numpy>=2", "numpy 1.25.0")
    assert not (tmp_path / "conda-lock.yml").exists()



@pytest.mark.slow
def test_markers_are_evaluated_for_the_target_platform_and_python(tmp_path: Path, pip_channel: Path, index: Path) -> None:
    """pip's --platform alone would take this machine's markers (linux, python 3.11) for every target."""
    build_index(index, [
        Wheel("cli", "1.0", ("colorama>=0.4; sys_platform == 'win32'", "appnope; platform_system == 'Darwin'", "backport; python_version < '3.11'")),
        Wheel("colorama", "0.4.6"), Wheel("appnope", "0.1.4"), Wheel("backport", "1.0"),
    ])  # fmt: skip
    spec = write_spec(tmp_path, pip_channel, "  - python=3.11\n  - pip\n  - pip:\n    - cli\n")
    run("lock", "-f", str(spec), "-p", "linux-64", "-p", "win-64", "-p", "osx-arm64")
    names = {platform: set(pins) for platform, pins in pip_entries(tmp_path / "conda-lock.yml").items()}
    assert names == {"linux-64": {"cli"}, "win-64": {"cli", "colorama"}, "osx-arm64": {"cli", "appnope"}}
    old = tmp_path / "py310"
    old.mkdir()
    spec = write_spec(old, pip_channel, "  - python=3.10\n  - pip\n  - pip:\n    - cli\n")
    run("lock", "-f", str(spec), "-p", "linux-64")
    assert set(pip_entries(old / "conda-lock.yml")["linux-64"]) == {"cli", "backport"}


@pytest.mark.parametrize(
    ("platform", "virtual", "first"),
    [
        ("linux-64", ("__glibc", "2.28"), "manylinux_2_28_x86_64"),
        ("linux-aarch64", ("__glibc", "2.17"), "manylinux_2_17_aarch64"),
        ("linux-64", ("__glibc", "2"), "linux_x86_64"),  # rattler's Version: 2 is 2.0, older than any manylinux
        ("osx-arm64", ("__osx", "11.0"), "macosx_11_0_arm64"),
        ("osx-64", ("__osx", "10.15"), "macosx_10_15_x86_64"),
        ("osx-64", ("__osx", "13"), "macosx_13_0_x86_64"),
        ("osx-64", ("__osx", "not a version"), "macosx_11_0_x86_64"),  # the default
    ],
)
def test_wheel_platforms_read_virtual_package_versions(platform: str, virtual: tuple[str, str], first: str) -> None:
    from envkit.conda.pip_lock import wheel_platforms
    from envkit.conda.platforms import VirtualPackage

    tags = wheel_platforms(platform, [VirtualPackage(*virtual, "0")])
    assert tags[0] == first
