"""Build real local conda channels: tiny .tar.bz2 packages, indexed by rattler (the demo and the tests use it).

Each package holds ``info/index.json``, ``info/paths.json`` and one small file, which is all a
solver and an installer need. The pytorch packages copy the dependency structure of the public
pytorch channel's records (``tests/data/pytorch-channel-py311-linux-64.json``): the CUDA build
depends on ``pytorch-cuda >=11.8,<11.9`` and ``pytorch-mutex 1.0 cuda`` and constrains ``cpuonly <0``;
the CPU build depends on ``pytorch-mutex 1.0 cpu`` and constrains ``cpuonly``; the noarch mutex's CPU
build carries the ``track_features`` that steer a solver to the CUDA build; ``pytorch-cuda`` depends
on the nvidia channel's CUDA runtime. One addition: the CUDA builds also depend on ``__cuda >=11.8``,
as conda-forge's CUDA builds do (and as a CUDA runtime needs a driver). That is the dependency a
solve on a machine without a GPU trips on: without ``__cuda`` the CUDA build does not solve, and
the solver quietly pairs the CPU build with ``pytorch-cuda 11.8``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

PLATFORMS = ("linux-64", "osx-arm64", "win-64")
CPU_BUILD = "py3.11_cpu_0"
CUDA_BUILD = "py3.11_cuda11.8_cudnn8.7.0_0"
PY311 = "python >=3.11,<3.12.0a0"


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    build: str
    subdir: str
    depends: tuple[str, ...] = ()
    noarch: str | None = None
    track_features: str | None = None
    files: tuple[tuple[str, str], ...] = field(default=())
    constrains: tuple[str, ...] = ()
    build_number: int | None = None
    channel: str = "local"
    """Which of ``reference_channels``' channels it is published on (pytorch, nvidia, conda-forge)."""

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.tar.bz2"


def write_package(channel: Path, pkg: Pkg) -> Path:
    folder = channel / pkg.subdir
    folder.mkdir(parents=True, exist_ok=True)
    tail = pkg.build.rsplit("_", 1)[-1]
    index = {
        "name": pkg.name,
        "version": pkg.version,
        "build": pkg.build,
        "build_number": pkg.build_number if pkg.build_number is not None else int(tail) if tail.isdigit() else 0,
        "depends": list(pkg.depends),
        "subdir": pkg.subdir,
        "license": "MIT",
        "timestamp": 1700000000000,
    }
    if pkg.constrains:
        index["constrains"] = list(pkg.constrains)
    if pkg.noarch:
        index["noarch"] = pkg.noarch
    if pkg.track_features:
        index["track_features"] = pkg.track_features
    files = pkg.files or ((f"share/{pkg.name}/VERSION", f"{pkg.name} {pkg.version} {pkg.build}\n"),)
    paths = {
        "paths_version": 1,
        "paths": [
            {"_path": p, "path_type": "hardlink", "sha256": hashlib.sha256(c.encode()).hexdigest(), "size_in_bytes": len(c.encode())}
            for p, c in files
        ],
    }
    target = folder / pkg.filename
    with tarfile.open(target, "w:bz2") as tf:
        for name, body in (("info/index.json", json.dumps(index)), ("info/paths.json", json.dumps(paths)), *files):
            data = body.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1700000000
            info.mode = 0o755 if name.startswith(("bin/", "Scripts/")) else 0o644
            tf.addfile(info, io.BytesIO(data))
    return target


def reference_packages(platforms: tuple[str, ...] = PLATFORMS) -> list[Pkg]:
    """The reference environment's shape: python 3.11, pytorch 2.0.1 CPU and CUDA 11.8 builds,
    pytorch-cuda 11.8, pytorch-mutex, torchvision/torchaudio, and what environments/environment.yml names."""
    pkgs: list[Pkg] = []
    for sd in platforms:
        os_dep = "__win" if sd.startswith("win") else "__unix"
        forge = "conda-forge"
        pkgs += [
            Pkg("python", "3.11.4", "h0_0", sd, (os_dep,), channel=forge),
            Pkg("python", "3.10.12", "h0_0", sd, (os_dep,), channel=forge),
            Pkg("numpy", "1.25.0", "py311h0_0", sd, ("python >=3.11,<3.12",), channel=forge),
            Pkg("numpy", "1.24.4", "py311h0_0", sd, ("python >=3.11,<3.12",), channel=forge),
            Pkg("mkl", "2023.1.0", "h0_0", sd, channel=forge),
            Pkg("matplotlib", "3.7.1", "py311h0_0", sd, (PY311, "numpy >=1.20"), channel=forge),
            Pkg("jupyter", "1.0.0", "py311h0_0", sd, (PY311,), channel=forge),
            Pkg("cudatoolkit", "11.8.0", "h0_0", sd, channel=forge),
            Pkg("pytorch", "2.0.1", CPU_BUILD, sd, (PY311, "mkl >=2018", "numpy >=1.24", "pytorch-mutex 1.0 cpu"), constrains=("cpuonly",), channel="pytorch"),
            Pkg("torchvision", "0.15.2", "py311_cpu", sd, (PY311, "numpy >=1.23.5", "pytorch 2.0.1", "pytorch-mutex 1.0 cpu"),
                constrains=("cpuonly",), channel="pytorch"),
            Pkg("torchaudio", "2.0.2", "py311_cpu", sd, (PY311, "numpy >=1.21.2", "pytorch 2.0.1", "pytorch-mutex 1.0 cpu"),
                constrains=("cpuonly",), channel="pytorch"),
        ]
        if not sd.startswith("osx"):
            cuda = ("pytorch-cuda 11.8.*", "pytorch-mutex 1.0 cuda")
            pkgs += [
                Pkg("pytorch", "2.0.1", CUDA_BUILD, sd,
                    (PY311, "mkl >=2018", "numpy >=1.24", "pytorch-cuda >=11.8,<11.9", "pytorch-mutex 1.0 cuda", "__cuda >=11.8"),
                    constrains=("cpuonly <0",), channel="pytorch"),
                Pkg("torchvision", "0.15.2", "py311_cu118", sd, (PY311, "numpy >=1.23.5", "pytorch 2.0.1", *cuda), constrains=("cpuonly <0",),
                    channel="pytorch"),
                Pkg("torchaudio", "2.0.2", "py311_cu118", sd, (PY311, "numpy >=1.21.2", "pytorch 2.0.1", *cuda), constrains=("cpuonly <0",), channel="pytorch"),
                Pkg("pytorch-cuda", "11.8", "h7e8668a_5", sd, ("cuda-cudart >=11.8,<12.0", "cuda-runtime >=11.8,<12.0"), channel="pytorch"),
                Pkg("cuda-cudart", "11.8.89", "0", sd, channel="nvidia"),
                Pkg("cuda-runtime", "11.8.0", "0", sd, channel="nvidia"),
            ]
    pkgs += [
        Pkg("pytorch-mutex", "1.0", "cpu", "noarch", noarch="generic", track_features="pytorch-mutex", build_number=100, channel="pytorch"),
        Pkg("pytorch-mutex", "1.0", "cuda", "noarch", noarch="generic", build_number=100, channel="pytorch"),
        Pkg("cpuonly", "2.0", "0", "noarch", ("pytorch-mutex 1.0 cpu",), noarch="generic", channel="pytorch"),
        Pkg("pip", "23.1.2", "pyhd8ed1ab_0", "noarch", ("python >=3.7",), noarch="python",
            files=(("site-packages/pip/__init__.py", "__version__ = \"23.1.2\"\n"),), channel="conda-forge"),
    ]
    return pkgs


# No interpreter can be packaged here, so a channel's python can be a stand-in: its bin/python
# runs this machine's python, and a `-m pip install` installs into the environment's own
# site-packages (--target). With STAND_IN_PIP_LOG set it also logs each call (the tests read it).
STAND_IN_PYTHON = r'''
import json, os, sys
prefix = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
args = sys.argv[1:]
if os.environ.get("STAND_IN_PIP_LOG"):
    entry = {"argv": args}
    if "-r" in args:
        with open(args[args.index("-r") + 1]) as fh:
            entry["requirements"] = fh.read()
    with open(os.environ["STAND_IN_PIP_LOG"], "a") as fh:
        fh.write(json.dumps(entry) + "\n")
if args[:3] == ["-m", "pip", "install"]:
    args = [*args, "--target", os.path.join(prefix, "lib", "python3.11", "site-packages")]
os.execve(sys.executable, [sys.executable, *args], dict(os.environ, PYTHONNOUSERSITE="1"))
'''


def with_python_stand_in(packages: list[Pkg], host_python: str, platform: str = "linux-64") -> list[Pkg]:
    """``packages`` with python 3.11.4 for ``platform`` given a bin/python that runs ``host_python``."""
    from dataclasses import replace

    return [
        replace(p, files=(("bin/python", f"#!{host_python}\n{STAND_IN_PYTHON}"),))
        if (p.name, p.version, p.subdir) == ("python", "3.11.4", platform) else p
        for p in packages
    ]


def build_channel(root: Path, packages: list[Pkg] | None = None) -> Path:
    """Write and index a channel; returns its folder (use ``.as_uri()`` in specs)."""
    from rattler.index import index_fs

    root.mkdir(parents=True, exist_ok=True)
    (root / "noarch").mkdir(exist_ok=True)
    for pkg in packages if packages is not None else reference_packages():
        write_package(root, pkg)
    asyncio.run(index_fs(root, write_zst=False, write_shards=False, force=True))
    return root


def reference_channels(root: Path, platforms: tuple[str, ...] = PLATFORMS, *, host_python: str | None = None) -> dict[str, Path]:
    """The public channels environments/environment.yml lists (pytorch, nvidia, conda-forge), as
    local folders under ``root`` with each package on the channel that publishes it; with
    ``host_python``, linux-64's python is a stand-in that runs it (so `pip:` parts install)."""
    packages = reference_packages(platforms)
    if host_python is not None:
        packages = with_python_stand_in(packages, host_python)
    return {name: build_channel(root / name, [p for p in packages if p.channel == name]) for name in ("pytorch", "nvidia", "conda-forge")}
