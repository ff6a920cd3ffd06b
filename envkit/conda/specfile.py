"""Read an environment.yml for locking and creating.

The file is read by ``spec.load_spec`` (the same reader lint uses), so that every problem
is one line with the file and line number; the dependency lines are then parsed by
conda-lock's own parser, which is what its content hash is computed from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.errors import SpecError

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
    """The spec as lock and create use it: the parsing (and its line numbers) is spec.load_spec's."""
    from envkit.conda.spec import load_spec

    spec = load_spec(path)
    spec.require_usable()  # what lint reports as not-text, invalid-pip, unknown-installer: exit 2 here
    p = spec.path
    if not spec.conda_specs:
        raise SpecError(f"{p}:{spec.key_line('dependencies') or 1}: `dependencies:` lists no conda package; add the packages to install")
    channels = [c for c in spec.channels if c != "nodefaults"]
    if not channels:
        raise SpecError(f"{p}:{spec.key_line('channels') or 1}: no channels; add `channels:` with at least one channel (envkit never guesses one)")
    return SpecFile(
        path=p,
        sha256=spec.sha256,
        name=spec.name,
        channels=tuple(channels),
        conda_specs=tuple(s.strip() for s in spec.conda_specs),
        pip_specs=tuple(s.strip() for s in spec.pip_specs),
        platforms=tuple(spec.platforms),
        variables=tuple(sorted(spec.variables.items())),
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text[:200]
