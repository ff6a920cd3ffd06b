"""Stamped checkpoints: the safe reader, the atomic writer, verify and the guard."""

from envkit.checkpoint.compat import CheckReport, check, guard, load
from envkit.checkpoint.reader import CheckpointInfo, Inspection, inspect_checkpoint, read_stamp
from envkit.checkpoint.stamp import Stamp
from envkit.checkpoint.verify import VerifyResult, verify
from envkit.checkpoint.writer import save

__all__ = [
    "CheckReport",
    "CheckpointInfo",
    "Inspection",
    "Stamp",
    "VerifyResult",
    "check",
    "guard",
    "inspect_checkpoint",
    "load",
    "read_stamp",
    "save",
    "verify",
]
