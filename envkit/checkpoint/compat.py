"""The old name of ``envkit.checkpoint.resume_check`` (and of ``envkit.config.resolve_policy``).

Kept only while checkpoint/directory.py, manager.py and sharded.py import from here; remove it
once they import ``resume_check`` and ``envkit.config`` instead.
"""

from envkit.checkpoint.resume_check import check, guard, load
from envkit.config import resolve_policy

__all__ = ["check", "guard", "load", "resolve_policy"]
