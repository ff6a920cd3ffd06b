"""Read an environment.yml for locking and creating.

The YAML is checked here first, so that every problem is reported as one line with
the file and line number; the dependency lines are then parsed by conda-lock's own
parser (DESIGN §6), which is what its content hash is computed from.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.errors import SpecError, describe_os_error

# conda-lock downloads a PyPI->conda name mapping for `pip:` entries unless given a local one.
PIP_MAPPING = Path(__file__).with_name("pypi_mapping.json")


@dataclass(frozen=True)
class SpecFile:
    path: Path
    sha256: str
    name: str | None
    channels: tuple[str, ...]
    conda_specs: tuple[str, ...]
    pip_specs: tuple[str, ...]
    platforms: tuple[str, ...]
    variables: tuple[tuple[str, str], ...] = ()

    def lock_specification(self, platforms: tuple[str, ...]) -> Any:
        """conda-lock's LockSpecification for these platforms (imports conda-lock: ~1 s)."""
        from conda_lock.src_parser.environment_yaml import parse_environment_file

        try:
            spec = parse_environment_file(self.path, list(platforms), mapping_url=str(PIP_MAPPING))
        except Exception as exc:  # noqa: BLE001 - conda-lock raises bare ValueErrors and worse
            raise SpecError(f"{self.path}: conda-lock cannot parse it ({_one_line(exc)}); fix the dependency line it names") from None
        spec.sources = [Path(self.path.name)]
        return spec


def read_spec(path: str | os.PathLike[str]) -> SpecFile:
    import yaml

    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such environment file; pass one with -f FILE") from None
    except OSError as exc:
        raise SpecError(f"{describe_os_error(p, exc)}; pass a readable environment file") from None
    try:
        doc = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(f"{p}{where}: malformed YAML ({problem}); fix the indentation or quoting there") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{p}: not an environment file (expected a mapping with `dependencies:`); see `conda env export` for the shape")
    deps = doc.get("dependencies")
    if not isinstance(deps, list) or not deps:
        raise SpecError(f"{p}: `dependencies:` must be a non-empty list; add the packages to install")
    conda_specs: list[str] = []
    pip_specs: list[str] = []
    for item in deps:
        if isinstance(item, str):
            conda_specs.append(item.strip())
        elif isinstance(item, dict) and set(item) == {"pip"} and isinstance(item["pip"], list) and all(isinstance(s, str) for s in item["pip"]):
            pip_specs.extend(s.strip() for s in item["pip"])
        else:
            raise SpecError(f"{p}: dependency {str(item)[:60]!r} is neither a package line nor a `pip:` list; fix it")
    channels = doc.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise SpecError(f"{p}: `channels:` must be a list of channel names or URLs")
    channels = [c for c in channels if c != "nodefaults"]
    if not channels:
        raise SpecError(f"{p}: no channels; add `channels:` with at least one channel (envkit never guesses one)")
    platforms = doc.get("platforms") or []
    variables = doc.get("variables") or {}
    if not isinstance(platforms, list) or not isinstance(variables, dict):
        raise SpecError(f"{p}: `platforms:` must be a list and `variables:` a mapping")
    name = doc.get("name")
    return SpecFile(
        path=p,
        sha256=hashlib.sha256(data).hexdigest(),
        name=str(name) if name is not None else None,
        channels=tuple(channels),
        conda_specs=tuple(conda_specs),
        pip_specs=tuple(pip_specs),
        platforms=tuple(str(x) for x in platforms),
        variables=tuple(sorted((str(k), str(v)) for k, v in variables.items())),
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text[:200]
