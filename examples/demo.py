"""`make demo`: train, check, refuse a foreign environment, resume. Under a minute on a CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "demo-runs"
REFERENCE = ROOT / "examples" / "reference-torch20-cu118.fingerprint.json"
ENVKIT = [sys.executable, "-m", "envkit"]
TRAIN = [sys.executable, str(ROOT / "examples" / "train.py"), "--ckpt-dir", str(RUNS)]


def step(title: str, command: list[str], expect: int) -> None:
    shown = " ".join("envkit" if c == "envkit" and i == 2 else Path(c).name if i < 2 else c for i, c in enumerate(command))
    print(f"\n=== {title}\n$ {shown}", flush=True)
    code = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "default"}).returncode
    if code != expect:
        sys.exit(f"demo: expected exit {expect} from that step, got {code}")
    print(f"(exit {code}, as expected)")


def main() -> None:
    shutil.rmtree(RUNS, ignore_errors=True)
    last = str(RUNS / "last.pth")
    step("1. train 3 epochs; every checkpoint is stamped with this environment", [*TRAIN, "--epochs", "3"], 0)
    step("2. may this environment resume it? (reads the stamp only: no torch import)", [*ENVKIT, "check", last], 0)
    step("3. could the reference environment (torch 2.0.1, CUDA 11.8, cuDNN 8.7) resume it?",
         [*ENVKIT, "check", "--against", str(REFERENCE), last], 1)
    step("4. the guard in train.py stops that resume before anything is unpickled",
         [*TRAIN, "--epochs", "5", "--as-environment", str(REFERENCE)], 3)
    step("5. here, the same command resumes at epoch 3 and finishes", [*TRAIN, "--epochs", "5"], 0)
    step("6. what the checkpoint says about itself", [*ENVKIT, "inspect", last], 0)
    print("\ndemo ok: checkpoints stamped, checked, refused where they must be, resumed where they may.")


if __name__ == "__main__":
    main()
