"""GPU check: the NCCL path of envkit.distributed and the rank-aware CheckpointManager.

    PYTHONPATH=. python benchmarks/gpu_nccl.py

World size 1 on cuda:0 (MASTER_ADDR/PORT set here): check_consistency, a replicated save
and resume, a sharded (torch.distributed.checkpoint) save and resume, and the agreed stop
(all_reduce on a CUDA tensor). Prints one line per check and exits 1 if any fails. Without
CUDA it says so and exits 0. Needs only torch and envkit's own dependencies.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_nccl: no CUDA device here; nothing to check (exit 0)")
        return 0
    import torch.distributed as dist

    import envkit
    from envkit.distributed import check_consistency

    warnings.simplefilter("ignore", envkit.errors.EphemeralDirectoryWarning)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    torch.cuda.set_device(0)
    t0 = time.perf_counter()
    dist.init_process_group("nccl", rank=0, world_size=1)
    t1 = time.perf_counter()
    report = check_consistency()
    t2 = time.perf_counter()
    print(f"torch {torch.__version__}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, {torch.cuda.get_device_name(0)}")
    print(f"init_process_group(nccl) {1000 * (t1 - t0):.0f} ms; check_consistency {1000 * (t2 - t1):.1f} ms: ok={report.ok}")
    failures = 0
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).cuda()
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
    opt = torch.optim.Adam(ddp.parameters())
    ddp(torch.randn(8, 256, device="cuda")).sum().backward()
    opt.step()
    for sharded in (False, True):
        with tempfile.TemporaryDirectory() as folder:
            try:
                with envkit.CheckpointManager(folder, project="nccl", sharded=sharded) as mgr:
                    mgr.handle_signals()
                    os.kill(os.getpid(), signal.SIGTERM)
                    path = mgr.save(epoch=0, step=1, model=ddp, optimizer=opt)
                    stopped = mgr.should_stop and mgr.exit_code == 143
                fresh = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).cuda()
                fresh_opt = torch.optim.Adam(fresh.parameters())
                with envkit.CheckpointManager(folder, project="nccl", sharded=sharded) as mgr:
                    info = mgr.resume(model=fresh, optimizer=fresh_opt)
                same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
                same_opt = all(
                    torch.equal(x[n].cpu(), fresh_opt.state_dict()["state"][k][n].cpu())
                    for k, x in opt.state_dict()["state"].items() for n in x
                )
                verified = envkit.verify(path).ok
                ok = stopped and same and same_opt and verified and info is not None and info.step == 1
                print(f"{'sharded' if sharded else 'replicated'} save/resume over NCCL: {'ok' if ok else 'FAILED'} "
                      f"(stop agreed {stopped}, weights equal {same}, optimizer equal {same_opt}, verify {verified}, {path.name})")
            except Exception as exc:  # noqa: BLE001 - report and go on to the next check
                ok = False
                print(f"{'sharded' if sharded else 'replicated'} save/resume over NCCL: FAILED ({type(exc).__name__}: {exc})")
            failures += not ok
    dist.destroy_process_group()
    print("gpu_nccl:", "passed" if not failures else f"{failures} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
