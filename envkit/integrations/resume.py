"""Which checkpoint folder to resume: the newest one that verifies, guarded. No framework import.

``guard_resume`` is what ``envkit.integrations.transformers`` and ``envkit.integrations.accelerate``
export; it lives here, framework-free, so that it costs what ``envkit check`` costs (a process
that only picks the folder does not import transformers).

Order of choice in an ``output_dir`` (its ``checkpoint-<step>`` folders and Accelerate's
``checkpoint_<n>``, there or in its ``checkpoints/``, newest step first, by the number in the
name as the frameworks do; ``envkit.checkpoint.folder.checkpoint_folders``):

1. the newest folder whose ``envkit.json`` verifies (every file there, whole, nothing else):
   a folder without the stamp is an interrupted save or one written without envkit, a
   folder that does not verify is corrupt; both are skipped with a CheckpointSkippedWarning;
2. when no folder is stamped at all (a run trained without envkit), the newest unstamped folder
   that looks finished (HF: ``trainer_state.json``, which the Trainer writes after the weights,
   optimizer, scheduler and RNG files, parses; Accelerate: its ``random_states_0.pkl``, written
   last by ``save_accelerator_state``), with a warning: nothing proves it whole;
3. otherwise CorruptCheckpoint (exit 1), naming what each folder was.

A stamped folder that is refused (the guard) is never passed over for an older one: every
folder of a run was written by the same environment, so the refusal is the answer.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from envkit.checkpoint.folder import checkpoint_folders
from envkit.checkpoint.folder_format import STAMP_NAME
from envkit.checkpoint.integrity import verify
from envkit.checkpoint.resume_check import guard
from envkit.errors import BadInput, CheckpointSkippedWarning, CorruptCheckpoint, warn_at_caller

TYPE_CHECKING = False
if TYPE_CHECKING:
    from envkit.policy import Policy

# HF Trainer's checkpoint-<step> (transformers.trainer_utils._re_checkpoint) and Accelerate's
# automatic checkpoint_<n>: a folder of either name is one checkpoint, not an output_dir.
_CHECKPOINT_NAME = re.compile(r"^checkpoint[-_](\d+)$")
# The file each framework writes last into a folder: an unstamped folder without it is half-written.
_WRITTEN_LAST = ("trainer_state.json", "random_states_0.pkl")


@dataclass(frozen=True)
class Candidate:
    """One folder looked at, and what verify said of it (``ok``, ``unstamped``, ``corrupt``, ``unreadable``)."""

    path: Path
    status: str
    problem: str | None


def is_checkpoint_folder(path: Path) -> bool:
    """A single checkpoint (not an output_dir): named ``checkpoint-<n>``/``checkpoint_<n>``, or holding a stamp."""
    return bool(_CHECKPOINT_NAME.match(path.name)) or (path / STAMP_NAME).is_file()


def candidates(output_dir: Path) -> list[Path]:
    """The checkpoint folders of ``output_dir`` (and of its ``checkpoints/``), newest step first:
    HF's ``checkpoint-<step>`` and Accelerate's ``checkpoint_<n>``, by the number in the name."""
    return [entry.path for entry in checkpoint_folders(output_dir)]


def _names(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError as exc:
        raise BadInput(f"{path}: cannot list ({exc.strerror}); check the folder's permissions") from None


def looks_like_checkpoint(name: str) -> bool:
    """A file only a checkpoint folder holds (weights, optimizer, trainer or RNG state)."""
    return name.endswith((".safetensors", ".pt", ".pth", ".bin", ".pkl", ".ckpt", ".distcp")) or name == "trainer_state.json"


def looks_finished(folder: Path) -> bool:
    """An unstamped folder the framework finished writing, as far as its own files tell."""
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            with open(state, "rb") as fh:
                return isinstance(json.loads(fh.read(64 << 20)), dict)
        except (OSError, ValueError, RecursionError):
            return False
    return (folder / "random_states_0.pkl").is_file()


def _status(folder: Path) -> Candidate:
    result = verify(folder)
    return Candidate(folder, result.status, result.problem)


def pick(path: Path) -> tuple[Path, list[Candidate]]:
    """The folder to resume from ``path`` (a checkpoint folder or an output_dir), and what was passed over."""
    if not path.is_dir():
        if not path.exists():
            raise BadInput(f"{path}: no such folder; pass a checkpoint-<step> folder or the Trainer's output_dir")
        raise BadInput(f"{path}: not a folder; pass a checkpoint-<step> folder or the Trainer's output_dir")
    folders = [] if is_checkpoint_folder(path) else candidates(path)
    if not folders:
        if not is_checkpoint_folder(path) and not any(looks_like_checkpoint(name) for name in _names(path)):
            raise BadInput(f"{path}: no checkpoint-<step> folder in it; pass the Trainer's output_dir or a checkpoint folder, "
                           "or train without resuming")
        one = _status(path)  # one checkpoint, named by the caller: verified, never swapped for another
        if one.status in ("corrupt", "unreadable"):
            raise CorruptCheckpoint(f"{one.problem or path}; resume from an earlier checkpoint (pass its output_dir to pick the newest that verifies)")
        return path, []
    seen: list[Candidate] = []
    for folder in folders:
        c = _status(folder)
        if c.status == "ok":
            return folder, seen
        seen.append(c)
    if not any((c.path / STAMP_NAME).exists() for c in seen):
        for c in seen:
            if c.status == "unstamped" and looks_finished(c.path):
                return c.path, [s for s in seen if s is not c and folders.index(s.path) < folders.index(c.path)]
    what = "; ".join(f"{c.path.name}: {_what(c)}" for c in seen[:4])
    raise CorruptCheckpoint(f"{path}: no checkpoint folder there verifies ({what}); resume cannot start from any of them")


def _what(c: Candidate) -> str:
    if c.status == "unstamped":
        return "no envkit.json (an interrupted save, or written without envkit)"
    return c.problem.split(": ", 1)[-1] if c.problem else c.status


def guard_resume(path_or_output_dir: str | os.PathLike[str], policy: Policy | str | None = None) -> str:
    """The checkpoint folder to resume from, guarded: pass it to ``trainer.train(resume_from_checkpoint=...)``
    or ``accelerator.load_state(...)``.

    Call it before ``train()``: no Trainer callback fires before ``train(resume_from_checkpoint=...)``
    loads the weights, optimizer and scheduler, so this is where the refusal can come first.

    ``path_or_output_dir``: a ``checkpoint-<step>`` folder (verified and guarded as it is; a corrupt
    one raises CorruptCheckpoint) or an output_dir, where the newest folder that verifies is taken
    (like ``resume_from_checkpoint=True``, but never a half-written or corrupt one; see the module
    docstring for unstamped folders). Raises EnvironmentMismatch when the policy refuses this
    environment, CorruptCheckpoint when no folder verifies, BadInput when there is no checkpoint.
    """
    chosen, skipped = pick(Path(path_or_output_dir))
    for c in skipped:
        warn_at_caller(f"{c.path}: skipped, {_what(c)}; resuming from {chosen.name}", CheckpointSkippedWarning)
    guard(chosen, policy)
    return str(chosen)
