"""envkit for ``accelerate.Accelerator``: ``save_state`` folders stamped, ``load_state`` guarded first.

    from envkit.integrations.accelerate import attach

    accelerator = Accelerator(...)
    attach(accelerator)                     # once, after the Accelerator is made
    accelerator.save_state("ckpt/step-100")  # stamped when it returns
    accelerator.load_state("ckpt/step-100")  # verify + guard before anything is restored

How it fits Accelerate's own order (``Accelerator.save_state``/``load_state``, 0.16 to 1.x):

- ``save_state`` runs the save pre-hooks after it has chosen the folder (automatic checkpoint
  naming included) and before ``save_accelerator_state`` writes a file. There is no post-hook,
  so the stamp cannot be written from a hook: the pre-hook records the folder and removes a
  stale ``envkit.json`` left there by an earlier save into the same folder (from then on the
  folder reads as an interrupted save until it is stamped again), and ``attach`` wraps
  ``save_state`` on this one instance to stamp the recorded folder when the original returns:
  after the weights, optimizer, scheduler, sampler, scaler, RNG files and the registered custom
  objects are all written. In a multi-process run every rank writes its ``random_states_<i>.pkl``
  without a barrier, so the wrapper waits for every rank, the main process (each node's with
  ``save_on_each_node``) stamps, and all wait again before returning.
- ``load_state`` runs the load pre-hooks after choosing the folder and before
  ``load_accelerator_state`` restores the models, optimizers, schedulers, samplers, scaler and
  RNG: the hook verifies every file against the stamp and runs the guard there, so a refused or
  corrupt folder raises EnvironmentMismatch / CorruptCheckpoint with nothing restored. (Under
  FSDP, DeepSpeed and Megatron-LM, Accelerate loads their models before the hooks run: call
  ``guard_resume(folder)`` before ``load_state`` there.)
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from envkit.errors import MissingExtra

if importlib.util.find_spec("accelerate") is None:
    raise MissingExtra("envkit.integrations.accelerate needs accelerate; install it with `pip install 'envkit[transformers]'`")

import accelerate

from envkit.checkpoint.folder import stamp_folder
from envkit.checkpoint.folder_format import STAMP_NAME
from envkit.checkpoint.integrity import verify
from envkit.checkpoint.resume_check import guard
from envkit.errors import CorruptCheckpoint
from envkit.integrations.resume import guard_resume

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from envkit.checkpoint.stamp import Stamp
    from envkit.policy import Policy

__all__ = ["Attachment", "attach", "guard_load", "guard_resume"]



def guard_load(folder: str | os.PathLike[str], policy: Policy | str | None = None) -> None:
    """Verify every file of a ``save_state`` folder against its stamp, then the guard; raise before anything loads.

    An unstamped folder is not corruption: the guard grades it (a warning under the default
    policy, a refusal under ``strict``)."""
    result = verify(folder)
    if result.status in ("corrupt", "unreadable"):
        raise CorruptCheckpoint(f"{result.problem or folder}; load an earlier checkpoint (guard_resume(the folder above) picks the newest that verifies)")
    guard(folder, policy)


def save_meta(folder: Path, accelerator: Any) -> dict[str, Any]:
    """The stamp's meta for a ``save_state`` folder: ``step`` is the last number in the folder's name
    (how Accelerate orders ``checkpoint_<n>`` itself), else the save's iteration; ``iteration`` is the
    save's number in this run (``project_configuration.iteration``, counted up by ``save_state``)."""
    iteration = int(accelerator.save_iteration) - 1
    numbers = re.findall(r"[0-9]+", folder.name)
    return {"step": int(numbers[-1]) if numbers else iteration, "iteration": iteration}


def _saves_here(accelerator: Any) -> bool:
    on_each_node = getattr(getattr(accelerator, "project_configuration", None), "save_on_each_node", False)
    return bool(accelerator.is_local_main_process if on_each_node else accelerator.is_main_process)


@dataclass
class Attachment:
    """What ``attach`` did to one Accelerator; ``detach()`` undoes all of it."""

    accelerator: Any
    handles: tuple[Any, ...]  # the hooks' torch RemovableHandles (save pre-hook, load pre-hook)
    policy: Policy | str | None = None
    fsync: bool = False
    last: Stamp | None = None  # the stamp of the newest save_state
    _pending: list[Path] = field(default_factory=list)

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        if getattr(self.accelerator.save_state, "_envkit_attachment", None) is self:
            del self.accelerator.save_state  # the instance attribute: Accelerator.save_state shows again


def attach(accelerator: accelerate.Accelerator, policy: Policy | str | None = None, *, fsync: bool = False) -> Attachment:
    """Stamp every ``accelerator.save_state`` folder and guard every ``accelerator.load_state``.

    ``policy``: for the load hook's guard. ``fsync``: make every file durable before the stamp
    (Accelerate never fsyncs; off, as in ``stamp_folder``: a power cut can leave a stamp over torn
    files, which the load hook's verify then refuses as corrupt).

    Returns an ``Attachment``: ``.handles`` are the two hooks' RemovableHandles, ``.detach()``
    removes them and the ``save_state`` wrapper. Attaching twice is refused (the folder would be
    stamped twice)."""
    if getattr(accelerator.save_state, "_envkit_attachment", None) is not None:
        from envkit.errors import BadInput

        raise BadInput("envkit is already attached to this Accelerator; call attach() once (or .detach() the first)")
    attachment = Attachment(accelerator, (), policy, fsync)

    def before_save(models: list[Any], weights: list[Any], output_dir: str) -> None:
        folder = Path(output_dir)
        attachment._pending.append(folder)
        if _saves_here(accelerator):
            try:
                os.unlink(folder / STAMP_NAME)  # an earlier save's stamp would vouch for files about to change
            except FileNotFoundError:
                pass

    def before_load(models: list[Any], input_dir: str) -> None:
        guard_load(input_dir, attachment.policy)

    original: Callable[..., Any] = accelerator.save_state

    def save_state(*args: Any, **kwargs: Any) -> Any:
        attachment._pending.clear()
        location = original(*args, **kwargs)
        folder = attachment._pending[-1] if attachment._pending else (Path(location) if location is not None else None)
        attachment._pending.clear()
        if folder is None:
            return location
        accelerator.wait_for_everyone()  # every rank's random_states_<i>.pkl is written
        if _saves_here(accelerator):
            attachment.last = stamp_folder(folder, meta=save_meta(folder, accelerator), framework="accelerate",
                                           fsync=attachment.fsync)
        accelerator.wait_for_everyone()  # no rank returns before the folder is committed
        return location

    save_state._envkit_attachment = attachment  # type: ignore[attr-defined]
    save_state.__doc__ = original.__doc__
    attachment.handles = (
        accelerator.register_save_state_pre_hook(before_save),
        accelerator.register_load_state_pre_hook(before_load),
    )
    accelerator.save_state = save_state
    return attachment
