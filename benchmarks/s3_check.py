"""`envkit check` of a stamped checkpoint in a bucket against downloading it and `torch.load(mmap=True)`.

    python benchmarks/s3_check.py --size-gb 2

A local S3 server (moto, on 127.0.0.1, in this process; tests/checkpoint/s3server.py) holds the
object. Both sides run as fresh processes, as a user runs them: `envkit check s3://...` (two ranged
GETs) and `python -c` that downloads the object to a local file with s3fs and then
`torch.load(mmap=True, weights_only=True)`s it (mmap only saves copying once the bytes are here).
The server's request log says what each side asked for. The ratio is best-of-N of each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOWNLOAD_AND_LOAD = (
    "import sys, s3fs, torch\n"
    "fs = s3fs.S3FileSystem()\n"
    "fs.get_file(sys.argv[1], sys.argv[2])\n"
    "torch.load(sys.argv[2], mmap=True, weights_only=True)\n"
)


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {done.stderr.strip()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import boto3
    import torch

    import envkit
    from benchmarks.common import tensors_of
    from tests.checkpoint.s3server import S3Server, client_env

    server = S3Server()
    env = {**os.environ, **client_env(server.url), "PYTHONPATH": str(ROOT)}
    os.environ.update(client_env(server.url))
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket="envkit-bench")
    with tempfile.TemporaryDirectory(dir=ROOT) as work:
        local = Path(work) / "model.pth"
        envkit.save(tensors_of(args.size_gb), local, meta={"epoch": 1, "step": 1})
        size = local.stat().st_size
        from envkit.checkpoint.remote import filesystem

        filesystem("s3", "s3://envkit-bench").put_file(str(local), "envkit-bench/model.pth")
        local.unlink()
        del torch
        url = "s3://envkit-bench/model.pth"
        check_times, load_times, check_requests = [], [], []
        for _ in range(args.runs):
            server.reset_log()
            check_times.append(_timed([sys.executable, "-m", "envkit", "check", url], env))
            check_requests = [(r.method, r.range) for r in server.log()]
            target = Path(work) / "download.pth"
            load_times.append(_timed([sys.executable, "-c", DOWNLOAD_AND_LOAD, url, str(target)], env))
            target.unlink()
    result = {
        "size_bytes": size,
        "check_s": min(check_times),
        "download_and_mmap_load_s": min(load_times),
        "ratio": min(load_times) / min(check_times),
        "check_requests": check_requests,
        "runs": args.runs,
    }
    print(json.dumps(result, indent=2))
    print(f"envkit check of {size / 2**30:.2f} GiB in a bucket: {result['check_s']:.2f} s ({len(check_requests)} requests); "
          f"download + torch.load(mmap=True): {result['download_and_mmap_load_s']:.2f} s: {result['ratio']:.0f}x")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
