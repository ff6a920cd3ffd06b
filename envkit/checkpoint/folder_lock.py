"""FolderLock: one writer per checkpoint folder (an flock on ``.envkit.lock``, holding the writer's pid).

Two runs writing one folder would delete each other's files through retention; the
second one is refused with CheckpointDirLocked. The kernel drops the lock when the
process dies, so a crashed run never leaves the folder locked.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from envkit.errors import CheckpointDirLocked

LOCK_NAME = ".envkit.lock"


class FolderLock:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        import fcntl

        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointDirLocked(
                    f"{self.directory}: another writer (pid {holder}) holds {path.name}; two runs writing one "
                    "checkpoint folder would delete each other's files: give this run its own folder or stop the other"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)  # releases the flock
            except OSError:
                pass

    def __del__(self) -> None:
        self.release()
