"""Where environments live, and what an installed one holds (its conda-meta records)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.errors import BadInput
from envkit.fingerprint.sources import ENVKIT_META, read_json_object, scan_dists, site_dirs_of

KEPT_LOCK = "envkit-lock.yml"
"""The lock `create` solved from a spec, kept in conda-meta/ beside envkit.json."""
STATE_FILE = Path("conda-meta") / "state"
"""conda's per-environment state, JSON; its ``env_vars`` are set on activation."""


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    version: str
    build: str
    url: str | None
    md5: str | None
    sha256: str | None
    channel: str | None
    subdir: str | None
    requested_specs: tuple[str, ...] = ()


def envs_dir() -> Path:
    explicit = os.environ.get("ENVKIT_ENVS_DIR")
    if explicit:
        return Path(explicit)
    conda_prefix = os.environ.get("CONDA_PREFIX")
    if conda_prefix and shutil.which("conda"):
        base = Path(conda_prefix)
        # inside an activated env, CONDA_PREFIX is <base>/envs/<name>
        return base.parent if base.parent.name == "envs" else base / "envs"
    return Path.home() / ".envkit" / "envs"


# conda's own rules for an environment name (conda.base.constants.PREFIX_NAME_DISALLOWED_CHARS and
# the names conda reserves for its root environment); `..`, `.` and control characters would not
# name a folder under envs/ either.
NAME_DISALLOWED_CHARS = ("/", " ", ":", "#")
RESERVED_NAMES = ("base", "root")


def env_name_problem(name: str) -> str | None:
    """Why conda refuses `name` as an environment name (the fix included); None when it is fine."""
    if not name.strip():
        return "an environment name cannot be empty; write a name such as `train`"
    bad = sorted({c for c in name if c in NAME_DISALLOWED_CHARS or not c.isprintable()})
    if bad:
        shown = ", ".join("a space" if c == " " else repr(c) for c in bad)
        fixed = "".join("-" if c in bad else c for c in name).strip("-") or "train"
        return (f"conda refuses environment names containing {shown} (they are not allowed: '/', ':', '#', spaces); "
                f"use e.g. `{fixed}`, or -p PREFIX for a folder")
    if name in (".", ".."):
        return f"`{name}` is not a name but a folder; use -p PREFIX for a path"
    if name in RESERVED_NAMES:
        return f"`{name}` is the name conda reserves for its root environment; use another name, e.g. `{name}-env`, or -p PREFIX for a folder"
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        return "the name is longer than a folder name can be (255 bytes); choose a shorter one"
    return None


def resolve_prefix(name: str | None, prefix: Path | None, default_name: str | None = None) -> Path:
    """The folder of -n NAME / -p PREFIX, or of `default_name` (the spec's `name:`); BadInput (exit 2) otherwise."""
    if name and prefix:
        raise BadInput("use -n NAME or -p PREFIX, not both")
    if prefix is not None:
        return prefix.absolute()
    if name is not None:
        where = f"-n {name!r}"
    elif default_name:
        name, where = default_name, f"`name: {default_name}` in the spec (the name used without -n/-p)"
    else:
        raise BadInput("no environment to create into: neither -n NAME nor -p PREFIX was given, and no spec gives a `name:`; "
                       "pass -n NAME or -p PREFIX, or add `name: NAME` to the environment.yml")
    problem = env_name_problem(name)
    if problem:
        raise BadInput(f"{where}: {problem}")
    return env_dir_for(name)[0]


def env_dir_for(name: str) -> tuple[Path, str | None]:
    """The folder of the environment NAME and the setting that chose it: $ENVKIT_ENVS_DIR, else conda's
    ``envs_dirs`` (.condarc, $CONDA_ENVS_DIRS: the first that holds NAME, else the first writable),
    else ``envs_dir()``."""
    if os.environ.get("ENVKIT_ENVS_DIR"):
        return envs_dir() / name, "$ENVKIT_ENVS_DIR"
    from envkit.conda.condarc import load_condarc

    dirs = load_condarc().envs_dirs
    if not dirs:
        return envs_dir() / name, None
    for setting in dirs:
        if (Path(setting.value) / name / "conda-meta").is_dir():
            return Path(setting.value) / name, setting.where("envs_dirs")
    for setting in dirs:
        if _writable(Path(setting.value)):
            return Path(setting.value) / name, setting.where("envs_dirs")
    listed = ", ".join(f"{s.value} ({s.source})" for s in dirs)
    raise BadInput(f"-n {name}: none of conda's envs_dirs can be written ({listed}); fix envs_dirs, or pass -p PREFIX")


def _writable(folder: Path) -> bool:
    """A folder envkit may create an environment in: writable, or creatable under a writable parent."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def active_prefix(command: str) -> Path:
    """The active conda environment ($CONDA_PREFIX), which `command` uses without -n/-p, as conda does."""
    active = os.environ.get("CONDA_PREFIX")
    if not active:
        raise BadInput(
            f"{command}: no environment given and none is active ($CONDA_PREFIX is not set); "
            f"pass -n NAME (an environment under {envs_dir()}) or -p PREFIX (its folder)"
        )
    return Path(active).absolute()


def require_env(prefix: Path) -> Path:
    if not (prefix / "conda-meta").is_dir():
        raise BadInput(f"{prefix}: not a conda environment (no conda-meta/); pass the prefix of one made by `envkit create`")
    return prefix


def installed_packages(prefix: Path) -> tuple[InstalledPackage, ...]:
    found = []
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        if path.name == ENVKIT_META:
            continue
        doc = read_json_object(path)
        if not doc.get("name") or not doc.get("version"):
            continue
        found.append(
            InstalledPackage(
                name=str(doc["name"]),
                version=str(doc["version"]),
                build=str(doc.get("build", "")),
                url=doc.get("url"),
                md5=doc.get("md5"),
                sha256=doc.get("sha256"),
                channel=doc.get("channel"),
                subdir=doc.get("subdir"),
                requested_specs=tuple(doc.get("requested_specs") or ()),
            )
        )
    return tuple(found)


def read_envkit_meta(prefix: Path) -> dict[str, Any]:
    return read_json_object(prefix / "conda-meta" / ENVKIT_META)


def env_vars(prefix: Path) -> dict[str, str]:
    """The environment's variables as conda keeps them (conda-meta/state ``env_vars``)."""
    found = read_json_object(prefix / STATE_FILE).get("env_vars")
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def conda_owned_files(prefix: Path) -> set[str]:
    owned: set[str] = set()
    for path in (prefix / "conda-meta").glob("*.json"):
        owned.update(str(f) for f in read_json_object(path).get("files") or ())
    return owned


def pip_dists(prefix: Path) -> dict[str, str]:
    """Distributions in site-packages that no conda record owns: what pip put there."""
    owned = conda_owned_files(prefix)
    dists = {}
    for dist in scan_dists(site_dirs_of(prefix)).values():
        rel = os.path.relpath(dist.path, prefix)
        if not any(f.startswith(rel + "/") for f in owned):
            dists[dist.name] = dist.version
    return dists

