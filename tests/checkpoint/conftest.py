"""Fixtures of the checkpoint tests: the S3 API server on 127.0.0.1 and a bucket on it (s3server.py)."""

from tests.checkpoint.s3server import bucket, s3_server  # noqa: F401 - fixtures
