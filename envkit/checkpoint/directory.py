"""A folder of stamped checkpoints: listing, the newest valid one, retention, the writer lock.

The stamps are the truth. ``.envkit-index.json`` caches what they say (epoch, step,
metrics, size) so that finding the newest checkpoint among thousands reads one file;
anything the index does not know, or knows with another size, is read from its stamp.
No torch import here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from envkit.checkpoint.reader import CheckpointFile, no_cycle_collection, read_stamp
from envkit.checkpoint.integrity import verify
from envkit.errors import EnvkitError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

INDEX_NAME = ".envkit-index.json"
ORDER_NAME = ".envkit-order.json"  # names newest first: all latest() reads when nothing changed
LOCK_NAME = ".envkit.lock"
INDEX_VERSION = 1
ORDER_VERSION = 2  # 2: names and rows as newline-joined strings, so a reader parses two JSON strings, not 40,000 values
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".dcp")  # .dcp: a sharded checkpoint folder


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


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def info_from_stamp(path: Path) -> CheckpointInfo:
    """Read one file's stamp; a file that cannot be read is returned invalid, with the reason."""
    try:
        file = read_stamp(path)
    except EnvkitError as exc:
        return CheckpointInfo(path, None, None, valid=False, size=_size(path), problem=exc.message)
    if file.stamp is None:
        return CheckpointInfo(path, None, None, valid=False, size=file.size, problem=f"{path}: has no envkit stamp")
    meta = file.stamp.meta
    metrics = meta.get("metrics")
    return CheckpointInfo(
        path,
        _int_or_none(meta.get("epoch")),
        _int_or_none(meta.get("step")),
        dict(metrics) if isinstance(metrics, Mapping) else {},
        project=meta.get("project") if isinstance(meta.get("project"), str) else None,
        size=file.size,
        saved_at=meta.get("saved_at") if isinstance(meta.get("saved_at"), str) else None,
    )


def _sharded_size(folder: str) -> int | None:
    """A committed sharded folder's size key: its stamp's size (the stamp is written last)."""
    from envkit.checkpoint.dcp_format import STAMP_NAME

    try:
        return os.stat(os.path.join(folder, STAMP_NAME)).st_size
    except OSError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_index_doc(folder: Path) -> dict[str, Any]:
    try:
        doc = json.loads((folder / INDEX_NAME).read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION or not isinstance(doc.get("entries"), dict):
        return {}
    return doc


def read_index(folder: Path) -> dict[str, dict[str, Any]]:
    return _read_index_doc(folder).get("entries", {})


def write_index(folder: Path, entries: Iterable[CheckpointInfo]) -> None:
    """Atomically replace the index. It is a cache: a lost update only costs stamp reads later.

    ``order`` lists the names newest first, so that finding the newest among thousands
    needs no per-file work when the folder holds exactly the files the index names.
    """
    kept = [e for e in entries if e.valid is not False]
    entries_doc = {"version": INDEX_VERSION, "entries": {e.path.name: e.to_index() for e in kept}}
    newest = newest_first(kept)
    docs: list[tuple[str, dict[str, Any]]] = [(INDEX_NAME, entries_doc)]
    if not any(_UNSAFE_IN_ORDER.search(f"{e.path.name}{e.project or ''}") for e in newest):
        order_doc = {
            "version": ORDER_VERSION,
            "names": "\n".join(e.path.name for e in newest),
            "rows": "\n".join(f"{e.project or ''}\t{e.step}\t{e.size}" for e in newest),
        }
        docs.append((ORDER_NAME, order_doc))
    else:  # a name the joined strings cannot carry: latest() scans instead
        (folder / ORDER_NAME).unlink(missing_ok=True)
    for name, doc in docs:
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        try:
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(tmp, folder / name)
        except OSError:
            tmp.unlink(missing_ok=True)


def _listing(folder: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(name, index entry) for files the index describes at their current size, and the other names."""
    index = read_index(folder)
    known, unknown = [], []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return [], []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or not name.endswith(CHECKPOINT_SUFFIXES):
            continue
        try:
            if entry.is_dir():
                size = _sharded_size(entry.path)  # None: no commit marker yet, not a checkpoint
                if size is None:
                    continue
            elif not entry.is_file():
                continue
            else:
                size = entry.stat().st_size
        except OSError:
            continue
        cached = index.get(name)
        if isinstance(cached, dict) and cached.get("size") == size:
            known.append((name, cached))
        else:
            unknown.append(name)
    return known, unknown


def _from_index(folder: Path, name: str, cached: Mapping[str, Any]) -> CheckpointInfo:
    metrics = cached.get("metrics")
    return CheckpointInfo(
        folder / name,
        _int_or_none(cached.get("epoch")),
        _int_or_none(cached.get("step")),
        metrics if isinstance(metrics, dict) else {},
        project=cached.get("project"),
        size=int(cached.get("size") or 0),
        saved_at=cached.get("saved_at"),
    )


def scan(folder: Path) -> list[CheckpointInfo]:
    """Every checkpoint file in folder (not temporary files), from the index or its stamp."""
    known, unknown = _listing(folder)
    return [_from_index(folder, n, c) for n, c in known] + [info_from_stamp(folder / n) for n in unknown]


def find_latest(folder: Path, project: str | None = None) -> CheckpointInfo | None:
    """The newest checkpoint that verifies, by the step its stamp records; only the winner becomes an object."""
    fast = _latest_from_index_order(folder, project)
    if fast is not None:
        return fast
    known, unknown = _listing(folder)

    def key(item: tuple[str, Mapping[str, Any]]) -> tuple[int, int, str]:
        c = item[1]
        step, epoch = _int_or_none(c.get("step")), _int_or_none(c.get("epoch"))
        return (step if step is not None else -1, epoch if epoch is not None else -1, str(c.get("saved_at") or ""))

    candidates = [(key((n, c)), n, c) for n, c in known if project is None or c.get("project") == project]
    extra = [i for i in (info_from_stamp(folder / n) for n in unknown) if project is None or i.project == project]
    candidates += [(i.order_key, i.path.name, i) for i in extra]
    candidates.sort(key=lambda t: t[0], reverse=True)
    while candidates:
        _, name, source = candidates.pop(0)
        info = source if isinstance(source, CheckpointInfo) else _from_index(folder, name, source)
        if info.valid is False:
            continue
        result = verify(info.path)
        if not result.ok:
            continue
        stamp = result.info.stamp if result.info else None
        if not isinstance(source, CheckpointInfo) and (stamp is None or stamp.meta.get("step") != info.step):
            # the index is stale for this file (rewritten in place): rank it by its own stamp
            fresh = info_from_stamp(info.path)
            candidates.append((fresh.order_key, name, fresh))
            candidates.sort(key=lambda t: t[0], reverse=True)
            continue
        return _with(info, valid=True)
    return None


def _latest_from_index_order(folder: Path, project: str | None) -> CheckpointInfo | None:
    """When the folder holds exactly the files the order file names, walk it newest first.

    The winner is verified and its stamp must say what the order file says; anything else
    (a file added, removed or rewritten behind the manager's back) falls back to a scan.
    """
    try:
        doc = json.loads((folder / ORDER_NAME).read_bytes())
        if doc.get("version") != ORDER_VERSION:
            return None
        names, rows = doc["names"].split("\n"), doc["rows"].split("\n")
        expected, listed = set(names), set(os.listdir(folder))
        if len(rows) != len(names) or len(expected) != len(names) or not expected <= listed:
            return None
        if any(_is_checkpoint_name(n) and _committed(folder, n) for n in listed - expected):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    for name, row in zip(names, rows):
        try:
            owner, step_text, size_text = row.split("\t")
            step, size = (int(step_text) if step_text != "None" else None), int(size_text)
        except ValueError:
            return None
        if project is not None and owner != project:
            continue
        path = folder / name
        result = verify(path)
        if not result.ok:
            continue
        stamp = result.info.stamp if result.info else None
        if stamp is None or stamp.meta.get("step") != step or result.info.size != size:
            return None
        meta = stamp.meta
        metrics = meta.get("metrics")
        return CheckpointInfo(
            path,
            _int_or_none(meta.get("epoch")),
            step,
            dict(metrics) if isinstance(metrics, Mapping) else {},
            valid=True,
            project=owner or None,
            size=result.info.size,
            saved_at=meta.get("saved_at") if isinstance(meta.get("saved_at"), str) else None,
        )
    return None


_UNSAFE_IN_ORDER = re.compile(r"[\t\n]")


def _is_checkpoint_name(name: str) -> bool:
    return name.endswith(CHECKPOINT_SUFFIXES) and not name.startswith(".")


def _committed(folder: Path, name: str) -> bool:
    """A sharded folder is a checkpoint once its stamp is written; a file always is."""
    return not name.endswith(".dcp") or _sharded_size(str(folder / name)) is not None


def newest_first(infos: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    return sorted(infos, key=lambda i: i.order_key, reverse=True)


def with_validity(info: CheckpointInfo, file: CheckpointFile | None = None) -> CheckpointInfo:
    """info, verified (``file``: its stamp, when the caller has read it already)."""
    if info.valid is False:
        return info
    result = verify(info.path, file)
    return _with(info, valid=result.ok, problem=result.problem)


def _with(info: CheckpointInfo, **changes: Any) -> CheckpointInfo:
    from dataclasses import replace

    return replace(info, **changes)


def metric_value(info: CheckpointInfo, monitor: str) -> float | None:
    value = info.metrics.get(monitor)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # not NaN
        return float(value)
    return None


def retention_plan(
    infos: Iterable[CheckpointInfo],
    *,
    keep_last: int | None,
    keep_best: int,
    monitor: str | None,
    mode: str,
    protect: Iterable[Path] = (),
) -> tuple[set[Path], set[Path]]:
    """Pure: which checkpoints to keep and which to delete.

    Keeps the ``keep_last`` newest by step, the ``keep_best`` best by ``monitor``, the
    newest of all and the best of all, and anything in ``protect``.
    """
    ordered = newest_first(infos)
    keep = {p for p in protect}
    if ordered:
        keep.add(ordered[0].path)
    if keep_last is None:
        keep.update(i.path for i in ordered)
    else:
        keep.update(i.path for i in ordered[: max(keep_last, 0)])
    if monitor:
        scored = [(metric_value(i, monitor), i) for i in ordered]
        ranked = sorted(((v, i) for v, i in scored if v is not None), key=lambda vi: vi[0], reverse=(mode == "max"))
        keep.update(i.path for _, i in ranked[: max(keep_best, 1 if ranked else 0)])
    delete = {i.path for i in ordered} - keep
    return keep, delete


@dataclass(frozen=True)
class FolderRow:
    """One line of ``envkit ls``."""

    info: CheckpointInfo
    environment_digest: str | None
    verdict: str | None

    def to_json(self) -> dict[str, Any]:
        i = self.info
        return {
            "checkpoint": str(i.path),
            "project": i.project,
            "epoch": i.epoch,
            "step": i.step,
            "metrics": dict(i.metrics),
            "size": i.size,
            "valid": i.valid,
            "problem": i.problem,
            "environment_digest": self.environment_digest,
            "verdict": self.verdict,
        }


def describe_folder(folder: str | os.PathLike[str], *, policy: Any = None) -> list[FolderRow]:
    """Every checkpoint in folder, oldest first: verified, with its verdict against the live environment."""
    from envkit.errors import BadInput

    root = Path(folder)
    if not root.is_dir():
        raise BadInput(f"{root}: not a folder; pass the folder a CheckpointManager writes to")
    from envkit.checkpoint.compat import resolve_policy
    from envkit.fingerprint import collect
    from envkit.policy import diff, evaluate, unstamped_change, verdict

    active = resolve_policy(policy)
    live = collect()
    rows = []
    for info in sorted(scan(root), key=lambda i: (i.order_key, i.path.name)):
        try:
            file = read_stamp(info.path)  # the tail of the file, not its whole directory (ziptail)
        except EnvkitError:
            rows.append(FolderRow(with_validity(info), None, None))
            continue
        with no_cycle_collection():  # verify makes an object per zip record, all live until it ends
            checked = with_validity(info, file)
        stamp = file.stamp
        changes = diff(stamp.fingerprint, live) if stamp else (unstamped_change(),)
        rows.append(FolderRow(checked, stamp.fingerprint.digest if stamp else None, verdict(evaluate(changes, active))))
    return rows
