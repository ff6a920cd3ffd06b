"""Target platforms and the virtual packages a solve for each of them assumes.

The set is conda-lock's own (its default-virtual-packages.yaml, with ``--with-cuda``
setting or removing ``__cuda``), so that the content hash envkit writes is the one
``conda-lock`` computes for the same spec and options, and the solver sees exactly
what the hash covers. Never the machine's own detection: a lock made on a laptop
must not depend on the laptop's GPU (docs/architecture.md, conda, CUDA and rattler).
"""

from __future__ import annotations

import re
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
    from rattler import Version

    found: dict[str, VirtualPackage] = {}
    for package, subdirs in repo.packages_by_subdir.items():
        if platform in subdirs:
            # the __osx 10.15 duplicate only exists to keep old hashes; the newest wins
            prior = found.get(package.name)
            if prior is None or Version(package.version) > Version(prior.version):
                found[package.name] = VirtualPackage(package.name, package.version, package.build_string or "0")
    return tuple(sorted(found.values(), key=lambda v: v.name))


# -- CUDA: the __cuda a solve assumes -----------------------------------------------------

# What the spec asks for when it names one of these packages with a version.
CUDA_PINS = ("pytorch-cuda", "cuda-version", "cudatoolkit")
# A CUDA version on the command line: MAJOR.MINOR, optionally .PATCH (11.8, 12.1, 11.8.0).
_CUDA_VERSION = re.compile(r"\d{1,3}\.\d{1,3}(\.\d{1,4})?")
_CUDA_BUILD = re.compile(r"cuda|cu\d{2,3}", re.IGNORECASE)
# cuda11.8 / cuda_11.8 / cuda118 / cu118 in a build string
_CUDA_BUILD_VERSION = re.compile(r"cuda_?(\d{2})\.?(\d)(?!\d)|cu(\d{2})(\d)(?!\d)", re.IGNORECASE)
# A CUDA intent without a version (`pytorch-cuda`, `*cuda*`) assumes a driver for the newest CUDA
# (13.0, what the H200 in tests/data/gpu-h200-probe.json reports), so that any CUDA build solves; lint warns that
# nothing pins the CUDA version (`cuda-unpinned`).
CUDA_WITHOUT_VERSION = "13.0"


def check_cuda_version(value: str | None, option: str = "--with-cuda") -> str | None:
    """``--with-cuda``'s value, or BadInput when it is not a CUDA version (exit 2, before any solve).
    An empty string means "no CUDA" (as conda-lock's ``--with-cuda ''``)."""
    if value is None or value == "":
        return value
    text = value.strip()
    if not _CUDA_VERSION.fullmatch(text):
        raise BadInput(f"{option} {value!r}: not a CUDA version; pass MAJOR.MINOR, e.g. {option} 11.8 or {option} 12.1")
    return text


def cuda_from_specs(conda_specs: tuple[str, ...] | list[str], with_cuda: str | None = None) -> str | None:
    """The ``__cuda`` version a solve of these dependency lines assumes; None when nothing asks for CUDA.

    ``with_cuda`` (the option) wins. Otherwise the spec's own intent: a version given to
    ``pytorch-cuda``, ``cuda-version`` or ``cudatoolkit`` (the highest when several), or one in a
    CUDA build string (``cuda11.8``, ``cu118``); a CUDA intent with no version (``pytorch-cuda``,
    ``pytorch=2.0.1=*cuda*``) assumes ``CUDA_WITHOUT_VERSION``. Pure: lock and create both call it.
    """
    checked = check_cuda_version(with_cuda)
    if checked is not None:
        return checked or None
    from rattler import MatchSpec
    from rattler.exceptions import InvalidMatchSpecError

    found: list[tuple[int, int]] = []
    intent = False
    for line in conda_specs:
        try:
            spec = MatchSpec(line, strict=False)
        except InvalidMatchSpecError:
            continue  # conda-lock's parser reports it with the line
        name = spec.name.normalized if spec.name is not None else ""
        if name in CUDA_PINS:
            intent = True
            lowest = lowest_version(spec.version) if spec.version else None
            major_minor = lowest.extend_to_length(2).as_major_minor() if lowest is not None else None
            if major_minor is not None:  # `=12` is 12.*: from 12.0
                found.append(major_minor)
        if spec.build and _CUDA_BUILD.search(spec.build):
            intent = True
            m = _CUDA_BUILD_VERSION.search(spec.build)
            if m:
                major, minor = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
                found.append((int(major), int(minor)))
    if found:
        return ".".join(str(x) for x in max(found))
    return CUDA_WITHOUT_VERSION if intent else None


# -- conda version specs, judged by rattler's own matching (conda's ordering: 2 == 2.0.0) ---------

_VERSION_IN_SPEC = re.compile(r"\d[\w.+!]*")


def _witnesses(spec: str) -> list[Any]:
    """The versions a conda version spec names, each with one just above it (``>11.7`` -> 11.7, 11.7.1),
    sorted: where the versions it admits start, and where its ranges begin, are among them."""
    from rattler import Version
    from rattler.exceptions import InvalidVersionError

    out = []
    for text in _VERSION_IN_SPEC.findall(spec):
        text = text.rstrip(".")  # `11.8.*`
        try:
            out += [Version(text), Version(text + ".1")]
        except InvalidVersionError:
            continue
    return sorted(out)


def lowest_version(spec: str) -> Any:
    """The lowest version a conda version spec admits, as rattler's ``Version``: ``11.8.*`` / ``==11.8`` ->
    11.8, ``>=11.7,<12`` -> 11.7; None when it has no lower bound (``<12``, ``*``, ``!=11.8``)."""
    from rattler import Version, VersionSpec

    admitted = VersionSpec(spec)
    if admitted.matches(Version("0")):
        return None
    return next((v for v in _witnesses(spec) if admitted.matches(v)), None)


def admits_at_least(spec: str, floor: str) -> bool:
    """Does this conda version spec admit any release ``>= floor``? (``>=1.13`` and ``!=2.0`` admit 2, ``<2``,
    ``1.13.*`` and ``~=1.13`` do not; pre-releases of ``floor`` do not count.)"""
    from rattler import Version, VersionSpec

    admitted, low = VersionSpec(spec), Version(floor)
    candidates = [low, *_witnesses(spec), Version("999999")]
    return any(v >= low and admitted.matches(v) for v in candidates)
