"""A shuffling sampler that can resume in the middle of an epoch.

Epoch ``e``'s order is drawn from ``(seed, e)`` alone, so any process can recompute it.
The saved position counts the samples the training loop has *consumed*, not the ones
the DataLoader has fetched: with ``num_workers > 0`` the loader reads batches ahead of
the loop, and resuming from the fetch count would silently skip those batches.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator, Sized
from types import FrameType
from typing import Any

import torch
from torch.utils.data import Sampler

STATE_VERSION = 1
_FRAMES_TO_SEARCH = 12


class ResumableRandomSampler(Sampler[int]):
    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.epoch = 0
        self._start = 0  # where the current epoch resumes
        self._restored_epoch: int | None = None
        self._yielded = 0  # indices handed to the DataLoader this epoch (from _start)
        self._loader_iter: weakref.ReferenceType[Any] | None = None
        self._batch_size: int | None = None
        self._rng_on_iter: dict[str, Any] | None = None

    def __len__(self) -> int:
        return max(len(self.data_source) - self._start, 0)

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data_source), generator=generator).tolist()

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``; keeps a restored mid-epoch position only for the restored epoch."""
        if self._restored_epoch is not None and epoch == self._restored_epoch:
            self._restored_epoch = None
        else:
            self._start = 0
            self._restored_epoch = None
            self._rng_on_iter = None
        self.epoch = epoch
        self._yielded = 0
        self._loader_iter = None

    def __iter__(self) -> Iterator[int]:
        if self._rng_on_iter is not None:
            from envkit.checkpoint.training_state import restore_rng

            restore_rng(self._rng_on_iter)
            self._rng_on_iter = None
        order = self.order(self.epoch)
        self._yielded = 0
        self._loader_iter = None
        self._find_loader_iterator()
        for index in order[self._start :]:
            self._yielded += 1
            yield index

    def _find_loader_iterator(self) -> None:
        """Find the DataLoader iterator pulling from us, to count what it gave the loop.

        Its ``_num_yielded`` counts batches returned to the training loop (torch 1.x to 2.x).
        Without it (a custom loader, or none) the fetch count is used, which is exact when
        nothing reads ahead (``num_workers=0``).
        """
        frame: FrameType | None = sys._getframe(1)
        for _ in range(_FRAMES_TO_SEARCH):
            if frame is None:
                return
            candidate = frame.f_locals.get("self")
            if candidate is not None and hasattr(candidate, "_num_yielded") and hasattr(candidate, "_index_sampler"):
                batch_size = getattr(candidate._index_sampler, "batch_size", None)
                if isinstance(batch_size, int) and batch_size > 0:
                    self._loader_iter = weakref.ref(candidate)
                    self._batch_size = batch_size
                return
            frame = frame.f_back

    def consumed(self) -> int:
        """Samples of the current epoch the loop has consumed (including any resumed offset)."""
        loader_iter = self._loader_iter() if self._loader_iter is not None else None
        if loader_iter is not None and self._batch_size:
            done = int(loader_iter._num_yielded) * self._batch_size
            return min(self._start + done, len(self.data_source))
        return min(self._start + self._yielded, len(self.data_source))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.consumed(),
            "size": len(self.data_source),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("size", len(self.data_source))) != len(self.data_source):
            from envkit.errors import BadInput

            raise BadInput(
                f"the sampler was saved over {state['size']} samples and this dataset has {len(self.data_source)}; "
                "resume with the same dataset"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        # An epoch that had ended resumes with nothing left to yield, so the loop moves on.
        self._start = min(int(state["position"]), len(self.data_source))
        self._restored_epoch = self.epoch
        self._yielded = 0
        self._loader_iter = None

    def restore_rng_when_iterated(self, rng_state: dict[str, Any]) -> None:
        """Re-apply ``rng_state`` when the restored epoch's iteration begins.

        Creating a DataLoader iterator draws a seed from the global torch RNG. An
        uninterrupted run drew it at the start of the epoch, before the checkpoint; a
        resumed run draws it again after restoring, which would shift dropout and every
        other random stream by one draw. The loader creates its iterator and only then
        asks us for indices, so restoring here undoes that extra draw.
        """
        self._rng_on_iter = rng_state
