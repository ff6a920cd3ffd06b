"""One environment per job: the ranks of a torch.distributed run must agree on what they run.

``check_consistency()`` is a collective: every rank of the group calls it, every rank
gets the same answer, and every rank raises the same EnvironmentMismatch when they
disagree, so that no rank is left waiting in a later collective.

Cost: one ``all_gather_object`` of the fingerprint digests (~70 bytes a rank). Only when
the digests differ are the full fingerprints gathered and compared with rank 0's.

Which differences refuse: every row the policy rates above ``info``. With the default
(``compatible``) policy that is any change of Python, torch (incl. its build), CUDA,
cuDNN, GPU capability, platform or a package version: replicas that run different code
drift apart. Host-specific facts (hostname, collection time, prefix) are not in the
digest at all. GPUs may legitimately differ per rank: with ``CUDA_VISIBLE_DEVICES`` set
per rank one rank sees one device and another eight, and nodes may carry different
driver patch releases; ``gpu.devices``, ``gpu.driver`` and ``gpu.nccl`` are ``info`` rows and
never refuse. A job mixing GPU generations (``gpu.capability``) does refuse by default,
since kernels and TF32/bf16 numerics differ per rank; allow it with the policy override
``"gpu.capability" = "info"`` in ``[tool.envkit.policy]``.

No torch import at module level: the module is importable without torch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from envkit.errors import EnvironmentMismatch
from envkit.fingerprint.schema import Fingerprint
from envkit.policy import Difference, Policy, diff, evaluate

MAX_SHOWN_ROWS = 4


@dataclass(frozen=True)
class RankDifference:
    """How one rank's environment differs from rank 0's."""

    rank: int
    host: str | None
    prefix: str | None
    rows: tuple[Difference, ...]

    @property
    def refusing(self) -> tuple[Difference, ...]:
        return tuple(r for r in self.rows if r.severity not in ("ok", "info"))

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "host": self.host, "prefix": self.prefix, "differences": [r.to_json() for r in self.rows]}


@dataclass(frozen=True)
class ConsistencyReport:
    world_size: int
    digests: tuple[str, ...]
    reference_host: str | None
    differences: tuple[RankDifference, ...] = ()

    @property
    def ok(self) -> bool:
        return not any(d.refusing for d in self.differences)

    def summary(self) -> str:
        bad = [d for d in self.differences if d.refusing]
        if not bad:
            return f"all {self.world_size} ranks run the same environment"
        parts = []
        for d in bad:
            rows = d.refusing
            shown = ", ".join(f"{r.field} {_show(r.stored)} -> {_show(r.live)}" for r in rows[:MAX_SHOWN_ROWS])
            more = f" and {len(rows) - MAX_SHOWN_ROWS} more" if len(rows) > MAX_SHOWN_ROWS else ""
            parts.append(f"rank {d.rank} (host {d.host}, {d.prefix}): {shown}{more}")
        ranks = ", ".join(str(d.rank) for d in bad)
        return (
            f"the ranks of this job run different environments: rank{'s' if len(bad) > 1 else ''} {ranks} "
            f"differ{'' if len(bad) > 1 else 's'} from rank 0 (host {self.reference_host}): {'; '.join(parts)}; "
            "start every rank from the same environment (same Python, torch and packages)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "world_size": self.world_size,
            "digests": list(self.digests),
            "reference_host": self.reference_host,
            "differences": [d.to_json() for d in self.differences],
        }


def _show(value: object) -> str:
    return "none" if value is None else str(value)


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


def _all_gather_digests(digest: str, group: Any = None) -> list[str]:
    """Every rank's ``sha256:<hex>`` digest through one fixed-size all_gather.

    Cheaper at start-up than ``all_gather_object`` (two collectives and pickling), which
    only the rare mismatch pays for, to send the full fingerprints.
    """
    import torch

    dist = _dist()
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
    first = _global_rank(group, 0)
    out: list[Any] | None = [None] * dist.get_world_size(group) if dist.get_rank() == first else None
    dist.gather_object(obj, out, dst=first, group=group)
    return out


def _global_rank(group: Any, group_rank: int) -> int:
    dist = _dist()
    if group is None or dist is None:
        return group_rank
    get = getattr(dist, "get_global_rank", None) or getattr(dist.distributed_c10d, "_get_global_rank")  # torch < 2.0
    return int(get(group, group_rank))


def compare_fingerprints(fingerprints: list[Fingerprint], policy: Policy) -> tuple[RankDifference, ...]:
    """Pure: every rank whose fingerprint differs from rank 0's, with the policy's rows."""
    reference = fingerprints[0]
    out = []
    for r, fp in enumerate(fingerprints[1:], start=1):
        if fp.digest == reference.digest:
            continue
        rows = evaluate(diff(reference, fp), policy)
        out.append(RankDifference(r, fp.host.hostname, fp.host.prefix, rows))
    return tuple(out)


def check_consistency(
    group: Any = None,
    policy: Policy | str | None = None,
    *,
    fingerprint: Fingerprint | None = None,
) -> ConsistencyReport:
    """Raise EnvironmentMismatch (on every rank) when ranks run different environments.

    A collective: call it on every rank of ``group``. Without an initialised process
    group it checks nothing and reports a world of one.
    """
    if fingerprint is None:
        from envkit.fingerprint import collect

        fingerprint = collect()
    if _dist() is None:
        return ConsistencyReport(1, (fingerprint.digest,), fingerprint.host.hostname)
    digests = tuple(_all_gather_digests(fingerprint.digest, group))
    if len(set(digests)) == 1:
        return ConsistencyReport(len(digests), digests, None)
    from envkit.checkpoint.compat import resolve_policy

    docs = all_gather(json.dumps(fingerprint.to_json(), separators=(",", ":")), group)
    fps = [Fingerprint.from_json(json.loads(d), source=f"rank {i}") for i, d in enumerate(docs)]
    rows = compare_fingerprints(fps, resolve_policy(policy))
    rows = tuple(RankDifference(_global_rank(group, d.rank), d.host, d.prefix, d.rows) for d in rows)
    report = ConsistencyReport(len(digests), digests, fps[0].host.hostname, rows)
    if not report.ok:
        raise EnvironmentMismatch(report.summary(), report)
    return report
