"""`envkit check` of a stamped checkpoint in a bucket against downloading it and `torch.load(mmap=True)`.

    python benchmarks/s3_check.py --size-gb 2 --runs 3

A local S3 server (moto, on 127.0.0.1, in this process; tests/checkpoint/s3server.py) holds the
object. Both sides run as fresh processes, as a user runs them: `envkit check s3://...` (one
ranged GET of the tail, signed and sent by envkit's s3_direct: no s3fs import; timed too with that
GET sent through s3fs, the route of a profile, a proxy or an error) and `python -c` that downloads the object to a local file with s3fs
(`get_file`: one GET, then concurrent ranged GETs of 50 MiB) and then
`torch.load(mmap=True, weights_only=True)`s it (mmap only saves copying once the bytes are here).

Twice over, in the same run, on the same object: with stock moto, which answers a ranged GET by
reading the whole object and slicing it (so a 320 KiB range of 2 GiB costs reading 2 GiB, and so
does each of the download's ranged GETs), and with the test server's ``range_reads="seek"``, which
reads only the range from moto's own spooled file, as S3 and MinIO do (the answers are the same
bytes and headers: tests/checkpoint/test_s3server.py). Each ratio is check against the download
and load on the same server mode. The server's request log says what each side asked for.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOWNLOAD_AND_LOAD = (
    "import sys, s3fs, torch\n"
    "fs = s3fs.S3FileSystem()\n"
    "fs.get_file(sys.argv[1], sys.argv[2])\n"
    "torch.load(sys.argv[2], mmap=True, weights_only=True)\n"
)
# the same `envkit check`, with its stamp read sent through s3fs (what a profile, a proxy or an error answer gets)
CHECK_THROUGH_S3FS = (
    "import sys, envkit.checkpoint.remote as remote\n"
    "remote._direct = lambda where: None\n"
    "sys.argv = ['envkit', 'check', sys.argv[1]]\n"
    "from envkit.cli import main\n"
    "main()\n"
)
MODES = ("stock", "seek")


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {done.stderr.strip()[-500:]}")
    return elapsed


def _requests(server: object) -> list[tuple[str, str | None]]:
    return [(r.method, r.range) for r in server.log()]  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import boto3
    import torch

    import envkit
    from benchmarks.common import fresh_bytecode, tensors_of
    from tests.checkpoint.s3server import S3Server, client_env

    fresh_bytecode()
    load_before = os.getloadavg()
    server = S3Server()
    env = {**os.environ, **client_env(server.url), "PYTHONPATH": str(ROOT)}
    os.environ.update(client_env(server.url))
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket="envkit-bench")
    times: dict[str, dict[str, list[float]]] = {m: {"check": [], "check_s3fs": [], "load": []} for m in MODES}
    requests: dict[str, dict[str, list[tuple[str, str | None]]]] = {m: {} for m in MODES}
    with tempfile.TemporaryDirectory(dir=ROOT) as work:
        local = Path(work) / "model.pth"
        envkit.save(tensors_of(args.size_gb), local, meta={"epoch": 1, "step": 1})
        size = local.stat().st_size
        import s3fs

        # moto completes a 2 GiB multipart upload in more than envkit's 20 s read timeout on a loaded
        # machine, and a retried completion finds the parts gone: the set-up upload waits for it
        setup = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs={"read_timeout": 900, "retries": {"max_attempts": 1}})
        setup.put_file(str(local), "envkit-bench/model.pth")
        local.unlink()
        del torch
        url = "s3://envkit-bench/model.pth"
        for _ in range(args.runs):
            for mode in MODES:  # interleaved, so that a change in the machine's load falls on both
                server.range_reads = mode
                server.reset_log()
                times[mode]["check"].append(_timed([sys.executable, "-m", "envkit", "check", url], env))
                requests[mode]["check"] = _requests(server)
                times[mode]["check_s3fs"].append(_timed([sys.executable, "-c", CHECK_THROUGH_S3FS, url], env))
                target = Path(work) / "download.pth"
                server.reset_log()
                times[mode]["load"].append(_timed([sys.executable, "-c", DOWNLOAD_AND_LOAD, url, str(target)], env))
                requests[mode]["load"] = _requests(server)
                target.unlink()
    server.stop()
    result: dict[str, object] = {"size_bytes": size, "runs": args.runs, "load_average_before": load_before,
                                 "load_average_after": os.getloadavg()}
    for mode in MODES:
        check, load = statistics.median(times[mode]["check"]), statistics.median(times[mode]["load"])
        through_s3fs = statistics.median(times[mode]["check_s3fs"])
        result[mode] = {
            "check_s": times[mode]["check"], "check_through_s3fs_s": times[mode]["check_s3fs"],
            "check_through_s3fs_median_s": through_s3fs, "ratio_through_s3fs": load / through_s3fs, "download_and_mmap_load_s": times[mode]["load"],
            "check_median_s": check, "download_and_mmap_load_median_s": load, "ratio_of_medians": load / check,
            "ratio_of_best": min(times[mode]["load"]) / min(times[mode]["check"]),
            "check_requests": requests[mode]["check"],
            "download_requests": len(requests[mode]["load"]),
            "download_ranged_gets": sum(1 for _, r in requests[mode]["load"] if r),
        }
    print(json.dumps(result, indent=2))
    for mode in MODES:
        r = result[mode]
        assert isinstance(r, dict)
        print(f"{mode:5s} moto: envkit check of {size / 2**30:.2f} GiB: median {r['check_median_s']:.2f} s "
              f"({len(r['check_requests'])} request(s)); download + torch.load(mmap=True): median "
              f"{r['download_and_mmap_load_median_s']:.2f} s ({r['download_requests']} requests): "
              f"{r['ratio_of_medians']:.0f}x (best of {args.runs}: {r['ratio_of_best']:.0f}x); check through s3fs: median "
              f"{r['check_through_s3fs_median_s']:.2f} s, {r['ratio_through_s3fs']:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
