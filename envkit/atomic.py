"""Atomic writes: the one way envkit writes a file that someone may be reading.

A reader sees the old file or the new one, never a part of either. The bytes go to a temporary
file beside the target (beside a symbolic link's *target*, so the link stays a link and the
rename stays on one file system), are flushed and fsynced, renamed over the target, and then
the folder is fsynced so that the rename itself survives a power cut. A failure removes the
temporary file and leaves the target as it was. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from envkit.errors import BadInput, os_error_input

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO, Any

TEMP_MARK = ".tmp-"

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a stat mode is, in words ("a named pipe"), for messages."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def temp_path_for(path: Path) -> Path:
    """The temporary name a write of ``path`` uses while it runs (hidden, marked with the pid)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def write_target(path: str | os.PathLike[str], what: str = "the path") -> Path:
    """The file an atomic write of ``path`` must replace: the path, or through a symbolic link (or
    a chain of them) its target; a dangling link gives its target's path, which the write creates.

    BadInput (exit 2) for a loop of links, a missing folder, and anything already there that is
    not a regular file: a folder, or a device (``-o /dev/full`` must never put a file where the
    device was). ``what`` names the option or argument in the message.
    """
    p = Path(path)
    try:
        target = Path(os.path.realpath(p)) if os.path.islink(p) else p
        if os.path.islink(target):  # realpath stops where a chain of links loops
            raise BadInput(f"{p}: a loop of symbolic links; point the link at a file, or remove it")
        st = os.stat(target) if os.path.lexists(target) else None
        parent_ok = target.parent.is_dir()
    except OSError as exc:
        raise os_error_input(exc, p) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        link = f"a link to the folder {target}" if target != p else "a folder"
        raise BadInput(f"{p}: {link}; {what} must name a file to write")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{p}: {kind_of(st.st_mode)}, not a file; {what} must name a file to write")
    if not parent_ok:
        raise BadInput(f"{p}: the folder {target.parent} does not exist; create it first")
    return target


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def discard(tmp: Path) -> None:
    """Remove a temporary file, if it is there; a manager cleans up what this cannot remove."""
    with contextlib.suppress(OSError):
        tmp.unlink()


@contextlib.contextmanager
def atomic_file(target: Path, *, mode: str = "w+b") -> Iterator[IO[Any]]:
    """Open a temporary file for ``target`` (already resolved by ``write_target``); on a clean
    exit fsync it, rename it over ``target`` and fsync the folder; on any exception remove it."""
    tmp = temp_path_for(target)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        discard(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, what: str = "the path") -> Path:
    """Write ``data`` to the file ``path`` names (through symbolic links), atomically and durably;
    the path written is returned. Any failure is BadInput (exit 2) naming the path, and leaves the
    file as it was."""
    target = write_target(path, what)
    payload = data.encode() if isinstance(data, str) else data
    try:
        with atomic_file(target) as fh:
            fh.write(payload)
    except OSError as exc:
        raise os_error_input(exc, Path(path), "it cannot be written there; choose another path") from None
    return target
