"""Sharded checkpoints on disk: a folder of torch.distributed.checkpoint files plus ``envkit.json``.

The folder is written under a temporary name, renamed to its final name, and only then
committed by writing ``envkit.json`` (atomically): a folder without it is an interrupted
save, never a checkpoint. The stamp is the usual ``envkit.stamp/1`` document plus
``files``: every file's size and digest, in the sharded layout (plain top-level names, no
``layout`` field) of ``envkit.checkpoint.folder_format``, which reads and verifies every folder
checkpoint. No torch import here.
"""

from __future__ import annotations

from envkit.checkpoint.folder_format import (
    DCP_FORMAT,
    DCP_SUFFIX,
    STAMP_NAME,
    committed_size,
    file_digest,
    manifest_digest,
    read_dir_stamp,
    read_stamp_doc,
    verify_files,
)

FORMAT = DCP_FORMAT
SUFFIX = DCP_SUFFIX

__all__ = [
    "FORMAT", "STAMP_NAME", "SUFFIX", "committed_size", "file_digest", "manifest_digest", "read_dir_stamp",
    "read_stamp_doc", "verify_files",
]
