"""GPU check: save on CUDA, resume with the CUDA RNG restored, confirm bit-identical weights.

    python benchmarks/gpu_resume.py

Runs a small model with dropout on ``cuda:0`` under
``torch.use_deterministic_algorithms(True)`` for 2 x N steps uninterrupted; then N steps,
a CheckpointManager save, a fresh manager (as a new process would make) resuming, and N
more steps. Both must end with equal weights and optimizer state. On a machine without
CUDA it says so and exits 0.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import envkit

STEPS = 40


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Dropout(0.3), torch.nn.Linear(1024, 10)
    ).cuda()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, start: int, stop: int) -> None:
    for step in range(start, stop):
        g = torch.Generator(device="cuda").manual_seed(step)  # the data: a function of the step
        x = torch.randn(64, 512, device="cuda", generator=g)
        y = torch.randint(0, 10, (64,), device="cuda", generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()  # dropout draws from the CUDA RNG
        opt.step()


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_resume: no CUDA device here; nothing to check (exit 0)")
        return 0
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")

    reference, ref_opt = build()
    train(reference, ref_opt, 0, 2 * STEPS)

    with tempfile.TemporaryDirectory() as folder:
        model, opt = build()
        train(model, opt, 0, STEPS)
        with envkit.CheckpointManager(folder, project="gpu") as mgr:
            path = mgr.save(epoch=0, step=STEPS, model=model, optimizer=opt)
        print(f"saved {Path(path).name}: {envkit.read_stamp(path).stamp.fingerprint.gpu.devices}")
        torch.cuda.manual_seed_all(12345)  # scramble the CUDA RNG: resume must put it back
        fresh, fresh_opt = build()
        with envkit.CheckpointManager(folder, project="gpu") as mgr:
            info = mgr.resume(model=fresh, optimizer=fresh_opt)
        assert info is not None and info.step == STEPS
        train(fresh, fresh_opt, STEPS, 2 * STEPS)

    same_weights = all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), fresh.state_dict().values(), strict=True))
    same_optimizer = all(
        torch.equal(v, fresh_opt.state_dict()["state"][i][k])
        for i, st in ref_opt.state_dict()["state"].items()
        for k, v in st.items()
        if torch.is_tensor(v)
    )
    print(f"bit-identical weights: {same_weights}; optimizer state: {same_optimizer}")
    return 0 if same_weights and same_optimizer else 1


if __name__ == "__main__":
    sys.exit(main())
