"""Build real local conda channels for the tests: tiny .tar.bz2 packages, indexed by rattler.

Each package holds ``info/index.json``, ``info/paths.json`` and one small file, which
is all a solver and an installer need. The pytorch builds mirror the real channel's
scheme: the CPU build carries a ``track_features`` so that any solver prefers the
CUDA build when ``__cuda`` allows it, and the CUDA build depends on ``__cuda``.
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

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.tar.bz2"


def write_package(channel: Path, pkg: Pkg) -> Path:
    folder = channel / pkg.subdir
    folder.mkdir(parents=True, exist_ok=True)
    index = {
        "name": pkg.name,
        "version": pkg.version,
        "build": pkg.build,
        "build_number": int(pkg.build.rsplit("_", 1)[-1]) if pkg.build.rsplit("_", 1)[-1].isdigit() else 0,
        "depends": list(pkg.depends),
        "subdir": pkg.subdir,
        "license": "MIT",
        "timestamp": 1700000000000,
    }
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
    pkgs: list[Pkg] = []
    for sd in platforms:
        os_dep = "__win" if sd.startswith("win") else "__unix"
        pkgs += [
            Pkg("python", "3.11.4", "h0_0", sd, (os_dep,)),
            Pkg("python", "3.10.12", "h0_0", sd, (os_dep,)),
            Pkg("numpy", "1.25.0", "py311h0_0", sd, ("python >=3.11,<3.12",)),
            Pkg("numpy", "1.24.4", "py311h0_0", sd, ("python >=3.11,<3.12",)),
            Pkg("pytorch", "2.0.1", CPU_BUILD, sd, ("python >=3.11,<3.12", "numpy >=1.24"), track_features="cpuonly"),
        ]
        if not sd.startswith("osx"):
            pkgs += [
                Pkg("pytorch", "2.0.1", CUDA_BUILD, sd, ("python >=3.11,<3.12", "numpy >=1.24", "pytorch-cuda 11.8.*", "__cuda >=11.8")),
                Pkg("pytorch-cuda", "11.8", "h0_5", sd, ("cudatoolkit >=11.8,<11.9",)),
                Pkg("cudatoolkit", "11.8.0", "h0_0", sd),
            ]
    pkgs.append(Pkg("pip", "23.1.2", "pyhd8ed1ab_0", "noarch", ("python >=3.7",), noarch="python", files=(("site-packages/pip/__init__.py", "__version__ = \"23.1.2\"\n"),)))
    return pkgs


def build_channel(root: Path, packages: list[Pkg] | None = None) -> Path:
    """Write and index a channel; returns its folder (use ``.as_uri()`` in specs)."""
    from rattler.index import index_fs

    root.mkdir(parents=True, exist_ok=True)
    (root / "noarch").mkdir(exist_ok=True)
    for pkg in packages if packages is not None else reference_packages():
        write_package(root, pkg)
    asyncio.run(index_fs(root, write_zst=False, write_shards=False, force=True))
    return root
