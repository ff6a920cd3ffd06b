"""Benchmarks for CheckpointManager; prints medians and ratios.

    python benchmarks/manager.py                  # both groups, 2 GB, 5 runs
    python benchmarks/manager.py --only latest    # latest() over 10,000 checkpoints
    python benchmarks/manager.py --only async     # async_save=True against synchronous saves, 2 GB
    python benchmarks/manager.py --only async --url s3://envkit-bench/async --size-gb 0.5   # the same, to a bucket

- save: ``CheckpointManager.save`` (stamp, one-pass digest, fsync, rename, directory
  fsync, retention, index) against ``torch.save`` + fsync of the same 2 GB state, in
  alternating order, each timed inside a fresh process after its imports.
- latest: a whole ``python`` process that finds the newest valid checkpoint among 10,000
  small stamped ones, without importing torch; with the index the manager keeps, and
  cold (index deleted: every stamp is read). Also the call alone, timed inside that
  process after its imports (what a training script that already imported envkit pays),
  and the ratio to the floor, a standard-library process reading one stamp.
- async: a loop of 5 saves of the same 2 GB state (a model and Adam's two moments) with
  training work between them (``--work-steps`` matmuls on one thread, standing in for a GPU
  step: it leaves the other core to the writer), once with ``async_save=True`` and once
  synchronously, each in a fresh process, alternating. Per save: the time ``save()`` blocks
  the loop (async: its wait for the previous save plus the staging copy); per run: the whole
  loop, to the last checkpoint committed (``wait()``). Medians over saves and runs.
  ``--url s3://bucket/prefix``: the same loop saving to a bucket (each run under a prefix of its own,
  deleted after it); without AWS_ENDPOINT_URL a local moto S3 server on 127.0.0.1 is started in this
  process (tests/checkpoint/s3server.py, as s3_check.py and kill_stress.py do) and the bucket made on it.
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
from common import REFERENCE_STDLIB_READER_S, STDLIB_READER, fresh_bytecode, print_results

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]

SAVE_WORKER = r"""
import os, sys, time, torch
sys.path[:0] = [{root!r}, {bench!r}]
import envkit, envkit.checkpoint.manager, envkit.fingerprint
from common import tensors_of, torch_save_fsync
mode, folder, size_gb = sys.argv[1], sys.argv[2], float(sys.argv[3])
model = torch.nn.ParameterDict({{k.replace(".", "_"): torch.nn.Parameter(v) for k, v in tensors_of(size_gb).items()}})
mgr = envkit.CheckpointManager(folder, project="bench", keep_last=1) if mode == "manager" else None
os.sync()
t = time.perf_counter()
if mode == "manager":
    mgr.save(epoch=0, step=1, metrics={{"loss": 0.5}}, model=model)
else:
    torch_save_fsync({{"model": model.state_dict()}}, os.path.join(folder, "plain.pth"))
print(time.perf_counter() - t)
"""

ASYNC_WORKER = r"""
import json, os, sys, time, torch
sys.path[:0] = [{root!r}, {bench!r}]
import envkit, envkit.checkpoint.manager, envkit.fingerprint
from common import tensors_of
mode, folder, size_gb, work_steps = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
tensors = tensors_of(size_gb / 3)  # the weights; Adam's exp_avg and exp_avg_sq make the state size_gb
model = torch.nn.ParameterDict({{k.replace(".", "_"): torch.nn.Parameter(v) for k, v in tensors.items()}})
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for p in model.parameters():
    p.grad = torch.zeros_like(p)
opt.step()  # Adam's state exists: 3 x the weights
a = torch.randn(512, 512)
mgr = envkit.CheckpointManager(folder, project="bench", keep_last=1, keep_best=0, async_save=mode == "async")
os.sync()
blocked, waited = [], []
start = time.perf_counter()
for step in range(1, 6):
    for _ in range(work_steps):  # the training work between two saves
        a = torch.tanh(a @ a)
    t = time.perf_counter()
    mgr.wait()  # what save() does first: wait for the save in flight (None in sync mode)
    w = time.perf_counter()
    mgr.save(epoch=0, step=step, metrics={{"loss": 0.5}}, model=model, optimizer=opt)
    blocked.append(time.perf_counter() - t)
    waited.append(w - t)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)  # the loop changes the weights right after save() returned
mgr.wait()
total = time.perf_counter() - start
mgr.close()
print(json.dumps({{"blocked": blocked, "waited": waited, "total": total}}))
"""

LATEST = (
    "import sys, time; sys.path.insert(0, {root!r})\n"
    "from pathlib import Path\n"
    "from envkit.checkpoint.directory import find_latest\n"
    "t = time.perf_counter()\n"
    "info = find_latest(Path(sys.argv[1]), 'many')  # what CheckpointManager.latest() runs\n"
    "print(time.perf_counter() - t)\n"
    "assert info.step == int(sys.argv[2]) and 'torch' not in sys.modules\n"
)


def bench_save(size_gb: float, runs: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"torch.save + fsync": [], "CheckpointManager.save": []}
    worker = SAVE_WORKER.format(root=str(ROOT), bench=str(ROOT / "benchmarks"))
    for i in range(runs):
        order = ["torch", "manager"] if i % 2 == 0 else ["manager", "torch"]
        for mode in order:
            with tempfile.TemporaryDirectory(dir=ROOT / "bench-out") as folder:
                out = subprocess.run([PY, "-c", worker, mode, folder, str(size_gb)], check=True, capture_output=True, text=True)
            name = "CheckpointManager.save" if mode == "manager" else "torch.save + fsync"
            times[name].append(float(out.stdout.strip().splitlines()[-1]))
    m = {k: statistics.median(v) for k, v in times.items()}
    m["ratio manager/torch"] = m["CheckpointManager.save"] / m["torch.save + fsync"]
    return m


def work_steps_for(seconds: float) -> int:
    """How many of the worker's matmuls take ``seconds`` on one thread here (measured once, used by both modes)."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    t = time.perf_counter()
    for _ in range(50):
        a = torch.tanh(a @ a)
    return max(1, int(seconds / ((time.perf_counter() - t) / 50)))


def local_s3(url: str) -> dict[str, str]:
    """The environment that reaches ``url``'s bucket: the caller's (AWS_ENDPOINT_URL set), else a moto server started here."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        return dict(os.environ)
    import boto3

    sys.path.insert(0, str(ROOT))
    from tests.checkpoint.s3server import S3Server, client_env

    server = S3Server()
    env = client_env(server.url)
    os.environ.update(env)
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket=bucket)
    print(f"local S3 server (moto) at {server.url} in this process, bucket {bucket}", flush=True)
    return {**os.environ, **env}


class _Prefix:
    """A run's own prefix under ``url``, deleted afterwards (moto keeps objects in this process's memory)."""

    def __init__(self, url: str, name: str) -> None:
        self.url = f"{url.rstrip('/')}/{name}"

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        from envkit.checkpoint.remote import split

        fs, key, _ = split(self.url)
        try:
            fs.rm(key, recursive=True)
        except FileNotFoundError:
            pass


def bench_async(size_gb: float, runs: int, work_s: float, url: str | None = None) -> dict[str, float]:
    worker = ASYNC_WORKER.format(root=str(ROOT), bench=str(ROOT / "benchmarks"))
    work_steps = work_steps_for(work_s)
    env = local_s3(url) if url else None
    where = f" to {url}" if url else ""
    print(f"async{where}: {size_gb} GB state, {work_steps} matmuls (~{work_s} s) of work before each of 5 saves", flush=True)
    waited: list[float] = []
    blocked: dict[str, list[float]] = {"sync": [], "async": []}
    totals: dict[str, list[float]] = {"sync": [], "async": []}
    for i in range(runs):
        for mode in (["sync", "async"] if i % 2 == 0 else ["async", "sync"]):
            place = _Prefix(url, f"run{i + 1}-{mode}") if url else tempfile.TemporaryDirectory(dir=ROOT / "bench-out")
            with place as folder:
                out = subprocess.run([PY, "-c", worker, mode, folder, str(size_gb), str(work_steps)], check=True,
                                     capture_output=True, text=True, env=env)
            doc = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  run {i + 1} {mode:5s}: save() blocked {', '.join(f'{b:.2f}' for b in doc['blocked'])} s "
                  f"(of which waiting for the previous save {', '.join(f'{b:.2f}' for b in doc['waited'])}); "
                  f"loop {doc['total']:.1f} s", flush=True)
            blocked[mode] += doc["blocked"]
            if mode == "async":
                waited += doc["waited"]
            totals[mode].append(doc["total"])
    m = {
        "sync save() (median of every save)": statistics.median(blocked["sync"]),
        "async save() blocks the loop (median)": statistics.median(blocked["async"]),
        "async save() blocks, first save (staging allocates)": statistics.median(blocked["async"][::5]),
        "async save() blocks, later saves (buffers reused)": statistics.median([b for j, b in enumerate(blocked["async"]) if j % 5]),
        "async: of which waiting for the previous save": statistics.median(waited),
        "sync loop of 5 saves + work (median)": statistics.median(totals["sync"]),
        "async loop of 5 saves + work, to the last commit": statistics.median(totals["async"]),
    }
    m["ratio async blocked/sync save (target <= 0.10)"] = m["async save() blocks the loop (median)"] / m["sync save() (median of every save)"]
    m["ratio async/sync loop (target <= 1.10)"] = m["async loop of 5 saves + work, to the last commit"] / m["sync loop of 5 saves + work (median)"]
    return m


def make_many(folder: Path, count: int) -> None:
    """count small stamped checkpoints, written the way the manager writes them (fsync skipped: setup only)."""
    import torch

    import envkit
    from envkit.checkpoint.directory import scan, write_index
    from envkit.checkpoint.stamp import Stamp
    from envkit.checkpoint.writer import build_meta, write_stamped
    from envkit.fingerprint import collect

    fp = collect()
    state = {"model": torch.nn.Linear(8, 8).state_dict()}
    real_fsync, os.fsync = os.fsync, lambda fd: None  # type: ignore[assignment]
    try:
        for step in range(1, count + 1):
            path = folder / f"many_{step:06d}.pth"
            meta = build_meta({"epoch": 0, "step": step, "metrics": {"loss": 1.0 / step}, "project": "many"}, path)
            write_stamped(state, path, stamp_for=lambda payload, meta=meta: Stamp(fp, payload, meta), digest="xxh3_128")
    finally:
        os.fsync = real_fsync  # type: ignore[assignment]
    write_index(folder, scan(folder))
    assert envkit.verify(folder / f"many_{count:06d}.pth").ok


def bench_latest(count: int, runs: int) -> dict[str, float]:
    code = LATEST.format(root=str(ROOT))
    with tempfile.TemporaryDirectory(dir=ROOT / "bench-out") as tmp:
        folder = Path(tmp)
        print(f"writing {count} small stamped checkpoints ...", flush=True)
        make_many(folder, count)
        newest = str(folder / f"many_{count:06d}.pth")
        candidates = {
            "whole process": [PY, "-c", code, str(folder), str(count)],
            "floor": [PY, "-c", STDLIB_READER, newest],
            "pass": [PY, "-c", "pass"],
        }
        times: dict[str, list[float]] = {name: [] for name in candidates}
        calls: list[float] = []
        for i in range(runs + 1):  # the first round warms the page cache and is dropped
            for name, cmd in candidates.items():
                t = time.perf_counter()
                out = subprocess.run(cmd, check=True, capture_output=True, text=True)
                if i:
                    times[name].append(time.perf_counter() - t)
                    if name == "whole process":
                        calls.append(float(out.stdout.split()[-1]))
        for cache in (".envkit-index.json", ".envkit-order.json"):
            (folder / cache).unlink(missing_ok=True)  # the order file only older envkit writes
        t = time.perf_counter()
        subprocess.run(candidates["whole process"], check=True, capture_output=True)
        cold = time.perf_counter() - t
    whole, floor = statistics.median(times["whole process"]), statistics.median(times["floor"])
    return {
        f"latest() over {count} (index), whole process": whole,
        "latest() call alone, after imports": statistics.median(calls),
        "stdlib reader of one stamp (floor)": floor,
        "python -c pass": statistics.median(times["pass"]),
        "ratio latest/floor": whole / floor,
        "latest at the reference machine's speed": whole / floor * REFERENCE_STDLIB_READER_S,
        f"latest() over {count} (index and order deleted: reads every stamp)": cold,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--latest-runs", type=int, default=21, help="runs of the latest() process and its anchors")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--only", choices=["save", "latest", "async"])
    parser.add_argument("--work-s", type=float, default=8.0, help="async: seconds of training work (matmuls) before each save")
    parser.add_argument("--url", help="async: save to this bucket prefix (s3://bucket/prefix) instead of a local folder")
    args = parser.parse_args()
    (ROOT / "bench-out").mkdir(exist_ok=True)
    fresh_bytecode()
    results = {}
    if args.only in (None, "latest"):
        results["latest"] = bench_latest(args.count, args.latest_runs)
    if args.only in (None, "save"):
        results["save"] = bench_save(args.size_gb, args.runs)
    if args.only in (None, "async"):
        results["async"] = bench_async(args.size_gb, args.runs, args.work_s, args.url)
    print_results(f"medians ({args.latest_runs} runs of latest, {args.runs} of save), {os.cpu_count()} cores, {sys.version.split()[0]}", results, 52)


if __name__ == "__main__":
    main()
