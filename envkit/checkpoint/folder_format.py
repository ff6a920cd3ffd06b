"""Folder checkpoints on disk: a folder of files committed by ``envkit.json``, written last.

One format for every folder checkpoint: envkit's own sharded ``.dcp`` folders and the folders
frameworks write (Hugging Face ``checkpoint-<step>/``, Accelerate's ``save_state`` output,
Lightning's distributed folders). ``envkit.json`` is the usual ``envkit.stamp/1`` document plus
``files``: every file's size and digest. Its payload digest covers the canonical JSON of that
map, its length the files' total size. The folder is a checkpoint once ``envkit.json`` is there
(the commit marker, written atomically after every file); verify re-hashes every file.

Two layouts of ``files``, told apart by the stamp's ``layout`` field:

- no ``layout`` (the sharded ``.dcp`` folders of envkit 0.1, still written by the manager): the
  keys are plain names of the folder's top level; verify compares the folder's top-level entries;
- ``"layout": "envkit.folder/1"`` (``stamp_folder``): the keys are relative POSIX paths,
  sub-folders allowed (``checkpoint/mp_rank_00_model_states.pt``); never absolute, never ``..``,
  never through a symbolic link that leaves the folder. Verify walks the whole tree.

A later layout gets a new name here; an envkit that does not know it says so (exit 2).
No torch import here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
from collections import namedtuple
from collections.abc import Mapping
from pathlib import Path

from envkit.atomic import TEMP_MARK, kind_of
from envkit.checkpoint.stamp import MAX_STAMP_BYTES, Stamp
from envkit.errors import BadInput, MalformedStamp, NotACheckpoint

TYPE_CHECKING = False  # typing is not imported at run time: latest() and check stay cheap
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    class FolderStamp(NamedTuple):
        stamp: Stamp
        files: dict[str, dict[str, Any]]
        layout: str | None

    class Walk(NamedTuple):
        files: dict[str, int]
        problem: str | None

    class FolderEntry(NamedTuple):
        step: int
        path: Path
else:
    FolderStamp = namedtuple("FolderStamp", ["stamp", "files", "layout"])
    FolderStamp.__doc__ = "What envkit.json says: the stamp, the files (relative path -> size and digest), the layout (None: sharded)."
    Walk = namedtuple("Walk", ["files", "problem"])
    Walk.__doc__ = "The regular files under a folder (relative POSIX path -> size) and the first problem met (None: none)."
    FolderEntry = namedtuple("FolderEntry", ["step", "path"])
    FolderEntry.__doc__ = "One checkpoint-<step> folder of an output folder (step: int, path: Path; a tuple: `for step, path in ...`)."

STAMP_NAME = "envkit.json"
DCP_FORMAT = "dcp"  # CheckpointFile.format of a folder without ``layout`` (sharded, the manager's)
FOLDER_FORMAT = "folder"  # CheckpointFile.format of a folder of layout envkit.folder/1, stamped or not
DCP_SUFFIX = ".dcp"
LAYOUT = "envkit.folder/1"
SUPPORTED_LAYOUTS = (LAYOUT,)
MAX_FILES = 100_000  # entries a walk visits before it gives up on a folder
MAX_DEPTH = 16  # sub-folder levels a walk descends
MAX_PATH_CHARS = 4096
_STAMP_TEMP_PREFIX = f".{STAMP_NAME}{TEMP_MARK}"  # what atomic_file writes envkit.json through
_DIGEST = re.compile(r"^(xxh3_128|sha256):[0-9a-f]+$")

# Files that make an unstamped folder a framework checkpoint (matched on the name, any depth the
# walk reaches): Hugging Face Trainer and save_pretrained, Accelerate save_state, DCP and
# DeepSpeed (Lightning's distributed strategies).
FRAMEWORK_FILES = (
    "trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state*.pth",
    "*.safetensors", "pytorch_model*.bin", "optimizer*.bin", "scheduler*.bin", "sampler*.bin",
    "random_states_*.pkl", "*.distcp", "mp_rank_*_model_states.pt", "*_optim_states.pt",
)
# What else counts as a checkpoint file when a folder is stamped explicitly.
CHECKPOINT_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".distcp", ".pkl")
_CHECKPOINT_DIR = (re.compile(r"checkpoint-([0-9]{1,18})"), re.compile(r"checkpoint_([0-9]{1,18})"))
INDEX_NAME = ".envkit-index.json"  # index.INDEX_NAME: a CheckpointManager's folder, not one checkpoint
ACCELERATE_SUBFOLDER = "checkpoints"  # ProjectConfiguration(automatic_checkpoint_naming=True)


def manifest_digest(files: Mapping[str, Mapping[str, Any]], algorithm: str) -> str:
    from envkit.checkpoint.hashing import new_hasher

    hasher = new_hasher(algorithm)
    hasher.update(json.dumps(files, sort_keys=True, separators=(",", ":")).encode())
    return f"{algorithm}:{hasher.hexdigest()}"


def file_digest(path: Path, algorithm: str) -> str:
    from envkit.checkpoint.hashing import digest_of_file

    with open(path, "rb") as fh:
        return digest_of_file(fh, os.fstat(fh.fileno()).st_size, algorithm)


def committed_size(folder: str) -> int | None:
    """A folder checkpoint's size key, its stamp's size (the stamp is written last); None: not committed."""
    try:
        return os.stat(os.path.join(folder, STAMP_NAME)).st_size
    except OSError:
        return None


# -- the stamp document ---------------------------------------------------------------------


def path_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a key of an envkit.folder/1 manifest; None when it can."""
    if not isinstance(name, str) or not name or len(name) > MAX_PATH_CHARS or "\x00" in name:
        return "an empty, overlong or non-string name"
    if name.startswith("/"):
        return f"the absolute path {name[:200]!r}"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"the path {name[:200]!r}, which is not a plain relative path (empty, '.' or '..' part)"
    if name == STAMP_NAME:
        return f"{STAMP_NAME} itself"
    return None


def _flat_name_ok(name: Any) -> bool:
    return isinstance(name, str) and "/" not in name and name not in ("", ".", "..", STAMP_NAME) and "\x00" not in name


def _record_ok(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    size, digest = record.get("size"), record.get("digest")
    return isinstance(size, int) and not isinstance(size, bool) and size >= 0 and isinstance(digest, str) and bool(_DIGEST.match(digest))


def read_stamp_doc(path: Path) -> dict[str, Any]:
    """``envkit.json`` of a folder, checked: JSON, within the size limit, a known layout, a well-formed ``files``."""
    stamp_path = path / STAMP_NAME
    try:
        st = os.stat(stamp_path)
        if not stat.S_ISREG(st.st_mode):
            raise MalformedStamp(f"{stamp_path}: {kind_of(st.st_mode)}, not a file; the commit marker is damaged, "
                                 "resume from an earlier checkpoint")
        with open(stamp_path, "rb") as fh:
            data = fh.read(MAX_STAMP_BYTES + 1)
    except FileNotFoundError:
        raise NotACheckpoint(
            f"{path}: a folder without {STAMP_NAME}: not a committed sharded checkpoint (an interrupted save?); "
            "pass a checkpoint file or a sharded checkpoint folder"
        ) from None
    except OSError as exc:
        raise NotACheckpoint(f"{stamp_path}: cannot read ({exc.strerror}); check the folder's permissions") from None
    return parse_stamp_doc(data, stamp_path)


def parse_stamp_doc(data: bytes, stamp_path: Path) -> dict[str, Any]:
    """``envkit.json``'s bytes (at most ``MAX_STAMP_BYTES + 1`` of them), checked as ``read_stamp_doc`` checks them
    (``stamp_path``: where they came from, a local path or an ``ObjectPath``, for the messages)."""
    if len(data) > MAX_STAMP_BYTES:
        raise MalformedStamp(f"{stamp_path}: over the {MAX_STAMP_BYTES} byte limit; the folder was not written by envkit")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise MalformedStamp(f"{stamp_path}: not valid JSON ({exc}); the commit marker is damaged, resume from an earlier checkpoint") from None
    if not isinstance(doc, dict):
        raise MalformedStamp(f"{stamp_path}: not a JSON object; the commit marker is damaged, resume from an earlier checkpoint")
    layout = doc.get("layout")
    if layout is not None and layout not in SUPPORTED_LAYOUTS:
        raise MalformedStamp(
            f"{stamp_path}: unknown folder layout {str(layout)[:80]!r} (this envkit reads {', '.join(SUPPORTED_LAYOUTS)} "
            "and the sharded layout); upgrade envkit to read it"
        )
    files = doc.get("files")
    if not isinstance(files, dict) or not all(_record_ok(v) for v in files.values()):
        raise MalformedStamp(f"{stamp_path}: the list of files is missing or malformed; resume from an earlier checkpoint")
    for name in files:
        problem = path_problem(name) if layout is not None else (None if _flat_name_ok(name) else f"the name {str(name)[:200]!r}")
        if problem is not None:
            raise MalformedStamp(f"{stamp_path}: the list of files names {problem}; the commit marker was not written by envkit "
                                 "or was tampered with, do not load this folder")
    return doc


def read_folder_stamp(path: Path) -> FolderStamp:
    doc = read_stamp_doc(path)
    return FolderStamp(Stamp.from_json(doc, source=str(path / STAMP_NAME)), doc["files"], doc.get("layout"))


def read_dir_stamp(path: Path) -> tuple[Stamp, dict[str, dict[str, Any]]]:
    found = read_folder_stamp(path)
    return found.stamp, found.files


# -- the files of a folder ------------------------------------------------------------------


def walk(root: Path, *, limit: int = MAX_FILES) -> Walk:
    """Every file under ``root`` but ``envkit.json`` (and envkit's own temporary one), by relative path.

    A symbolic link is followed when it leads to a file inside the folder; a link leaving the
    folder, a link to a folder, a dangling link, a device, pipe or socket, a tree deeper than
    ``MAX_DEPTH`` or larger than ``limit`` entries is a problem (the first is reported; the walk
    goes on past it, leaving the entry out). Nothing is opened, so nothing can block.
    """
    files: dict[str, int] = {}
    problem: str | None = None
    real_root = os.path.realpath(root)
    visits = 0
    stack: list[tuple[str, str, int]] = [(os.fspath(root), "", 0)]
    while stack:
        folder, prefix, depth = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problem = problem or f"{folder}: cannot list ({exc.strerror}); check the folder's permissions"
            continue
        for entry in entries:
            visits += 1
            if visits > limit:
                return Walk(files, problem or f"{root}: more than {limit} entries; not a checkpoint folder envkit reads")
            name = entry.name
            rel = f"{prefix}{name}"
            if not prefix and (name == STAMP_NAME or name.startswith(_STAMP_TEMP_PREFIX)):
                continue
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not target.startswith(real_root.rstrip(os.sep) + os.sep):
                        problem = problem or f"{root}: {rel} is a symbolic link leading out of the folder ({target})"
                    elif os.path.isdir(target):
                        problem = problem or f"{root}: {rel} is a symbolic link to a folder; replace it with the folder itself"
                    elif not os.path.isfile(target):
                        problem = problem or f"{root}: {rel} is a dangling symbolic link or a link to something that is not a file"
                    else:
                        files[rel] = os.stat(target).st_size
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                problem = problem or f"{root}: cannot read {rel} ({exc.strerror})"
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth + 1 >= MAX_DEPTH:
                    problem = problem or f"{root}: {rel} is more than {MAX_DEPTH} folders deep; not a checkpoint folder envkit reads"
                else:
                    stack.append((entry.path, f"{rel}/", depth + 1))
            elif stat.S_ISREG(st.st_mode):
                files[rel] = st.st_size
            else:
                problem = problem or f"{root}: {rel} is {kind_of(st.st_mode)}, not a file"
    return Walk(files, problem)


def is_framework_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in FRAMEWORK_FILES)


def is_checkpoint_file(name: str) -> bool:
    return is_framework_file(name) or name.endswith(CHECKPOINT_FILE_SUFFIXES)


def _flat_problem(path: Path, files: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The sharded layout, exactly as envkit 0.1 verified it: the top-level names."""
    present = {e.name for e in os.scandir(path)} - {STAMP_NAME}
    extra = sorted(present - set(files))
    if extra:
        return f"{path}: {extra[0]} is not one of the files the stamp lists"
    return None


def verify_files(path: Path, stamp: Stamp, files: Mapping[str, Mapping[str, Any]], layout: str | None = None) -> str | None:
    """The first problem found, or None when every file is there, whole and nothing else is."""
    if stamp.payload is None:
        return f"{path}: the stamp has no payload record, so there is nothing to verify against"
    algorithm = stamp.payload.algorithm
    if manifest_digest(files, algorithm) != stamp.payload.digest:
        return f"{path}: the list of files does not match the stamp's digest: {STAMP_NAME} was edited"
    if layout is None:
        problem = _flat_problem(path, files)
        sizes = None
    else:
        found = walk(path, limit=max(MAX_FILES, 2 * len(files) + 16))
        problem, sizes = found.problem, found.files
        if problem is None:
            extra = sorted(set(sizes) - set(files))
            problem = f"{path}: {extra[0]} is not one of the files the stamp lists" if extra else None
    if problem:
        return problem
    for name in sorted(files):
        record, f = files[name], path / name
        if sizes is not None and name not in sizes:
            return f"{path}: {name} is missing; resume from an earlier checkpoint"
        try:
            size = f.stat().st_size if sizes is None else sizes[name]
        except OSError:
            return f"{path}: {name} is missing; resume from an earlier checkpoint"
        if size != record["size"]:
            return f"{path}: {name} is {size} bytes, the stamp records {record['size']}: truncated or changed"
        try:
            actual = file_digest(f, algorithm)
        except OSError as exc:
            return f"{path}: cannot read {name} ({exc.strerror}); check its permissions"
        if actual != record["digest"]:
            return f"{path}: {name} digest mismatch (recorded {record['digest']}, found {actual}): the bytes changed after saving"
    return None


# -- unstamped folders and output folders ---------------------------------------------------


def checkpoint_folders(output_dir: str | os.PathLike[str]) -> list[FolderEntry]:
    """The checkpoint folders of a Hugging Face or Accelerate output folder, newest step first.

    ``checkpoint-<step>`` (the Trainer's) and ``checkpoint_<n>`` (Accelerate's automatic naming),
    directly inside ``output_dir`` or inside its ``checkpoints/`` sub-folder. Sorted by the number
    in the name, never by mtime; one scandir (two when ``checkpoints/`` exists); no stamp is read.
    A half-written ``tmp-checkpoint-<step>`` is not one of them. BadInput for a missing folder.
    """
    root = Path(output_dir)
    found: list[FolderEntry] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        raise BadInput(f"{root}: no such folder; pass the output_dir a Trainer or Accelerator writes its checkpoints to") from None
    except NotADirectoryError:
        raise BadInput(f"{root}: not a folder; pass the output_dir a Trainer or Accelerator writes its checkpoints to") from None
    except OSError as exc:
        raise BadInput(f"{root}: cannot list ({exc.strerror}); check the folder's permissions") from None
    for entry in list(entries):
        if entry.name == ACCELERATE_SUBFOLDER and entry.is_dir():
            try:
                entries.extend(os.scandir(entry.path))
            except OSError:
                pass
    for entry in entries:
        for pattern in _CHECKPOINT_DIR:
            m = pattern.fullmatch(entry.name)
            if m is not None and entry.is_dir():
                found.append(FolderEntry(int(m.group(1)), Path(entry.path)))
    found.sort(key=lambda e: (e.step, str(e.path)), reverse=True)
    return found


def step_from_name(name: str) -> int | None:
    """The step a folder's name gives: ``checkpoint-500``, ``checkpoint_3``, Lightning's ``epoch=1-step=500.ckpt``."""
    for pattern in _CHECKPOINT_DIR:
        m = pattern.fullmatch(name)
        if m is not None:
            return int(m.group(1))
    m = re.search(r"(?:^|[-_])step=([0-9]{1,18})(?:[-_.]|$)", name)
    return int(m.group(1)) if m is not None else None


def unstamped_files(path: Path) -> dict[str, int]:
    """The files of a folder without ``envkit.json`` when they make it a framework checkpoint; else NotACheckpoint (exit 2).

    A ``.dcp`` folder without its stamp is an interrupted sharded save; a folder of checkpoint
    folders or of a CheckpointManager's files is not one checkpoint (the message names what to pass).
    """
    if path.name.endswith(DCP_SUFFIX):
        read_stamp_doc(path)  # raises the interrupted-save message
    children = checkpoint_folders(path)
    if children:
        raise NotACheckpoint(
            f"{path}: a folder of {len(children)} checkpoint folder(s), not one checkpoint; pass one of them "
            f"(the newest is {children[0].path.name}), or run `envkit ls {path}`"
        )
    if os.path.lexists(path / INDEX_NAME):
        raise NotACheckpoint(f"{path}: a folder of envkit checkpoints, not one checkpoint; run `envkit ls {path}` and pass one of them")
    found = walk(path, limit=10_000)
    if not any(is_framework_file(n) and not n.endswith(".safetensors") for n in found.files) and "config.json" not in found.files \
            and any(n.endswith(".safetensors") for n in found.files):
        raise NotACheckpoint(  # safetensors files and nothing that makes them one framework checkpoint: each is one
            f"{path}: a folder of safetensors files, not one checkpoint folder; pass one of them, or run `envkit ls {path}`"
        )
    if not any(is_framework_file(name) for name in found.files):
        raise NotACheckpoint(
            f"{path}: a folder with no checkpoint in it (no {STAMP_NAME}, no model, optimizer or trainer state files); "
            "pass a checkpoint file or folder (`envkit ls` lists the checkpoints in a folder)"
        )
    return found.files
