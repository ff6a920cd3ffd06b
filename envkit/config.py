"""``[tool.envkit]`` in pyproject.toml, or envkit.toml, as a Config.

The nearest file upward from the working directory wins; envkit.toml beats
pyproject.toml in the same folder. In envkit.toml the keys may sit at the top
level or under ``[tool.envkit]``::

    [tool.envkit]
    preset = "strict"            # strict | compatible | warn

    [tool.envkit.policy]
    "torch.cuda" = "refuse"
    "packages.*" = "info"

    [tool.envkit.mirrors]        # channel name or URL -> the URL to fetch it from
    "conda-forge" = "https://mirror.example/conda-forge"

    [tool.envkit.storage]        # checkpoints at s3:// (and other fsspec) URLs; AWS_* variables and profiles apply too
    endpoint_url = "http://minio.local:9000"
    region = "eu-west-1"
    connect_timeout = 5          # seconds (default 5); read_timeout (default 20), retries (default 1)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import ConfigError
from envkit.policy import Policy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CONFIG_FILES = ("envkit.toml", "pyproject.toml")


@dataclass(frozen=True)
class Config:
    """The ``[tool.envkit]`` settings found for the current project."""

    preset: str | None = None
    policy_overrides: tuple[tuple[str, str], ...] = ()
    source: Path | None = None
    mirrors: tuple[tuple[str, str], ...] = ()
    storage: tuple[tuple[str, Any], ...] = ()  # [tool.envkit.storage], validated (STORAGE_KEYS)

    def policy(self, preset: str | None = None) -> Policy:
        """The policy to apply; an explicit preset (from a flag or argument) beats the file's."""
        return Policy.of(preset or self.preset, dict(self.policy_overrides))


def resolve_policy(policy: Policy | str | None = None) -> Policy:
    """The policy to judge by: a Policy as given, else the named preset (None: the config file's)
    with the project's per-field overrides, from the nearest config file."""
    if isinstance(policy, Policy):
        return policy
    return load_config().policy(policy)


def find_config_file(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for name in CONFIG_FILES:
            candidate = folder / name
            if candidate.is_file():
                if name == "pyproject.toml" and not _mentions_envkit(candidate):
                    continue
                return candidate
    return None


def _mentions_envkit(path: Path) -> bool:
    try:
        return b"[tool.envkit" in path.read_bytes()
    except OSError:
        return False


def load_config(path: str | os.PathLike[str] | None = None, *, start: Path | None = None) -> Config:
    source = Path(path) if path is not None else find_config_file(start)
    if source is None:
        return Config()
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    from envkit.inputs import read_regular_file

    data = read_regular_file(source, "fix the file or remove it", error=ConfigError)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML ({exc}); fix the file") from None
    section: Any = doc.get("tool", {}).get("envkit")
    if section is None and source.name == "envkit.toml":
        section = doc
    return parse_config(section or {}, source)


# Every key [tool.envkit] knows. A new setting is added here (and read below), or the file that uses it
# is refused as a typo.
KEYS = ("preset", "policy", "mirrors", "storage")

# [tool.envkit.storage]: key -> (the types it takes, what it is); numbers are bounded below
STORAGE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "endpoint_url": ((str,), 'a URL such as "http://127.0.0.1:9000"'),
    "region": ((str,), 'a region name such as "us-east-1"'),
    "profile": ((str,), "an AWS profile name"),
    "anon": ((bool,), "true or false (true: no credentials, public buckets only)"),
    "connect_timeout": ((int, float), "seconds, more than 0 and at most 300"),
    "read_timeout": ((int, float), "seconds, more than 0 and at most 3600"),
    "retries": ((int,), "a whole number from 0 to 10"),
}
_STORAGE_BOUNDS = {"connect_timeout": (0, 300), "read_timeout": (0, 3600), "retries": (-1, 10)}


def parse_config(section: Mapping[str, Any], source: Path | None = None) -> Config:
    from envkit.policy import PRESETS, SEVERITIES, did_you_mean

    where = f"{source}: " if source else ""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}[tool.envkit] must be a table")
    for key in section:
        if key not in KEYS:
            raise ConfigError(
                f"{where}[tool.envkit] has an unknown key {key!r}{did_you_mean(key, KEYS)}; "
                f"the keys are {', '.join(KEYS)}: fix or remove it"
            )
    preset = section.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f'{where}[tool.envkit] preset must be a string such as "strict"')
    if preset is not None and preset not in PRESETS:
        raise ConfigError(
            f"{where}[tool.envkit] preset = {preset!r} is not a policy{did_you_mean(preset, PRESETS)}; "
            f"use one of {', '.join(PRESETS)}"
        )
    raw = section.get("policy", {})
    overrides = _dotted(raw) if isinstance(raw, Mapping) else None
    if overrides is None or not all(isinstance(v, str) for v in overrides.values()):
        raise ConfigError(f'{where}[tool.envkit.policy] must map field names to severities, e.g. "torch.cuda" = "refuse"')
    for field, severity in overrides.items():
        if severity not in SEVERITIES:
            raise ConfigError(
                f"{where}[tool.envkit.policy] {field!r} = {severity!r}: the severity must be one of "
                f"{', '.join(SEVERITIES)}{did_you_mean(severity, SEVERITIES)}"
            )
    mirrors = section.get("mirrors", {})
    if not isinstance(mirrors, Mapping) or not all(isinstance(v, str) for v in mirrors.values()):
        raise ConfigError(f'{where}[tool.envkit.mirrors] must map channel names or URLs to mirror URLs, e.g. "conda-forge" = "https://mirror/conda-forge"')
    storage = _storage(section.get("storage", {}), where)
    config = Config(preset, tuple(sorted(overrides.items())), source, tuple(sorted(mirrors.items())), storage)
    try:
        config.policy()
    except ConfigError as exc:
        raise ConfigError(f"{where}[tool.envkit.policy] {exc.message.removeprefix('policy override ')}; fix or remove it") from None
    return config


def _storage(table: Any, where: str) -> tuple[tuple[str, Any], ...]:
    from envkit.policy import did_you_mean

    if not isinstance(table, Mapping):
        raise ConfigError(f'{where}[tool.envkit.storage] must be a table, e.g. endpoint_url = "http://127.0.0.1:9000"')
    for key, value in table.items():
        if key not in STORAGE_KEYS:
            raise ConfigError(
                f"{where}[tool.envkit.storage] has an unknown key {key!r}{did_you_mean(key, tuple(STORAGE_KEYS))}; "
                f"the keys are {', '.join(STORAGE_KEYS)}: fix or remove it"
            )
        types, what = STORAGE_KEYS[key]
        low, high = _STORAGE_BOUNDS.get(key, (None, None))
        wrong = not isinstance(value, types) or (bool not in types and isinstance(value, bool))
        if not wrong and low is not None and not low < value <= high:
            wrong = True
        if wrong:
            raise ConfigError(f"{where}[tool.envkit.storage] {key} = {value!r}: it must be {what}; fix it")
    return tuple(sorted(table.items()))


def _dotted(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any] | None:
    """``torch.cuda = "refuse"`` written without quotes is a nested table in TOML: the same field."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            inner = _dotted(value, f"{name}.")
            if inner is None:
                return None
            flat.update(inner)
        else:
            flat[name] = value
    return flat
