"""Distributed benchmarks on CPU (gloo): the start-up consistency check, and sharded against single-file saves.

    python benchmarks/distributed.py                       # both, 2 and 4 ranks, 2 GB
    python benchmarks/distributed.py --only save --size-gb 0.5

- consistency: ``world`` real processes join through a TCP store; each times
  ``init_process_group`` and then ``check_consistency()`` (fingerprint collection and the
  all-gather of digests) right after it returns. Per launch the slowest rank counts (the job
  waits for it); the figure is the median over ``--launches`` launches. Target: <= 50 ms on
  top of the process-group start.
- save: the same total state (``--size-gb`` of float32, 16 tensors) saved once by a
  single-process ``CheckpointManager`` (one stamped file) and once by a 2-rank
  ``CheckpointManager(sharded=True)`` where each rank holds half (distinct keys, so DCP
  writes each half once, from its own rank). Each save is timed inside its processes, from
  a barrier to the return of ``save`` (every rank returns once the checkpoint is committed);
  the slowest rank counts. Medians of ``--runs``, alternating the order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_results

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1800

CONSISTENCY_WORKER = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {root!r})
import torch, torch.distributed as dist
from envkit.distributed import check_consistency
rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=rank, world_size=world)
t1 = time.perf_counter()
report = check_consistency()
t2 = time.perf_counter()
assert report.ok and report.world_size == world
print(json.dumps({{"rank": rank, "init_s": t1 - t0, "check_s": t2 - t1}}), flush=True)
dist.destroy_process_group()
"""

SAVE_WORKER = r"""
import json, os, sys, time, warnings
warnings.simplefilter("ignore")
sys.path[:0] = [{root!r}, {bench!r}]
import torch, torch.distributed as dist
import envkit, envkit.checkpoint.manager, envkit.checkpoint.sharded, envkit.fingerprint
from common import tensors_of
mode, rank, world, port, folder, size_gb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
sharded = mode == "sharded"
if sharded:
    import torch.distributed.checkpoint  # imported once per job, before its first save; not what is measured
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=rank, world_size=world)
part = tensors_of(size_gb / world if sharded else size_gb, pieces=16 // world if sharded else 16)
model = torch.nn.ParameterDict({{f"r{{rank}}_" + k.replace(".", "_"): torch.nn.Parameter(v) for k, v in part.items()}})
mgr = envkit.CheckpointManager(folder, project="bench", keep_last=1, keep_best=0, sharded=sharded)
mgr._fingerprint = envkit.fingerprint.collect()  # collected once per run in real use; not what is measured here
mgr._consistent = True
os.sync()
if sharded:
    dist.barrier()
t = time.perf_counter()
mgr.save(epoch=0, step=1, model=model)
elapsed = time.perf_counter() - t
print(json.dumps({{"rank": rank, "save_s": elapsed}}), flush=True)
mgr.close()
if sharded:
    dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_world(script: str, world: int, args_for: Any) -> list[dict[str, Any]]:
    """One process per rank, all at once; each prints one JSON line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([PY, "-c", script, *args_for(r)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(world)]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT_S)
            if p.returncode != 0:
                raise SystemExit(f"a rank failed (exit {p.returncode}):\n{stderr[-3000:]}")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def bench_consistency(worlds: list[int], launches: int) -> dict[str, dict[str, float]]:
    script = CONSISTENCY_WORKER.format(root=str(ROOT))
    results: dict[str, dict[str, float]] = {}
    for world in worlds:
        checks, inits = [], []
        for _ in range(launches):
            port = free_port()
            ranks = run_world(script, world, lambda r, world=world, port=port: [str(r), str(world), str(port)])
            checks.append(max(x["check_s"] for x in ranks))
            inits.append(max(x["init_s"] for x in ranks))
        results[f"{world} ranks, median of {launches} launches (max over ranks)"] = {
            "check_consistency() after init": statistics.median(checks),
            "init_process_group (context)": statistics.median(inits),
        }
        print(f"  {world} ranks: check_consistency per launch (ms): {', '.join(f'{c * 1000:.1f}' for c in checks)}; "
              f"init (ms): {', '.join(f'{i * 1000:.0f}' for i in inits)}", flush=True)
    return results


def bench_save(size_gb: float, runs: int, folder: Path) -> dict[str, float]:
    script = SAVE_WORKER.format(root=str(ROOT), bench=str(ROOT / "benchmarks"))
    times: dict[str, list[float]] = {"single": [], "sharded": []}
    for i in range(runs):
        for mode in (("single", "sharded") if i % 2 == 0 else ("sharded", "single")):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            world = 2 if mode == "sharded" else 1
            port = free_port()
            ranks = run_world(script, world, lambda r, mode=mode, world=world, port=port: [mode, str(r), str(world), str(port), str(folder), str(size_gb)])
            times[mode].append(max(x["save_s"] for x in ranks))
            print(f"  run {i + 1} {mode}: {times[mode][-1] * 1000:.0f} ms", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    single, sharded = statistics.median(times["single"]), statistics.median(times["sharded"])
    return {
        f"single-file CheckpointManager.save, 1 process, {size_gb:g} GB": single,
        f"sharded save, 2 ranks x {size_gb / 2:g} GB": sharded,
        "ratio sharded / single-file": sharded / single,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("consistency", "save"))
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / "bench-out" / "ddp", help="where the saves go (persistent disk)")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    if args.only in (None, "consistency"):
        print("consistency check at start-up ...", flush=True)
        results.update(bench_consistency(args.worlds, args.launches))
    if args.only in (None, "save"):
        print(f"sharded vs single-file save, {args.size_gb:g} GB ...", flush=True)
        results[f"save {args.size_gb:g} GB, median of {args.runs} (slowest rank)"] = bench_save(args.size_gb, args.runs, args.dir)
    print_results("benchmarks/distributed.py (gloo, CPU)", results, width=52)
    return 0


if __name__ == "__main__":
    sys.exit(main())
