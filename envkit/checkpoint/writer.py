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
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from envkit.atomic import fsync_dir, temp_path_for, write_target
from envkit.checkpoint.devices import data_pkl_of, with_storage_devices
from envkit.checkpoint.hashing import HashingWriter, storage_digests
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


def build_meta(meta: Mapping[str, Any] | None, path: Path, *, saved_at: datetime | None = None) -> dict[str, Any]:
    """The stamp's meta as plain JSON (see ``stamp.normalise_meta``); BadInput before anything is written.

    ``saved_at`` (UTC; default now) is the save time the stamp records, the one a filename template used.
    """
    from envkit import __version__

    out = normalise_meta(meta, source=str(path))
    when = saved_at if saved_at is not None else datetime.now(timezone.utc)
    out.setdefault("saved_at", when.astimezone(timezone.utc).isoformat(timespec="milliseconds"))
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
                fh.seek(layout[1])
                directory = fh.read(layout[2])
                if _torch_writes_crcs(torch):  # each storage's CRC-32, as torch computed it while writing
                    stamp = replace(stamp, storages=storage_digests(directory, layout[3]))
                append_last_member(fh, layout, f"{layout[0]}/{MEMBER}", stamp.to_bytes(), directory=directory)
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


def _torch_writes_crcs(torch: Any) -> bool:
    """False when torch was told not to compute its records' CRC-32 (``set_crc32_options``, torch >= 2.6)."""
    get = getattr(torch.serialization, "get_crc32_options", None)
    return True if get is None else bool(get())


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
    format: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Stamp:
    """``torch.save`` that stamps the file with the environment that wrote it, atomically.

    Returns the stamp. ``meta`` (epoch, step, metrics, ...) must be plain JSON data.
    ``format``: "torch" (a torch.save zip) or "safetensors" (a flat dict of tensors, stamp in
    ``__metadata__["envkit"]``, ``metadata`` kept beside it); by default ".safetensors" names
    choose safetensors and any other name torch.
    """
    from envkit.checkpoint.urls import as_location, is_url

    target = as_location(path)  # a URL stays one (an ObjectPath)
    if digest not in DIGEST_ALGORITHMS:
        raise BadInput(f"unknown digest {digest!r}; use one of {', '.join(DIGEST_ALGORITHMS)}")
    chosen = format or ("safetensors" if target.name.endswith(".safetensors") else "torch")
    if chosen not in ("torch", "safetensors"):
        raise BadInput(f"{target}: unknown format {format!r}; use \"torch\" or \"safetensors\"")
    if metadata is not None and chosen != "safetensors":
        raise BadInput(f"{target}: metadata= is for safetensors files; put what a torch file should carry in meta=")
    full_meta = build_meta(meta, target)
    _import_torch()
    if is_url(target):  # s3://, gs://, ...: one upload that appears whole, or not at all (remote.py)
        from envkit.checkpoint.remote import save_url

        given = fingerprint
        stamp_for = lambda payload: Stamp(given if given is not None else collect(), payload, full_meta)  # noqa: E731
        if chosen == "safetensors":
            from envkit.checkpoint.safetensors_format import write_url

            return write_url(obj, target, stamp_for=stamp_for, digest=digest, metadata=metadata)
        return save_url(obj, target, stamp_for=stamp_for, digest=digest)
    if chosen == "safetensors":
        from envkit.checkpoint import safetensors_format

        live = fingerprint if fingerprint is not None else collect()
        return safetensors_format.write(obj, target, stamp_for=lambda payload: Stamp(live, payload, full_meta), digest=digest,
                                        metadata=metadata)
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


def stamp_existing(path: str | os.PathLike[str], *, stamp_for: Any, digest: str = "xxh3_128") -> Stamp | None:
    """Stamp a torch zip checkpoint that something else wrote (a framework's own saver), atomically.

    A copy beside the file gets the stamp appended as its last member (``stamp_for(payload)``,
    the payload digest over the bytes up to the archive's directory); the copy is fsynced and
    renamed over the file. Returns None, changing nothing, when the file already carries a stamp
    member or is not a zip archive (a legacy torch stream has no room for one).
    """
    from envkit.checkpoint.hashing import digest_of_file
    from envkit.checkpoint.ziptail import last_stamp_member

    if digest not in DIGEST_ALGORITHMS:
        raise BadInput(f"unknown digest {digest!r}; use one of {', '.join(DIGEST_ALGORITHMS)}")
    target = write_target(path)
    try:
        with open(target, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if fh.read(4) != b"PK\x03\x04" or last_stamp_member(fh, size) is not None:
                return None
    except OSError as exc:
        _raise_write_error(Path(path), exc, None)
    import shutil

    tmp = temp_path_for(target)
    try:
        shutil.copyfile(target, tmp)
        with open(tmp, "r+b") as fh:
            layout = torch_layout(fh, size)
            if layout is not None:
                payload = Payload(digest_of_file(fh, layout[1], digest), layout[1])
                first = first_member(fh, layout[1], layout[1])
                data_pkl = first[1] if first is not None and first[0] == f"{layout[0]}/data.pkl" else None
                stamp = with_storage_devices(stamp_for(payload), data_pkl)
                append_last_member(fh, layout, f"{layout[0]}/{MEMBER}", stamp.to_bytes())
            else:
                with zipfile.ZipFile(fh, "r") as zf:
                    prefix = archive_prefix(Path(path), zf.namelist())
                    start, data_pkl = zf.start_dir, data_pkl_of(zf, prefix)
                stamp = with_storage_devices(stamp_for(Payload(digest_of_file(fh, start, digest), start)), data_pkl)
                with zipfile.ZipFile(fh, "a") as zf:
                    info = zipfile.ZipInfo(f"{prefix}/{MEMBER}", date_time=(1980, 1, 1, 0, 0, 0))
                    zf.writestr(info, stamp.to_bytes(), compress_type=zipfile.ZIP_STORED)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:  # noqa: BLE001 - the temporary file goes, the error is raised
        _discard(tmp)
        _raise_write_error(Path(path), exc, None)
    commit_file(tmp, Path(path))
    return stamp
