"""Which installer runs: a real conda/mamba/micromamba on PATH, else the embedded py-rattler.

``auto`` takes the first of micromamba, mamba, conda that ``shutil.which`` finds
(micromamba first: a single static binary, no base environment whose state could
leak into the install), and the embedded rattler when none is there. Only
``shutil.which`` looks for them; nothing is ever downloaded (conda-lock's own
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
        raise EngineError(f"--engine {requested}: not found on PATH (envkit never downloads one); install it, or use --engine rattler (built in)")
    return Engine(requested, Path(found))


def explicit_install_command(engine: Engine, prefix: Path, explicit_file: Path, *, offline: bool = False) -> list[str]:
    """The command that installs an @EXPLICIT list exactly, without solving.

    conda, mamba and micromamba all take ``create -y -p PREFIX --file LIST`` for such a
    list. ``offline`` (every URL is a local file) adds ``--offline``, which all three
    know, so none of them touches the network, not even for a channel notice.
    """
    if engine.executable is None:
        raise EngineError(f"engine {engine.name} is embedded; it has no command line")
    cmd = [str(engine.executable), "create", "-y", "-p", str(prefix), "--file", str(explicit_file)]
    return cmd + ["--offline"] if offline else cmd
