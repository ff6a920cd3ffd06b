"""conda's own configuration (``.condarc``), read as conda reads it: the mirrors a team already set.

The files, in conda's search order (``conda.base.constants.SEARCH_PATH``; a later file takes
precedence over an earlier one)::

    /etc/conda/.condarc  /etc/conda/condarc  /etc/conda/condarc.d/
    /var/lib/conda/.condarc  /var/lib/conda/condarc  /var/lib/conda/condarc.d/
    $CONDA_ROOT/.condarc  $CONDA_ROOT/condarc  $CONDA_ROOT/condarc.d/
    $XDG_CONFIG_HOME/conda/.condarc  .../condarc  .../condarc.d/
    ~/.config/conda/.condarc  ~/.config/conda/condarc  ~/.config/conda/condarc.d/
    ~/.conda/.condarc  ~/.conda/condarc  ~/.conda/condarc.d/
    ~/.condarc
    $CONDA_PREFIX/.condarc  $CONDA_PREFIX/condarc  $CONDA_PREFIX/condarc.d/
    $CONDARC

(a ``condarc.d/`` folder: its ``*.yml``/``*.yaml`` files, sorted), then the ``CONDA_*`` variables,
which beat every file: ``CONDA_CHANNEL_ALIAS``, ``CONDA_CHANNELS`` and ``CONDA_DEFAULT_CHANNELS``
(comma-separated), ``CONDA_ENVS_DIRS`` / ``CONDA_ENVS_PATH`` (``os.pathsep``-separated).

Merged as conda merges (its documented strategy): a scalar (``channel_alias``) is the last
source's; a map (``custom_channels``) is merged key by key, the later source winning; a list
(``channels``, ``default_channels``, ``envs_dirs``) is the later sources' entries first, then the
earlier ones', each entry once. conda's ``#!final``/``#!top`` markers are comments to YAML and
are not honoured. Strings have ``$VAR``/``${VAR}`` expanded, as conda does; ``envs_dirs`` also ``~``.

Every value keeps the source that set it, so ``lock``/``create`` can say which file set which
channel. YAML is read with ``yaml.safe_load``; a malformed file is ``ConfigError`` (exit 2)
naming the file and the line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from envkit.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SYSTEM_PATH = (
    "/etc/conda/.condarc", "/etc/conda/condarc", "/etc/conda/condarc.d/",
    "/var/lib/conda/.condarc", "/var/lib/conda/condarc", "/var/lib/conda/condarc.d/",
)
USER_PATH = (
    "$CONDA_ROOT/.condarc", "$CONDA_ROOT/condarc", "$CONDA_ROOT/condarc.d/",
    "$XDG_CONFIG_HOME/conda/.condarc", "$XDG_CONFIG_HOME/conda/condarc", "$XDG_CONFIG_HOME/conda/condarc.d/",
    "~/.config/conda/.condarc", "~/.config/conda/condarc", "~/.config/conda/condarc.d/",
    "~/.conda/.condarc", "~/.conda/condarc", "~/.conda/condarc.d/",
    "~/.condarc",
    "$CONDA_PREFIX/.condarc", "$CONDA_PREFIX/condarc", "$CONDA_PREFIX/condarc.d/",
    "$CONDARC",
)
SEARCH_PATH = SYSTEM_PATH + USER_PATH
KEYS = ("channel_alias", "default_channels", "custom_channels", "channels", "envs_dirs")
DEFAULT_CHANNELS = ("https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r")
MAX_CONDARC_BYTES = 1 << 20
_LISTS = {"channels": "CONDA_CHANNELS", "default_channels": "CONDA_DEFAULT_CHANNELS"}


@dataclass(frozen=True)
class Setting:
    """One value and where it came from: a file's path, or ``$CONDA_CHANNELS`` for a variable."""

    value: str
    source: str

    def where(self, key: str) -> str:
        return f"{key} in {self.source}"


@dataclass(frozen=True)
class CondaConfig:
    """What the .condarc files and CONDA_* variables say, merged; each value with its source."""

    files: tuple[Path, ...] = ()
    channel_alias: Setting | None = None
    default_channels: tuple[Setting, ...] = ()
    custom_channels: Mapping[str, Setting] = field(default_factory=dict)
    channels: tuple[Setting, ...] = ()
    envs_dirs: tuple[Setting, ...] = ()

    def to_json(self) -> dict[str, Any]:
        def row(s: Setting) -> dict[str, str]:
            return {"value": s.value, "source": s.source}

        return {
            "files": [str(p) for p in self.files],
            "channel_alias": row(self.channel_alias) if self.channel_alias else None,
            "default_channels": [row(s) for s in self.default_channels],
            "custom_channels": {k: row(v) for k, v in sorted(self.custom_channels.items())},
            "channels": [row(s) for s in self.channels],
            "envs_dirs": [row(s) for s in self.envs_dirs],
        }


def search_path(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The files conda would read, in its order (those that exist; a condarc.d/ gives its YAML files)."""
    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")
    found: list[Path] = []
    seen: set[Path] = set()
    for entry in SEARCH_PATH:
        if entry.startswith("$"):
            var, _, rest = entry[1:].partition("/")
            base = env.get(var)
            if not base:
                continue
            text = os.path.join(base, rest) if rest else base
        elif entry.startswith("~"):
            text = home + entry[1:]
        else:
            text = entry
        path = Path(text)
        if entry.endswith("/") or (entry == "$CONDARC" and path.is_dir()):
            candidates = sorted(p for p in _listdir(path) if p.suffix in (".yml", ".yaml") and p.is_file())
        else:
            candidates = [path] if path.is_file() else []
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def load_condarc(environ: Mapping[str, str] | None = None) -> CondaConfig:
    """The merged configuration from conda's files and variables; ConfigError (exit 2) for a malformed file."""
    env = os.environ if environ is None else environ
    files = search_path(env)
    sources: list[tuple[str, Mapping[str, Any]]] = [(str(p), read_condarc(p, env)) for p in files]
    if env.get("CONDA_CHANNEL_ALIAS"):
        sources.append(("$CONDA_CHANNEL_ALIAS", {"channel_alias": _expand(env["CONDA_CHANNEL_ALIAS"], env)}))
    for key, var in _LISTS.items():
        if env.get(var):
            sources.append((f"${var}", {key: [_expand(c.strip(), env) for c in env[var].split(",") if c.strip()]}))
    for var in ("CONDA_ENVS_PATH", "CONDA_ENVS_DIRS"):  # envs_path is conda's older name for envs_dirs
        if env.get(var):
            sources.append((f"${var}", {"envs_dirs": [_expand(d, env, user=True) for d in env[var].split(os.pathsep) if d]}))
    alias: Setting | None = None
    custom: dict[str, Setting] = {}
    lists: dict[str, list[Setting]] = {"channels": [], "default_channels": [], "envs_dirs": []}
    for source, doc in sources:
        if "channel_alias" in doc:
            alias = Setting(str(doc["channel_alias"]).rstrip("/"), source)
        for name, base in (doc.get("custom_channels") or {}).items():
            custom[name] = Setting(str(base).rstrip("/"), source)
    for key in lists:
        merged: list[Setting] = []
        seen: set[str] = set()
        for source, doc in reversed(sources):  # later sources first, as conda merges lists
            for value in doc.get(key) or ():
                if value not in seen:
                    seen.add(value)
                    merged.append(Setting(value, source))
        lists[key] = merged
    return CondaConfig(tuple(files), alias, tuple(lists["default_channels"]), custom, tuple(lists["channels"]),
                       tuple(lists["envs_dirs"]))


def read_condarc(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One file's known keys, checked and expanded; ConfigError naming the file (and line) otherwise."""
    import yaml

    from envkit.inputs import read_regular_file

    env = os.environ if environ is None else environ
    raw = read_regular_file(path, "fix the file or remove it", error=ConfigError, max_bytes=MAX_CONDARC_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8 (conda reads it as YAML)") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML ({problem}); fix the file, or remove it (conda cannot read it either)") from None
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{path}:1: a .condarc is a YAML mapping of settings (e.g. `channel_alias: https://mirror/`), "
                          f"not {type(doc).__name__}; fix the file")
    out: dict[str, Any] = {}

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"{path}:{_key_line(text, key)}: `{key}` must be {what}; fix the file")

    if "channel_alias" in doc and doc["channel_alias"] is not None:
        if not isinstance(doc["channel_alias"], str):
            raise bad("channel_alias", "a URL, e.g. `channel_alias: https://mirror.example/conda`")
        out["channel_alias"] = _expand(doc["channel_alias"], env)
    for key in ("channels", "default_channels", "envs_dirs"):
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(key, "a list of strings (`- name` lines)")
        out[key] = [_expand(v, env, user=key == "envs_dirs") for v in value]
    custom = doc.get("custom_channels")
    if custom is not None:
        if not isinstance(custom, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in custom.items()):
            raise bad("custom_channels", "a mapping of channel names to base URLs (`pytorch: https://mirror.example/conda`)")
        out["custom_channels"] = {k: _expand(v, env) for k, v in custom.items()}
    return out


def _expand(value: str, env: Mapping[str, str], *, user: bool = False) -> str:
    """``$VAR``/``${VAR}`` from ``env`` (unknown ones stay as written, as os.path.expandvars leaves them)."""
    import re

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return env.get(name, match.group(0))

    expanded = re.sub(r"\$(?:\{(\w+)\}|(\w+))", sub, value)
    if user and expanded.startswith("~"):
        home = env.get("HOME") or os.path.expanduser("~")
        expanded = home + expanded[1:] if expanded == "~" or expanded.startswith("~/") else os.path.expanduser(expanded)
    return expanded


def _key_line(text: str, key: str) -> int:
    """The line a top-level key is written on (1 when it cannot be found)."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(f"{key}:") or line.startswith(f"'{key}':") or line.startswith(f'"{key}":'):
            return number
    return 1
