"""The test S3 server's ``range_reads="seek"`` option answers exactly as stock moto does.

The option exists for the benchmark (benchmarks/s3_check.py): stock moto reads a whole object
to answer a range of it. These tests hold the two modes equal on what a client sees: status,
headers (all but the request id and the date, which differ between any two requests) and body,
for every kind of Range header moto treats differently, on an object held in memory and one
spooled to disk; and the server's request log is the same.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from tests.checkpoint.s3server import S3Server  # noqa: E402

RANGES = [
    "bytes=0-99", "bytes=-100", "bytes=100-", "bytes=7-7", "bytes=900-5000000000", "bytes=-5000000000",
    "bytes=10-5", "bytes=0-1,5-9", "bytes=abc", "bytes=-0", "bytes=99999999999-",
]  # fmt: skip
_VARYING = {"x-amz-request-id", "x-amzn-requestid", "date", "x-amz-id-2"}


def _answer(client: Any, bucket: str, key: str, rng: str) -> tuple[Any, ...]:
    from botocore.exceptions import ClientError

    try:
        got = client.get_object(Bucket=bucket, Key=key, Range=rng)
        meta, body = got["ResponseMetadata"], got["Body"].read()
    except ClientError as exc:
        meta, body = exc.response["ResponseMetadata"], exc.response["Error"]["Code"].encode()
    headers = {k: v for k, v in meta["HTTPHeaders"].items() if k.lower() not in _VARYING}
    return meta["HTTPStatusCode"], headers, body


def test_seek_range_reads_answer_as_stock_moto_does(s3_server: S3Server, bucket: str) -> None:
    client = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
    small, spooled = os.urandom(1000), os.urandom(17 * 1024 * 1024 + 5)  # moto spools a value over 16 MiB to disk
    client.put_object(Bucket=bucket, Key="small", Body=small)
    client.put_object(Bucket=bucket, Key="spooled", Body=spooled)
    statuses = set()
    try:
        for key, data in (("small", small), ("spooled", spooled)):
            for rng in RANGES:
                s3_server.range_reads = "stock"
                s3_server.reset_log()
                stock = _answer(client, bucket, key, rng)
                stock_log = s3_server.log()
                s3_server.range_reads = "seek"
                s3_server.reset_log()
                seek = _answer(client, bucket, key, rng)
                assert seek == stock, (key, rng)
                assert s3_server.log() == stock_log
                statuses.add(stock[0])
            s3_server.range_reads = "seek"
            assert _answer(client, bucket, key, "bytes=-100")[2] == data[-100:]
            assert _answer(client, bucket, key, "bytes=3-10")[2] == data[3:11]
    finally:
        s3_server.range_reads = "stock"
    assert statuses == {200, 206, 416}  # the cases reached every branch: a slice, the whole object, a refusal


class _CountingFile:
    """A moto key's spooled file that records how many bytes each read returned."""

    def __init__(self, inner: Any) -> None:
        self._inner, self.reads = inner, []

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self.reads.append(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_seek_range_reads_read_only_the_range(s3_server: S3Server, bucket: str) -> None:
    """Stock moto reads the whole value for a 64 KiB range; the seek mode reads 64 KiB."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    size = 17 * 1024 * 1024 + 5
    client = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="big", Body=os.urandom(size))
    key = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_bucket(bucket).keys["big"]
    key._value_buffer = counting = _CountingFile(key._value_buffer)
    try:
        for mode in ("stock", "seek"):
            s3_server.range_reads = mode
            assert len(client.get_object(Bucket=bucket, Key="big", Range="bytes=-65536")["Body"].read()) == 65536
    finally:
        s3_server.range_reads = "stock"
    assert counting.reads == [size, 65536]
