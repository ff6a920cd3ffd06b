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
        assert not result.ok, offset
    stamped.write_bytes(original)
    assert envkit.verify(stamped).ok


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncation_is_caught(stamped: Path, keep: float) -> None:
    data = stamped.read_bytes()
    stamped.write_bytes(data[: int(len(data) * keep)])
    result = envkit.verify(stamped)
    assert not result.ok and str(stamped) in result.problem


def test_unstamped_file_cannot_verify(data_dir: Path) -> None:
    result = envkit.verify(data_dir / "gpu-h200-cuda_saved.pth")
    assert not result.ok and "no envkit stamp" in result.problem


def test_missing_file_is_a_result_not_an_exception(tmp_path: Path) -> None:
    result = envkit.verify(tmp_path / "nope.pth")
    assert not result.ok and "no such file" in result.problem
