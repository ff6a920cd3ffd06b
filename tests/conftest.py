from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

has_torch = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not has_torch, reason="needs torch")


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def stamped(tmp_path: Path) -> Path:
    """A small stamped checkpoint written by envkit.save."""
    torch = pytest.importorskip("torch")
    import envkit

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    path = tmp_path / "ckpt.pth"
    envkit.save(
        {"model_state_dict": model.state_dict(), "epoch": 2},
        path,
        meta={"epoch": 2, "step": 20, "metrics": {"loss": 0.25}},
    )
    return path
