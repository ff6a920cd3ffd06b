from __future__ import annotations

import random
from pathlib import Path

import pytest

import envkit


def test_intact_file_verifies(stamped: Path) -> None:
    result = envkit.verify(stamped)
    assert result.ok and result.problem is None


def test_every_single_bit_flip_in_payload_is_caught(stamped: Path) -> None:
    original = stamped.read_bytes()
    length = envkit.read_stamp(stamped).stamp.payload.length
    rng = random.Random(7)
    for offset in rng.sample(range(length), 40):
        data = bytearray(original)
        data[offset] ^= 1 << rng.randrange(8)
        stamped.write_bytes(bytes(data))
        result = envkit.verify(stamped)
        assert result.status == "corrupt", offset
    stamped.write_bytes(original)
    assert envkit.verify(stamped).ok


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncation_is_caught(stamped: Path, keep: float) -> None:
    data = stamped.read_bytes()
    stamped.write_bytes(data[: int(len(data) * keep)])
    result = envkit.verify(stamped)
    assert result.status == "corrupt" and result.exit_code == 1 and str(stamped) in result.problem


def test_unstamped_file_is_unstamped_not_corrupt(data_dir: Path) -> None:
    result = envkit.verify(data_dir / "gpu-h200-cuda_saved.pth")
    assert (result.status, result.ok, result.exit_code) == ("unstamped", False, 0)
    assert "nothing to verify against" in result.problem and "envkit.save" in result.problem


def test_missing_file_is_unreadable_not_corrupt(tmp_path: Path) -> None:
    result = envkit.verify(tmp_path / "nope.pth")
    assert (result.status, result.exit_code) == ("unreadable", 2) and "no such file" in result.problem
    assert result.to_json()["status"] == "unreadable"
