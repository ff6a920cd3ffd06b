"""StopAgreement: a stop signal sets a flag; under torch.distributed the ranks agree on it.

The handler only records the signal: the save happens at the next step boundary, never
inside the handler. Distributed, ``agree`` is a collective (an all-reduce max of the
signal numbers) that every rank runs at the same step boundary, so a SIGTERM that reaches
one rank stops all of them after the same step.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from envkit import distributed as dist_util


class StopAgreement:
    def __init__(self, *, distributed: bool, group: Any = None) -> None:
        self.distributed = distributed
        self.group = group
        self.received: int | None = None  # the signal this process got
        self.agreed: int | None = None  # the signal every rank agreed to stop on
        self._fresh = False  # save() agreed; the next should_stop reads that answer
        self._previous: dict[int, Any] = {}

    # -- handlers --------------------------------------------------------------------
    def install(self, signals: tuple[int, ...] | None = None) -> None:
        """SIGTERM and SIGUSR1 (by default) set the flag; nothing else happens in the handler."""
        chosen = signals if signals is not None else (signal.SIGTERM, getattr(signal, "SIGUSR1", signal.SIGTERM))
        for signum in chosen:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    # -- agreement -------------------------------------------------------------------
    def agree(self) -> None:
        """A collective when distributed and no stop is agreed yet (then on every rank alike)."""
        if self.agreed is not None:
            return  # every rank knows already; no collective
        agreed = dist_util.all_max(self.received or 0, self.group)
        if agreed:
            self.agreed = agreed

    def agree_for_save(self) -> None:
        """save() agrees first; the should_stop read right after it reuses that answer."""
        if self.distributed:
            self.agree()
            self._fresh = True

    @property
    def stopping_now(self) -> bool:
        """What is_due asks: the agreed stop (distributed, no collective) or the local flag."""
        return self.agreed is not None if self.distributed else self.received is not None

    def should_stop(self) -> bool:
        if not self.distributed:
            return self.received is not None
        if self._fresh:
            self._fresh = False
        else:
            self.agree()
        return self.agreed is not None

    @property
    def signal(self) -> int | None:
        return self.agreed if self.distributed and self.agreed else self.received

    @property
    def exit_code(self) -> int:
        """128 + the signal number (143 for SIGTERM), the shell's convention for a run a signal ended."""
        signum = self.signal
        return 128 + signum if signum is not None else 0
