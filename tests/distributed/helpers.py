"""Start real ranks as subprocesses joined through one TCP store, and read what they report."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
RANK_TIMEOUT_S = 120  # a hang fails the test instead of blocking the suite


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class RankResult:
    rank: int
    returncode: int
    stdout: str
    stderr: str

    def reports(self) -> dict[str, dict[str, Any]]:
        out = {}
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                out[doc["scenario"]] = doc
        return out


def run_ranks(commands: Sequence[list[str]], envs: Sequence[dict[str, str]] | None = None) -> list[RankResult]:
    """Run one command per rank at once; kill them all if any hangs past the timeout."""
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=(envs[i] if envs else rank_env()), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, cmd in enumerate(commands)
    ]
    results = []
    try:
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=RANK_TIMEOUT_S)
            results.append(RankResult(i, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    return results


def worker_commands(world: int, folder: Path, scenarios: Sequence[str], pythons: Sequence[str] | None = None) -> list[list[str]]:
    port = free_port()
    return [
        [(pythons[r] if pythons else sys.executable), str(WORKER), str(r), str(world), str(port), str(folder), *scenarios]
        for r in range(world)
    ]
