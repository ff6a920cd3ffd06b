"""Issue 10 item 4: Ctrl-C during `create` or `lock` is exit 130 with one line, every time, and
leaves nothing half-made (no prefix, no staging folder, no envs/ parent made for it, no lock).

Real processes and real signals. To be inside rattler when SIGINT arrives, deterministically, the
channel is served over HTTP from 127.0.0.1 by a server that holds chosen requests (repodata for
the solve, package files for the install) until the test ends: SIGINT is sent once the held
request has arrived, so rattler is waiting on it at that moment.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conda.conftest import write_spec

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 120


class HoldingServer:
    """Serves ``folder``; a GET whose path ends with ``hold`` waits until ``release``."""

    def __init__(self, folder: Path) -> None:
        self.hold: str | None = None
        self.arrived = threading.Event()
        self.released = threading.Event()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self) -> None:
                if outer.hold and self.path.endswith(outer.hold):
                    outer.arrived.set()
                    outer.released.wait(WAIT_S)
                    return
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()


@pytest.fixture
def server(channel: Path) -> Iterator[HoldingServer]:
    s = HoldingServer(channel)
    yield s
    s.close()


def envkit_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
            "ENVKIT_CACHE_DIR": str(tmp_path / "cache"), "ENVKIT_ENVS_DIR": str(tmp_path / "new" / "envs")}


def interrupt(args: list[str], tmp_path: Path, server: HoldingServer, *, group: bool,
              seen: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    """Run envkit, SIGINT it (or its whole process group, as a terminal's Ctrl-C does) once rattler
    is waiting on the held request; its exit code and output. ``seen`` gets what was under
    tmp_path/new at that moment."""
    proc = subprocess.Popen([sys.executable, "-m", "envkit", *args], cwd=tmp_path, env=envkit_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert server.arrived.wait(WAIT_S), "rattler never asked for the held file"
        if seen is not None:  # rattler may make its folder just after it asks for the file: poll
            deadline = time.monotonic() + WAIT_S
            while not any((tmp_path / "new").glob("envs/.*envkit-tmp-*")) and time.monotonic() < deadline:
                time.sleep(0.01)
            seen += sorted((tmp_path / "new").rglob("*"))
        if group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def assert_interrupted(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 130, done.stderr
    lines = done.stderr.splitlines()
    assert "panic" not in done.stderr.lower() and "Traceback" not in done.stderr, done.stderr
    # envkit's own progress lines (`envkit: solving ...`) may come first; then exactly one line
    progress = [line for line in lines if line.startswith(("envkit: solving", "envkit: installing"))]
    assert lines[len(progress):] == ["envkit: interrupted"] and lines[:len(progress)] == progress, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True], ids=["process", "process-group"])
def test_ctrl_c_during_the_solve_of_lock(tmp_path: Path, channel: Path, server: HoldingServer, group: bool) -> None:
    spec = write_spec(tmp_path, Path("/unused"), "  - python=3.11\n  - pytorch=2.0.1\n")
    spec.write_text(spec.read_text().replace(Path("/unused").as_uri(), server.url))
    server.hold = "linux-64/repodata.json"
    done = interrupt(["lock", "-f", str(spec), "-p", "linux-64"], tmp_path, server, group=group)
    assert_interrupted(done)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["environment.yml"]


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True], ids=["process", "process-group"])
def test_ctrl_c_during_the_solve_of_create_without_a_lock(tmp_path: Path, channel: Path, server: HoldingServer, group: bool) -> None:
    spec = write_spec(tmp_path, Path("/unused"), "  - python=3.11\n")
    spec.write_text(spec.read_text().replace(Path("/unused").as_uri(), server.url))
    server.hold = "linux-64/repodata.json"
    done = interrupt(["create", str(spec), "-n", "train"], tmp_path, server, group=group)
    assert_interrupted(done)
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["environment.yml"]


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True], ids=["process", "process-group"])
def test_ctrl_c_during_the_install_of_create(tmp_path: Path, channel: Path, server: HoldingServer, group: bool) -> None:
    """The lock is solved first (nothing held); then the install waits on a package download."""
    spec = write_spec(tmp_path, Path("/unused"), "  - python=3.11\n  - pytorch=2.0.1\n")
    spec.write_text(spec.read_text().replace(Path("/unused").as_uri(), server.url))
    locked = subprocess.run([sys.executable, "-m", "envkit", "lock", "-f", str(spec), "-p", "linux-64"], check=False,
                            cwd=tmp_path, env=envkit_env(tmp_path), capture_output=True, text=True, timeout=WAIT_S)
    assert locked.returncode == 0, locked.stderr
    server.hold = ".tar.bz2"
    seen: list[Path] = []
    done = interrupt(["create", str(spec), "-n", "train"], tmp_path, server, group=group, seen=seen)
    assert_interrupted(done)
    # rattler had made the staging folder next to the prefix (and envkit the envs/ parent) by then
    envs = tmp_path / "new" / "envs"
    assert envs in seen and any(p.parent == envs and p.name.startswith(".train.envkit-tmp-") for p in seen), seen
    assert "envkit: installing" in done.stderr  # it was in the install, not before it
    assert not (tmp_path / "new").exists()  # no prefix, no staging folder, no envs/ parent made for it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["conda-lock.yml", "environment.yml"]
