"""The training state a CheckpointManager saves: one frozen record, built and restored here only.

``capture`` reads it from the live objects (model, optimizer, ...); ``to_state`` is the
dict a single-file checkpoint pickles (format ``envkit.training/1``); ``from_state``
reads that dict back; ``restore`` puts it into the live objects. A storage may keep the
parts in other places (sharded: tensors in DCP files, the rest in a per-rank file) but
it builds and reads a TrainingState all the same. torch is imported only when used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.errors import BadInput, MissingStateWarning, RankRngWarning, warn_at_caller

STATE_FORMAT = "envkit.training/1"
PARTS = ("model", "optimizer", "scheduler", "scaler", "sampler")


@dataclass(frozen=True)
class TrainingState:
    epoch: int
    step: int
    metrics: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] | None = None
    optimizer: Mapping[str, Any] | None = None
    scheduler: Mapping[str, Any] | None = None
    scaler: Mapping[str, Any] | None = None
    sampler: Mapping[str, Any] | None = None
    rng: Mapping[str, Any] | None = None
    rng_ranks: list[Mapping[str, Any]] | None = None  # every rank's RNG, rank order (a distributed save)

    @classmethod
    def capture(
        cls,
        *,
        epoch: int,
        step: int,
        metrics: Mapping[str, Any],
        extra: Mapping[str, Any] | None,
        parts: Mapping[str, Any],
        rng_ranks: list[Mapping[str, Any]] | None = None,
    ) -> TrainingState:
        """The state of the live objects in ``parts`` (model=..., optimizer=..., each may be None)."""
        from envkit.checkpoint import training_state as ts

        model, others = parts.get("model"), {k: parts.get(k) for k in PARTS[1:]}
        return cls(
            epoch,
            step,
            metrics,
            dict(extra or {}),
            ts.model_state(model) if model is not None else None,
            **{k: v.state_dict() if v is not None else None for k, v in others.items()},
            rng=rng_ranks[0] if rng_ranks else ts.capture_rng(),  # rank 0's: what older readers restore
            rng_ranks=rng_ranks or None,
        )

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "step": self.step,
            "metrics": self.metrics,
            "extra": dict(self.extra),
            **{k: getattr(self, k) for k in PARTS},
            "rng": self.rng,
        }
        if self.rng_ranks:
            state.update(rng_ranks=self.rng_ranks, world_size=len(self.rng_ranks))
        return state

    @classmethod
    def from_state(cls, state: Any, *, source: Path | str) -> TrainingState:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise BadInput(f"{source}: not a CheckpointManager checkpoint; load it with envkit.load")
        return cls(
            int(state["epoch"]),
            int(state["step"]),
            state.get("metrics") or {},
            state.get("extra") or {},
            **{k: state.get(k) for k in PARTS},
            rng=state.get("rng"),
            rng_ranks=state.get("rng_ranks") or None,
        )

    def rng_for(self, rank: int, world: int, path: Path) -> Mapping[str, Any]:
        """This rank's saved RNG state: its own when the world size is the one saved, else rank 0's.

        Checkpoints without ``rng_ranks`` (single-process saves, those of envkit before per-rank
        RNG, and a sharded rank file, which holds its own rank's) hold one state, which every rank restores.
        """
        assert self.rng is not None
        ranks = self.rng_ranks
        if not ranks:
            return self.rng
        if len(ranks) == world:
            return ranks[rank]
        if rank == 0:
            warn_at_caller(
                f"{path.name} was saved by {len(ranks)} ranks and this job has {world}: every rank restores rank 0's "
                "random state, so per-rank random streams (dropout, augmentation) do not continue as they would have; "
                f"resume with {len(ranks)} ranks for an exact resume",
                RankRngWarning,
            )
        return self.rng

    def restore(self, parts: Mapping[str, Any], path: Path, *, rank: int = 0, world: int = 1) -> None:
        """Load every part into its live object, warn about objects it holds no state for, restore the RNG."""
        from envkit.checkpoint import training_state as ts

        model = parts.get("model")
        if model is not None and self.model is not None:
            ts.load_model_state(model, self.model)
        for key in PARTS[1:]:
            target, saved = parts.get(key), getattr(self, key)
            if target is not None and saved is not None:
                target.load_state_dict(saved)
        warn_missing_state(path, [k for k in PARTS if parts.get(k) is not None and getattr(self, k) is None])
        rng = self.rng_for(rank, world, path)
        ts.restore_rng(rng)
        sampler = parts.get("sampler")
        if sampler is not None and hasattr(sampler, "restore_rng_when_iterated"):
            sampler.restore_rng_when_iterated(rng)


def warn_missing_state(path: Path, missing: list[str]) -> None:
    """resume() got objects (``missing``: their argument names) the checkpoint at ``path`` holds no state for."""
    if not missing:
        return
    names = ", ".join(missing)
    these = "it starts" if len(missing) == 1 else "they start"
    example = ", ".join(f"{k}={k}" for k in missing)
    warn_at_caller(
        f"{path}: holds no state for the {names} passed to resume(), so {these} from scratch; "
        f"save with mgr.save(..., {example}) to resume {'it' if len(missing) == 1 else 'them'}",
        MissingStateWarning,
    )
