"""s3_direct: the stamp reads' signed GETs, against botocore's signer and the local S3 server; s3fs for the rest."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import envkit
from envkit.checkpoint import remote, s3_direct
from envkit.checkpoint.s3_direct import Credentials, Endpoint, plan, sign
from tests.checkpoint.s3server import S3Server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::envkit.EphemeralDirectoryWarning")
KEYS = ["run/x.pth", "a b/c+d=e.pth", "ünï/çødé~_.-.pth", "x/%41?&;.pth", "deep/er/still/epoch=3-step=10.ckpt"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEB4aDEXAMPLE//token=="])
@pytest.mark.parametrize("virtual_host", [False, True])
def test_the_signature_is_botocores(key: str, token: str | None, virtual_host: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle: botocore's own S3 SigV4 signer, on the same request at the same second."""
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    now = datetime.datetime(2026, 12, 2, 7, 30, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    endpoint = Endpoint("http", "s3.eu-west-3.amazonaws.com", "eu-west-3", virtual_host=True) if virtual_host \
        else Endpoint("http", "127.0.0.1:9000", "us-east-1")
    host, path = endpoint.target("my-bucket", key)
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    ours = sign("GET", host, path, {"range": "bytes=-327680"}, credentials, endpoint.region, now.strftime("%Y%m%dT%H%M%SZ"))

    request = botocore.awsrequest.AWSRequest("GET", f"http://{host}{path}", headers={"Range": "bytes=-327680"})
    botocore.auth.S3SigV4Auth(botocore.credentials.Credentials("AKIDEXAMPLE", credentials.secret_key, token), "s3",
                              endpoint.region).add_auth(request)
    theirs = {k.lower(): v for k, v in request.headers.items()}
    assert ours["authorization"] == theirs["authorization"]
    assert {k: ours[k] for k in ("x-amz-date", "x-amz-content-sha256")} == {k: theirs[k] for k in ("x-amz-date", "x-amz-content-sha256")}
    assert ours.get("x-amz-security-token") == theirs.get("x-amz-security-token")


KEYS_ENV = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}


@pytest.mark.parametrize(("settings", "env", "config_file", "expected"), [
    ({}, {**KEYS_ENV, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}, True, ("127.0.0.1:9000", "us-east-1", False)),
    ({}, {**KEYS_ENV, "AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://minio.lan"}, True, ("minio.lan", "us-east-1", False)),
    ({"endpoint_url": "http://b:2", "region": "eu-1"}, {**KEYS_ENV, "AWS_ENDPOINT_URL": "http://a:1"}, True, ("b:2", "eu-1", False)),
    ({}, {**KEYS_ENV, "AWS_REGION": "eu-west-3"}, False, ("s3.eu-west-3.amazonaws.com", "eu-west-3", True)),
    ({}, {**KEYS_ENV, "AWS_DEFAULT_REGION": "us-west-2", "AWS_ENDPOINT_URL": "http://a:1",
          "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}, False, ("s3.us-west-2.amazonaws.com", "us-west-2", True)),
    ({"anon": True}, {"AWS_ENDPOINT_URL": "http://a:1"}, True, ("a:1", "us-east-1", False)),
])
def test_the_plan_follows_what_is_named_outright(settings: dict[str, Any], env: dict[str, str], config_file: bool,
                                                  expected: tuple[str, str, bool]) -> None:
    planned = plan(settings, env, config_file)
    assert planned is not None
    endpoint, credentials = planned
    assert (endpoint.netloc, endpoint.region, endpoint.virtual_host) == expected
    assert credentials == (None if settings.get("anon") else Credentials("k", "s"))


@pytest.mark.parametrize(("settings", "env", "config_file"), [
    ({}, {"AWS_ENDPOINT_URL": "http://a:1"}, False),  # no keys in the environment: botocore's credential chain
    ({}, {**KEYS_ENV, "AWS_ENDPOINT_URL": "http://a:1", "AWS_PROFILE": "dev"}, False),
    ({"profile": "dev"}, {**KEYS_ENV, "AWS_ENDPOINT_URL": "http://a:1"}, False),
    ({}, {**KEYS_ENV, "AWS_ENDPOINT_URL": "http://a:1", "HTTPS_PROXY": "http://proxy:3128"}, False),
    ({}, {**KEYS_ENV, "AWS_ENDPOINT_URL": "http://a:1", "http_proxy": "http://proxy:3128"}, False),
    ({}, KEYS_ENV, False),  # AWS, but no region named
    ({}, {**KEYS_ENV, "AWS_REGION": "eu-west-3"}, True),  # AWS, and a config file that may name another endpoint
    ({}, {**KEYS_ENV, "AWS_ENDPOINT_URL": "http://a:1/base/path"}, False),
    ({}, {**KEYS_ENV, "AWS_ENDPOINT_URL": "ftp://a:1"}, False),
])
def test_anything_else_is_left_to_s3fs(settings: dict[str, Any], env: dict[str, str], config_file: bool) -> None:
    assert plan(settings, env, config_file) is None


def _upload(tmp_path: Path, bucket: str, name: str) -> str:
    envkit.save({"w": torch.arange(4.0)}, tmp_path / name, meta={"epoch": 1, "step": 3})
    remote.filesystem("s3", "s3://x").put_file(str(tmp_path / name), f"{bucket}/{name}")  # type: ignore[attr-defined]
    return f"s3://{bucket}/{name}"


def _envkit(*args: str, code: str = "") -> subprocess.CompletedProcess[str]:
    run = f"import sys; sys.argv = ['envkit', *sys.argv[1:]]\n{code}\nfrom envkit.cli import main\ntry:\n    main()\nfinally:\n" \
          "    print(json.dumps(sorted(m for m in ('fsspec', 's3fs', 'botocore', 'aiohttp', 'torch') if m in sys.modules)), " \
          "file=sys.stderr)"
    return subprocess.run([sys.executable, "-c", "import json\n" + run, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def _imported(done: subprocess.CompletedProcess[str]) -> list[str]:
    return list(json.loads(done.stderr.strip().splitlines()[-1]))


def test_check_of_a_bucket_object_imports_no_s3_library_and_answers_as_s3fs_does(tmp_path: Path, bucket: str,
                                                                               s3_server: S3Server) -> None:
    url = _upload(tmp_path, bucket, "c.pth")
    s3_server.reset_log()
    direct = _envkit("check", url, "--json")
    assert direct.returncode == 0, direct.stderr
    assert _imported(direct) == []
    assert [(r.method, r.range) for r in s3_server.log()] == [("GET", f"bytes=-{remote.TAIL_BYTES}")]
    assert "Credential=testing/" in s3_server.authorizations[-1]  # signed, with the environment's key
    through_s3fs = _envkit("check", url, "--json", code="import envkit.checkpoint.remote as r; r._direct = lambda where: None")
    assert through_s3fs.returncode == 0 and {"s3fs", "botocore"} <= set(_imported(through_s3fs))
    answers = [json.loads(d.stdout) for d in (direct, through_s3fs)]
    for answer in answers:
        answer["live"]["host"].pop("collected_at")  # this second, not the checkpoint's
    assert answers[0] == answers[1]


def test_a_sharded_checkpoints_marker_and_a_safetensors_header_read_directly_too(bucket: str, s3_server: S3Server,
                                                                               one_rank: None) -> None:
    pytest.importorskip("safetensors")
    with envkit.CheckpointManager(f"s3://{bucket}/run", project="p", sharded=True) as mgr:
        mgr.save(epoch=0, step=1, model=torch.nn.Linear(2, 2))
        dcp = str(mgr.latest().path)  # type: ignore[union-attr]
    envkit.save({"w": torch.ones(3)}, f"s3://{bucket}/w.safetensors")
    for url in (dcp, f"s3://{bucket}/w.safetensors"):
        s3_server.reset_log()
        done = _envkit("check", url)
        assert done.returncode == 0, done.stderr
        assert _imported(done) == [] and [r.method for r in s3_server.log()] == ["GET"]


def test_what_the_direct_get_cannot_answer_s3fs_does_with_the_same_one_line(bucket: str, s3_server: S3Server) -> None:
    s3_server.reset_log()
    done = _envkit("check", f"s3://{bucket}/missing.pth")
    assert done.returncode == 2 and "no such object" in done.stderr.splitlines()[0], done.stderr
    assert "s3fs" in _imported(done)
    assert [r.method for r in s3_server.log()] == ["GET", "GET"]  # the direct one (404), then s3fs's own


def test_a_kept_alive_connection_the_server_closed_is_opened_again(tmp_path: Path, bucket: str, s3_server: S3Server,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    url = _upload(tmp_path, bucket, "k.pth")
    fs, key, _ = remote.split_for_reading(url)
    assert isinstance(fs, s3_direct.DirectS3)
    first, size = fs.first_read(key, 64, tail=True)
    host = fs.endpoint.netloc
    stale = http.client.HTTPConnection(host)
    stale.connect()
    assert stale.sock is not None
    stale.sock.shutdown(socket.SHUT_RDWR)  # as a server's idle timeout leaves a kept-alive connection
    fs._connection, fs._host = stale, host
    monkeypatch.setattr(fs, "slow", lambda: pytest.fail("fell back to s3fs"))
    s3_server.reset_log()
    assert fs.cat_file(key, start=size - 64, end=size) == first
    assert [r.method for r in s3_server.log()] == ["GET"]  # opened again, once


def test_a_server_that_does_not_answer_is_one_line_after_one_attempt(tmp_path: Path, bucket: str) -> None:
    """A timed-out direct GET is the answer (s3fs would wait as long again): one connection, one line."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts in the kernel, never answers
    try:
        (tmp_path / "pyproject.toml").write_text("[tool.envkit.storage]\nconnect_timeout = 1\nread_timeout = 1\nretries = 0\n")
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        done = subprocess.run([sys.executable, "-m", "envkit", "check", f"s3://{bucket}/x.pth"], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "AWS_ENDPOINT_URL": endpoint}, cwd=tmp_path)
        silent.setblocking(False)
        connections = 0
        while True:
            try:
                silent.accept()[0].close()
            except BlockingIOError:
                break
            connections += 1
    finally:
        silent.close()
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "did not answer" in done.stderr and endpoint in done.stderr
    assert connections == 1
