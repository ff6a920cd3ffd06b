"""Capture and restore the parts of a training run that are not module parameters.

Everything captured here loads with ``torch.load(weights_only=True)`` on torch 2.0.1:
tensors, and plain Python data (numpy's RNG state becomes lists of ints).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch

MODULE_PREFIXES = ("module.", "_orig_mod.")


def unwrap(model: Any) -> Any:
    """The module under DDP / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def model_state(model: Any) -> dict[str, Any]:
    return unwrap(model).state_dict()


def load_model_state(model: Any, state: Mapping[str, Any]) -> None:
    """Load into the unwrapped module, accepting keys with or without a DDP ``module.`` prefix."""
    cleaned = dict(state)
    for prefix in MODULE_PREFIXES:
        if cleaned and all(k.startswith(prefix) for k in cleaned):
            cleaned = {k[len(prefix) :]: v for k, v in cleaned.items()}
    unwrap(model).load_state_dict(cleaned)


def capture_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
        # A process that never touched CUDA has no CUDA streams to save; asking would create a context.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": None,
    }
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([c.cpu() for c in cuda[: torch.cuda.device_count()]])
    if state.get("numpy") is not None:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
