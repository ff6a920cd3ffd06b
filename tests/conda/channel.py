"""Real local conda channels for the tests: the package-building code lives in examples/local_channel.py
(the demo builds its channels with it too); see there for how the pytorch packages mirror the real
pytorch channel's dependency structure (tests/data/pytorch-channel-py311-linux-64.json)."""

from __future__ import annotations

from examples.local_channel import (
    CPU_BUILD,
    CUDA_BUILD,
    PLATFORMS,
    Pkg,
    build_channel,
    reference_channels,
    reference_packages,
    write_package,
)

__all__ = ["CPU_BUILD", "CUDA_BUILD", "PLATFORMS", "Pkg", "build_channel", "reference_channels", "reference_packages", "write_package"]
