"""`make demo-ddp`: 2 CPU ranks under torchrun, SIGTERM to one rank, the same command resumes.

The final weights are compared with an uninterrupted 2-rank run: they must be equal, bit for bit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "demo-runs" / "ddp"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
KILL_AFTER_STEP = 9


def train(folder: Path, out: Path, *, kill_rank: int | None = None) -> int:
    command = [*TORCHRUN, str(ROOT / "examples" / "train_ddp.py"), "--dir", str(folder), "--out", str(out),
               "--epochs", "2", "--step-delay", "0.05"]
    print(f"$ torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --dir {folder.relative_to(ROOT)} ...", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: dict[int, int] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.match(r"rank (\d+) pid (\d+)", line):
            pids[int(m.group(1))] = int(m.group(2))
        if line.startswith(("rank", "resumed")) or (line.startswith("step") and int(line.split()[1]) % 8 == 0):
            print("   " + line.rstrip(), flush=True)
        if kill_rank is not None and line.startswith(f"step {KILL_AFTER_STEP} "):
            print(f"   >>> kill -TERM {pids[kill_rank]}  (rank {kill_rank} only)", flush=True)
            os.kill(pids[kill_rank], signal.SIGTERM)
            kill_rank = None
    return proc.wait()


def main() -> int:
    import torch

    shutil.rmtree(RUNS, ignore_errors=True)
    RUNS.mkdir(parents=True)
    print("\n=== 1. an uninterrupted 2-rank run", flush=True)
    if train(RUNS / "whole", RUNS / "whole.pt") != 0:
        return 1
    print("\n=== 2. the same run, SIGTERM to rank 1 mid-epoch: every rank saves the same step and exits 143", flush=True)
    code = train(RUNS / "preempted", RUNS / "resumed.pt", kill_rank=1)
    print(f"(torchrun exit {code}: its workers exited 143 after saving)", flush=True)
    if code == 0:
        print("demo-ddp: the signal came too late to interrupt the run", file=sys.stderr)
        return 1
    print("\n=== 3. the same command resumes every rank from the checkpoint rank 0 picks", flush=True)
    if train(RUNS / "preempted", RUNS / "resumed.pt") != 0:
        return 1
    a = torch.load(RUNS / "whole.pt", weights_only=True)
    b = torch.load(RUNS / "resumed.pt", weights_only=True)
    same = a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    same = same and all(
        torch.equal(x[n], b["optimizer"]["state"][k][n]) for k, x in a["optimizer"]["state"].items() for n in x
    )
    print(f"\nfinal weights equal to the uninterrupted run: {same} (step {b['step']})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
