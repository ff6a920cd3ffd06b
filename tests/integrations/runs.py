"""Training runs as real processes for the HF Trainer and Accelerate tests: run one to its end, or
until it reports a checkpoint and then SIGKILL it; fake another environment in a folder's stamp."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEADLINE_S = 240  # a watchdog: a child that hangs is killed and the test fails with its stderr


def child_env(tmp: Path) -> dict[str, str]:
    """No hub, no telemetry, caches under the test's folder, one thread (both runs alike: bit-exact)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(tmp / "hf-home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "TRANSFORMERS_VERBOSITY": "error", "ACCELERATE_LOG_LEVEL": "error", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def weights_digest(model: Any) -> str:
    """One digest of a module's weights, the same in every process: what "bit-identical" is compared by."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def assert_check_reads_no_pickle(folder: Path, pickle_name: str, tmp: Path) -> None:
    """Put a pickle that runs code if loaded at ``folder/pickle_name``; ``envkit check`` of the unstamped
    folder (text and --json) must say it is unstamped, exit 0 with a warning, and never load it."""
    marker = tmp / "executed"

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    (folder / pickle_name).write_bytes(pickle.dumps(Boom()))
    for args in (["check", str(folder)], ["check", "--json", str(folder)]):
        done = subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True, text=True,
                              env=child_env(tmp), cwd=tmp, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        if "--json" in args:
            doc = json.loads(done.stdout)
            assert doc["stamped"] is False and doc["verdict"] == "warn"
        else:
            assert "unstamped" in (done.stdout + done.stderr).lower()
    assert not marker.exists()


class Run:
    """One harness process: ``lines`` is its stdout, ``stderr`` its stderr, ``code`` its exit status."""

    def __init__(self, script: str, args: list[str], tmp: Path, *, stop_token: str | None = None, ranks: int = 1) -> None:
        """``ranks`` > 1: under torchrun (``--standalone``, gloo on the CPU); SIGKILL goes to every rank too."""
        self.stop_token = stop_token
        self.err_path = tmp / f"stderr-{os.getpid()}-{id(self)}.txt"
        self._err = open(self.err_path, "w")
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
        self.proc = subprocess.Popen([sys.executable, *launcher, str(HERE / script), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, env=child_env(tmp), cwd=tmp)
        self.lines: list[str] = []
        self.killed = False
        self._watchdog = threading.Timer(DEADLINE_S, self._kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _kill(self) -> None:
        """SIGKILL the process and every process below it (torchrun starts its ranks in sessions of their own)."""
        for pid in [*_descendants(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def finish(self) -> Run:
        """Read stdout to the end; with ``stop_token``, SIGKILL the process once that line shows (the
        child blocks on stdin right after printing it, so it is killed at that point and no later)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.stop_token is not None and line.startswith(self.stop_token) and not self.killed:
                self._kill()  # the process and, under torchrun, every rank
                self.killed = True
        self.code = self.proc.wait()
        self._watchdog.cancel()
        self._err.close()
        if self.stop_token is not None:
            assert self.killed and self.code == -signal.SIGKILL, self.describe()
        return self

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def value(self, key: str) -> str:
        found = self.values(key)
        assert found, f"no {key} line; {self.describe()}"
        return found[-1]

    def values(self, key: str) -> list[str]:
        """Every ``KEY value`` line (one per rank under torchrun)."""
        return [line.split(" ", 1)[1] for line in self.lines if line.startswith(key + " ")]

    def describe(self) -> str:
        return f"exit {getattr(self, 'code', None)}; stdout {self.lines[-8:]}; stderr tail:\n{self.stderr[-3000:]}"


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (children first found, then theirs)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def other_torch_minor(version: str) -> str:
    """The live torch with its minor one higher: a checkpoint from a newer torch, which the default policy refuses."""
    major, minor = version.split("+")[0].split(".")[:2]
    return f"{major}.{int(minor) + 1}.0"


def fake_newer_torch(folder: Path) -> str:
    """Rewrite ``folder/envkit.json`` as if another torch minor had written it: the fingerprint's torch
    version and its digest (recomputed by the schema), as tests/checkpoint/test_guard.py fakes an
    environment; the list of files and their digests are left as they are, so the folder still
    verifies. Returns the faked version."""
    from envkit.fingerprint.schema import Fingerprint

    path = folder / "envkit.json"
    doc = json.loads(path.read_text())
    fp = Fingerprint.from_json(doc["fingerprint"])
    fake = other_torch_minor(fp.torch.version or "2.0.0")
    doc["fingerprint"] = replace(fp, torch=replace(fp.torch, version=fake)).to_json()
    path.write_text(json.dumps(doc, sort_keys=True))
    return fake


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: to show that nothing was written or changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
