"""examples/train.py, the loop of the README, run for real in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"
REFERENCE = ROOT / "examples" / "reference-torch20-cu118.fingerprint.json"


def train(ckpt_dir: Path, epochs: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TRAIN), "--ckpt-dir", str(ckpt_dir), "--epochs", str(epochs), *extra],
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(straight, 4).returncode == 0
    assert train(resumed, 2).returncode == 0
    second = train(resumed, 4)
    assert second.returncode == 0 and "resumed from" in second.stdout
    a = torch.load(straight / "last.pth", weights_only=True)
    b = torch.load(resumed / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][key]), key


@pytest.mark.slow
def test_guard_in_the_script_refuses_a_foreign_environment(tmp_path: Path) -> None:
    assert train(tmp_path, 1).returncode == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    refused = train(tmp_path, 3, "--as-environment", str(REFERENCE))
    assert refused.returncode == 3
    assert "refusing to resume" in refused.stderr and "torch.version" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
