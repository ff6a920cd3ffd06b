"""Pieces the benchmark worker processes share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# The floor for reading a stamp: the standard library alone, in a whole process
# (34 ms on the reference machine, where `python -c pass` takes 11 ms).
STDLIB_READER = (
    "import json, sys, zipfile\n"
    "with zipfile.ZipFile(sys.argv[1]) as z:\n"
    "    json.loads(z.read(next(n for n in z.namelist() if n.endswith('/extra/envkit.json'))))\n"
)
REFERENCE_STDLIB_READER_S = 0.034


def fresh_bytecode() -> None:
    """Compile envkit's modules as an installed package has them. ``-f``: compileall's own
    staleness test reads only the source mtime (seconds), so a file edited within the same
    second as its last compile would otherwise be compiled again by every timed process."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-f", str(ROOT / "envkit")], check=True, stdout=subprocess.DEVNULL)


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
