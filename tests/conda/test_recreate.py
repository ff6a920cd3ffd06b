"""`envkit recreate` of a checkpoint written from a venv: a pinned requirements.txt and the Python
version (issue 10, item 14). Real checkpoints, real venvs, real pip against wheels the test builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from envkit.fingerprint import collect
from envkit.fingerprint.schema import Fingerprint, Package

REPO = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]

torch = pytest.importorskip("torch")


def envkit_cli(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "envkit", *args], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )
    assert done.returncode == code, (done.stdout, done.stderr)
    return done


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel (METADATA, WHEEL, RECORD, one module): what pip installs."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{stem}-py3-none-any.whl"
    info = f"{stem}.dist-info"
    files = {
        f"{name.replace('-', '_')}/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: envkit-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)
        zf.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in files) + f"{info}/RECORD,,\n")
    return path


def pins(requirements: Path) -> dict[str, str]:
    """The active `name==version` lines of a requirements file, parsed by packaging."""
    out = {}
    for line in requirements.read_text().splitlines():
        if not line or line.startswith(("#", "--")):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "=="
        out[req.name] = spec.version
    return out


def test_checkpoint_saved_in_this_venv_gives_requirements_and_python_version(stamped: Path, tmp_path: Path) -> None:
    """The test venv is a venv: a checkpoint saved here is 'written from a venv'. -o makes its folder."""
    out = tmp_path / "new" / "deeper"
    done = envkit_cli("recreate", str(stamped), "-o", str(out))
    requirements, python_version = out / "requirements.txt", out / ".python-version"
    assert f"wrote {requirements}" in done.stdout and f"wrote {python_version}" in done.stdout
    assert python_version.read_text() == sys.version.split()[0] + "\n"
    text = requirements.read_text()
    assert f"Python {sys.version.split()[0]}" in text.splitlines()[1]
    pinned = pins(requirements)
    fp = collect(use_live_torch=False)
    recorded = {p.name: p.version for p in fp.packages if p.source == "pypi"}
    assert pinned["torch"] == str(torch.__version__) and pinned["numpy"] == recorded["numpy"]
    # every package of the venv is pinned, or named in a comment, or is a tool of the venv (pip)
    commented = {line.split()[1].split("==")[0] for line in text.splitlines() if line.startswith("# ") and "==" in line}
    assert set(recorded) - set(pinned) - commented <= {"pip", "setuptools", "wheel"}
    assert "pip" not in pinned and "envkit" in commented
    assert all(pinned[n] == recorded[n] for n in pinned)
    if "+" in str(torch.__version__):  # a local build such as 2.13.0+cpu: the index that serves it is named
        tag = str(torch.__version__).split("+", 1)[1]
        assert f"--extra-index-url https://download.pytorch.org/whl/{tag}" in text.splitlines()
    assert not list(out.glob(".*tmp*"))


def _venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(path)
    return path / "bin" / "python"


@pytest.mark.slow
def test_pip_installs_exactly_the_recorded_set_into_a_fresh_venv(tmp_path: Path) -> None:
    """venv A gets three packages by pip; a checkpoint stamped with A's fingerprint is recreated;
    pip installs that requirements.txt into a new venv B: B holds exactly A's set."""
    wheels = tmp_path / "wheels"
    for name, version in (("alpha", "1.0"), ("beta-pkg", "2.0.post1"), ("gamma", "0.3rc1"), ("gamma", "0.4")):
        make_wheel(wheels, name, version)
    a = _venv(tmp_path / "a")
    subprocess.run([*PIP, "--python", str(a), "install", "--no-index", "--find-links", str(wheels),
                    "alpha==1.0", "beta-pkg==2.0.post1", "gamma==0.3rc1"], check=True, capture_output=True)
    fp_a = collect(tmp_path / "a")
    import envkit

    ckpt = tmp_path / "ck.pth"
    envkit.save({"w": torch.zeros(1)}, ckpt, fingerprint=fp_a)
    out = tmp_path / "recreated"
    envkit_cli("recreate", str(ckpt), "-o", str(out))
    assert pins(out / "requirements.txt") == {"alpha": "1.0", "beta-pkg": "2.0.post1", "gamma": "0.3rc1"}
    b = _venv(tmp_path / "b")
    subprocess.run([*PIP, "--python", str(b), "install", "--no-index", "--find-links", str(wheels),
                    "-r", str(out / "requirements.txt")], check=True, capture_output=True)

    def listed(fp: Fingerprint) -> set[tuple[str, str]]:
        return {(p.name, p.version) for p in fp.packages if p.name != "pip"}

    assert listed(collect(tmp_path / "b")) == listed(fp_a)
    assert (out / ".python-version").read_text().strip() == fp_a.python.version


def _fingerprint_with(packages: list[Package]) -> Fingerprint:
    return replace(collect(use_live_torch=False), packages=tuple(sorted(packages)))


@pytest.mark.slow
def test_local_tags_invalid_versions_and_envkit(tmp_path: Path) -> None:
    """+cu118 builds come from the PyTorch index (named once); a local build and a version that
    is not PEP 440 are commented, never written as a pin pip would fail on. pip resolves the file."""
    packages = [
        Package("torch", "2.0.1+cu118", "pypi"),
        Package("torchvision", "0.15.2+cu118", "pypi"),
        Package("numpy", "1.26.4", "pypi"),
        Package("mylib", "1.0+mybuild", "pypi"),
        Package("oddball", "2016-release", "pypi"),
        Package("envkit", "0.1.0", "pypi"),
        Package("setuptools", "69.0.0", "pypi"),
    ]
    import envkit

    ckpt = tmp_path / "ck.pth"
    envkit.save({"w": torch.zeros(1)}, ckpt, fingerprint=_fingerprint_with(packages))
    done = envkit_cli("recreate", str(ckpt), "-o", str(tmp_path / "out"))
    assert "3 pip packages pinned; 3 left as comments" in done.stdout
    requirements = tmp_path / "out" / "requirements.txt"
    text = requirements.read_text().splitlines()
    assert pins(requirements) == {"torch": "2.0.1+cu118", "torchvision": "0.15.2+cu118", "numpy": "1.26.4"}
    assert text.count("--extra-index-url https://download.pytorch.org/whl/cu118") == 1
    for name in ("mylib==1.0+mybuild", "oddball==2016-release", "envkit==0.1.0"):
        assert any(line.startswith(f"# {name}  (") for line in text), name
    assert not any("setuptools" in line for line in text if not line.startswith("# pip, setuptools"))
    # real pip reads the file and resolves every pin (wheels stand in for the PyTorch index)
    wheels = tmp_path / "wheels"
    for name, version in (("torch", "2.0.1+cu118"), ("torchvision", "0.15.2+cu118"), ("numpy", "1.26.4")):
        make_wheel(wheels, name, version)
    report = tmp_path / "report.json"
    subprocess.run([*PIP, "install", "--dry-run", "--ignore-installed", "--no-index", "--find-links", str(wheels),
                    "--report", str(report), "-r", str(requirements)], check=True, capture_output=True)
    chosen = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert chosen == pins(requirements)


def test_output_that_is_a_file_is_exit_2_and_nothing_is_written(stamped: Path, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("mine")
    done = envkit_cli("recreate", str(stamped), "-o", str(target), code=2)
    assert len(done.stderr.strip().splitlines()) == 1 and str(target) in done.stderr and "Traceback" not in done.stderr
    assert target.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "taken"]
    below = target / "sub"
    done = envkit_cli("recreate", str(stamped), "-o", str(below), code=2)
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_conda_and_pip_fingerprint_keeps_explicit_and_environment_yml(tmp_path: Path) -> None:
    url = "https://conda.anaconda.org/conda-forge/linux-64/python-3.11.7-hab00c5b_1_cpython.conda"
    packages = [
        Package("python", "3.11.7", "conda", "hab00c5b_1_cpython", url, "0" * 32),
        Package("requests", "2.31.0", "pypi"),
    ]
    import envkit

    ckpt = tmp_path / "ck.pth"
    envkit.save({"w": torch.zeros(1)}, ckpt, fingerprint=_fingerprint_with(packages))
    out = tmp_path / "made" / "here"
    envkit_cli("recreate", str(ckpt), "-o", str(out))
    names = sorted(p.name for p in out.iterdir())
    assert "environment.yml" in names and any(n.endswith(".explicit.txt") for n in names)
    assert "requirements.txt" not in names
    assert "requests==2.31.0" in (out / "environment.yml").read_text()


def test_no_packages_at_all_is_exit_2(tmp_path: Path) -> None:
    import envkit

    ckpt = tmp_path / "ck.pth"
    envkit.save({"w": torch.zeros(1)}, ckpt, fingerprint=_fingerprint_with([]))
    done = envkit_cli("recreate", str(ckpt), "-o", str(tmp_path / "out"), code=2)
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
