"""Which installer runs: a real conda/mamba/micromamba on PATH, else the embedded py-rattler.

Only ``shutil.which`` looks for them; nothing is ever downloaded (conda-lock's own
fallback fetches micromamba from the internet, so envkit never calls that path).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import EngineError

ENGINES = ("auto", "rattler", "conda", "mamba", "micromamba")
EXTERNAL_PREFERENCE = ("micromamba", "mamba", "conda")


@dataclass(frozen=True)
class Engine:
    name: str
    executable: Path | None = None

    @property
    def embedded(self) -> bool:
        return self.executable is None


def pick_engine(requested: str = "auto") -> Engine:
    if requested not in ENGINES:
        raise EngineError(f"unknown engine {requested!r}; use one of {', '.join(ENGINES)}")
    if requested == "rattler":
        return Engine("rattler")
    if requested == "auto":
        for name in EXTERNAL_PREFERENCE:
            found = shutil.which(name)
            if found:
                return Engine(name, Path(found))
        return Engine("rattler")
    found = shutil.which(requested)
    if found is None:
        raise EngineError(f"--engine {requested}: not found on PATH; install it, or use --engine rattler (built in)")
    return Engine(requested, Path(found))


def explicit_install_command(engine: Engine, prefix: Path, explicit_file: Path) -> list[str]:
    """The command that installs an @EXPLICIT list exactly, without solving."""
    assert engine.executable is not None
    return [str(engine.executable), "create", "--yes", "--prefix", str(prefix), "--file", str(explicit_file)]
