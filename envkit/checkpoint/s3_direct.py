"""The stamp reads of ``s3://`` URLs as plain signed HTTP GETs: no fsspec, s3fs or botocore import.

Why it exists: ``envkit check s3://...`` needs one ranged GET of ~320 KiB, and importing s3fs,
aiobotocore, aiohttp and botocore and building an S3 client costs ~0.45 s before it: ~20x the
request, and most of the command. Here the request is signed (AWS Signature Version 4, the
S3 variant: the path as sent, the empty body's SHA-256) and sent with ``http.client``.

It answers only where the answer is certainly the one s3fs would get, and hands everything
else to s3fs (``remote.filesystem``), whose errors, retries and redirects are envkit's:

- eligible: an endpoint named outright (``[tool.envkit.storage] endpoint_url``,
  ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``; path-style requests, as S3-compatible servers
  take them), or AWS itself with a region named outright and no shared config file (which could
  name another endpoint); credentials in ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (and
  ``AWS_SESSION_TOKEN``), or ``anon = true``; no profile and no proxy variables;
- every answer but 200/206 with a ``Content-Range``, and every failure to connect, falls back:
  the same call again through s3fs, which then answers (a missing object's one line, access
  denied, a wrong region's redirect, a retry). A request that timed out does not go again: it is
  the one-line "did not answer", as s3fs's would be.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")
_TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: ``scheme://host[:port]``, and whether the bucket is in the host (AWS) or the path."""

    scheme: str
    netloc: str
    region: str
    virtual_host: bool = False

    def target(self, bucket: str, key: str) -> tuple[str, str]:
        """(the Host header, the request path, percent-encoded as S3 signs it) of an object."""
        encoded = quote(key, safe="/~")
        if self.virtual_host:
            return f"{bucket}.{self.netloc}", f"/{encoded}"
        return self.netloc, f"/{quote(bucket, safe='~')}/{encoded}"


def sign(method: str, host: str, path: str, headers: Mapping[str, str], credentials: Credentials, region: str,
         amz_date: str) -> dict[str, str]:
    """``headers`` plus the SigV4 ones for a body-less S3 request (pure: ``amz_date`` is ``%Y%m%dT%H%M%SZ``)."""
    signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed.update({"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amz_date})
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    canonical = "\n".join([method, path, "", *(f"{n}:{signed[n]}" for n in names), "", ";".join(names), EMPTY_SHA256])
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{credentials.secret_key}".encode()
    for part in (amz_date[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, SignedHeaders={';'.join(names)}, "
                     f"Signature={signature}")
    return {**{k: v for k, v in signed.items() if k != "host"}, "authorization": authorization}


def plan(settings: Mapping[str, Any], env: Mapping[str, str], config_file_exists: bool) -> tuple[Endpoint, Credentials | None] | None:
    """Where a direct request goes and with what credentials (None: anonymous); None: not eligible, use s3fs."""
    if "profile" in settings or env.get("AWS_PROFILE") or any(env.get(v) for v in _PROXY_VARIABLES):
        return None
    anon = bool(settings.get("anon"))
    credentials = None
    if not anon:
        access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            return None  # a profile, SSO, a role, the instance's metadata: botocore's chain
        credentials = Credentials(access, secret, env.get("AWS_SESSION_TOKEN") or None)
    region = settings.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    configured = env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() not in _TRUE
    url = settings.get("endpoint_url") or (configured and (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")))
    if url:
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
            return None
        return Endpoint(parts.scheme, parts.netloc, str(region or "us-east-1")), credentials
    if not region or config_file_exists:
        return None
    return Endpoint("https", f"s3.{region}.amazonaws.com", str(region), virtual_host=True), credentials


class DirectS3:
    """The part of an fsspec file system that ``RangeView`` calls (``first_read``, ``cat_file``, ``size``), over
    direct GETs, each of which falls back to s3fs (``slow()``) for whatever it cannot answer itself."""

    protocol = ("s3direct",)

    def __init__(self, endpoint: Endpoint, credentials: Credentials | None, *, connect_timeout: float,
                 read_timeout: float, slow: Any) -> None:
        self.endpoint, self.credentials = endpoint, credentials
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._slow_factory = slow
        self._slow: Any = None
        self._connection: Any = None
        self._host = ""
        self._lock = threading.Lock()  # one connection, one request on it at a time (a background save's thread reads too)

    def slow(self) -> Any:
        if self._slow is None:
            self._slow = self._slow_factory()
        return self._slow

    def first_read(self, key: str, n: int, *, tail: bool) -> tuple[bytes, int] | None:
        """The object's last (``tail``) or first ``n`` bytes and its size; None: ask ``slow()`` (``remote._first_read`` does)."""
        return self._get(key, f"bytes=-{n}" if tail else f"bytes=0-{n - 1}", lambda total: min(n, total))

    def cat_file(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        if start is not None and start >= 0 and end is not None and end > start:
            answer = self._get(key, f"bytes={start}-{end - 1}", lambda total: max(0, min(end, total) - start))
            if answer is not None:
                return answer[0]
        return bytes(self.slow().cat_file(key, start=start, end=end))

    def size(self, key: str) -> int:
        return int(self.slow().size(key))

    def _get(self, key: str, byte_range: str, expected: Callable[[int], int]) -> tuple[bytes, int] | None:
        """The bytes of ``byte_range`` and the object's size (``expected(size)`` bytes must come); None: not an answer
        to take as s3fs's (an error status, a refused connection, a server that ignored the range): ask s3fs."""
        bucket, _, name = key.partition("/")
        if not bucket or not name or "?" in key:
            return None
        host, path = self.endpoint.target(bucket, name)
        headers = {"range": byte_range}
        if self.credentials is not None:
            headers = sign("GET", host, path, headers, self.credentials, self.endpoint.region,
                           time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        with self._lock:
            return self._send(host, path, headers, expected)

    def _send(self, host: str, path: str, headers: Mapping[str, str], expected: Callable[[int], int]) -> tuple[bytes, int] | None:
        for fresh in ((False, True) if self._connection is not None else (True,)):  # a kept-alive one the server closed: once more
            try:
                response = self._request(host, path, headers, fresh=fresh)
                data = response.read()
            except TimeoutError:
                self._close()
                raise TimeoutError(f"no answer from {self.endpoint.scheme}://{host} within its timeouts") from None
            except Exception:  # noqa: BLE001 - refused, reset, TLS, a bad status line: s3fs's to answer
                self._close()
                continue
            total = str(response.getheader("Content-Range") or "").rpartition("/")[2]
            if not total.isdigit() or len(data) != expected(int(total)) or response.status not in (200, 206) \
                    or (response.status == 200 and len(data) != int(total)):
                return None  # an error, a server that ignored the range, a short body: s3fs's to answer
            return data, int(total)
        return None

    def _request(self, host: str, path: str, headers: Mapping[str, str], *, fresh: bool) -> Any:
        if fresh or self._connection is None or self._connection.sock is None or self._host != host:
            import http.client

            self._close()
            cls = http.client.HTTPSConnection if self.endpoint.scheme == "https" else http.client.HTTPConnection
            connection = cls(host, timeout=self.connect_timeout)
            connection.connect()
            if connection.sock is not None:
                connection.sock.settimeout(self.read_timeout)
            self._connection, self._host = connection, host
        self._connection.request("GET", path, headers=dict(headers))
        return self._connection.getresponse()

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def config_file_exists(env: Mapping[str, str]) -> bool:
    return os.path.exists(os.path.expanduser(env.get("AWS_CONFIG_FILE") or "~/.aws/config"))


__all__ = ["Credentials", "DirectS3", "Endpoint", "plan", "sign"]
