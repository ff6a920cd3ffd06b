"""An installed environment against its lock (and the lock against its spec)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from envkit.conda.lock import check_lock, read_lock
from envkit.conda.prefixes import installed_packages, pip_dists, read_envkit_meta, require_env, resolve_prefix
from envkit.errors import LockError


@dataclass(frozen=True)
class Drift:
    kind: str  # missing | extra | changed | stale-lock
    manager: str  # conda | pip | lock
    name: str
    expected: str | None
    found: str | None

    def to_json(self) -> dict[str, str | None]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DoctorReport:
    prefix: Path
    lockfile: Path
    platform: str
    drift: tuple[Drift, ...]

    @property
    def ok(self) -> bool:
        return not self.drift

    def to_json(self) -> dict[str, object]:
        return {"prefix": str(self.prefix), "lockfile": str(self.lockfile), "platform": self.platform, "ok": self.ok,
                "drift": [d.to_json() for d in self.drift]}


def doctor_environment(name: str | None, prefix: Path | None, lockfile: Path | None = None) -> DoctorReport:
    """``envkit doctor``: the environment -n NAME or -p PREFIX (neither: the active one,
    $CONDA_PREFIX, else this Python's) against ``lockfile`` or the lock it was created from."""
    if name is None and prefix is None:
        prefix = Path(os.environ.get("CONDA_PREFIX") or sys.prefix)
    return doctor(resolve_prefix(name, prefix), lockfile)


def doctor(prefix: Path, lockfile: Path | None = None) -> DoctorReport:
    require_env(prefix)
    meta = read_envkit_meta(prefix)
    path = lockfile or (Path(meta["lockfile"]) if meta.get("lockfile") else None)
    if path is None:
        raise LockError(f"{prefix}: was not made from a lock file that still exists; pass --lockfile")
    lock = read_lock(path)
    platform = str(meta.get("platform") or "")
    if not platform:
        from envkit.conda.platforms import current_platform

        platform = current_platform()
    lock.require_platform(platform)

    drift: list[Drift] = []
    want = {p.name: f"{p.version} {p.build}" for p in lock.packages_for(platform)}
    have = {p.name: f"{p.version} {p.build}" for p in installed_packages(prefix)}
    drift += _compare("conda", want, have)
    if platform in lock.pip_locked or lock.pip_for(platform):
        pip_want = {p.name: p.version for p in lock.pip_for(platform)}  # the lock's pins
    else:  # a lock from before envkit locked pip: what create installed
        pip_want = {str(n): str(v) for n, v in meta.get("pip") or ()}
    drift += _compare("pip", pip_want, pip_dists(prefix))

    specs = tuple(p for p in lock.spec_paths() if p.is_file())
    if specs:
        verdict = check_lock(specs, lock.path, platforms=(platform,))
        drift += [Drift("stale-lock", "lock", lock.path.name, None, change) for change in verdict.changes]
    return DoctorReport(prefix, lock.path, platform, tuple(drift))


def _compare(manager: str, want: dict[str, str], have: dict[str, str]) -> list[Drift]:
    out = []
    for name in sorted(set(want) | set(have)):
        if name not in have:
            out.append(Drift("missing", manager, name, want[name], None))
        elif name not in want:
            out.append(Drift("extra", manager, name, None, have[name]))
        elif want[name] != have[name]:
            out.append(Drift("changed", manager, name, want[name], have[name]))
    return out
