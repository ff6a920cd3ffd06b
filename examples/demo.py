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
    preemption()
    environments = ROOT / "environments"
    step("10. the environment.yml the blog post has users copy: lint explains what is wrong with it",
         [*ENVKIT, "lint", str(environments / "blog-post.yml")], 1)
    step("11. the reference environment, as envkit ships it", [*ENVKIT, "lint", str(environments / "environment.yml")], 0)
    print("\ndemo ok: checkpoints stamped, checked, refused where they must be, resumed where they may, bit for bit;"
          " environment files linted.")


RESUMABLE = [sys.executable, str(ROOT / "examples" / "train_resumable.py"), "--epochs", "3", "--every-n-steps", "7"]


def preemption() -> None:
    """A run preempted by SIGTERM mid-epoch, resumed by the same command, equals an uninterrupted one."""
    import signal

    import torch

    reference_dir, run_dir = RUNS / "reference", RUNS / "preempted"
    step("7. an uninterrupted reference run (shuffling sampler, dropout, Adam, LR schedule)",
         [*RESUMABLE, "--dir", str(reference_dir), "--out", str(RUNS / "reference.pt"), "--log-every", "15"], 0)
    command = [*RESUMABLE, "--dir", str(run_dir), "--step-delay", "0.01"]
    print(f"\n=== 8. the same run, sent SIGTERM in the middle of its second epoch\n$ python train_resumable.py --dir {run_dir.name} ...",
          flush=True)
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert run.stdout is not None
    for line in run.stdout:
        if not line.startswith("step ") or int(line.split()[1]) % 15 == 0:
            print(line, end="")
        if line.startswith("step 45 "):
            run.send_signal(signal.SIGTERM)
            print(">>> kill -TERM", run.pid, flush=True)
    code = run.wait()
    if code != 128 + signal.SIGTERM:
        sys.exit(f"demo: expected exit 143 after SIGTERM, got {code}")
    print(f"(exit {code} = 128 + SIGTERM: saved at the step boundary, then stopped)")
    step("9. the same command again: resumes mid-epoch and finishes",
         [*command[:-2], "--out", str(RUNS / "resumed.pt"), "--log-every", "15"], 0)
    a = torch.load(RUNS / "reference.pt", weights_only=True)
    b = torch.load(RUNS / "resumed.pt", weights_only=True)
    same = all(torch.equal(t, b["model"][k]) for k, t in a["model"].items()) and all(
        torch.equal(v, b["optimizer"]["state"][i][k])
        for i, st in a["optimizer"]["state"].items() for k, v in st.items() if torch.is_tensor(v)
    )
    print(f"\nfinal weights and optimizer state of the interrupted+resumed run equal the uninterrupted run's: {same}")
    if not same:
        sys.exit("demo: the resumed run diverged")


if __name__ == "__main__":
    main()
