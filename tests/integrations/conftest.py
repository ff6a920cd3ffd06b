"""The frameworks change process-wide state that envkit fingerprints: put it back after each test.

``lightning.Trainer(deterministic=True)`` calls ``torch.use_deterministic_algorithms(True)`` and sets
``CUBLAS_WORKSPACE_CONFIG``; left behind, every later in-process ``envkit check`` would see another
runtime than a fresh process does (tests/test_check_command.py compares the two).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def _state() -> tuple[bool, bool, tuple[bool, bool], str | None]:
    import torch

    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


BEFORE = _state()  # at collection, before any fixture (module-scoped ones train a reference run) changes it


@pytest.fixture(autouse=True, scope="module")
def _restore_determinism() -> Iterator[None]:
    """Module scope, set up before the modules' own module fixtures and torn down after them."""
    yield
    import torch

    algorithms, warn_only, cudnn, workspace = BEFORE
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace
