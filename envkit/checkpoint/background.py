"""Background saves: ``CheckpointManager(..., async_save=True)`` (docs/architecture.md, checkpoints at runtime).

Modelled on torch.distributed.checkpoint's ``async_save``, Lightning's ``AsyncCheckpointIO`` and
Orbax: ``save()`` *stages* the state (a CPU copy of every tensor, the optimizer's and the RNG
included, that the training loop may then change) and returns; one background thread
serialises, hashes, writes and commits it through the storage's own write and commit.

- At most one save is in flight: the next ``save()`` (or ``wait()``, ``close()``) waits for it
  first. Its error is raised there, never lost; a script that ends without ``close()`` still
  finishes its last save before the interpreter exits, and a failure nobody collected is
  reported then (a BackgroundSaveWarning on stderr). A kill (SIGKILL, ``os._exit``) ends it
  with the process: the previous checkpoint stays the latest.
- Retention and the index update run on the caller's thread when the save is collected
  (the next ``save()``/``wait()``/``close()``), so the folder is never changed by two
  threads at once; until then the new checkpoint is committed and listed like any other.
- A kill mid-background leaves what a kill mid-synchronous-save leaves: the commit is one
  atomic step, so ``latest()`` is the previous checkpoint until it has happened.
- Under torch.distributed the background thread runs no collective on the caller's process
  group: the caller's training loop owns that group. A single-file save is written by rank 0
  alone (local I/O); the ranks learn its outcome on the caller's thread, when it is collected
  (a broadcast at the same step boundary on every rank). A sharded save's collectives (DCP's,
  envkit's gather of digests and its commit) run on a process group of their own, made once.

A storage that can save in the background has ``stage(...) -> StagedSave | None`` (see
``single_file.SingleFileStorage.stage``); one without it, or that returns None, is saved
synchronously. No torch import at module level.
"""

from __future__ import annotations

import atexit
import copy
import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from envkit.checkpoint.ranks import Ranks
from envkit.checkpoint.state import TrainingState
from envkit.errors import BackgroundSaveWarning, CheckpointWriteError


@dataclass(frozen=True)
class StagedSave:
    """A save whose state is staged: ``write()`` (on the background thread) writes and commits it, returning the path."""

    path: Path
    write: Callable[[], Path]


@dataclass(frozen=True)
class Outcome:
    """What a background save came to: the committed path, or the error."""

    path: Path
    committed: Path | None
    error: BaseException | None


# -- staging -----------------------------------------------------------------------------


class Stager:
    """Copies a captured TrainingState into CPU memory that the training loop does not touch.

    The buffers are kept between saves and reused when a tensor's shape and dtype are the
    same (at most one save is in flight, so the previous copy is free by the time of the
    next), so staging costs one memory copy, not an allocation, after the first save. A
    tensor that appears twice (tied weights) is copied once and stays shared. CUDA tensors
    are copied into pinned memory.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], Any] = {}

    def release(self) -> None:
        self._buffers.clear()

    def stage(self, state: TrainingState) -> TrainingState:
        memo: dict[Any, Any] = {}
        used: dict[tuple[Any, ...], Any] = {}
        copies = {f.name: self._copy(getattr(state, f.name), (f.name,), memo, used) for f in fields(state)}
        self._buffers = used  # buffers of tensors that are gone are dropped
        return replace(state, **copies)

    def _copy(self, obj: Any, key: tuple[Any, ...], memo: dict[Any, Any], used: dict[tuple[Any, ...], Any]) -> Any:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            same = _alias_key(obj)  # state_dict() detaches: tied weights are two tensor objects on one storage
            if same is not None and same in memo:
                return memo[same]
            out = self._tensor(torch, obj, key, used)
            if same is not None:
                memo[same] = out
            return out
        if isinstance(obj, Mapping):
            items = {k: self._copy(v, (*key, k), memo, used) for k, v in obj.items()}
            if type(obj) is not OrderedDict:
                return items
            out = OrderedDict(items)  # a module's state_dict(): its _metadata (module versions) goes along
            if (metadata := getattr(obj, "_metadata", None)) is not None:
                out._metadata = copy.deepcopy(metadata)  # type: ignore[attr-defined]
            return out
        if isinstance(obj, list):
            return [self._copy(v, (*key, i), memo, used) for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and type(obj) is tuple:
            return tuple(self._copy(v, (*key, i), memo, used) for i, v in enumerate(obj))
        if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
            return obj
        return copy.deepcopy(obj)

    def _tensor(self, torch: Any, live: Any, key: tuple[Any, ...], used: dict[tuple[Any, ...], Any]) -> Any:
        t = live.detach()
        if t.layout != torch.strided or t.is_quantized or t.is_nested:
            return t.to("cpu", copy=True)  # rare layouts: a plain copy, no buffer
        buf = self._buffers.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            pin = t.device.type == "cuda" and torch.cuda.is_available()
            buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
        buf.copy_(t, non_blocking=t.device.type == "cuda")
        used[key] = buf
        if isinstance(live, torch.nn.Parameter):  # a Parameter kept in `extra` is saved as one, as torch.save would
            return torch.nn.Parameter(buf, requires_grad=live.requires_grad)
        return buf.detach().requires_grad_(True) if live.requires_grad else buf


def _alias_key(t: Any) -> tuple[Any, ...] | None:
    """Tensors with this key are the same values (one storage, one view of it); None: do not share."""
    try:
        return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
    except (RuntimeError, NotImplementedError):  # a tensor without storage (meta, sparse, ...)
        return None


def synchronize_devices() -> None:
    """Wait for copies from a GPU (issued non-blocking) before the state is handed to the background thread."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# -- the thread ---------------------------------------------------------------------------

_LIVE: weakref.WeakSet[BackgroundSaver] = weakref.WeakSet()
_HOOKED = False


class BackgroundSaver:
    """One save at a time on a thread of its own; ``wait()`` gives its Outcome (it raises nothing itself)."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self._thread: threading.Thread | None = None
        self._outcome: Outcome | None = None
        global _HOOKED
        if not _HOOKED:
            _register_exit_hook()
            _HOOKED = True
        _LIVE.add(self)

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> bool:
        """A save was started and nobody has collected its outcome yet."""
        return self._thread is not None

    def start(self, staged: StagedSave) -> None:
        if self._thread is not None:
            raise RuntimeError("a background save is still pending: wait() for it first")  # the manager never does this
        self._outcome = None

        def run() -> None:
            try:
                self._outcome = Outcome(staged.path, staged.write(), None)
            except BaseException as exc:  # noqa: BLE001 - kept for the caller's next wait()
                self._outcome = Outcome(staged.path, None, exc)

        # not a daemon: an interpreter that exits without wait() still finishes (and commits) the save
        self._thread = threading.Thread(target=run, name=f"envkit-save {staged.path.name}", daemon=False)
        self._thread.start()

    def wait(self) -> Outcome | None:
        """The outcome of the save started last (None: none was pending); blocks until it is done."""
        thread = self._thread
        if thread is None:
            return None
        thread.join()
        self._thread = None
        outcome, self._outcome = self._outcome, None
        return outcome if outcome is not None else Outcome(self.where, None, CheckpointWriteError(
            f"{self.where}: the background save ended without an outcome; save again"))

    def finish_at_exit(self) -> None:
        """At interpreter exit: the save in flight is finished; one that failed, with nobody to wait for it, is reported."""
        thread = self._thread
        if thread is None:
            return
        thread.join()
        outcome = self._outcome
        self._thread, self._outcome = None, None
        if outcome is not None and outcome.error is not None:
            warnings.warn(lost_save_message(outcome), BackgroundSaveWarning, stacklevel=1)


def lost_save_message(outcome: Outcome) -> str:
    error = outcome.error
    reason = getattr(error, "message", None) or str(error) or type(error).__name__
    return (f"{outcome.path}: a background save failed and nobody waited for it ({reason}); the previous checkpoint "
            "is still the latest: call mgr.wait() or mgr.close() at the end of training to see such errors")


def _finish_at_exit() -> None:
    """At interpreter exit: finish the saves in flight, then report failures nobody collected."""
    for saver in list(_LIVE):
        saver.finish_at_exit()


def _register_exit_hook() -> None:
    """Run ``_finish_at_exit`` before concurrent.futures shuts its executors down at exit (the writer's
    hashing pool, DCP's): after that a save still in flight could not submit work and would fail.
    ``threading._register_atexit`` hooks run before the interpreter joins its threads, newest first."""
    import concurrent.futures.thread  # noqa: F401 - its hook is registered first, so ours runs before it

    register = getattr(threading, "_register_atexit", None)
    if register is None:
        atexit.register(_finish_at_exit)
        return
    try:
        register(_finish_at_exit)
    except RuntimeError:  # the interpreter is shutting down already
        atexit.register(_finish_at_exit)


# -- the ranks agree on the outcome --------------------------------------------------------


def agree(ranks: Ranks, error: BaseException | None) -> None:
    """Raise rank 0's error on every rank (a collective when distributed; on the caller's thread only)."""
    if ranks.distributed:
        text = (str(error) or type(error).__name__) if error is not None and ranks.rank == 0 else None
        message = ranks.broadcast(text)
        if message is not None and error is None:
            error = CheckpointWriteError(f"rank 0 could not save: {message}")
    if error is not None:
        raise error


_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """A BackgroundSaveWarning shown once per process (the sharded fallback on an old torch)."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    from envkit.errors import warn_at_caller

    warn_at_caller(message, BackgroundSaveWarning)


__all__ = ["BackgroundSaver", "Outcome", "StagedSave", "Stager", "agree", "lost_save_message", "warn_once"]
