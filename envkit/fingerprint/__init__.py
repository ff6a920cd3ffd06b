"""The environment fingerprint: what wrote a checkpoint (docs/architecture.md, formats on disk)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from envkit.errors import BadInput, MalformedStamp
from envkit.fingerprint.schema import SCHEMA, Fingerprint

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_FINGERPRINT_BYTES = 16 * 1024 * 1024

__all__ = ["SCHEMA", "Fingerprint", "collect", "read_fingerprint_file", "write_fingerprint"]


def __getattr__(name: str) -> Any:
    # collect pulls in platform probing; readers of stored fingerprints do not need it
    if name == "collect":
        from envkit.fingerprint.sources import collect

        globals()["collect"] = collect
        return collect
    raise AttributeError(f"module 'envkit.fingerprint' has no attribute {name!r}")


def write_fingerprint(fp: Fingerprint, path: str | os.PathLike[str]) -> Path:
    """Write ``fp`` as the JSON ``read_fingerprint_file`` reads, atomically (``envkit fingerprint -o``);
    the file written is returned (a symbolic link's target). BadInput (exit 2) when it cannot be."""
    from envkit.atomic import atomic_write

    return atomic_write(path, json.dumps(fp.to_json(), indent=2) + "\n", what="-o")


def read_fingerprint_file(path: str | os.PathLike[str]) -> Fingerprint:
    """A fingerprint JSON file as written by ``envkit fingerprint -o``."""
    from envkit.inputs import read_regular_file

    p = Path(path)
    data = read_regular_file(
        p, "pass the JSON written by `envkit fingerprint -o FILE`",
        folder=f"{p}: is a directory; pass a fingerprint JSON file", max_bytes=MAX_FINGERPRINT_BYTES,
    )
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise BadInput(f"{p}: not valid JSON ({exc}); write one with `envkit fingerprint -o FILE`") from None
    if isinstance(doc, dict) and "fingerprint" in doc and "schema" in doc and str(doc["schema"]).startswith("envkit.stamp"):
        doc = doc["fingerprint"]
    try:
        return Fingerprint.from_json(doc, source=str(p))
    except MalformedStamp as exc:
        raise BadInput(exc.message) from None
