"""Names of the files a save leaves behind while it runs, and where a save lands (``envkit.atomic``)."""

from __future__ import annotations

import os
from pathlib import Path

from envkit.atomic import TEMP_MARK, is_temp_name, temp_path_for, write_target

__all__ = [
    "CHECKPOINT_SUFFIXES", "TEMP_MARK", "ephemeral_warning", "is_folder_checkpoint", "is_temp_name",
    "remove_checkpoint", "remove_stale_temp_files", "temp_path_for", "write_target",
]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".dcp", ".safetensors")  # .dcp: a sharded checkpoint folder


def is_folder_checkpoint(path: str | os.PathLike[str] | os.DirEntry[str]) -> bool:
    """A checkpoint that is a folder (sharded, and later other frameworks'), not one file: decided here only."""
    return path.is_dir() if isinstance(path, os.DirEntry) else os.path.isdir(path)


def remove_checkpoint(path: Path) -> None:
    """Delete one checkpoint; a folder loses its commit marker first, so it stops being one at once."""
    try:
        if is_folder_checkpoint(path):
            import shutil

            from envkit.checkpoint.dcp_format import STAMP_NAME

            (path / STAMP_NAME).unlink(missing_ok=True)
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Temporary files and folders of writers that died (their pid is gone); call it holding the folder's lock."""
    removed = []
    for entry in os.scandir(directory):
        if not is_temp_name(entry.name):
            continue
        pid_text = entry.name.rsplit(TEMP_MARK, 1)[1]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _pid_alive(int(pid_text)):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):  # a sharded save's folder
                import shutil

                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


EPHEMERAL_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})
EPHEMERAL_ROOTS = ("/tmp", "/dev/shm", "/var/tmp", "/run")


def ephemeral_warning(directory: Path) -> str | None:
    """Why checkpoints in ``directory`` may not survive a reboot or a new container; None when they should."""
    where = directory.resolve()
    fstype = _filesystem_type(where)
    if fstype in EPHEMERAL_FILESYSTEMS or str(where).startswith(EPHEMERAL_ROOTS):
        place = f"on {fstype}" if fstype in EPHEMERAL_FILESYSTEMS else "under a temporary folder"
        return f"{where} is {place}: checkpoints there may not survive a reboot or a new container; use persistent storage"
    return None


def _filesystem_type(path: Path) -> str | None:
    best, fstype = "", None
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    mount = parts[1].replace("\\040", " ")
                    if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                        best, fstype = mount, parts[2]
    except OSError:
        return None
    return fstype
