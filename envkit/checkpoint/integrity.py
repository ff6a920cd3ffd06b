"""Is a stamped checkpoint whole? Re-hash the payload and check the zip structure."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from envkit.checkpoint.hashing import digest_of_file
from envkit.checkpoint.reader import (
    CheckpointFile,
    archive_prefix,
    open_zip,
    read_stamp,
)
from envkit.errors import EnvkitError

_LOCAL_HEADER = b"PK\x03\x04"


@dataclass(frozen=True)
class VerifyResult:
    """Whether a checkpoint is whole, and if not, what is wrong."""

    path: Path
    ok: bool
    problem: str | None = None
    info: CheckpointFile | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "checkpoint": str(self.path),
            "ok": self.ok,
            "problem": self.problem,
            "stamped": bool(self.info and self.info.stamped),
            "digest": self.info.stamp.payload.digest if self.info and self.info.stamp and self.info.stamp.payload else None,
        }


def verify(path: str | os.PathLike[str], info: CheckpointFile | None = None) -> VerifyResult:
    """Never raises for a damaged file: the problem is in the result."""
    p = Path(path)
    try:
        info = info or read_stamp(p)
    except EnvkitError as exc:
        return VerifyResult(p, False, exc.message)
    stamp = info.stamp
    if info.format == "dcp" and stamp is not None:
        from envkit.checkpoint.dcp_format import read_dir_stamp, verify_files

        try:
            problem = verify_files(p, *read_dir_stamp(p))
        except EnvkitError as exc:
            problem = exc.message
        return VerifyResult(p, problem is None, problem, info)
    if stamp is None or stamp.payload is None:
        return VerifyResult(p, False, f"{p}: has no envkit stamp, so there is no digest to verify against", info)
    payload = stamp.payload
    if payload.length > info.size:
        return VerifyResult(p, False, f"{p}: truncated: the stamp records {payload.length} payload bytes, the file has {info.size}", info)
    with open(p, "rb") as fh:
        actual = digest_of_file(fh, payload.length, payload.algorithm)
        if actual != payload.digest:
            return VerifyResult(p, False, f"{p}: payload digest mismatch (recorded {payload.digest}, found {actual}): the bytes changed after saving", info)
        problem = _structure_problem(p, fh, payload.length) if info.format != "legacy" else None
    if problem:
        return VerifyResult(p, False, problem, info)
    return VerifyResult(p, True, None, info)


def _structure_problem(path: Path, fh: object, length: int) -> str | None:
    """Every record the central directory names must start inside the hashed payload.

    read_stamp reads only the archive's tail, so the whole directory is checked here: a
    damaged one, or one torch would refuse (no single prefix), is a problem, not an error.
    """
    try:
        with open_zip(path) as zf:
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
