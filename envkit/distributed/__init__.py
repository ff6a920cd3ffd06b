"""torch.distributed for envkit: the collectives it needs (``collectives``) and the check that
every rank runs the same environment (``consistency``: ``check_consistency``).

Nothing here imports torch at import time: each collective is a no-op without a process group.
"""

from __future__ import annotations

from envkit.distributed.collectives import (
    all_gather,
    all_gather_digests,
    all_max,
    broadcast_object,
    gather,
    global_rank,
    is_distributed,
    rank,
    world_size,
)
from envkit.distributed.consistency import (
    ConsistencyReport,
    RankDifference,
    check_consistency,
    compare_fingerprints,
)

__all__ = [
    "ConsistencyReport",
    "RankDifference",
    "all_gather",
    "all_gather_digests",
    "all_max",
    "broadcast_object",
    "check_consistency",
    "compare_fingerprints",
    "gather",
    "global_rank",
    "is_distributed",
    "rank",
    "world_size",
]
