"""A real S3 API server for the tests: moto's, on 127.0.0.1 only, with every request counted server-side.

``S3Server`` runs moto's WSGI application (what ``moto_server`` and ``ThreadedMotoServer`` run) under
werkzeug in a thread of the test process, behind a middleware that logs each request (method, path,
query, Range header). Nothing listens on any other address, and the tests' environment points boto
at it (``AWS_ENDPOINT_URL``), with dummy keys and the instance-metadata lookup disabled.

moto keeps its buckets in memory, so "killing the server" mid-upload is done by killing a TCP proxy
between the client and moto (``python tests/checkpoint/s3server.py proxy PORT TARGET``, a process of
its own that ``kill -9`` ends): the client sees exactly what it sees when the server dies
(connections reset, nothing answering), and restarting the proxy on the same port is the server
coming back with what it had stored, as a real S3 or MinIO does after a restart.

The middleware also denies writes (403 AccessDenied, as S3 answers) for the access key ``readonly``:
moto does not enforce IAM policies by default, and this is the one policy the tests need.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

READONLY_KEY = "readonly"
_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
           b"<Message>Access Denied</Message></Error>")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    range: str | None

    @property
    def length(self) -> int | None:
        """Bytes a ranged GET asked for (``bytes=a-b``), None for an open or suffix range."""
        if not self.range or not self.range.startswith("bytes="):
            return None
        first, _, last = self.range[6:].partition("-")
        if not first or not last:
            return int(last) if last and not first else None
        return int(last) - int(first) + 1


class S3Server:
    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            request = Request(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""),
                              environ.get("HTTP_RANGE"))
            with self._lock:
                self.requests.append(request)
            auth = environ.get("HTTP_AUTHORIZATION", "")
            if f"Credential={READONLY_KEY}/" in auth and request.method in ("PUT", "POST", "DELETE"):
                start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(_DENIED)))])
                return [_DENIED]
            return app(environ, start_response)

        self._server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-s3", daemon=True)
        self._thread.start()

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def log(self, key: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if key is None or r.path.endswith(key)]

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(10)


def client_env(endpoint: str, *, key: str = "testing") -> dict[str, str]:
    """The environment that points boto at ``endpoint`` and nowhere else."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


_BUCKETS = iter(range(1_000_000))


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket on the test server, and the environment that reaches it; returns its name."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in client_env(s3_server.url).items():
        monkeypatch.setenv(name, value)
    name = f"envkit-test-{os.getpid()}-{next(_BUCKETS)}"
    import boto3

    boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1").create_bucket(Bucket=name)
    return name


# -- the proxy that stands for the server's process -----------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """``proxy`` below, in a process of its own: ``kill()`` is the server dying, ``start()`` it coming back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "proxy", str(self.port), str(self.target_port)],
                                        stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == b"ready"

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def _proxy(port: int, target: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for _ in range(100):  # the port of the proxy that was killed: free again within moments
        try:
            listener.bind(("127.0.0.1", port))
            break
        except OSError:
            time.sleep(0.05)
    listener.listen(64)
    print("ready", flush=True)

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", target))
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "proxy":
        _proxy(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(f"usage: {Path(__file__).name} proxy PORT TARGET_PORT")
