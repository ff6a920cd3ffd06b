"""Files the user names on the command line: read them, or write them, without surprises.

Reading opens without blocking and looks at what was opened: a FIFO, a device or a socket
named where a file belongs is BadInput (exit 2) at once, not a read that never returns.
Files the user names for writing go through ``envkit.atomic`` (``write_target``, ``atomic_write``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from envkit.atomic import kind_of
from envkit.errors import BadInput, os_error_input


def read_regular_file(
    path: str | os.PathLike[str],
    fix: str,
    *,
    error: type[BadInput] = BadInput,
    missing: str | None = None,
    folder: str | None = None,
    max_bytes: int | None = None,
) -> bytes:
    """The bytes of ``path``, a regular file; otherwise ``error`` naming the path, what it is and ``fix``.

    ``missing`` and ``folder`` replace the message for a path that does not exist or is a folder; ``max_bytes`` bounds the read
    (a larger file is refused, not truncated)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(missing or f"{p}: no such file; {fix}") from None
    except IsADirectoryError:  # Windows; POSIX opens a folder and fstat says so below
        raise error(folder or f"{p}: is a folder; {fix}") from None
    except OSError as exc:
        raise error(os_error_input(exc, p).message) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(folder or f"{p}: is a folder; {fix}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{p}: {kind_of(st.st_mode)}, not a file; {fix}")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{p}: {st.st_size:,} bytes, more than the {max_bytes:,} such a file can have; {fix}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            return fh.read()
    except OSError as exc:
        raise error(os_error_input(exc, p).message) from None
    finally:
        if fd >= 0:
            os.close(fd)
