"""Stamped checkpoints: the safe reader, the atomic writer, verify, the guard and the manager.

Names are imported on first use, so that ``envkit check`` loads only what it runs.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_LAZY = {
    "CheckReport": "envkit.checkpoint.resume_check",
    "check": "envkit.checkpoint.resume_check",
    "guard": "envkit.checkpoint.resume_check",
    "load": "envkit.checkpoint.resume_check",
    "CheckpointFile": "envkit.checkpoint.reader",
    "Inspection": "envkit.checkpoint.reader",
    "inspect_checkpoint": "envkit.checkpoint.reader",
    "read_stamp": "envkit.checkpoint.reader",
    "Stamp": "envkit.checkpoint.stamp",
    "VerifyResult": "envkit.checkpoint.integrity",
    "verify": "envkit.checkpoint.integrity",
    "save": "envkit.checkpoint.writer",
    "CheckpointManager": "envkit.checkpoint.manager",
    "ResumeInfo": "envkit.checkpoint.manager",
    "CheckpointInfo": "envkit.checkpoint.index",
    "FolderEntry": "envkit.checkpoint.folder",
    "checkpoint_folders": "envkit.checkpoint.folder",
    "stamp_folder": "envkit.checkpoint.folder",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'envkit.checkpoint' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
