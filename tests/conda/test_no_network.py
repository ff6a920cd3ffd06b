"""lock, create and doctor as whole processes inside a network namespace with no usable interface.

``unshare -n`` gives the process a namespace of its own holding only a loopback that is
down, so any attempt to reach the network fails at once (ENETUNREACH) instead of hanging;
each process still runs under a subprocess timeout. Skipped, with the reason, where
``unshare -n`` is not allowed (not root and no user namespaces).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conda.conftest import write_spec
from tests.conda.stand_in_engine import install_stand_ins

TIMEOUT_S = 120


def _unshare_unavailable() -> str | None:
    exe = shutil.which("unshare")
    if exe is None:
        return "no `unshare` executable on PATH (util-linux)"
    try:
        done = subprocess.run([exe, "-n", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare -n true` could not run ({exc})"
    if done.returncode != 0:
        return f"`unshare -n` not permitted here (needs root or user namespaces): {done.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif(bool(_unshare_unavailable()), reason=_unshare_unavailable() or "")


def offline(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["unshare", "-n", *args], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def envkit(*args: str, env: dict[str, str]) -> str:
    done = offline(sys.executable, "-m", "envkit", *args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    # a cache of its own, so the packages really are read from the channel in here
    return dict(os.environ, ENVKIT_CACHE_DIR=str(tmp_path / "cache"))


def test_the_namespace_has_no_network(env: dict[str, str]) -> None:
    probe = (
        "import socket\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 80), timeout=5)\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__, exc.errno)\n"
    )
    done = offline(sys.executable, "-c", probe, env=env)
    assert done.returncode == 0, done.stderr
    names, failure = done.stdout.splitlines()
    assert names == "['lo']"
    import errno

    assert failure == f"OSError {errno.ENETUNREACH}"


@pytest.mark.slow
def test_lock_create_doctor_without_network(tmp_path: Path, channel: Path, env: dict[str, str]) -> None:
    spec = write_spec(tmp_path, channel, "  - python=3.11\n  - pytorch\n")
    out = envkit("lock", "-f", str(spec), "-p", "linux-64", "-p", "osx-arm64", "--with-cuda", "11.8", env=env)
    assert "wrote" in out and (tmp_path / "conda-lock.yml").is_file()
    prefix = tmp_path / "envs" / "locked"
    envkit("create", str(spec), "-p", str(prefix), "--engine", "rattler", env=env)
    envkit("doctor", "-p", str(prefix), env=env)
    assert json.loads((prefix / "conda-meta" / "envkit.json").read_text())["with_cuda"] == "11.8"


@pytest.mark.slow
def test_create_from_a_spec_without_a_lock_without_network(tmp_path: Path, channel: Path, env: dict[str, str]) -> None:
    spec = write_spec(tmp_path, channel, "  - python=3.11\n  - numpy\n")
    prefix = tmp_path / "envs" / "solved"
    envkit("create", str(spec), "-p", str(prefix), "--engine", "rattler", env=env)
    assert sorted(p.name.split("-")[0] for p in (prefix / "conda-meta").glob("*-*.json")) == ["numpy", "python"]


@pytest.mark.slow
def test_create_with_micromamba_without_network_stand_in(tmp_path: Path, channel: Path, env: dict[str, str]) -> None:
    """The external path too: conda-lock's import-time lookup and the install stay offline."""
    bin_dir = install_stand_ins(tmp_path / "bin", "micromamba")
    env = dict(env, PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", STAND_IN_LOG=str(tmp_path / "argv.jsonl"))
    spec = write_spec(tmp_path, channel, "  - python=3.11\n")
    envkit("lock", "-f", str(spec), "-p", "linux-64", env=env)
    prefix = tmp_path / "envs" / "mm"
    out = envkit("create", str(spec), "-p", str(prefix), env=env)
    assert "with micromamba" in out
    creates = [c for c in map(json.loads, (tmp_path / "argv.jsonl").read_text().splitlines()) if c[1] == "create"]
    assert len(creates) == 1 and creates[0][-1] == "--offline"
