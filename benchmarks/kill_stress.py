"""A longer kill -9 stress run than the test suite's 50: `python benchmarks/kill_stress.py --kills 500 [--async-save]`.

Against a bucket: `python benchmarks/kill_stress.py --url s3://bucket/prefix --kills 1000`: the
endpoint and credentials come from the environment (AWS_ENDPOINT_URL, ...); without
AWS_ENDPOINT_URL a local moto S3 server on 127.0.0.1 is started (tests/checkpoint/s3server.py)
and the bucket created on it.

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
    parser.add_argument("--url", help="run against a bucket prefix (s3://bucket/prefix) instead of a local folder")
    args = parser.parse_args()
    if args.url:
        return _against_bucket(args)

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


def _against_bucket(args: argparse.Namespace) -> int:
    from envkit.checkpoint import remote
    from tests.checkpoint.test_remote import kill_loop

    if not os.environ.get("AWS_ENDPOINT_URL"):
        import boto3

        from tests.checkpoint.s3server import S3Server, client_env

        server = S3Server()
        os.environ.update(client_env(server.url))
        bucket = args.url.split("://", 1)[1].split("/", 1)[0]
        boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket=bucket)
        print(f"local S3 server (moto) at {server.url}, bucket {bucket}", flush=True)
    remote.PART_BYTES = 5 * 1024 * 1024  # S3's smallest part: every save is a multipart upload of two parts
    started = time.time()

    def report(kill: int, last: int) -> None:
        if kill % 50 == 0:
            print(f"{kill} kills, latest step {last}, {time.time() - started:.0f} s", flush=True)

    saver = None
    if args.async_save:
        from tests.checkpoint.test_remote_async import _save_forever as saver  # async_save=True in the child
    last = kill_loop(args.url, args.kills, seed=args.seed, max_delay=args.max_delay, report=report, saver=saver)
    from envkit.checkpoint.listing import ObjectListing

    left = ObjectListing.for_url(args.url).names() or set()
    print(f"ok: {args.kills} kills against {args.url}, every object under a final name whole, latest() never lost a "
          f"step (last {last}); {len(left)} names under the prefix")
    return 0


if __name__ == "__main__":
    sys.exit(main())
