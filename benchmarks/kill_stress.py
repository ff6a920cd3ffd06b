"""A longer kill -9 stress run than the test suite's 50: `python benchmarks/kill_stress.py --kills 500 [--async-save]`.

A forked child saves checkpoints in a loop through CheckpointManager; the parent
SIGKILLs it at a random moment, then checks that every file under a final name
verifies and that latest() returns a checkpoint that verifies and loads, with a step
that never goes backwards.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.checkpoint.test_reliability import _assert_folder_whole, _save_forever


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-delay", type=float, default=0.6, help="longest wait before a kill, seconds")
    parser.add_argument("--async-save", action="store_true", help="the child saves with async_save=True")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 512))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 512)).sum().backward()
    opt.step()
    ctx = multiprocessing.get_context("fork")
    last_step, started = 0, time.time()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1]) as folder:
        for kill in range(1, args.kills + 1):
            child = ctx.Process(target=_save_forever, args=(folder, model, opt, args.async_save), daemon=True)
            child.start()
            time.sleep(rng.random() * args.max_delay)
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
            if any(Path(folder).glob("*.pth")):
                step = _assert_folder_whole(Path(folder))
                assert step >= last_step, f"latest() went back from step {last_step} to {step}"
                last_step = step
            if kill % 50 == 0:
                print(f"{kill} kills, latest step {last_step}, {time.time() - started:.0f} s", flush=True)
        temps = [p.name for p in Path(folder).iterdir() if ".tmp-" in p.name]
    print(f"ok: {args.kills} kills, every final file whole, latest() never lost a step (last {last_step}); "
          f"{len(temps)} temporary files left for the next manager to clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
