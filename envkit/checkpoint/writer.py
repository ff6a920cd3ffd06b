"""Atomic, stamped saves (docs/architecture.md, checkpoints at runtime).

``torch.save`` writes into ``<dir>/.<name>.tmp-<pid>`` through a hashing wrapper;
the stamp is appended as a zip member in the same file; the file is fsynced,
renamed over the final name and the folder fsynced. A reader never sees a partial
file under the final name, and a failure removes the temporary file.
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from envkit.atomic import fsync_dir, temp_path_for, write_target
from envkit.checkpoint.devices import data_pkl_of, with_storage_devices
from envkit.checkpoint.hashing import HashingWriter
from envkit.checkpoint.reader import archive_prefix
from envkit.checkpoint.stamp import DIGEST_ALGORITHMS, MEMBER, Payload, Stamp, normalise_meta
from envkit.checkpoint.ziptail import append_last_member, first_member, torch_layout
from envkit.errors import BadInput, CheckpointWriteError, TorchNotInstalled
from envkit.fingerprint import Fingerprint, collect


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise TorchNotInstalled("envkit.save needs torch; install it with `pip install envkit[torch]`") from None
    return torch


def build_meta(meta: Mapping[str, Any] | None, path: Path) -> dict[str, Any]:
    """The stamp's meta as plain JSON (see ``stamp.normalise_meta``); BadInput before anything is written."""
    from envkit import __version__

    out = normalise_meta(meta, source=str(path))
    out.setdefault("saved_at", datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    out["envkit"] = __version__
    return out


def write_stamped(
    obj: Any,
    path: Path,
    *,
    stamp_for: Any,
    digest: str,
) -> Stamp:
    """torch.save obj to a temporary file, append the stamp, and commit atomically.

    ``stamp_for(payload)`` builds the stamp once the payload digest is known.
    """
    box: list[Stamp] = []
    tmp = write_uncommitted(obj, path, stamp_for=stamp_for, digest=digest, stamp_out=box)
    commit_file(tmp, path)
    return box[0]


def commit_file(tmp: Path, path: Path) -> None:
    """The commit of a file ``write_uncommitted`` wrote: rename over the final name, fsync the folder."""
    target = write_target(path)
    try:
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException as exc:  # noqa: BLE001 - the temporary file goes, the error is raised
        _discard(tmp)
        _raise_write_error(path, exc, None)


def _raise_write_error(path: Path, exc: BaseException, writer: HashingWriter | None) -> NoReturn:
    cause = writer.error if writer is not None and writer.error is not None else exc
    if isinstance(cause, OSError):
        raise CheckpointWriteError(
            f"{path}: save failed ({cause.strerror or cause}); earlier checkpoints are untouched and the "
            "temporary file was removed; free space or fix the folder, then save again"
        ) from cause
    raise exc


def write_uncommitted(
    obj: Any,
    path: Path,
    *,
    stamp_for: Any,
    digest: str,
    stamp_out: list[Stamp] | None = None,
) -> Path:
    """The first step of ``write_stamped``: the stamped file, fsynced, under its temporary name (returned).

    Nothing under ``path`` changes until ``commit_file``; a failure removes the temporary file.
    """
    torch = _import_torch()
    target = write_target(path)  # through a symlink: the link stays a link, its target is replaced
    folder = target.parent
    if not folder.is_dir():
        raise BadInput(f"{path}: the folder {folder} does not exist; create it first")
    tmp = temp_path_for(target)
    writer: HashingWriter | None = None
    try:
        with open(tmp, "w+b") as fh:
            writer = HashingWriter(fh, digest)
            try:
                torch.save(obj, writer)
            finally:
                writer.close()
            fh.flush()
            layout = torch_layout(fh, writer.position)
            if layout is not None:  # the stamp goes after torch's records without parsing its directory
                stamp = stamp_for(Payload(writer.digest_at(layout[1]), layout[1]))
                first = first_member(fh, layout[1], layout[1])
                data_pkl = first[1] if first is not None and first[0] == f"{layout[0]}/data.pkl" else None
                stamp = with_storage_devices(stamp, data_pkl)  # meta["storage_devices"]: `check` reads it
                append_last_member(fh, layout, f"{layout[0]}/{MEMBER}", stamp.to_bytes())
            else:
                with zipfile.ZipFile(fh, "a") as zf:
                    prefix = archive_prefix(path, zf.namelist())
                    payload = Payload(writer.digest_at(zf.start_dir), zf.start_dir)
                    stamp = with_storage_devices(stamp_for(payload), data_pkl_of(zf, prefix))
                    info = zipfile.ZipInfo(f"{prefix}/{MEMBER}", date_time=(1980, 1, 1, 0, 0, 0))
                    zf.writestr(info, stamp.to_bytes(), compress_type=zipfile.ZIP_STORED)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:  # noqa: BLE001 - the temporary file goes, the error is raised
        _discard(tmp)
        _raise_write_error(path, exc, writer)
    if stamp_out is not None:
        stamp_out.append(stamp)
    return tmp


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass  # a manager cleans stale temporary files on its next start


def save(
    obj: Any,
    path: str | os.PathLike[str],
    *,
    meta: Mapping[str, Any] | None = None,
    digest: str = "xxh3_128",
    fingerprint: Fingerprint | None = None,
) -> Stamp:
    """``torch.save`` that stamps the file with the environment that wrote it, atomically.

    Returns the stamp. ``meta`` (epoch, step, metrics, ...) must be plain JSON data.
    """
    from envkit.checkpoint.urls import as_location, is_url

    target = as_location(path)  # a URL stays one (an ObjectPath)
    if digest not in DIGEST_ALGORITHMS:
        raise BadInput(f"unknown digest {digest!r}; use one of {', '.join(DIGEST_ALGORITHMS)}")
    full_meta = build_meta(meta, target)
    _import_torch()
    if is_url(target):  # s3://, gs://, ...: one upload that appears whole, or not at all (remote.py)
        from envkit.checkpoint.remote import save_url

        given = fingerprint
        return save_url(obj, target, stamp_for=lambda payload: Stamp(given if given is not None else collect(), payload, full_meta),
                        digest=digest)
    if fingerprint is not None:
        return write_stamped(obj, target, stamp_for=lambda payload: Stamp(fingerprint, payload, full_meta), digest=digest)
    pending = _Pending()  # reading package metadata and nvidia-smi overlaps torch.save
    return write_stamped(obj, target, stamp_for=lambda payload: Stamp(pending.result(), payload, full_meta), digest=digest)


class _Pending:
    """The live fingerprint, collected on a helper thread while the payload is written."""

    def __init__(self) -> None:
        self._value: Fingerprint | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="envkit-fingerprint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = collect()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the saving thread
            self._error = exc

    def result(self) -> Fingerprint:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
