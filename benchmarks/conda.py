"""Whole-process benchmarks for environments; prints medians of >= 5 runs.

    python benchmarks/conda.py

Targets: `envkit lock --check` <= 0.5 s, `envkit lock` on the local test channel
<= 2 s, a rattler solve over a generated 10,000-record channel <= 1 s (in process,
after the channel is indexed), `envkit --help` <= 0.2 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conda.channel import Pkg, build_channel  # noqa: E402

# the console script, as users run it (python -m envkit adds runpy's cost)
ENVKIT = [str(Path(sys.executable).with_name("envkit"))]
RUNS = 5


def median_of(fn, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(args: list[str]) -> None:
    subprocess.run(ENVKIT + args, check=True, capture_output=True)


def big_channel(root: Path, n: int = 10_000) -> Path:
    pkgs = []
    names = [f"lib{i:04d}" for i in range(1000)]
    for i, name in enumerate(names):
        for v in range(10):
            deps = (f"{names[(i * 7 + 1) % 1000]} >=0.{v % 3}",) if i % 3 == 0 else ()
            pkgs.append(Pkg(name, f"0.{v}", "h0_0", "linux-64", deps))
    return build_channel(root, pkgs[:n])


def main() -> int:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        channel = build_channel(base / "local")
        spec = base / "environment.yml"
        spec.write_text(f"name: bench\nchannels:\n  - {channel.as_uri()}\ndependencies:\n  - python=3.11\n  - pytorch=2.0.1\n  - numpy\n  - pip\n")
        lock = ["lock", "-f", str(spec), "-p", "linux-64", "-p", "osx-arm64", "-p", "win-64", "--with-cuda", "11.8"]
        run(lock)  # warm the caches
        results["envkit --help"] = median_of(lambda: run(["--help"]))
        results["envkit lock --check (fresh)"] = median_of(lambda: run(lock + ["--check"]))
        results["envkit lock (3 platforms, local channel)"] = median_of(lambda: run(lock))

        big = big_channel(base / "big")
        import rattler

        from envkit.conda.channels import resolve_channels
        from envkit.conda.solver import solve

        chans = resolve_channels((big.as_uri(),))
        specs = tuple(f"lib{i:04d}" for i in range(0, 1000, 10))
        solve(specs, chans, "linux-64", (), cache_dir=base / "cache", source=spec)  # first read of the repodata
        results["solve 100 specs over 10,000 records"] = median_of(lambda: solve(specs, chans, "linux-64", (), cache_dir=base / "cache", source=spec))
        del rattler

    targets = {
        "envkit --help": 0.2, "envkit lock --check (fresh)": 0.5, "envkit lock (3 platforms, local channel)": 2.0,
        "solve 100 specs over 10,000 records": 1.0,
    }
    print(f"{'what':44} {'median':>9} {'target':>8}")
    for name, value in results.items():
        print(f"{name:44} {value * 1000:7.0f}ms {targets[name] * 1000:6.0f}ms  {'ok' if value <= targets[name] else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
