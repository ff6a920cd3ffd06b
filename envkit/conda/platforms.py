"""Target platforms and the virtual packages a solve for each of them assumes.

The set is conda-lock's own (its default-virtual-packages.yaml, with ``--with-cuda``
setting or removing ``__cuda``), so that the content hash envkit writes is the one
``conda-lock`` computes for the same spec and options, and the solver sees exactly
what the hash covers. Never the machine's own detection: a lock made on a laptop
must not depend on the laptop's GPU (DESIGN §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envkit.errors import BadInput

KNOWN_PLATFORMS = ("linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64", "win-64")


@dataclass(frozen=True)
class VirtualPackage:
    name: str
    version: str
    build: str


def current_platform() -> str:
    from envkit.fingerprint.sources import conda_subdir

    subdir = conda_subdir()
    if subdir is None:
        raise BadInput("cannot tell this machine's conda platform; pass -p PLATFORM")
    return subdir


def check_platforms(platforms: tuple[str, ...]) -> tuple[str, ...]:
    for platform in platforms:
        if platform not in KNOWN_PLATFORMS:
            raise BadInput(f"unknown platform {platform!r}; use one of {', '.join(KNOWN_PLATFORMS)}")
    return tuple(sorted(set(platforms)))


def virtual_package_repo(with_cuda: str | None) -> Any:
    """conda-lock's FakeRepoData for these options (what its content hash covers)."""
    from conda_lock.virtual_package import default_virtual_package_repodata

    return default_virtual_package_repodata(cuda_version=with_cuda or "")


def virtual_packages(repo: Any, platform: str) -> tuple[VirtualPackage, ...]:
    found = {}
    for package, subdirs in repo.packages_by_subdir.items():
        if platform in subdirs:
            # the __osx 10.15 duplicate only exists to keep old hashes; the newest wins
            prior = found.get(package.name)
            if prior is None or _vkey(package.version) > _vkey(prior.version):
                found[package.name] = VirtualPackage(package.name, package.version, package.build_string or "0")
    return tuple(sorted(found.values(), key=lambda v: v.name))


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else 0 for x in version.split("."))
