"""conda-lock.yml: solve a spec for several platforms and write it with conda-lock's models.

The content hash per platform is conda-lock's own (spec + virtual packages), so
``conda-lock`` and envkit agree on when a lock is stale. envkit adds three keys to
``custom_metadata``: the sha256 of the spec files (a fast ``--check`` that needs no
conda-lock import when the spec is byte-for-byte unchanged), the ``--with-cuda``
value, and the requested lines per platform (so a stale check can say what changed).
The `pip:` part is resolved by pip itself for each platform (``envkit.conda.pip_lock``)
and written as conda-lock's own ``manager: pip`` entries, every package with its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.conda.channels import ResolvedChannel, resolve_channels
from envkit.conda.pip_lock import PipPackage
from envkit.conda.platforms import check_cuda_version, check_platforms, cuda_from_specs, current_platform, virtual_package_repo, virtual_packages
from envkit.conda.spec import EnvironmentSpec, read_spec
from envkit.errors import BadInput, LockError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from envkit.conda.condarc import CondaConfig

DEFAULT_LOCKFILE = "conda-lock.yml"
META_SPEC_SHA = "envkit.spec_sha256"
META_CUDA = "envkit.with_cuda"
META_REQUESTED = "envkit.requested"
META_PIP = "envkit.pip_locked"
"""The platforms whose `pip:` part the lock pins (a lock from before envkit locked pip has none)."""


@dataclass(frozen=True)
class LockResult:
    path: Path
    platforms: tuple[str, ...]
    content_hash: tuple[tuple[str, str], ...]
    packages: int
    channels: tuple[ResolvedChannel, ...] = ()  # the URLs solved against, each with the setting that gave it


@dataclass(frozen=True)
class LockCheck:
    path: Path
    fresh: bool
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LockedPackage:
    """One conda record of a lock, as plain data (what create, doctor and export need)."""

    name: str
    version: str
    build: str
    url: str
    md5: str | None
    sha256: str | None
    platform: str
    depends: tuple[tuple[str, str], ...] = ()

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class LockDocument:
    path: Path
    platforms: tuple[str, ...]
    channels: tuple[str, ...]
    content_hash: tuple[tuple[str, str], ...]
    sources: tuple[str, ...]
    with_cuda: str | None
    spec_sha256: str | None
    requested: tuple[tuple[str, tuple[str, ...]], ...]
    packages: tuple[LockedPackage, ...]
    pip: tuple[PipPackage, ...] = ()
    """The ``manager: pip`` entries: the whole resolved pip set, per platform."""
    pip_locked: tuple[str, ...] = ()
    """The platforms whose `pip:` part was resolved (it may resolve to nothing pip installs)."""

    def hash_for(self, platform: str) -> str | None:
        return dict(self.content_hash).get(platform)

    def packages_for(self, platform: str) -> tuple[LockedPackage, ...]:
        return tuple(p for p in self.packages if p.platform == platform)

    def pip_for(self, platform: str) -> tuple[PipPackage, ...]:
        return tuple(p for p in self.pip if p.platform == platform)

    def require_platform(self, platform: str) -> None:
        if platform not in self.platforms:
            raise LockError(
                f"{self.path}: locks {', '.join(self.platforms)}, not {platform}; "
                f"run `envkit lock -p {platform}` to add it"
            )

    def spec_paths(self) -> tuple[Path, ...]:
        return tuple((self.path.parent / s) for s in self.sources)


def default_cache_dir() -> Path:
    root = os.environ.get("ENVKIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "envkit")
    return Path(root) / "rattler"


def spec_sha256(specs: tuple[EnvironmentSpec, ...]) -> str:
    joined = "\n".join(s.sha256 for s in specs)
    return hashlib.sha256(joined.encode()).hexdigest() if len(specs) > 1 else specs[0].sha256


def requested_lines(lock_spec: Any, platform: str) -> tuple[str, ...]:
    lines = []
    for dep in lock_spec.dependencies[platform]:
        version = getattr(dep, "version", None) or getattr(dep, "url", "") or ""
        build = getattr(dep, "build", None)
        text = f"{dep.name} {version}".strip() + (f" {build}" if build else "")
        lines.append(f"{dep.manager}: {text}")
    return tuple(sorted(lines))


def _lock_specification(specs: tuple[EnvironmentSpec, ...], platforms: tuple[str, ...]) -> Any:
    parsed = [s.lock_specification(platforms) for s in specs]
    if len(parsed) == 1:
        return parsed[0]
    from conda_lock.src_parser.aggregation import aggregate_lock_specs

    try:
        return aggregate_lock_specs(parsed, list(platforms))
    except ValueError as exc:
        raise BadInput(f"{', '.join(str(s.path) for s in specs)}: cannot be combined ({exc}); lock them separately") from None


def _match_spec(dep: Any) -> str:
    text = f"{dep.name} {dep.version}".strip() if dep.version not in ("", "*") else dep.name
    if dep.build:
        text += f" {dep.build}" if dep.version not in ("", "*") else f" * {dep.build}"
    return f"{dep.conda_channel}::{text}" if dep.conda_channel else text


def make_lock(
    spec_paths: tuple[Path, ...],
    lockfile: Path | None = None,
    *,
    platforms: tuple[str, ...] = (),
    with_cuda: str | None = None,
    mirrors: tuple[tuple[str, str], ...] = (),
    cache_dir: Path | None = None,
    progress: Any = None,
    sources_from: Path | None = None,
    condarc: CondaConfig | None = None,
    mirrors_from: Path | None = None,
) -> LockResult:
    """Solve and write the lock; ``sources_from`` is the folder the lock's spec paths are
    relative to when it will be moved after writing (default: its own folder). Channel names
    resolve through ``mirrors`` (from ``mirrors_from``), then ``condarc`` (conda's settings)."""
    from conda_lock.content_hash import compute_content_hashes
    from conda_lock.lockfile.v1.models import HashModel
    from conda_lock.lockfile.v2prelim.models import LockedDependency, Lockfile, LockMeta, TimeMeta

    from envkit.conda.solver import check_cuda_plan, solve

    specs = tuple(read_spec(p) for p in spec_paths)
    with_cuda = cuda_from_specs(_conda_lines(specs), with_cuda)  # the spec's CUDA intent sets __cuda
    target = lockfile or specs[0].path.parent / DEFAULT_LOCKFILE
    if not target.parent.is_dir():
        raise BadInput(f"{target}: the folder {target.parent} does not exist; create it first")
    chosen = check_platforms(platforms or specs[0].platforms or (current_platform(),))
    lock_spec = _lock_specification(specs, chosen)
    channels = resolve_channels(tuple(c.url for c in lock_spec.channels), mirrors, source=specs[0].path, condarc=condarc,
                                mirrors_from=mirrors_from)
    repo = virtual_package_repo(with_cuda)
    hashes = compute_content_hashes(lock_spec, repo)
    cache = cache_dir or default_cache_dir()

    packages: list[Any] = []
    for platform in chosen:
        wanted = tuple(_match_spec(d) for d in lock_spec.dependencies[platform] if d.manager == "conda")
        if progress:
            progress(f"solving {len(wanted)} specs for {platform} with rattler")
        records = solve(wanted, channels, platform, virtual_packages(repo, platform), cache_dir=cache, source=specs[0].path)
        check_cuda_plan(((r.name.normalized, str(r.version), str(r.build)) for r in records), platform, with_cuda, source=specs[0].path)
        packages += _lock_pip(specs, platform, records, virtual_packages(repo, platform), progress)
        for record in records:
            packages.append(
                LockedDependency(
                    name=record.name.normalized,
                    version=str(record.version),
                    manager="conda",
                    platform=platform,
                    dependencies=_dependencies(record.depends),
                    url=record.url,
                    hash=HashModel(md5=record.md5.hex() if record.md5 else "", sha256=record.sha256.hex() if record.sha256 else None),
                    build=str(record.build),
                    categories={"main"},
                )
            )
    sources = []
    base = (sources_from or target.parent).resolve()
    for spec in specs:
        try:
            sources.append(os.path.relpath(spec.path.resolve(), base))
        except ValueError:
            sources.append(str(spec.path.resolve()))
    requested = {p: list(requested_lines(lock_spec, p)) for p in chosen}
    content = Lockfile(
        package=packages,
        metadata=LockMeta(
            content_hash=hashes,
            channels=list(lock_spec.channels),
            platforms=list(chosen),
            sources=sources,
            time_metadata=TimeMeta.create(),
            custom_metadata={
                META_SPEC_SHA: spec_sha256(specs),
                META_CUDA: with_cuda or "",
                META_REQUESTED: json.dumps(requested, sort_keys=True),
                META_PIP: ",".join(chosen) if any(s.pip_specs for s in specs) else "",
            },
        ),
    )
    _write_atomically(content, target)
    return LockResult(target, chosen, tuple(sorted(hashes.items())), len(packages), channels)


def _lock_pip(specs: tuple[EnvironmentSpec, ...], platform: str, records: list[Any], virtual: Any, progress: Any) -> list[Any]:
    """The spec's `pip:` part resolved by pip for this platform, as conda-lock's pip entries."""
    from conda_lock.lockfile.v1.models import HashModel
    from conda_lock.lockfile.v2prelim.models import LockedDependency

    from envkit.conda.pip_lock import conda_python_packages, resolve_pip

    requirements = tuple(dict.fromkeys(r for s in specs for r in s.pip_specs))
    if not requirements:
        return []
    python = next((str(r.version) for r in records if r.name.normalized == "python"), None)
    if python is None:
        raise LockError(f"{specs[0].path}: the `pip:` part needs python, and the conda part installs none for {platform}; add python to the dependencies")
    if progress:
        progress(f"resolving {len(requirements)} pip requirements for {platform} (python {python}) with pip")
    conda = conda_python_packages((r.name.normalized, str(r.version)) for r in records)
    pinned = resolve_pip(requirements, platform, python, virtual, conda_versions=conda, source=specs[0].path)
    return [
        LockedDependency(
            name=p.name,
            version=p.version,
            manager="pip",
            platform=platform,
            dependencies=dict(p.depends),
            url=p.url,
            hash=HashModel(sha256=p.sha256),
            categories={"main"},
        )
        for p in pinned
    ]


def _conda_lines(specs: tuple[EnvironmentSpec, ...]) -> tuple[str, ...]:
    return tuple(line for spec in specs for line in spec.conda_specs)


def _dependencies(depends: list[str]) -> dict[str, str]:
    from rattler import MatchSpec

    out: dict[str, str] = {}
    for dep in depends:
        try:
            spec = MatchSpec(dep, strict=False)
            out[spec.name.normalized] = spec.version or ""
        except Exception:  # noqa: BLE001 - keep an odd depends line verbatim
            name, _, rest = dep.partition(" ")
            out[name] = rest
    return out


def _write_atomically(content: Any, target: Path) -> None:
    import tempfile

    from conda_lock.lockfile import write_conda_lock_file

    from envkit.atomic import atomic_write, write_target

    where = write_target(target, "--lockfile")  # through a symlink, at its target; never over a device
    try:
        # conda-lock's writer takes a path, and its help text names the file: a folder of its own
        with tempfile.TemporaryDirectory(prefix=f".{where.name}.tmp-", dir=where.parent) as folder:
            draft = Path(folder) / where.name
            write_conda_lock_file(content, draft, metadata_choices=set())
            data = draft.read_bytes()
    except OSError as exc:
        raise BadInput(f"{target}: cannot write ({exc.strerror}); choose another --lockfile") from None
    atomic_write(where, data, what="--lockfile")


# -- reading ------------------------------------------------------------------------


def read_lock(path: Path) -> LockDocument:
    """A conda-lock.yml (version 1 or 2) as plain data; no conda-lock import (it costs ~1 s)."""
    import yaml

    from envkit.inputs import read_regular_file

    data = read_regular_file(path, "pass a conda-lock.yml as --lockfile", error=LockError,
                             missing=f"{path}: no lock file; run `envkit lock` first or pass --lockfile")
    try:
        doc = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise LockError(f"{path}{where}: malformed lock file; regenerate it with `envkit lock`") from None
    if not isinstance(doc, dict) or doc.get("version") not in (1, 2) or not isinstance(doc.get("metadata"), dict):
        raise LockError(f"{path}: not a conda-lock.yml (version 1 or 2); regenerate it with `envkit lock`")
    meta = doc["metadata"]
    custom = meta.get("custom_metadata") or {}
    try:
        requested = json.loads(custom.get(META_REQUESTED) or "{}")
        packages = tuple(
            LockedPackage(
                name=str(p["name"]),
                version=str(p["version"]),
                build=str(p.get("build") or _build_from_url(p["url"])),
                url=str(p["url"]),
                md5=(p.get("hash") or {}).get("md5") or None,
                sha256=(p.get("hash") or {}).get("sha256") or None,
                platform=str(p["platform"]),
                depends=tuple(sorted((str(k), str(v)) for k, v in (p.get("dependencies") or {}).items())),
            )
            for p in doc.get("package") or ()
            if p.get("manager", "conda") == "conda"
        )
        pip = tuple(
            PipPackage(
                name=str(p["name"]),
                version=str(p["version"]),
                url=str(p["url"]),
                sha256=str((p.get("hash") or {})["sha256"]),
                platform=str(p["platform"]),
                depends=tuple(sorted((str(k), str(v)) for k, v in (p.get("dependencies") or {}).items())),
            )
            for p in doc.get("package") or ()
            if p.get("manager") == "pip"
        )
        return LockDocument(
            path=path,
            platforms=tuple(meta.get("platforms") or ()),
            channels=tuple(c["url"] if isinstance(c, dict) else str(c) for c in meta.get("channels") or ()),
            content_hash=tuple(sorted((meta.get("content_hash") or {}).items())),
            sources=tuple(meta.get("sources") or ()),
            with_cuda=custom.get(META_CUDA) or None,
            spec_sha256=custom.get(META_SPEC_SHA),
            requested=tuple(sorted((k, tuple(v)) for k, v in requested.items())),
            packages=packages,
            pip=pip,
            pip_locked=tuple(p for p in str(custom.get(META_PIP) or "").split(",") if p),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LockError(f"{path}: malformed lock file ({exc!r}); regenerate it with `envkit lock`") from None


def _build_from_url(url: str) -> str:
    stem = url.rsplit("/", 1)[-1].removesuffix(".tar.bz2").removesuffix(".conda")
    return stem.rsplit("-", 1)[-1]


# -- checking -----------------------------------------------------------------------


def check_lock(
    spec_paths: tuple[Path, ...],
    lockfile: Path | None = None,
    *,
    platforms: tuple[str, ...] = (),
    with_cuda: str | None = None,
) -> LockCheck:
    """Is ``lockfile`` (default: conda-lock.yml beside the first spec) still the lock of these
    specs? Names each platform and line that changed."""
    check_cuda_version(with_cuda)
    lockfile = lockfile or Path(spec_paths[0]).parent / DEFAULT_LOCKFILE
    lock = read_lock(lockfile)
    specs = tuple(read_spec(p) for p in spec_paths)
    wanted = check_platforms(platforms) if platforms else lock.platforms
    # the CUDA the lock was solved with sticks (--with-cuda or the spec's intent, recorded alike);
    # a lock solved without one is checked against what the spec asks for now
    cuda = (lock.with_cuda or cuda_from_specs(_conda_lines(specs))) if with_cuda is None else (with_cuda or None)
    missing = [p for p in wanted if p not in lock.platforms]
    has_pip = any(s.pip_specs for s in specs)
    pip_unlocked = [p for p in wanted if p in lock.platforms and has_pip and p not in lock.pip_locked]
    if not missing and not pip_unlocked and cuda == lock.with_cuda and lock.spec_sha256 == spec_sha256(specs):
        return LockCheck(lockfile, True)

    changes: list[str] = [f"{p}: not in the lock" for p in missing]
    changes += [f"{p}: the `pip:` part is not pinned in the lock" for p in pip_unlocked]
    if cuda != lock.with_cuda:
        changes.append(f"--with-cuda: {lock.with_cuda or 'none'} -> {cuda or 'none'}")
    present = tuple(p for p in wanted if p in lock.platforms)
    if present:
        from conda_lock.content_hash import compute_content_hashes

        lock_spec = _lock_specification(specs, present)
        hashes = compute_content_hashes(lock_spec, virtual_package_repo(cuda))
        before = dict(lock.requested)
        if list(lock.channels) != [c.url for c in lock_spec.channels]:
            changes.append(f"channels: {list(lock.channels)} -> {[c.url for c in lock_spec.channels]}")
        for platform in present:
            if hashes[platform] == lock.hash_for(platform):
                continue
            now = requested_lines(lock_spec, platform)
            old = before.get(platform, ())
            lines = [f"-{x}" for x in old if x not in now] + [f"+{x}" for x in now if x not in old]
            changes.append(f"{platform}: content hash differs" + (f" ({', '.join(lines)})" if lines else ""))
    return LockCheck(lockfile, not changes, tuple(changes))
