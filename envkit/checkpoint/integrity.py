"""Is a stamped checkpoint whole? Re-hash the payload and check the zip structure.

Four answers (``VerifyResult.status``), each with its exit code on the command line:

- ``ok`` (0): the payload hashes to the digest its stamp recorded and the zip is whole;
- ``unstamped`` (0, with a warning): no envkit stamp with a payload digest, so there is
  nothing to verify against; not corruption (``check`` likewise only warns about it);
  an unstamped file with a checksum sidecar (``ckpt.pth.md5``, ``.sha256``) is checked
  against it instead: ``ok`` or ``corrupt``, ``sidecar`` naming it (``sidecar.py``);
- ``corrupt`` (1): the file is a checkpoint, but its bytes changed or were cut short;
- ``unreadable`` (2): not something verify can read at all (a missing file, a folder,
  permission denied, not a checkpoint, an unsafe pickle): bad input, as ``check`` says.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from envkit.checkpoint.hashing import digest_of_file
from envkit.checkpoint.paths import is_folder_checkpoint
from envkit.checkpoint.reader import (
    LEGACY_MAGIC,
    ZIP_MAGIC,
    CheckpointFile,
    archive_prefix,
    open_zip,
    read_stamp,
)
from envkit.checkpoint.urls import as_location, is_url
from envkit.errors import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_REFUSED,
    EnvkitError,
    MalformedSidecar,
    MalformedStamp,
    NotACheckpoint,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from envkit.checkpoint.sidecar import SidecarCheck

    Progress = Callable[[int, int], None]  # (bytes hashed so far, bytes to hash)

_LOCAL_HEADER = b"PK\x03\x04"

OK = "ok"
UNSTAMPED = "unstamped"
CORRUPT = "corrupt"
UNREADABLE = "unreadable"
STATUSES = (OK, UNSTAMPED, CORRUPT, UNREADABLE)
EXIT_CODES = {OK: EXIT_OK, UNSTAMPED: EXIT_OK, CORRUPT: EXIT_REFUSED, UNREADABLE: EXIT_BAD_INPUT}
UNSTAMPED_ADVICE = "nothing to verify against; stamp it by saving with envkit.save"
FOLDER_UNSTAMPED_ADVICE = "nothing to verify against; stamp it with `envkit stamp FOLDER` once it is whole"


@dataclass(frozen=True)
class VerifyResult:
    """Whether a checkpoint is whole: ``status`` is one of ``STATUSES``; ``problem`` says what is wrong."""

    path: Path
    status: str
    problem: str | None = None
    info: CheckpointFile | None = None
    sidecar: SidecarCheck | None = None  # an unstamped file checked against its checksum sidecar(s)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")

    @property
    def ok(self) -> bool:
        """True only when the payload was verified whole (an unstamped file is not)."""
        return self.status == OK

    @property
    def exit_code(self) -> int:
        """0 ok or unstamped, 1 corrupt, 2 unreadable (bad input)."""
        return EXIT_CODES[self.status]

    def to_json(self) -> dict[str, object]:
        return {
            "checkpoint": str(self.path),
            "status": self.status,
            "ok": self.ok,
            "problem": self.problem,
            "stamped": bool(self.info and self.info.stamped),
            "digest": self.info.stamp.payload.digest if self.info and self.info.stamp and self.info.stamp.payload else None,
            "sidecar": [s.to_json() for s in self.sidecar.sidecars] if self.sidecar is not None else None,
        }


def exit_code_of(results: list[VerifyResult] | tuple[VerifyResult, ...]) -> int:
    """``envkit verify A B ...``: 2 if any is unreadable, else 1 if any is corrupt, else 0."""
    return max((r.exit_code for r in results), default=EXIT_OK)


def verify(
    path: str | os.PathLike[str],
    info: CheckpointFile | None = None,
    *,
    progress: Progress | None = None,
    copy: Any = None,
) -> VerifyResult:
    """Never raises for a damaged or unreadable file: the answer is in the result's ``status``.

    ``progress(done, total)`` is called as the payload is hashed (bytes so far, bytes in all).
    ``copy``: a ``remote_verify.VerifiedCopy`` that a URL's bytes (one object's, or a ``.dcp`` prefix's
    files) are written to as they stream (a resume loads them from there); ignored for a local path.
    """
    if is_url(path) and str(path).rstrip("/").endswith(".dcp"):  # a sharded checkpoint in a bucket: every file streamed once
        return _verify_folder_url(path, info, progress, copy)
    if is_url(path):  # s3://, gs://, ...: the payload streamed once (remote.py)
        from envkit.checkpoint.remote_verify import verify_url

        return VerifyResult(*verify_url(path, info, progress, copy))
    p = as_location(path)  # a file:// URL is the local path it names
    if info is None and not is_folder_checkpoint(p) and os.path.isfile(p):  # a regular file: opening cannot block
        try:
            opened = open(p, "rb")  # closed by the with below; one open for stamp, digest and directory
        except OSError:
            pass  # read_stamp names the problem
        else:
            with opened:
                return _verify(p, info, progress, opened)
    return _verify(p, info, progress, None)


def _verify_folder_url(location: str | os.PathLike[str], info: CheckpointFile | None, progress: Progress | None,
                       copy: Any = None) -> VerifyResult:
    """``verify`` of a ``.dcp`` prefix (remote_folder.py): its envkit.json, one LIST, each file hashed as it streams."""
    from envkit.checkpoint.remote_folder import read_folder_url, verify_folder_url
    from envkit.errors import StorageUnavailable

    where = as_location(location)
    try:
        where, (stamp, files, layout) = read_folder_url(where)
        info = info or CheckpointFile(where, "folder" if layout is not None else "dcp", sum(int(r["size"]) for r in files.values()),
                                      stamp, "file")
        if stamp.payload is None:
            return VerifyResult(where, UNSTAMPED, f"{where}: the folder's stamp records no digest ({UNSTAMPED_ADVICE})", info)
        if copy is not None:
            copy.begin(where, folder=True)
        problem: str | None = "unfinished"
        try:
            problem = verify_folder_url(where, stamp, files, progress, copy)
        finally:
            if copy is not None:
                copy.end(problem is None, where)
    except StorageUnavailable:
        raise  # the bucket cannot be reached: not an answer about this checkpoint
    except EnvkitError as exc:
        return VerifyResult(where, CORRUPT if isinstance(exc, MalformedStamp) else UNREADABLE, exc.message, info)  # a damaged marker: corrupt
    return VerifyResult(where, CORRUPT if problem else OK, problem, info)


def _verify(p: Path, info: CheckpointFile | None, progress: Progress | None, opened: Any) -> VerifyResult:
    try:
        info = info or read_stamp(p, opened)
    except EnvkitError as exc:
        return VerifyResult(p, _status_of_unreadable(p, exc), exc.message)
    stamp = info.stamp
    if info.format in ("dcp", "folder") and stamp is not None:
        from envkit.checkpoint.folder_format import read_folder_stamp, verify_files

        if stamp.payload is None:
            return VerifyResult(p, UNSTAMPED, f"{p}: the folder's stamp records no digest ({UNSTAMPED_ADVICE})", info)
        try:
            problem = verify_files(p, *read_folder_stamp(p))
        except EnvkitError as exc:
            problem = exc.message
        return VerifyResult(p, CORRUPT if problem else OK, problem, info)
    if info.format == "folder":
        return VerifyResult(p, UNSTAMPED, f"{p}: an unstamped checkpoint folder ({FOLDER_UNSTAMPED_ADVICE})", info)
    if stamp is None:
        return _by_sidecar(p, info, opened, f"{p}: unstamped ({UNSTAMPED_ADVICE})")
    if stamp.payload is None:
        return _by_sidecar(
            p, info, opened,
            f"{p}: unstamped: its envkit record carries no payload digest (re-saved by plain torch.save?); "
            f"{UNSTAMPED_ADVICE}",
        )
    payload = stamp.payload
    if info.format == "safetensors":
        return _verify_safetensors(p, info, progress, opened)
    if payload.length > info.size:
        return VerifyResult(p, CORRUPT, f"{p}: truncated: the stamp records {payload.length} payload bytes, the file has {info.size}", info)
    try:
        with nullcontext(opened) if opened is not None else open(p, "rb") as fh:
            source: Any = _Reporting(fh, payload.length, progress) if progress is not None else fh
            actual = digest_of_file(source, payload.length, payload.algorithm)
            if actual != payload.digest:
                return VerifyResult(
                    p, CORRUPT,
                    f"{p}: payload digest mismatch (recorded {payload.digest}, found {actual}): the bytes changed after saving",
                    info,
                )
            problem = _structure_problem(p, fh, payload.length) if info.format != "legacy" else None
    except OSError as exc:
        return VerifyResult(p, UNREADABLE, f"{p}: cannot read ({exc.strerror or exc}); check the file and its permissions", info)
    except EnvkitError as exc:
        return VerifyResult(p, CORRUPT, exc.message, info)
    if problem:
        return VerifyResult(p, CORRUPT, problem, info)
    return VerifyResult(p, OK, None, info)


def _by_sidecar(p: Path, info: CheckpointFile, opened: Any, unstamped: str) -> VerifyResult:
    """An unstamped file: checked against its checksum sidecar(s) when it has any, else unstamped."""
    from envkit.checkpoint.sidecar import check_sidecars, has_sidecar

    if not has_sidecar(p):
        return VerifyResult(p, UNSTAMPED, unstamped, info)
    try:
        checked = check_sidecars(p, opened)
    except MalformedSidecar as exc:
        return VerifyResult(p, UNREADABLE, exc.message, info)
    except OSError as exc:
        return VerifyResult(p, UNREADABLE, f"{p}: cannot read ({exc.strerror or exc}); check the file and its permissions", info)
    if checked is None:
        return VerifyResult(p, UNSTAMPED, unstamped, info)
    return VerifyResult(p, OK if checked.ok else CORRUPT, checked.problem(p), info, sidecar=checked)


def _verify_safetensors(p: Path, info: CheckpointFile, progress: Progress | None, opened: Any) -> VerifyResult:
    from envkit.checkpoint.safetensors_format import verify_problem

    assert info.stamp is not None
    try:
        with nullcontext(opened) if opened is not None else open(p, "rb") as fh:
            problem = verify_problem(p, fh, info.size, info.stamp, progress)
    except OSError as exc:
        return VerifyResult(p, UNREADABLE, f"{p}: cannot read ({exc.strerror or exc}); check the file and its permissions", info)
    except EnvkitError as exc:
        return VerifyResult(p, CORRUPT, exc.message, info)
    return VerifyResult(p, CORRUPT if problem else OK, problem, info)


def _status_of_unreadable(path: Path, exc: EnvkitError) -> str:
    """A file that starts like a checkpoint but cannot be read as one is corrupt; anything else is bad input."""
    from envkit.checkpoint.safetensors_format import looks_like_safetensors

    if not isinstance(exc, (NotACheckpoint, MalformedStamp)):
        return UNREADABLE  # missing, a folder, permission denied, an unsafe pickle: what check calls bad input
    try:
        if not path.is_file():
            return UNREADABLE  # a folder without its commit marker is not a checkpoint
        with open(path, "rb") as fh:
            head = fh.read(len(LEGACY_MAGIC))
    except OSError:
        return UNREADABLE
    if head.startswith((ZIP_MAGIC, LEGACY_MAGIC)) or looks_like_safetensors(head):
        return CORRUPT  # a truncated archive, a damaged stamp member or safetensors header
    return UNREADABLE


class _Reporting:
    """The two methods ``digest_of_file`` uses, passing each chunk's progress on."""

    def __init__(self, fh: Any, total: int, progress: Progress) -> None:
        self._fh, self._total, self._progress, self._done = fh, total, progress, 0

    def seek(self, offset: int) -> int:
        self._done = offset
        position = self._fh.seek(offset)
        self._progress(min(offset, self._total), self._total)
        return position

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer)
        self._done += n or 0
        self._progress(min(self._done, self._total), self._total)
        return n or 0


def _structure_problem(path: Path, fh: object, length: int) -> str | None:
    """Every record the central directory names must start inside the hashed payload.

    read_stamp reads only the archive's tail, so the whole directory is checked here: a
    damaged one, or one torch would refuse (no single prefix), is a problem, not an error.
    """
    try:
        with open_zip(path, fh) as zf:  # type: ignore[arg-type]
            archive_prefix(path, zf.namelist())
            for record in zf.infolist():
                if record.filename.endswith("/extra/envkit.json"):
                    continue
                if record.header_offset >= length:
                    return f"{path}: record {record.filename} lies outside the verified payload"
                fh.seek(record.header_offset)  # type: ignore[attr-defined]
                if fh.read(4) != _LOCAL_HEADER:  # type: ignore[attr-defined]
                    return f"{path}: the central directory points {record.filename} at a wrong offset"
    except EnvkitError as exc:
        return exc.message
    return None
