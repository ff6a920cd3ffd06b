"""The ``pip:`` part of a spec, locked: the whole resolved set, pinned with sha256, per platform.

The resolver is pip's own (``pip install --dry-run --report``), run by the python envkit
runs under, against the index pip is configured with (its config files, ``PIP_INDEX_URL``
and friends), for the target platform's wheel tags and the python version the conda part
of the lock pins for that platform. Only wheels are considered (``--only-binary=:all:``):
a build from an sdist is not reproducible from a hash of its inputs.

Packages pip would install that the conda part already holds (numpy from conda, asked
for by a pip package) are left to conda, as conda-lock does; a pip package whose
requirement the conda version does not meet is an error.

pip's ``--platform`` picks wheels for the target but evaluates environment markers
(``colorama; sys_platform == "win32"``) against the machine that runs it; envkit runs pip's
own ``main`` with its marker environment set to the target's (platform, machine, python),
so a lock made on Linux for win-64 holds what pip on Windows would install.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.errors import BadInput, LockError, NoPipDistribution, PipIndexUnreachable

DEFAULT_INDEX = "https://pypi.org/simple"
_ARCH = {"64": "x86_64", "aarch64": "aarch64", "ppc64le": "ppc64le", "arm64": "arm64"}
_LEGACY_MANYLINUX = (("2014", 17), ("2010", 12), ("1", 5))  # PEP 599/571/513 aliases of manylinux_2_X
_SYSTEMS = {"linux": ("linux", "Linux", "posix"), "osx": ("darwin", "Darwin", "posix"), "win": ("win32", "Windows", "nt")}
_MACHINES = {"linux-64": "x86_64", "linux-aarch64": "aarch64", "linux-ppc64le": "ppc64le", "osx-64": "x86_64", "osx-arm64": "arm64", "win-64": "AMD64"}
# pip itself, with the markers of the target platform rather than of this machine
_PIP_FOR_TARGET = """
import json, sys
from pip._vendor.packaging import markers
target, here = json.loads(sys.argv[1]), markers.default_environment
markers.default_environment = lambda: {**here(), **target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@dataclass(frozen=True)
class PipPackage:
    """One pip package of a lock: a wheel, for one platform."""

    name: str
    version: str
    url: str
    sha256: str
    platform: str
    depends: tuple[tuple[str, str], ...] = ()

    def requirement(self) -> str:
        """The line pip installs it from in hash-checking mode (conda-lock renders the same)."""
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


def wheel_platforms(platform: str, virtual: Iterable[Any]) -> tuple[str, ...]:
    """pip ``--platform`` tags for a conda platform, from its virtual packages (__glibc, __osx)."""
    versions = {v.name: v.version for v in virtual}
    system, _, arch_name = platform.partition("-")
    arch = _ARCH.get(arch_name)
    if system == "linux" and arch:
        minor = _major_minor(versions.get("__glibc", "2.17"), (2, 17))[1]
        tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)]
        legacy = [f"manylinux{alias}_{arch}" for alias, needs in _LEGACY_MANYLINUX if minor >= needs and (alias == "2014" or arch == "x86_64")]
        return (*tags, *legacy, f"linux_{arch}")
    if system == "osx" and arch:
        from packaging.tags import mac_platforms

        return tuple(mac_platforms(_major_minor(versions.get("__osx", "11.0"), (11, 0)), arch))
    if platform == "win-64":
        return ("win_amd64",)
    raise BadInput(f"{platform}: envkit cannot lock `pip:` packages for this platform; lock it without the `pip:` part")


def marker_environment(platform: str, python_version: str) -> dict[str, str]:
    """PEP 508 marker values of a CPython ``python_version`` on a conda ``platform``."""
    sys_platform, system, os_name = _SYSTEMS[platform.split("-")[0]]
    short = ".".join(python_version.split(".")[:2])
    return {
        "sys_platform": sys_platform,
        "platform_system": system,
        "os_name": os_name,
        "platform_machine": _MACHINES[platform],
        "python_version": short,
        "python_full_version": python_version,
        "implementation_name": "cpython",
        "implementation_version": python_version,
        "platform_python_implementation": "CPython",
    }


def _major_minor(version: str, default: tuple[int, int]) -> tuple[int, int]:
    """A virtual package's version (``__glibc 2.28``, ``__osx 10.15``) as (major, minor), by rattler's Version."""
    from rattler import Version
    from rattler.exceptions import InvalidVersionError

    try:
        return Version(version).extend_to_length(2).as_major_minor() or default
    except InvalidVersionError:
        return default


def resolve_pip(
    requirements: tuple[str, ...],
    platform: str,
    python_version: str,
    virtual: Iterable[Any],
    *,
    conda_versions: dict[str, str],
    source: Path,
    python: str | None = None,
) -> tuple[PipPackage, ...]:
    """Resolve ``requirements`` with pip for ``platform`` and this python; every package pinned.

    ``conda_versions`` are the python packages the conda part holds (PyPI name -> version).
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", python_version)
    if not match:
        raise LockError(f"{source}: the locked python for {platform} is {python_version!r}, not a version pip understands; pin `python` in the spec")
    abi = f"cp{match.group(1)}{match.group(2)}"
    platform_tags = wheel_platforms(platform, virtual)  # an unknown platform fails before pip runs
    target = marker_environment(platform, match.group(0))
    with tempfile.TemporaryDirectory(prefix="envkit-pip-") as scratch:
        report, log = Path(scratch) / "report.json", Path(scratch) / "pip.log"
        cmd = [python or sys.executable, "-c", _PIP_FOR_TARGET, json.dumps(target), "install", "--dry-run", "--ignore-installed", "--no-input",
               "--disable-pip-version-check", "--report", str(report), "--log", str(log),
               "--target", str(Path(scratch) / "target"), "--only-binary=:all:",
               "--python-version", match.group(0), "--implementation", "cp",
               "--abi", abi, "--abi", "abi3", "--abi", "none"]  # fmt: skip
        for tag in platform_tags:
            cmd += ["--platform", tag]
        cmd += list(requirements)
        env = dict(os.environ, PYTHONNOUSERSITE="1", PIP_REQUIRE_VIRTUALENV="0")
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, env=env)
        except OSError as exc:
            raise LockError(f"{cmd[0]}: cannot run pip ({exc.strerror}); install pip for the python envkit runs under") from None
        index = _indexes(done.stdout)
        if done.returncode != 0:
            logged = log.read_text(errors="replace") if log.is_file() else ""
            raise _failure(done.stderr or done.stdout, logged, index, platform, python_version, source)
        try:
            installs = json.loads(report.read_text())["install"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LockError(f"{source}: pip wrote no usable --report for {platform} ({exc!r}); use pip >= 22.2") from None

    resolved: dict[str, dict[str, Any]] = {}
    for item in installs:
        meta = item.get("metadata") or {}
        resolved[canonicalize_name(str(meta["name"]))] = item
    wanted: list[tuple[str, str]] = []  # (who, requirement) for every requirement in the set
    wanted += [("the spec", r) for r in requirements]
    for name, item in resolved.items():
        wanted += [(name, r) for r in item["metadata"].get("requires_dist") or ()]

    deps: dict[str, dict[str, str]] = {name: {} for name in resolved}
    for who, text in wanted:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue  # pip resolved it, so pip understood it; an odd line is not ours to reject
        dep = canonicalize_name(req.name)
        if dep not in resolved or (req.marker is not None and not req.marker.evaluate({**target, "extra": ""})):
            continue
        if dep in conda_versions and not req.specifier.contains(conda_versions[dep], prereleases=True):
            raise LockError(
                f"{source}: pip package {who if who != 'the spec' else text} needs {text!r} on {platform}, "
                f"but the conda part installs {dep} {conda_versions[dep]}; pin {dep} in the conda dependencies to match"
            )
        if who in deps:
            deps[who][dep] = str(req.specifier) or "*"

    out = []
    for name, item in sorted(resolved.items()):
        if name in conda_versions:
            continue  # conda installs it (and its version meets every requirement, checked above)
        info = item.get("download_info") or {}
        url = str(info.get("url") or "")
        sha256 = _sha256(info, url)
        if not url or not sha256:
            raise LockError(f"{source}: the index gives no sha256 for pip package {name} ({url or 'no url'}) on {platform}; use an index that publishes hashes")
        out.append(PipPackage(name, str(item["metadata"]["version"]), url, sha256, platform, tuple(sorted(deps[name].items()))))
    return tuple(out)


def _sha256(info: dict[str, Any], url: str) -> str | None:
    archive = info.get("archive_info") or {}
    found = (archive.get("hashes") or {}).get("sha256")
    if not found and str(archive.get("hash") or "").startswith("sha256="):
        found = archive["hash"].split("=", 1)[1]
    if not found and url.startswith("file:"):
        import hashlib
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        try:
            found = hashlib.sha256(Path(url2pathname(urlparse(url).path)).read_bytes()).hexdigest()
        except OSError:
            return None
    return str(found) if found else None


def _indexes(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith("Looking in indexes:"):
            return line.split(":", 1)[1].strip()
    return DEFAULT_INDEX


def _failure(stderr: str, logged: str, index: str, platform: str, python_version: str, source: Path) -> LockError:
    where = f"for {platform} (python {python_version})"
    if re.search(r"No module named '?pip\b", stderr) or "no such option: --report" in stderr:
        return LockError(f"{sys.executable}: has no pip that can lock (pip >= 22.2 with --report); install or upgrade pip for the python envkit runs under")
    down = re.search(r"Could not fetch URL (\S+?): (connection error|There was a problem confirming the ssl certificate|.*timed out)", logged)
    missing_root = [u for u in index.split(", ") if u.startswith("file:") and not _local_dir(u)]
    if down or missing_root:
        what = missing_root[0] if missing_root else index
        return PipIndexUnreachable(
            f"{source}: the pip index {what} cannot be reached {where}; check the index URL (pip config, PIP_INDEX_URL) and the network"
        )
    found = re.search(r"No matching distribution found for (\S+)", stderr)
    if found:
        versions = re.search(r"satisfies the requirement \S+ \(from versions: ([^)]*)\)", stderr)
        seen = f"; versions there: {versions.group(1)}" if versions and versions.group(1) != "none" else ""
        return NoPipDistribution(
            f"{source}: pip package {found.group(1)} has no wheel {where} on {index}{seen}; "
            "relax its pin, or drop the platform from the lock"
        )
    tail = " ".join(" ".join(line.removeprefix("ERROR:").split()) for line in stderr.splitlines() if line.strip())[-300:]
    return NoPipDistribution(f"{source}: pip cannot resolve the `pip:` part {where} on {index} ({tail}); fix the `pip:` entries")


def _local_dir(url: str) -> bool:
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    return Path(url2pathname(urlparse(url).path)).is_dir()


def requirements_text(packages: Iterable[PipPackage]) -> str:
    """A requirements file that installs exactly these wheels (pip's hash-checking mode)."""
    return "".join(p.requirement() + "\n" for p in sorted(packages, key=lambda p: p.name))


def conda_python_packages(records: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The PyPI names (canonical) of conda records, with their versions: what pip must not reinstall."""
    from packaging.utils import canonicalize_name

    mapping = _pypi_names()
    return {canonicalize_name(mapping.get(name, name)): version for name, version in records if not name.startswith("__")}


def _pypi_names() -> dict[str, str]:
    from envkit.conda.spec import PIP_MAPPING

    try:
        doc = json.loads(PIP_MAPPING.read_text())
    except (OSError, ValueError):
        return {}
    return {str(v.get("conda_name")): str(v.get("pypi_name")) for v in doc.values() if isinstance(v, dict) and v.get("conda_name")}
