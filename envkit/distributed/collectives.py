"""The collectives envkit uses, each a no-op in a process without an initialised process group.

``torch.distributed`` is taken from ``sys.modules`` (when the caller imported torch); nothing
here imports torch until a collective runs in a process group.
"""

from __future__ import annotations

import sys
from typing import Any


def _dist() -> Any | None:
    """torch.distributed when the caller imported torch and initialised a process group."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def is_distributed() -> bool:
    return _dist() is not None


def rank(group: Any = None) -> int:
    dist = _dist()
    return dist.get_rank(group) if dist is not None else 0


def world_size(group: Any = None) -> int:
    dist = _dist()
    return dist.get_world_size(group) if dist is not None else 1


def _collective_device(group: Any = None) -> Any:
    """NCCL reduces CUDA tensors only; gloo and the rest take CPU tensors."""
    import torch

    if torch.distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_max(value: int, group: Any = None) -> int:
    """The largest of every rank's value (a collective)."""
    import torch

    dist = _dist()
    if dist is None:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_collective_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """Rank ``src``'s obj on every rank (a collective); ``src`` is a global rank, as torch wants."""
    dist = _dist()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def all_gather(obj: Any, group: Any = None) -> list[Any]:
    dist = _dist()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def all_gather_digests(digest: str, group: Any = None) -> list[str]:
    """Every rank's ``sha256:<hex>`` digest through one fixed-size all_gather.

    Cheaper at start-up than ``all_gather_object`` (two collectives and pickling), which
    only the rare mismatch pays for, to send the full fingerprints.
    """
    dist = _dist()
    if dist is None:
        return [digest]
    import torch

    algorithm, _, hexdigest = digest.partition(":")
    raw = torch.tensor(list(bytes.fromhex(hexdigest)), dtype=torch.uint8, device=_collective_device(group))
    out = [torch.empty_like(raw) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, raw, group=group)
    return [f"{algorithm}:{bytes(t.cpu().tolist()).hex()}" for t in out]


def gather(obj: Any, group: Any = None) -> list[Any] | None:
    """Every rank's obj, in group-rank order, on the group's rank 0; None on the others (a collective).

    Pickled like any ``*_object`` collective: send plain data and CPU tensors.
    """
    dist = _dist()
    if dist is None:
        return [obj]
    first = global_rank(group, 0)
    out: list[Any] | None = [None] * dist.get_world_size(group) if dist.get_rank() == first else None
    dist.gather_object(obj, out, dst=first, group=group)
    return out


def global_rank(group: Any, group_rank: int) -> int:
    dist = _dist()
    if group is None or dist is None:
        return group_rank
    get = getattr(dist, "get_global_rank", None) or dist.distributed_c10d._get_global_rank  # torch < 2.0
    return int(get(group, group_rank))
