"""``envkit trial`` of a big checkpoint against that environment's bare ``torch.load`` (issue 14).

    python benchmarks/trial.py                                  # 2 GB, the other environment = this venv
    python benchmarks/trial.py --other .venv-torch20/bin/python # torch 2.0.1 as the other environment
    python benchmarks/trial.py --size-gb 0.5 --runs 7

Target: the whole ``envkit trial CKPT --python OTHER`` process <= 1.3x the whole
``OTHER -c "import torch; torch.load(CKPT, weights_only=True, map_location='cpu')"`` process
(medians, interleaved, page cache warm for both: one untimed run of each first). The
checkpoint is stamped by ``envkit.save`` (16 float32 tensors), so trial compares with the
stamp's storage digests and starts one child.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fresh_bytecode, print_results

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent

MAKE = r"""
import sys
sys.path[:0] = [{root!r}, {bench!r}]
import envkit
from common import tensors_of
envkit.save(tensors_of(float(sys.argv[2])), sys.argv[1], meta={{"epoch": 1, "step": 1}})
"""
BARE = "import sys, torch; torch.load(sys.argv[1], weights_only=True, map_location='cpu')"


def timed(cmd: list[str], expect: int = 0) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    elapsed = time.perf_counter() - t
    if done.returncode != expect:
        sys.exit(f"benchmark: {' '.join(cmd[:4])} ... exited {done.returncode}: {done.stderr.decode()[-400:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--other", default=PY, help="the other environment's python (default: this one)")
    parser.add_argument("--checkpoint", type=Path, help="use (or write, if missing) this checkpoint")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    fresh_bytecode()
    with tempfile.TemporaryDirectory(dir=ROOT / "bench-out" if (ROOT / "bench-out").is_dir() else None) as work:
        ckpt = args.checkpoint or Path(work) / "big.pth"
        if not ckpt.exists():
            print(f"writing a stamped {args.size_gb:g} GiB checkpoint to {ckpt} ...", flush=True)
            subprocess.run([PY, "-c", MAKE.format(root=str(ROOT), bench=str(BENCH)), str(ckpt), str(args.size_gb)], check=True)
        candidates = {
            "bare torch.load there": [args.other, "-c", BARE, str(ckpt)],
            "envkit trial --python there": [PY, "-m", "envkit", "trial", str(ckpt), "--python", args.other],
        }
        size = ckpt.stat().st_size
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for cmd in candidates.values():
            timed(cmd)  # warm: the page cache holds the file for both
        for i in range(args.runs):
            order = list(candidates) if i % 2 == 0 else list(reversed(candidates))
            for name in order:
                times[name].append(timed(candidates[name]))
    m = {name: statistics.median(values) for name, values in times.items()}
    m["ratio trial/bare (target <= 1.3)"] = m["envkit trial --python there"] / m["bare torch.load there"]
    other = subprocess.run([args.other, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True).stdout.strip()
    title = f"medians of {args.runs} whole processes; {size / 2**30:.2f} GiB; other: {args.other} (torch {other})"
    print_results(title, {"trial": m}, width=44)
    if args.json:
        args.json.write_text(json.dumps({"bytes": size, "other": args.other, "torch": other, "runs": times, "medians": m}, indent=2))


if __name__ == "__main__":
    main()
