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

Ranged GETs: stock moto (5.2.5) answers ``Range: bytes=a-b`` by reading the object's whole value
(``FakeKey.value``: the key's SpooledTemporaryFile read from byte 0 to the end) and then slicing it
(``S3Response._handle_range_header``), so a 64 KiB range of a 2 GiB object costs reading 2 GiB; S3
and MinIO read only the range. ``S3Server(range_reads="seek")`` (or setting ``range_reads`` later)
hands moto, for the duration of a ranged GET only, a value that knows its length and reads a slice
by seek + read of that same spooled file: moto's code runs unchanged and computes the same status,
headers and body from it (``test_s3server.py`` holds the two modes equal, byte for byte and header
for header); anything but a slice (a fallback to the whole object) reads it whole, as stock moto
does. The request log is the same in both modes. ``"stock"`` (the default) is moto as it ships.
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
RANGE_READS = ("stock", "seek")
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


_SEEK = threading.local()  # set while this thread serves a ranged GET in "seek" mode


class _SeekValue:
    """A moto key's value as moto's range handler uses it (``len`` and a slice), read by seek + read."""

    def __init__(self, key: Any) -> None:
        self._key = key
        with key.lock:
            key._value_buffer.seek(0, os.SEEK_END)
            self._size = key._value_buffer.tell()

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, item: slice) -> bytes:
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("only contiguous slices")
        start, stop, _ = item.indices(self._size)
        with self._key.lock:
            self._key._value_buffer.seek(start)
            return bytes(self._key._value_buffer.read(max(0, stop - start)))

    def __bytes__(self) -> bytes:
        return self[0 : self._size]


def _install_seek_reads() -> None:
    """Wrap moto's ``FakeKey.value`` and ``S3Response.key_response`` once per process; both act as
    stock moto unless the serving thread set ``_SEEK.active``."""
    from moto.s3.models import FakeKey
    from moto.s3.responses import S3Response

    if getattr(FakeKey, "_envkit_seek", False):
        return
    stock_value, stock_response = FakeKey.value, S3Response.key_response

    def value(self: Any) -> Any:
        return _SeekValue(self) if getattr(_SEEK, "active", False) else stock_value.fget(self)

    def key_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        status, headers, content = stock_response(self, *args, **kwargs)
        if isinstance(content, _SeekValue):  # not sliced (a fallback to the whole object): what stock moto sends
            content = bytes(content)
        return status, headers, content

    FakeKey.value = property(value, stock_value.fset)  # type: ignore[method-assign,assignment]
    S3Response.key_response = key_response  # type: ignore[method-assign]
    FakeKey._envkit_seek = True  # type: ignore[attr-defined]


class S3Server:
    def __init__(self, range_reads: str = "stock") -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.range_reads = range_reads
        self.requests: list[Request] = []
        self.authorizations: list[str] = []  # each request's Authorization header, in order ("" when unsigned)
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            request = Request(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""),
                              environ.get("HTTP_RANGE"))
            auth = environ.get("HTTP_AUTHORIZATION", "")
            with self._lock:
                self.requests.append(request)
                self.authorizations.append(auth)
            if f"Credential={READONLY_KEY}/" in auth and request.method in ("PUT", "POST", "DELETE"):
                start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(_DENIED)))])
                return [_DENIED]
            if self.range_reads not in RANGE_READS:
                raise ValueError(f"range_reads={self.range_reads!r}: one of {RANGE_READS}")
            if self.range_reads == "seek" and request.method == "GET" and request.range:
                _install_seek_reads()
                _SEEK.active = True
                try:
                    return app(environ, start_response)  # the body is built before this returns (bytes)
                finally:
                    _SEEK.active = False
            return app(environ, start_response)

        self._server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-s3", daemon=True)
        self._thread.start()

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.authorizations.clear()

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
