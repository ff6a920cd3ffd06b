"""How a test's rank process ends: every rank done, its process group destroyed, then ``os._exit``.

gloo's threads can abort the process at interpreter exit ("terminate called without an active
exception", SIGABRT, -6) after everything the test judges was printed: when the process group was
never destroyed (pytorch/pytorch#190489: Accelerate, for one, leaves it to the user), and, on CI's
2-core machines, now and then even after it was (test_naming's sharded ranks, twice; the Accelerate
harness once). ``os._exit`` skips the interpreter's and libtorch's finalizers, where that happens.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def end_process(code: int = 0, *, wait_for_peers: bool = True) -> NoReturn:
    """Flush and leave with ``code``. With a process group: first a barrier (``wait_for_peers``: every
    rank ends here, so no rank tears gloo down while a peer still talks to it), then destroy it."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
