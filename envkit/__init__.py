"""envkit: environments as code, and checkpoints that know where they came from.

    import envkit
    envkit.save(state, "ckpt.pth", meta={"epoch": 3})   # instead of torch.save
    state = envkit.load("ckpt.pth")                       # guard + verify + torch.load
    envkit.guard("ckpt.pth")                              # before load_state_dict

Attributes are imported on first use, so ``import envkit`` stays cheap.
"""

from __future__ import annotations

import importlib

from envkit.errors import (
    BadInput,
    CheckFailed,
    CheckpointDirLocked,
    CheckpointSkippedWarning,
    CorruptCheckpoint,
    EnvironmentDriftWarning,
    EnvironmentMismatch,
    EnvkitError,
    EphemeralDirectoryWarning,
    MissingStateWarning,
    RankRngWarning,
)

__version__ = "0.1.0"

TYPE_CHECKING = False  # typing is not imported at run time: `import envkit` stays cheap
if TYPE_CHECKING:
    from typing import Any

_LAZY = {
    "fingerprint": ("envkit.fingerprint", None),
    "Fingerprint": ("envkit.fingerprint", "Fingerprint"),
    "collect": ("envkit.fingerprint", "collect"),
    "save": ("envkit.checkpoint", "save"),
    "load": ("envkit.checkpoint", "load"),
    "guard": ("envkit.checkpoint", "guard"),
    "check": ("envkit.checkpoint", "check"),
    "read_stamp": ("envkit.checkpoint", "read_stamp"),
    "inspect_checkpoint": ("envkit.checkpoint", "inspect_checkpoint"),
    "verify": ("envkit.checkpoint", "verify"),
    "stamp_folder": ("envkit.checkpoint", "stamp_folder"),
    "checkpoint_folders": ("envkit.checkpoint", "checkpoint_folders"),
    "Stamp": ("envkit.checkpoint", "Stamp"),
    "Policy": ("envkit.policy", "Policy"),
    "CheckpointManager": ("envkit.checkpoint.manager", "CheckpointManager"),
    "ResumeInfo": ("envkit.checkpoint.manager", "ResumeInfo"),
    "CheckpointInfo": ("envkit.checkpoint.directory", "CheckpointInfo"),
    "ResumableRandomSampler": ("envkit.checkpoint.sampler", "ResumableRandomSampler"),
}

__all__ = [
    "BadInput",
    "CheckpointDirLocked",
    "EphemeralDirectoryWarning",
    "CheckFailed",
    "CheckpointSkippedWarning",
    "CorruptCheckpoint",
    "EnvironmentDriftWarning",
    "EnvironmentMismatch",
    "EnvkitError",
    "MissingStateWarning",
    "RankRngWarning",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'envkit' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
