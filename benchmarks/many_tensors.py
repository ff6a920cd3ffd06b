"""Cost against the number of tensors (issue 10, item 13); prints medians and ratios.

    python benchmarks/many_tensors.py                       # 200,000-tensor check/inspect/ls, 100,000-tensor save
    python benchmarks/many_tensors.py --root /path/to/other/checkout   # the same, timing another envkit tree
    python benchmarks/many_tensors.py --only save --save-runs 9

Targets (ratios, so that the machine's speed cancels out):
- ``envkit check --json`` of a stamped 200,000-tensor checkpoint <= 1.5x the same command on
  a stamped 1-tensor one (whole processes, interleaved, medians);
- ``envkit.save`` of 100,000 small tensors <= 1.05x ``torch.save`` + fsync of the same dict
  (in one process, alternating, medians; each run starts after ``os.sync()``).
``envkit inspect`` and ``envkit ls`` of the big checkpoint (its folder) are timed too, against
the same commands on the 1-tensor one, and ``python -c pass`` as the floor.
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
sys.path[:0] = [{root!r}]
import torch, envkit
n, path = int(sys.argv[1]), sys.argv[2]
envkit.save({{f"layer{{i}}.weight": torch.full((2,), float(i)) for i in range(n)}}, path, meta={{"epoch": 1, "step": n}})
"""

SAVE_WORKER = r"""
import json, os, statistics, sys, time
sys.path[:0] = [{root!r}, {bench!r}]
import torch, envkit, envkit.checkpoint.writer, envkit.fingerprint
from common import torch_save_fsync
n, runs, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
state = {{f"layer{{i}}.weight": torch.full((4,), float(i)) for i in range(n)}}
envkit.save(state, os.path.join(work, "warm-e.pth")); torch_save_fsync(state, os.path.join(work, "warm-t.pth"))
times = {{"torch.save + fsync": [], "envkit.save": []}}
for i in range(runs):
    order = ["torch.save + fsync", "envkit.save"] if i % 2 == 0 else ["envkit.save", "torch.save + fsync"]
    for name in order:
        target = os.path.join(work, f"save-{{i}}.pth")
        os.sync()
        t = time.perf_counter()
        if name == "envkit.save":
            envkit.save(state, target, meta={{"epoch": 1, "step": i}})
        else:
            torch_save_fsync(state, target)
        times[name].append(time.perf_counter() - t)
        os.unlink(target)
print(json.dumps(times))
"""


def _env(root: Path) -> dict[str, str]:
    """Run from root too: ``python -m`` puts the working folder ahead of PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": str(root)}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=env["PYTHONPATH"], check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"benchmark command failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr.decode()[-2000:]}")
    return elapsed


def medians(candidates: dict[str, list[str]], runs: int, env: dict[str, str]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Interleaved: run i of every candidate before run i+1 of any; one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for cmd in candidates.values():
        timed(cmd, env)
    for _ in range(runs):
        for name, cmd in candidates.items():
            times[name].append(timed(cmd, env))
    return {name: statistics.median(v) for name, v in times.items()}, times


def make(root: Path, n: int, path: Path) -> None:
    if not path.exists():
        print(f"writing a stamped {n:,}-tensor checkpoint to {path} ...", flush=True)
        subprocess.run([PY, "-c", MAKE.format(root=str(root)), str(n), str(path)], check=True, env=_env(root), cwd=root)


def bench_read(root: Path, work: Path, tensors: int, runs: int, slow_runs: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    big_dir, one_dir = work / "big", work / "one"
    big_dir.mkdir(exist_ok=True)
    one_dir.mkdir(exist_ok=True)
    big, one = big_dir / "big.pth", one_dir / "one.pth"
    make(root, tensors, big)
    make(root, 1, one)
    envkit = [PY, "-m", "envkit"]
    env = _env(root)
    m, raw = medians(
        {
            f"check --json, {tensors:,} tensors": [*envkit, "check", "--json", str(big)],
            "check --json, 1 tensor": [*envkit, "check", "--json", str(one)],
            "python -c pass": [PY, "-c", "pass"],
        },
        runs,
        env,
    )
    slow, raw_slow = medians(
        {
            f"inspect, {tensors:,} tensors": [*envkit, "inspect", str(big)],
            "inspect, 1 tensor": [*envkit, "inspect", str(one)],
            f"ls of the folder, {tensors:,} tensors": [*envkit, "ls", str(big_dir)],
            "ls of the folder, 1 tensor": [*envkit, "ls", str(one_dir)],
        },
        slow_runs,
        env,
    )
    m.update(slow)
    m["ratio check big/one (target <= 1.5)"] = m[f"check --json, {tensors:,} tensors"] / m["check --json, 1 tensor"]
    m["ratio inspect big/one"] = m[f"inspect, {tensors:,} tensors"] / m["inspect, 1 tensor"]
    m["ratio ls big/one"] = m[f"ls of the folder, {tensors:,} tensors"] / m["ls of the folder, 1 tensor"]
    return m, {**raw, **raw_slow}


def bench_save(root: Path, work: Path, tensors: int, runs: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    worker = SAVE_WORKER.format(root=str(root), bench=str(BENCH))
    out = subprocess.run([PY, "-c", worker, str(tensors), str(runs), str(work)], check=True, capture_output=True, text=True, env=_env(root), cwd=root)
    times: dict[str, list[float]] = json.loads(out.stdout.strip().splitlines()[-1])
    m = {f"{name}, {tensors:,} tensors": statistics.median(v) for name, v in times.items()}
    m["ratio envkit/torch (target <= 1.05)"] = m[f"envkit.save, {tensors:,} tensors"] / m[f"torch.save + fsync, {tensors:,} tensors"]
    return m, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the envkit source tree to time (default: this checkout)")
    parser.add_argument("--tensors", type=int, default=200_000, help="tensors in the checkpoint check, inspect and ls read")
    parser.add_argument("--save-tensors", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15, help="runs of check and the floor")
    parser.add_argument("--slow-runs", type=int, default=5, help="runs of inspect and ls")
    parser.add_argument("--save-runs", type=int, default=7)
    parser.add_argument("--only", choices=["read", "save"])
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoints (default: a temporary folder under the repo)")
    parser.add_argument("--json", type=Path, help="also write the figures (medians, ratios and every run) to this JSON file")
    args = parser.parse_args()

    root = args.root.resolve()
    if root == ROOT:
        fresh_bytecode()
    else:
        subprocess.run([PY, "-m", "compileall", "-q", "-f", str(root / "envkit")], check=True, stdout=subprocess.DEVNULL)
    results: dict[str, dict[str, float]] = {}
    raw: dict[str, dict[str, list[float]]] = {}
    base = args.workdir or ROOT / "bench-out"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        work = Path(tmp)
        if args.only in (None, "read"):
            results["read"], raw["read"] = bench_read(root, work, args.tensors, args.runs, args.slow_runs)
        if args.only in (None, "save"):
            results["save"], raw["save"] = bench_save(root, work, args.save_tensors, args.save_runs)

    title = f"medians; {args.runs} runs of check, {args.slow_runs} of inspect/ls, {args.save_runs} of save; {os.cpu_count()} cores; envkit from {root}"
    print_results(title, results, 48)
    if args.json:
        doc = {"root": str(root), "cores": os.cpu_count(), "python": sys.version.split()[0],
               "args": {k: str(v) for k, v in vars(args).items()}, **results, "runs": raw}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
