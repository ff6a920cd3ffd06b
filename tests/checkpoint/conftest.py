"""Fixtures of the checkpoint tests: the S3 API server on 127.0.0.1 and a bucket on it (s3server.py), a one-rank gloo world."""

from collections.abc import Iterator

import pytest

from tests.checkpoint.s3server import bucket, s3_server  # noqa: F401 - fixtures


@pytest.fixture
def one_rank() -> Iterator[None]:
    """A torch.distributed world of one (gloo) in this process, as sharded=True needs; destroyed after the test."""
    import torch.distributed as dist

    from tests.checkpoint.s3server import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
