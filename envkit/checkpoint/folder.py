"""Framework checkpoint folders: stamp one, find the ones an output folder holds, and read what an
unstamped one proves about itself.

A Hugging Face ``checkpoint-<step>/``, an Accelerate ``save_state`` folder or a Lightning
distributed checkpoint is stamped by ``stamp_folder``: every file hashed once (streaming), then
``envkit.json`` written last and atomically, the commit marker (layout ``envkit.folder/1`` of
``folder_format``). Once stamped, ``envkit.read_stamp``, ``verify``, ``check`` and ``guard`` take
the folder as they take a file; ``read_stamp`` reads ``envkit.json`` alone, verify re-hashes.

Re-stamping: a folder whose files are exactly those its stamp lists keeps its ``envkit.json``
untouched (the first stamp of a set of bytes wins: the same saved_at, nothing written). A folder
whose files changed (the Trainer saving into the same ``checkpoint-<step>`` again) is stamped
afresh, unless ``replace=False``, which refuses (CorruptCheckpoint, exit 1) so that a folder
damaged after saving is never re-blessed by hand (``envkit stamp`` without ``--restamp``).

Nothing here unpickles: ``training_args.bin``, ``rng_state.pth`` and the other pickles are hashed
as bytes and never parsed; the evidence of an unstamped folder comes from JSON files, the
safetensors header and the records of torch's zip archives. No torch import here.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from envkit.checkpoint.folder_format import (
    DCP_SUFFIX,
    INDEX_NAME,
    LAYOUT,
    STAMP_NAME,
    FolderEntry,
    checkpoint_folders,
    is_checkpoint_file,
    manifest_digest,
    read_folder_stamp,
    step_from_name,
    walk,
)
from envkit.checkpoint.stamp import DIGEST_ALGORITHMS, MAX_STAMP_BYTES, Payload, Stamp
from envkit.errors import BadInput, CorruptCheckpoint, EnvkitError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from envkit.fingerprint import Fingerprint

__all__ = [
    "FolderEntry", "StampedFolder", "checkpoint_folders", "detect_framework", "folder_evidence", "safetensors_metadata",
    "stamp_checkpoint_folder", "stamp_folder",
]

MAX_JSON_BYTES = 64 * 1024 * 1024  # trainer_state.json holds the whole log history
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit
_EVIDENCE_FILES = 16  # of each kind


def detect_framework(names: Mapping[str, Any] | list[str]) -> str | None:
    """Which framework wrote a folder, by the names of its files (None: unknown)."""
    top = {n for n in names if "/" not in n}
    if "trainer_state.json" in top or "training_args.bin" in top:
        return "transformers"
    if any(n.startswith("random_states_") and n.endswith(".pkl") for n in top) or any(
        n.startswith(("optimizer", "scheduler", "sampler")) and n.endswith(".bin") for n in top
    ):
        return "accelerate"
    if any(n.endswith(".distcp") for n in names) or any(n.endswith("_model_states.pt") for n in names):
        return "lightning"
    return None


def _json_file(path: Path) -> dict[str, Any]:
    """A JSON object file of the folder, bounded; BadInput naming it when it is not one."""
    from envkit.fingerprint.sources import read_json_object

    doc = read_json_object(path, MAX_JSON_BYTES) if os.path.isfile(path) else {}
    if not doc:
        raise BadInput(f"{path}: not a readable JSON object of at most {MAX_JSON_BYTES} bytes")
    return doc


def trainer_step(folder: Path) -> int | None:
    """``global_step`` of the folder's ``trainer_state.json`` (None when absent or unreadable)."""
    if not (folder / "trainer_state.json").is_file():
        return None
    try:
        doc = _json_file(folder / "trainer_state.json")
    except BadInput:
        return None
    step = doc.get("global_step")
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


@dataclass(frozen=True)
class StampedFolder:
    """What ``envkit stamp DIR`` reports: the stamp, how many files and bytes it covers, and
    whether ``envkit.json`` was written (False: the folder was stamped already, files unchanged)."""

    path: Path
    stamp: Stamp
    files: int
    size: int
    written: bool

    def to_json(self) -> dict[str, Any]:
        payload = self.stamp.payload
        return {
            "checkpoint": str(self.path),
            "written": self.written,
            "files": self.files,
            "size": self.size,
            "digest": payload.digest if payload else None,
            "meta": dict(self.stamp.meta),
        }


def stamp_folder(
    path: str | os.PathLike[str],
    *,
    meta: Mapping[str, Any] | None = None,
    framework: str | None = None,
    fingerprint: Fingerprint | None = None,
    digest: str = "xxh3_128",
    replace: bool = True,
    fsync: bool = False,
) -> Stamp:
    """Stamp an existing checkpoint folder and return its stamp; ``stamp_checkpoint_folder`` has the arguments."""
    return stamp_checkpoint_folder(path, meta=meta, framework=framework, fingerprint=fingerprint, digest=digest,
                                   replace=replace, fsync=fsync).stamp


def stamp_checkpoint_folder(
    path: str | os.PathLike[str],
    *,
    meta: Mapping[str, Any] | None = None,
    framework: str | None = None,
    fingerprint: Fingerprint | None = None,
    digest: str = "xxh3_128",
    replace: bool = True,
    fsync: bool = False,
) -> StampedFolder:
    """Stamp an existing checkpoint folder: hash every file once, then write ``envkit.json`` last,
    atomically (a failure leaves no partial ``envkit.json``, and any earlier one as it was).

    ``meta`` is the stamp's meta (as for ``envkit.save``); ``framework`` (else guessed from the
    file names: transformers, accelerate, lightning) and ``step`` (else ``trainer_state.json``'s
    ``global_step``, else the number in the folder's name) are added to it. ``fingerprint``: the
    environment to record (default: this one). ``envkit.json`` itself is always written atomically
    and durably; ``fsync=True`` also makes every file durable before it (``envkit stamp`` does).
    Off by default, as the frameworks do not fsync their own files either: a file a power cut
    lost under a durable marker reads as corrupt, and a resume that verifies skips that folder.
    See the module docstring for a folder stamped already (``replace``).
    BadInput (exit 2): a missing path, a file, a ``.dcp`` folder (the manager stamps those), a
    folder with no checkpoint file, a file the stamp cannot cover (a link leaving the folder,
    a pipe), too many files for one stamp.
    """
    from envkit.checkpoint.hashing import digest_of_file
    from envkit.checkpoint.writer import build_meta

    root = Path(path)
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise BadInput(f"{root}: no such folder; pass the checkpoint folder to stamp") from None
    except OSError as exc:
        raise BadInput(f"{root}: cannot read ({exc.strerror}); check the path and its permissions") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{root}: not a folder; pass a checkpoint folder (a single file is stamped by saving it with envkit.save)")
    if root.name.endswith(DCP_SUFFIX):
        raise BadInput(f"{root}: a sharded checkpoint folder; the CheckpointManager that writes it stamps it, stamp another folder")
    if digest not in DIGEST_ALGORITHMS:
        raise BadInput(f"unknown digest {digest!r}; use one of {', '.join(DIGEST_ALGORITHMS)}")
    children = checkpoint_folders(root)
    if children:
        raise BadInput(f"{root}: a folder of {len(children)} checkpoint folder(s), not one checkpoint; stamp each of them "
                       f"(`envkit stamp {children[0].path}`)")
    if os.path.lexists(root / INDEX_NAME):
        raise BadInput(f"{root}: a CheckpointManager's folder, whose checkpoints are stamped one by one already; "
                       "stamp a framework's checkpoint folder instead")
    marker = root / STAMP_NAME
    if os.path.islink(marker) or (os.path.lexists(marker) and not os.path.isfile(marker)):
        raise BadInput(f"{marker}: not a regular file; remove it, then stamp the folder again")
    found = walk(root)
    if found.problem is not None:
        raise BadInput(f"{found.problem}; the stamp cannot cover it: fix or remove it, then stamp the folder")
    if not any(is_checkpoint_file(name) for name in found.files):
        raise BadInput(f"{root}: a folder with no checkpoint file in it (no .safetensors, .pt, .bin, .ckpt, .distcp or trainer state); "
                       "pass the checkpoint folder itself")
    previous = None
    if os.path.lexists(marker):
        try:
            previous = read_folder_stamp(root)
        except EnvkitError:
            if not replace:
                raise
    files: dict[str, dict[str, Any]] = {}
    for name in sorted(found.files):
        try:
            with open(root / name, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                files[name] = {"size": size, "digest": digest_of_file(fh, size, digest)}
                if fsync:
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise BadInput(f"{root}: cannot read {name} ({exc.strerror}); check its permissions, then stamp the folder") from None
    total = sum(r["size"] for r in files.values())
    if previous is not None:
        if previous.layout == LAYOUT and _same_files(previous.files, files):
            return StampedFolder(root, previous.stamp, len(files), total, written=False)
        if not replace:
            changed = sorted(set(previous.files) ^ set(files)) or [n for n in sorted(files) if previous.files.get(n) != files[n]]
            raise CorruptCheckpoint(
                f"{root}: stamped already, and its files differ from those the stamp lists ({changed[0] if changed else 'the layout'}); "
                "run `envkit verify` to see why, or pass --restamp to record the files as they are now"
            )
    full_meta = build_meta(meta, marker)
    found_framework = framework or full_meta.get("framework") or detect_framework(files)
    if found_framework is not None:
        full_meta["framework"] = str(found_framework)
    if full_meta.get("step") is None:
        step = trainer_step(root)
        step = step if step is not None else step_from_name(root.resolve().name)
        if step is not None:
            full_meta["step"] = step
    if fingerprint is None:
        from envkit.fingerprint import collect

        fingerprint = collect()
    stamp = Stamp(fingerprint, Payload(manifest_digest(files, digest), total), full_meta)
    data = json.dumps({**stamp.to_json(), "layout": LAYOUT, "files": files}, sort_keys=True, separators=(",", ":")).encode()
    if len(data) > MAX_STAMP_BYTES:
        raise BadInput(f"{root}: {len(files)} files make a stamp of {len(data)} bytes, over the {MAX_STAMP_BYTES} byte limit; "
                       "stamp the folders below it one by one")
    _write_marker(root, data, sorted({(root / name).parent for name in files}) if fsync else [])
    return StampedFolder(root, stamp, len(files), total, written=True)


def _same_files(a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]) -> bool:
    return a.keys() == b.keys() and all(a[k].get("size") == b[k]["size"] and a[k].get("digest") == b[k]["digest"] for k in b)


def _write_marker(root: Path, data: bytes, folders: list[Path]) -> None:
    """``envkit.json`` through a temporary file beside it, renamed into place: the last write
    (``folders``: those whose entries are made durable first)."""
    from envkit.atomic import atomic_file, fsync_dir

    for folder in folders:
        fsync_dir(folder)
    try:
        with atomic_file(root / STAMP_NAME) as fh:
            fh.write(data)
    except OSError as exc:
        raise BadInput(f"{root / STAMP_NAME}: cannot be written ({exc.strerror}); nothing was stamped") from None


# -- what an unstamped folder proves ----------------------------------------------------------


def safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The ``__metadata__`` map of a safetensors file's header (None when it has none).

    The one place envkit's folder code reads a safetensors header: the 8-byte little-endian
    length N (at most the format's 100,000,000), then N bytes of JSON, nothing else. BadInput
    for anything else (a short file, N past the end, not JSON, a map that is not string to string).
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise BadInput(f"{path}: shorter than a safetensors header")
            n = int.from_bytes(head, "little")
            if n > MAX_SAFETENSORS_HEADER or n > size - 8:
                raise BadInput(f"{path}: a safetensors header of {n} bytes, past the end of the file or the format's limit")
            data = fh.read(n)
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
    try:
        header = json.loads(data)
    except (ValueError, RecursionError):
        raise BadInput(f"{path}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise BadInput(f"{path}: the safetensors header is not a JSON object")
    metadata = header.get("__metadata__")
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise BadInput(f"{path}: the safetensors __metadata__ is not a map of strings to strings")
    return metadata


def _torch_zip_records(path: Path) -> dict[str, Any]:
    """The records torch.save writes beside the pickle (version, byteorder, serialization id), never the pickle."""
    from envkit.checkpoint.reader import ZIP_MAGIC, _member_bytes, archive_prefix, open_zip

    with open(path, "rb") as fh:
        if fh.read(4) != ZIP_MAGIC:
            return {"format": "not a zip archive (a legacy torch file or a plain pickle: not read)"}
    out: dict[str, Any] = {"format": "torch zip"}
    with open_zip(path) as zf:
        by_name = {i.filename: i for i in zf.infolist()}
        prefix = archive_prefix(path, list(by_name))
        for key, record in (("serialization_version", "version"), ("serialization_id", ".data/serialization_id"),
                            ("byteorder", "byteorder")):
            info = by_name.get(f"{prefix}/{record}")
            if info is not None:
                out[key] = _member_bytes(zf, info, path, 256).decode("ascii", "replace").strip()
    return out


def _config_evidence(doc: dict[str, Any]) -> dict[str, Any]:
    keys = ("transformers_version", "torch_dtype", "dtype", "model_type", "architectures")
    return {k: doc[k] for k in keys if k in doc and isinstance(doc[k], (str, int, float, list)) and len(str(doc[k])) < 400}


def _trainer_state_evidence(doc: dict[str, Any]) -> dict[str, Any]:
    keys = ("global_step", "epoch", "max_steps", "best_model_checkpoint")
    return {k: doc[k] for k in keys if k in doc and isinstance(doc[k], (str, int, float)) and not isinstance(doc[k], bool)}


def folder_evidence(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """What the files of an unstamped checkpoint folder prove about where it came from, file by
    file (relative name -> facts): ``config.json``'s transformers_version and dtype, each
    safetensors file's ``__metadata__``, the zip records of ``optimizer.pt``/``.bin`` and
    ``scheduler.pt``/``.bin``, ``trainer_state.json``'s global_step. Partial evidence, not a stamp:
    a file that cannot be read gets an ``error`` entry. Pickles are never read.
    """
    root = Path(path)
    names = sorted(walk(root, limit=10_000).files)
    out: dict[str, dict[str, Any]] = {}
    framework = detect_framework(names)
    if framework is not None:
        out["(folder)"] = {"framework": framework}

    def note(name: str, read: Any) -> None:
        try:
            out[name] = read(root / name)
        except EnvkitError as exc:
            out[name] = {"error": exc.message}
        except OSError as exc:
            out[name] = {"error": f"cannot read ({exc.strerror})"}

    top = [n for n in names if "/" not in n]
    if "config.json" in top:
        note("config.json", lambda p: _config_evidence(_json_file(p)))
    if "trainer_state.json" in top:
        note("trainer_state.json", lambda p: _trainer_state_evidence(_json_file(p)))
    for name in [n for n in names if n.endswith(".safetensors")][:_EVIDENCE_FILES]:
        note(name, lambda p: {"metadata": safetensors_metadata(p)})
    torch_files = [n for n in top if n.startswith(("optimizer", "scheduler")) and n.endswith((".pt", ".bin"))]
    for name in torch_files[:_EVIDENCE_FILES]:
        note(name, _torch_zip_records)
    return out
