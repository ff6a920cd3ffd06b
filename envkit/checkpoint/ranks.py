"""Ranks: who this process is among the ranks sharing a checkpoint folder (one process: rank 0 of 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envkit import distributed as dist_util


@dataclass(frozen=True)
class Ranks:
    distributed: bool
    rank: int
    group: Any = None

    @classmethod
    def current(cls, group: Any = None) -> Ranks:
        """Under an initialised torch.distributed process group, this process in ``group``; else rank 0 alone."""
        if dist_util.is_distributed():
            return cls(True, dist_util.rank(group), group)
        return cls(False, 0, group)

    @property
    def world(self) -> int:
        return dist_util.world_size(self.group) if self.distributed else 1

    @property
    def src(self) -> int:
        """Rank 0's global rank: the source of broadcasts."""
        return dist_util.global_rank(self.group, 0) if self.distributed else 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value on every rank (a collective when distributed)."""
        return dist_util.broadcast_object(value, src=self.src, group=self.group) if self.distributed else value
