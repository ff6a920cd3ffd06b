"""The folder's cache of what its stamps say, and ``CheckpointInfo``, the model of one checkpoint.

The stamps are the truth. ``.envkit-index.json`` caches what they say (epoch, step,
metrics, project, size, saved_at) in two JSON lines: first the names newest first with
a ``project<TAB>step<TAB>size`` row each, newline-joined, so that finding the newest
checkpoint among thousands parses two strings of that line alone, not one JSON value per
checkpoint; then the entries (name -> what the stamp says), parsed only when a listing
is wanted. Names or projects holding a tab or a newline cannot be joined: the first line
then has no names, and the newest is found by a scan. Older envkit wrote two files
(``entries`` in ``.envkit-index.json`` version 1, the order in ``.envkit-order.json``):
those entries are still read, the order file is ignored and removed on the next write;
an older envkit reading this file finds no usable index and reads the stamps.
No torch import here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from envkit.checkpoint.listing import INDEX_NAME, LEGACY_ORDER_NAME, Listing, as_listing
from envkit.checkpoint.reader import read_stamp
from envkit.errors import EnvkitError, StorageUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from envkit.checkpoint.integrity import VerifyResult

__all__ = ["INDEX_NAME", "LEGACY_ORDER_NAME", "CheckpointInfo", "info_from_stamp", "latest_from_index", "read_index",
           "write_index"]

INDEX_VERSION = 2  # 2: names, rows and metrics in one file; 1 (still read): entries only
_UNSAFE = re.compile(r"[\t\n]")


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint of a folder, as its stamp describes it."""

    path: Path
    epoch: int | None
    step: int | None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    valid: bool | None = None  # None: not verified yet
    project: str | None = None
    size: int = 0
    saved_at: str | None = None
    problem: str | None = None

    @classmethod
    def from_meta(cls, path: Path, meta: Mapping[str, Any], *, size: int, valid: bool | None = None) -> CheckpointInfo:
        """From a stamp's meta, or an index entry (the same keys); anything of the wrong type reads as absent."""
        metrics = meta.get("metrics")
        return cls(
            path,
            _int_or_none(meta.get("epoch")),
            _int_or_none(meta.get("step")),
            dict(metrics) if isinstance(metrics, Mapping) else {},
            valid=valid,
            project=_str_or_none(meta.get("project")),
            size=size,
            saved_at=_str_or_none(meta.get("saved_at")),
        )

    @property
    def order_key(self) -> tuple[int, int, str]:
        return (self.step if self.step is not None else -1, self.epoch if self.epoch is not None else -1, self.saved_at or "")

    def to_index(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "metrics": dict(self.metrics),
            "project": self.project,
            "size": self.size,
            "saved_at": self.saved_at,
        }


def info_from_stamp(path: Path) -> CheckpointInfo:
    """Read one checkpoint's stamp; one that cannot be read is returned invalid, with the reason."""
    try:
        file = read_stamp(path)
    except StorageUnavailable:
        raise  # the bucket cannot be reached: that says nothing about this checkpoint
    except EnvkitError as exc:
        return CheckpointInfo(path, None, None, valid=False, size=_size(path), problem=exc.message)
    if file.stamp is None:
        return CheckpointInfo(path, None, None, valid=False, size=file.size, problem=f"{path}: has no envkit stamp")
    return CheckpointInfo.from_meta(path, file.stamp.meta, size=file.size)


def _size(path: Path) -> int:
    from envkit.checkpoint.urls import is_url

    if is_url(path):
        return 0  # an object that cannot be read: its size is not worth another request
    try:
        return path.stat().st_size
    except OSError:
        return 0


def newest_first(infos: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    return sorted(infos, key=lambda i: i.order_key, reverse=True)


# -- the cache file -------------------------------------------------------------------


def _read_lines(folder: Path | Listing) -> tuple[bytes, bytes] | None:
    """The index's two lines: the order (what latest() parses) and the entries (what a listing parses)."""
    data = as_listing(folder).read_index_bytes()
    if data is None:
        return None
    order, _, entries = data.partition(b"\n")
    return order, entries


def read_index(folder: Path | Listing) -> dict[str, dict[str, Any]]:
    """name -> cached entry (the keys of ``CheckpointInfo.to_index``); {} when there is no usable index."""
    lines = _read_lines(folder)
    if lines is None:
        return {}
    try:
        head = json.loads(lines[0])
        version = head.get("version") if isinstance(head, dict) else None
        doc = head if version == 1 else json.loads(lines[1]) if version == INDEX_VERSION else None  # 1: one line, entries
    except ValueError:
        return {}
    entries = doc.get("entries") if isinstance(doc, dict) else None
    return entries if isinstance(entries, dict) else {}


def write_index(folder: Path | Listing, entries: Iterable[CheckpointInfo]) -> None:
    """Atomically replace the index. It is a cache: a lost update only costs stamp reads later.

    Two JSON lines: ``{"version": 2, "names": ..., "rows": ...}`` (names newest first and
    ``project<TAB>step<TAB>size`` rows, newline-joined; no names when one cannot be joined),
    then ``{"entries": {name: entry}}``.
    """
    newest = newest_first(e for e in entries if e.valid is not False)
    order: dict[str, Any] = {"version": INDEX_VERSION}
    if not any(_UNSAFE.search(f"{e.path.name}{e.project or ''}") for e in newest):
        order["names"] = "\n".join(e.path.name for e in newest)
        order["rows"] = "\n".join(f"{e.project or ''}\t{e.step}\t{e.size}" for e in newest)
    text = json.dumps(order, separators=(",", ":")) + "\n" + json.dumps(
        {"entries": {e.path.name: e.to_index() for e in newest}}, separators=(",", ":"))
    as_listing(folder).write_index_bytes(text.encode())


def latest_from_index(
    folder: Path | Listing, project: str | None, is_new_checkpoint: Any = None, *, copy: Any = None
) -> tuple[CheckpointInfo, VerifyResult] | None:
    """When the folder holds exactly the checkpoints the index names, walk its order newest first.

    ``is_new_checkpoint(name)``: whether a name the index does not know is a committed
    checkpoint (default: the listing's own answer). The winner is verified and its stamp must say what the index says; anything
    else (a file added, removed or rewritten behind the manager's back) returns None: scan. ``copy``: integrity.verify's.
    """
    from envkit.checkpoint.integrity import verify

    listing = as_listing(folder)
    is_new = is_new_checkpoint if is_new_checkpoint is not None else listing.is_new_checkpoint
    try:
        head = listing.read_index_bytes(first_line=True)  # the order line only: the entries are neither read nor parsed
        if head is None:
            return None
        doc = json.loads(head)
        if doc.get("version") != INDEX_VERSION:
            return None
        names, rows = doc["names"].split("\n"), doc["rows"].split("\n")
        listed = listing.names()
        if listed is None:
            return None
        expected = set(names)
        if len(rows) != len(names) or len(expected) != len(names) or not expected <= listed:
            return None
        if any(is_new(n) for n in listed - expected):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    for name, row in zip(names, rows, strict=True):
        try:
            owner, step_text, size_text = row.split("\t")
            step, size = (int(step_text) if step_text != "None" else None), int(size_text)
        except ValueError:
            return None
        if project is not None and owner != project:
            continue
        path = listing.location(name)
        result = verify(path, copy=copy)
        if not result.ok:
            continue
        stamp = result.info.stamp if result.info else None
        if stamp is None or result.info is None or stamp.meta.get("step") != step or result.info.size != size:
            return None
        return CheckpointInfo.from_meta(path, stamp.meta, size=result.info.size, valid=True), result
    return None
