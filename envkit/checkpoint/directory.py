"""A folder of stamped checkpoints: listing, the newest valid one, retention, the ``ls`` report.

The stamps are the truth; ``index`` caches what they say (see there). Anything the
index does not know, or knows with another size, is read from its stamp.
No torch import here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from envkit.checkpoint.folder_format import checkpoint_folders
from envkit.checkpoint.index import (
    CheckpointInfo,
    _int_or_none,
    info_from_stamp,
    latest_from_index,
    newest_first,
    read_index,
    write_index,
)
from envkit.checkpoint.integrity import verify
from envkit.checkpoint.listing import INDEX_NAME, Listing, as_listing
from envkit.checkpoint.reader import CheckpointFile, no_cycle_collection, read_stamp
from envkit.errors import EnvkitError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from envkit.checkpoint.integrity import VerifyResult

__all__ = ["INDEX_NAME", "CheckpointInfo", "find_latest", "info_from_stamp", "read_index", "retention_plan", "scan", "write_index"]

Where = Path | Listing  # a folder (wrapped in a LocalListing), or a storage listing itself


def _listing(folder: Where) -> tuple[Listing, list[tuple[str, dict[str, Any]]], list[str]]:
    """(the listing, (name, index entry) for checkpoints the index describes at their current size, the other names)."""
    listing = as_listing(folder)
    sizes = listing.committed_sizes()
    index = read_index(listing) if sizes else {}
    known, unknown = [], []
    for name, size in sizes.items():
        cached = index.get(name)
        if isinstance(cached, dict) and cached.get("size") == size:
            known.append((name, cached))
        else:
            unknown.append(name)
    return listing, known, unknown


def _from_index(listing: Listing, name: str, cached: Mapping[str, Any]) -> CheckpointInfo:
    return CheckpointInfo.from_meta(listing.location(name), cached, size=int(cached.get("size") or 0))


def scan(folder: Where) -> list[CheckpointInfo]:
    """Every checkpoint in folder (not temporary files), from the index or its stamp."""
    listing, known, unknown = _listing(folder)
    return [_from_index(listing, n, c) for n, c in known] + [info_from_stamp(listing.location(n)) for n in unknown]


def find_latest(folder: Where, project: str | None = None) -> CheckpointInfo | None:
    """The newest checkpoint that verifies, by the step its stamp records; only the winner becomes an object."""
    found = find_latest_verified(folder, project)
    return found[0] if found is not None else None


def find_latest_verified(folder: Where, project: str | None = None, *, copy: Any = None) -> tuple[CheckpointInfo, VerifyResult] | None:
    """``find_latest``, with the winner's verify result (its stamp: what resume() guards and loads with).

    ``copy``: a ``remote_verify.VerifiedCopy`` that ends holding the winner's bytes when it is one object at a URL.
    """
    fast = latest_from_index(as_listing(folder), project, copy=copy)
    if fast is not None:
        return fast
    listing, known, unknown = _listing(folder)

    def key(item: tuple[str, Mapping[str, Any]]) -> tuple[int, int, str]:
        c = item[1]
        step, epoch = _int_or_none(c.get("step")), _int_or_none(c.get("epoch"))
        return (step if step is not None else -1, epoch if epoch is not None else -1, str(c.get("saved_at") or ""))

    candidates: list[tuple[tuple[int, int, str], str, Mapping[str, Any] | CheckpointInfo]]
    candidates = [(key((n, c)), n, c) for n, c in known if project is None or c.get("project") == project]
    extra = [i for i in (info_from_stamp(listing.location(n)) for n in unknown) if project is None or i.project == project]
    candidates += [(i.order_key, i.path.name, i) for i in extra]
    candidates.sort(key=lambda t: t[0], reverse=True)
    while candidates:
        _, name, source = candidates.pop(0)
        info = source if isinstance(source, CheckpointInfo) else _from_index(listing, name, source)
        if info.valid is False:
            continue
        result = verify(info.path, copy=copy)
        if not result.ok:
            continue
        stamp = result.info.stamp if result.info else None
        if not isinstance(source, CheckpointInfo) and (stamp is None or stamp.meta.get("step") != info.step):
            # the index is stale for this file (rewritten in place): rank it by its own stamp
            fresh = info_from_stamp(info.path)
            candidates.append((fresh.order_key, name, fresh))
            candidates.sort(key=lambda t: t[0], reverse=True)
            continue
        return _with(info, valid=True), result
    return None


def _latest_from_index_order(folder: Where, project: str | None) -> CheckpointInfo | None:
    """The index's fast path alone (None: it cannot answer, find_latest scans)."""
    fast = latest_from_index(as_listing(folder), project)
    return fast[0] if fast is not None else None


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
    stamped: bool | None = None  # None: the stamp could not be read

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
            "stamped": self.stamped,
        }


def describe_folder(folder: str | os.PathLike[str], *, policy: Any = None) -> list[FolderRow]:
    """Every checkpoint in folder, oldest first: verified, with its verdict against the live environment.

    The checkpoints of a folder are its checkpoint files and committed ``.dcp`` folders, and the
    ``checkpoint-<step>`` folders of a Hugging Face or Accelerate output folder (stamped or not);
    a folder that is itself one checkpoint folder is one row. A bucket prefix (a URL): its index and
    one LIST, not every stamp, and not verified (that reads every byte).
    """
    from envkit.checkpoint.urls import is_url
    from envkit.errors import BadInput

    if is_url(folder) and str(folder).rstrip("/").endswith(".dcp"):  # one sharded checkpoint in a bucket: its envkit.json
        from envkit.checkpoint.urls import as_location

        return [FolderRow(_folder_info(as_location(folder), None), None, None)]
    if is_url(folder):  # a bucket prefix: its index and one LIST, not every stamp; not verified (that reads every byte)
        return [FolderRow(i, None, None) for i in sorted(scan(as_listing(str(folder))), key=lambda i: (i.order_key, i.path.name))]
    root = Path(folder)
    if not root.is_dir():
        raise BadInput(f"{root}: not a folder; pass the folder a CheckpointManager writes to, or a Trainer's output_dir")
    from envkit.config import resolve_policy
    from envkit.fingerprint import collect
    from envkit.policy import judge

    active = resolve_policy(policy)
    live = collect()
    rows = []
    itself = _itself_a_checkpoint(root)
    infos = [_folder_info(root, None)] if itself else scan(root) + [_folder_info(e.path, e.step) for e in checkpoint_folders(root)]
    for info in sorted(infos, key=lambda i: (i.order_key, i.path.name)):
        try:
            file = read_stamp(info.path)  # the tail of the file, not its whole directory (ziptail)
        except EnvkitError:
            rows.append(FolderRow(with_validity(info), None, None))
            continue
        with no_cycle_collection():  # verify makes an object per zip record, all live until it ends
            checked = with_validity(info, file)
        stored = file.stamp.fingerprint if file.stamp else None
        rows.append(FolderRow(checked, stored.digest if stored else None, judge(stored, live, active).verdict, file.stamped))
    return rows


def _itself_a_checkpoint(root: Path) -> bool:
    """A folder given to ``ls`` that is one checkpoint folder (stamped, or a framework's unstamped one)."""
    from envkit.checkpoint.folder_format import DCP_SUFFIX, STAMP_NAME, unstamped_files

    if os.path.lexists(root / STAMP_NAME) or root.name.endswith(DCP_SUFFIX):
        return True
    try:
        unstamped_files(root)
    except EnvkitError:
        return False
    return True


def _folder_info(path: Path, step: int | None) -> CheckpointInfo:
    """A checkpoint folder's row: from its stamp; an unstamped one by the step in its name, validity unknown."""
    from envkit.checkpoint.folder_format import step_from_name

    try:
        file = read_stamp(path)
    except EnvkitError as exc:
        return CheckpointInfo(path, None, step, valid=False, problem=exc.message)
    if file.stamp is None:
        return CheckpointInfo(path, None, step if step is not None else step_from_name(path.name), size=file.size)
    info = CheckpointInfo.from_meta(path, file.stamp.meta, size=file.size)
    return info if info.step is not None or step is None else _with(info, step=step)


def skipped_warning(folder: Where, project: str, ours: list[CheckpointInfo], chosen: CheckpointInfo | None) -> str | None:
    """The warning for this project's checkpoints newer than ``chosen`` (all of them, when None) that do not verify.

    A file whose stamp cannot be read has no step: it counts as newer when its mtime is.
    Files without any envkit stamp (a plain torch.save in the folder) are not the
    manager's and are not mentioned (``ours`` leaves them out).
    """
    listing = as_listing(folder)

    def _mtime(path: Path) -> float:
        return listing.mtime(path.name)

    newest_time = _mtime(chosen.path) if chosen is not None else None
    skipped: list[tuple[CheckpointInfo, str]] = []
    for info in ours:
        if chosen is not None and info.path == chosen.path:
            continue
        if chosen is not None:
            if info.valid is False and info.step is None:
                if newest_time is None or _mtime(info.path) <= newest_time:
                    continue
            elif info.order_key <= chosen.order_key:
                continue
        result = verify(info.path)
        if result.status in ("corrupt", "unreadable"):
            skipped.append((info, _reason(result.problem or info.problem or "does not verify", info.path)))
    if not skipped:
        return None
    skipped.sort(key=lambda pair: (pair[0].order_key, _mtime(pair[0].path)), reverse=True)
    shown = "; ".join(f"{i.path.name} ({why})" for i, why in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    if chosen is None:
        return (f"{listing.root}: no checkpoint of project {project!r} verifies, so resume() starts fresh: skipped {shown}{more}; "
                "restore them from a copy, or delete them to silence this")
    return (f"{listing.root}: resumed from {chosen.path.name}, skipping {len(skipped)} newer checkpoint(s) that do not verify: "
            f"{shown}{more}; delete or move them, or restore them from a copy")


def _reason(problem: str, path: Path) -> str:
    """A problem without the leading path, to name the file once."""
    for prefix in (f"{path}: ", f"{path.name}: "):
        if problem.startswith(prefix):
            return problem[len(prefix):]
    return problem


def apply_retention(folder: Where, project: str, delete_checkpoint: Callable[[str], None], *, keep_last: int | None,
                    keep_best: int, monitor: str | None, mode: str, just_saved: Path) -> None:
    """Delete what ``retention_plan`` says (through the storage's delete), then rewrite the index."""
    listing = as_listing(folder)
    everything = scan(listing)
    _, delete = retention_plan(
        [i for i in everything if i.project == project],
        keep_last=keep_last, keep_best=keep_best, monitor=monitor, mode=mode, protect=(just_saved,),
    )
    for path in delete:
        delete_checkpoint(path.name)
    if delete:
        listing.after_deletes()
    write_index(listing, (i for i in everything if i.path not in delete))
