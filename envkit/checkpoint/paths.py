"""Names of the files a save leaves behind while it runs, and where a save lands."""

from __future__ import annotations

import os
from pathlib import Path

TEMP_MARK = ".tmp-"


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def write_target(path: Path) -> Path:
    """The file an atomic write of ``path`` must replace: through a symlink (or a chain of them), its target.

    Replacing the link itself would turn it into a file and leave its target stale; writing
    the temporary file next to the target keeps the rename on one filesystem. A dangling
    link gives its target's path (the write creates it). A folder, or a link to one, and a
    link loop are bad input.
    """
    from envkit.errors import BadInput

    target = Path(os.path.realpath(path)) if os.path.islink(path) else path
    if os.path.islink(target):  # realpath stops where a chain of links loops
        raise BadInput(f"{path}: a loop of symbolic links; point the link at a file, or remove it")
    if target.is_dir():
        what = f"a link to the folder {target}" if target != path else "a folder"
        raise BadInput(f"{path}: {what}; pass the path of a file to write")
    return target
