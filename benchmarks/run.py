"""Whole-process benchmarks for the foundation issue; prints medians and ratios.

    python benchmarks/run.py                 # 2 GB checkpoint, 5 runs each
    python benchmarks/run.py --size-gb 8     # the 8 GB case
    python benchmarks/run.py --only check    # one group: check | fingerprint | save

Anchors (docs/architecture.md, benchmarks' floor): ``envkit check --json`` against a process
that imports torch and ``torch.load(mmap=True, weights_only=True)``s the file, and one that loads it fully; also
against the floor, a standard-library process that reads the stamp member and parses it
(34 ms on the reference machine): the ratio to it says what check costs on a machine
whose start-up is slower or faster than that one's;
``envkit fingerprint --json`` against ``python -m torch.utils.collect_env``;
``envkit.save`` against ``torch.save`` + fsync of the same state. Runs alternate
between the candidates so that drift on a noisy machine hits both alike.

``--only safetensors`` (issue 12; not in the default run): ``envkit check --json`` of a stamped
``model.safetensors`` against one process that imports torch and ``safetensors.torch.load_file``s
it (target >= 20x), with ``envkit verify`` of it beside; and ``envkit.save`` of the same tensors to
``.safetensors`` against ``safetensors.torch.save_file`` + fsync.
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
# What users type: the installed console script; `python -m envkit` (runpy) where none is installed.
_SCRIPT = Path(PY).parent / "envkit"
ENVKIT = [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-m", "envkit"]

SAVE_WORKER = r"""
import os, sys, time
sys.path[:0] = [{root!r}, {bench!r}]
import envkit, envkit.checkpoint.writer, envkit.fingerprint  # imports are once per process, not per save
from common import tensors_of, torch_save_fsync
mode, path, size_gb = sys.argv[1], sys.argv[2], float(sys.argv[3])
state = tensors_of(size_gb)
os.sync()  # start from a clean page cache: no earlier run's dirty pages compete with this one
t = time.perf_counter()
if mode == "envkit":
    envkit.save(state, path, meta={{"epoch": 1, "step": 1}})
elif mode == "safetensors":
    import safetensors.torch
    safetensors.torch.save_file(state, path, metadata={{"format": "pt"}})
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
else:
    torch_save_fsync(state, path)
print(time.perf_counter() - t)
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"benchmark command failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr.decode()[-2000:]}")
    return elapsed


def medians(candidates: dict[str, list[str]], runs: int, warmup: int = 1) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(warmup):
        for cmd in candidates.values():
            timed(cmd)
    for _ in range(runs):
        for name, cmd in candidates.items():
            times[name].append(timed(cmd))
    return {name: statistics.median(values) for name, values in times.items()}


def make_checkpoint(path: Path, size_gb: float) -> None:
    if path.exists():
        return
    print(f"writing a {size_gb:g} GB stamped checkpoint to {path} ...", flush=True)
    subprocess.run([PY, "-c", SAVE_WORKER.format(root=str(ROOT), bench=str(ROOT / "benchmarks")), "envkit", str(path), str(size_gb)],
                   check=True, stdout=subprocess.DEVNULL)


def bench_check(ckpt: Path, size_gb: float, runs: int, quick_runs: int) -> dict[str, float]:
    """The torch anchors take seconds and vary little; the sub-second processes get more runs."""
    make_checkpoint(ckpt, size_gb)
    p = str(ckpt)
    m = medians(
        {
            "import torch + torch.load(mmap=True)": [PY, "-c", f"import torch; torch.load({p!r}, mmap=True, weights_only=True)"],
            "import torch + full torch.load": [PY, "-c", f"import torch; torch.load({p!r}, weights_only=True)"],
        },
        runs,
    )
    quick = medians(
        {
            "envkit check --json": [*ENVKIT, "check", "--json", p],
            "stdlib reader of the stamp (floor)": [PY, "-c", STDLIB_READER, p],
            "python -c pass": [PY, "-c", "pass"],
        },
        quick_runs,
    )
    m = {**quick, **m}
    check = m["envkit check --json"]
    m["ratio mmap/check"] = m["import torch + torch.load(mmap=True)"] / check
    m["ratio full/check"] = m["import torch + full torch.load"] / check
    m["ratio check/floor"] = check / m["stdlib reader of the stamp (floor)"]
    m["check at the reference machine's speed"] = m["ratio check/floor"] * REFERENCE_STDLIB_READER_S
    return m


def bench_fingerprint(runs: int) -> dict[str, float]:
    m = medians(
        {
            "envkit fingerprint --json": [*ENVKIT, "fingerprint", "--json"],
            "python -m torch.utils.collect_env": [PY, "-m", "torch.utils.collect_env"],
        },
        runs,
    )
    m["ratio collect_env/fingerprint"] = m["python -m torch.utils.collect_env"] / m["envkit fingerprint --json"]
    return m


def bench_save(work: Path, size_gb: float, runs: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"torch.save + fsync": [], "envkit.save": []}
    worker = SAVE_WORKER.format(root=str(ROOT), bench=str(ROOT / "benchmarks"))
    for i in range(runs):
        order = ["torch.save + fsync", "envkit.save"] if i % 2 == 0 else ["envkit.save", "torch.save + fsync"]
        for name in order:
            target = work / f"save-{i}.pth"
            mode = "envkit" if name == "envkit.save" else "torch"
            out = subprocess.run([PY, "-c", worker, mode, str(target), str(size_gb)], check=True, capture_output=True, text=True)
            times[name].append(float(out.stdout.strip().splitlines()[-1]))
            target.unlink()
    m = {name: statistics.median(v) for name, v in times.items()}
    m["ratio envkit/torch"] = m["envkit.save"] / m["torch.save + fsync"]
    return m


def bench_safetensors(work: Path, size_gb: float, runs: int, quick_runs: int, checkpoint: Path | None) -> dict[str, float]:
    """check of a stamped model.safetensors against import torch + safetensors.torch.load_file, in whole processes."""
    model = checkpoint or work / f"model-{size_gb:g}g.safetensors"
    make_checkpoint(model, size_gb)  # envkit.save: the suffix chooses safetensors
    p = str(model)
    # check runs between the loads it is compared with, and again many times on its own
    m = medians({"import torch + safetensors.torch.load_file": [PY, "-c", f"import torch, safetensors.torch; safetensors.torch.load_file({p!r})"],
                 "envkit check --json (between the loads)": [*ENVKIT, "check", "--json", p],
                 "envkit verify --json": [*ENVKIT, "verify", "--json", p]}, runs)
    quick = medians({"envkit check --json": [*ENVKIT, "check", "--json", p], "python -c pass": [PY, "-c", "pass"]}, quick_runs)
    m = {**quick, **m}
    # as bench_check: the anchor's median over check's own (more) runs; and over check run right after each
    # 2 GB load (slower: the process that freed 2 GB has just exited), the less flattering figure
    m["ratio load_file/check"] = m["import torch + safetensors.torch.load_file"] / m["envkit check --json"]
    m["ratio load_file/check (right after each load)"] = m["import torch + safetensors.torch.load_file"] / m["envkit check --json (between the loads)"]
    times: dict[str, list[float]] = {"safetensors.torch.save_file + fsync": [], "envkit.save (.safetensors)": []}
    worker = SAVE_WORKER.format(root=str(ROOT), bench=str(ROOT / "benchmarks"))
    for i in range(runs):
        names = list(times) if i % 2 == 0 else list(reversed(times))
        for name in names:
            target = work / f"save-{i}.safetensors"
            mode = "envkit" if name.startswith("envkit") else "safetensors"
            out = subprocess.run([PY, "-c", worker, mode, str(target), str(size_gb)], check=True, capture_output=True, text=True)
            times[name].append(float(out.stdout.strip().splitlines()[-1]))
            target.unlink()
    m.update({name: statistics.median(v) for name, v in times.items()})
    m["ratio envkit.save/save_file"] = m["envkit.save (.safetensors)"] / m["safetensors.torch.save_file + fsync"]
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick-runs", type=int, default=21, help="runs of the sub-second processes (check, the floor, python -c pass)")
    parser.add_argument("--only", choices=["check", "fingerprint", "save", "safetensors"])
    parser.add_argument("--envkit", help="the envkit command to time (default: the console script next to this python)")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint check reads: written there if missing, and kept (default: a temporary one)")
    parser.add_argument("--workdir", type=Path, help="where to write the large files (default: a temporary folder under the repo)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    if args.envkit:
        ENVKIT[:] = [args.envkit]
    results: dict[str, dict[str, float]] = {}
    fresh_bytecode()
    base = args.workdir or ROOT / "bench-out"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        work = Path(tmp)
        if args.only in (None, "check"):
            results["check"] = bench_check(args.checkpoint or work / f"bench-{args.size_gb:g}g.pth", args.size_gb, args.runs, args.quick_runs)
        if args.only in (None, "fingerprint"):
            results["fingerprint"] = bench_fingerprint(args.runs)
        if args.only in (None, "save"):
            results["save"] = bench_save(work, args.size_gb, args.runs)
        if args.only == "safetensors":
            results["safetensors"] = bench_safetensors(work, args.size_gb, args.runs, args.quick_runs, args.checkpoint)

    print_results(f"medians of {args.runs} runs, {args.size_gb:g} GB, {os.cpu_count()} cores, {sys.version.split()[0]}", results, 42)
    if args.json:
        args.json.write_text(json.dumps({"size_gb": args.size_gb, "runs": args.runs, **results}, indent=2))


if __name__ == "__main__":
    main()
