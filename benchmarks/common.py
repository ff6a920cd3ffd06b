"""Pieces the benchmark worker processes share."""

from __future__ import annotations

import os
from typing import Any


def tensors_of(size_gb: float, pieces: int = 16) -> dict[str, Any]:
    """``pieces`` float32 tensors, ``size_gb`` GiB together, filled from a fixed seed."""
    import torch

    per = int(size_gb * 2**30 / 4 / pieces)
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.empty(per).uniform_(generator=g) for i in range(pieces)}


def torch_save_fsync(obj: Any, path: str) -> None:
    """The anchor: what a careful user does without envkit."""
    import torch

    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def print_results(title: str, results: dict[str, dict[str, float]], width: int = 42) -> None:
    """Medians in ms, ratios as NNx, grouped."""
    print(f"\n{title}")
    for group, rows in results.items():
        print(f"\n[{group}]")
        for name, value in rows.items():
            shown = f"{value:8.2f}x" if name.startswith("ratio") else f"{value * 1000:8.1f} ms"
            print(f"  {name:{width}s} {shown}")
