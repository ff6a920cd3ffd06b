"""Real wheels and a local PEP 503 index for the pip tests: the builder lives in examples/local_index.py,
which `make demo` uses too."""

from __future__ import annotations

from examples.local_index import (
    PIP_VARIABLES_CLEARED,
    Wheel,
    build_index,
    index_environment,
    use_index,
    write_wheel,
)

__all__ = ["PIP_VARIABLES_CLEARED", "Wheel", "build_index", "index_environment", "use_index", "write_wheel"]
