"""Where a checkpoint folder's listing comes from: the one view index.py and directory.py read.

A ``Listing`` names the committed checkpoints with their sizes, reads and writes the index
(``.envkit-index.json``) and says where a name is. ``LocalListing`` is a folder on disk (what
every local ``CheckpointStorage`` is); ``envkit.checkpoint.remote.ObjectStorage`` is a bucket
prefix, listed with one LIST and its index one object (``ObjectListing``, below). directory.py's functions take either a
folder (wrapped in a ``LocalListing``) or a storage, so a manager lists through its storage.
No torch import here.
"""

from __future__ import annotations

import os
from pathlib import Path

from envkit.checkpoint.paths import CHECKPOINT_SUFFIXES, TEMP_MARK, is_folder_checkpoint

TYPE_CHECKING = False  # typing is not imported at run time: a start-up latest() stays cheap
if TYPE_CHECKING:
    from typing import Any, Protocol

    from envkit.checkpoint.urls import ObjectPath
else:
    Protocol = object

INDEX_NAME = ".envkit-index.json"
LEGACY_ORDER_NAME = ".envkit-order.json"  # written by envkit before the one-file index; ignored, removed


class Listing(Protocol):
    """What the listing, the index and retention need from where checkpoints are kept."""

    @property
    def root(self) -> Path: ...

    def location(self, name: str) -> Path:
        """Where ``name`` is (a local path, or an ``ObjectPath`` for a URL)."""

    def committed_sizes(self) -> dict[str, int]:
        """Every committed checkpoint's name and size (a folder checkpoint: its stamp's total); {} when none."""

    def names(self) -> set[str] | None:
        """Every name in the root, committed or not (None: it cannot be listed)."""

    def is_new_checkpoint(self, name: str) -> bool:
        """Whether ``name`` (one ``names`` returned that the index does not know) is a committed checkpoint."""

    def read_index_bytes(self, *, first_line: bool = False) -> bytes | None:
        """The index's bytes (``first_line``: only its order line, what latest() parses); None when there is none."""

    def write_index_bytes(self, data: bytes) -> None:
        """Replace the index atomically; a failure is ignored (the index is a cache)."""

    def mtime(self, name: str) -> float: ...

    def after_deletes(self) -> None:
        """Make deletes durable (a folder fsync)."""


class LocalListing:
    """A folder on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def location(self, name: str) -> Path:
        return self.root / name

    def committed_sizes(self) -> dict[str, int]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return {}
        sizes: dict[str, int] = {}
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(CHECKPOINT_SUFFIXES):
                continue
            try:
                if is_folder_checkpoint(entry):
                    size = _sharded_size(entry.path)  # None: no commit marker yet, not a checkpoint
                    if size is None:
                        continue
                elif not entry.is_file():
                    continue
                else:
                    size = entry.stat().st_size
            except OSError:
                continue
            sizes[name] = size
        return sizes

    def names(self) -> set[str] | None:
        try:
            return set(os.listdir(self.root))
        except OSError:
            return None

    def is_new_checkpoint(self, name: str) -> bool:
        if not (name.endswith(CHECKPOINT_SUFFIXES) and not name.startswith(".")):
            return False
        path = self.root / name
        return not is_folder_checkpoint(path) or _sharded_size(str(path)) is not None

    def read_index_bytes(self, *, first_line: bool = False) -> bytes | None:
        try:
            with open(self.root / INDEX_NAME, "rb") as fh:
                return fh.readline() if first_line else fh.read()
        except OSError:
            return None

    def write_index_bytes(self, data: bytes) -> None:
        tmp = self.root / f".{INDEX_NAME}.tmp-{os.getpid()}"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.root / INDEX_NAME)
            (self.root / LEGACY_ORDER_NAME).unlink(missing_ok=True)
        except OSError:
            tmp.unlink(missing_ok=True)

    def mtime(self, name: str) -> float:
        try:
            return os.stat(self.root / name).st_mtime
        except OSError:
            return 0.0

    def after_deletes(self) -> None:
        from envkit.atomic import fsync_dir

        fsync_dir(self.root)


def as_listing(where: Path | str | os.PathLike[str] | Listing) -> Listing:
    """A folder, a URL or a storage, as a ``Listing``."""
    if not isinstance(where, (str, os.PathLike)):
        return where  # a storage
    from envkit.checkpoint.urls import is_url

    if is_url(where):
        return ObjectListing.for_url(str(where))
    return LocalListing(Path(where))


def _remote_error(where: object, exc: BaseException) -> Exception:
    from envkit.checkpoint.remote import remote_error

    return remote_error(where, exc)


class ObjectListing:
    """A bucket prefix as a ``listing.Listing``: one LIST for the names and sizes, the index one object."""

    def __init__(self, root: ObjectPath) -> None:
        self.root: Path = root  # the protocols' type; an ObjectPath
        self.url = root
        from envkit.checkpoint.remote import filesystem

        self.fs = filesystem(root.scheme, root.url)
        self.key = self.fs._strip_protocol(root.url).rstrip("/")

    @classmethod
    def for_url(cls, url: str) -> ObjectListing:
        from envkit.checkpoint.urls import ObjectPath, as_location

        where = as_location(url)
        assert isinstance(where, ObjectPath)
        return cls(where)

    def location(self, name: str) -> ObjectPath:
        return self.url / name

    def _key(self, name: str) -> str:
        return f"{self.key}/{name}"

    def _entries(self) -> list[dict[str, Any]]:
        try:
            return list(self.fs.ls(self.key, detail=True, refresh=True))
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower():
                raise _remote_error(self.root, exc) from None
            return []  # an empty prefix
        except Exception as exc:  # noqa: BLE001 - one line that says what to set
            raise _remote_error(self.root, exc) from None

    def committed_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        entries = self._entries()
        folders: dict[str, int] | None = None
        for entry in entries:
            name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(".") or TEMP_MARK in name or not name.endswith(CHECKPOINT_SUFFIXES):
                continue
            if entry.get("type") == "directory":
                if folders is None:
                    folders = self._folder_sizes()
                size = folders.get(name)  # a sharded checkpoint: committed once its envkit.json is there
                if size is None:
                    continue
            else:
                size = int(entry.get("size") or 0)
            sizes[name] = size
        return sizes

    def _folder_sizes(self) -> dict[str, int]:
        """Each committed folder checkpoint (``<name>.dcp/`` holding ``envkit.json``) and the total size of its other
        objects (what its stamp records when it is whole, as ``read_stamp`` reports it): one recursive LIST, no GET."""
        from envkit.checkpoint.dcp_format import STAMP_NAME

        try:
            self.fs.invalidate_cache(self.key)
            found = self.fs.find(self.key, detail=True)
        except Exception as exc:  # noqa: BLE001 - one line that says what to set
            raise _remote_error(self.root, exc) from None
        totals: dict[str, int] = {}
        marked: set[str] = set()
        for key, entry in found.items():
            folder, _, rest = str(key)[len(self.key) + 1:].partition("/")
            if not rest or entry.get("type") == "directory":
                continue
            if rest == STAMP_NAME:
                marked.add(folder)
            else:
                totals[folder] = totals.get(folder, 0) + int(entry.get("size") or 0)
        return {folder: totals.get(folder, 0) for folder in marked}

    def names(self) -> set[str] | None:
        return {str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in self._entries()}

    def is_new_checkpoint(self, name: str) -> bool:
        if name.startswith(".") or TEMP_MARK in name or not name.endswith(CHECKPOINT_SUFFIXES):
            return False  # the lock, the index, a temporary key: no request
        return name in self.committed_sizes()

    def read_index_bytes(self, *, first_line: bool = False) -> bytes | None:
        try:
            data = bytes(self.fs.cat_file(self._key(INDEX_NAME)))
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise _remote_error(self.url / INDEX_NAME, exc) from None
        return data.partition(b"\n")[0] if first_line else data

    def write_index_bytes(self, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._key(INDEX_NAME), data)  # one PUT: the object is replaced whole
        except Exception:  # noqa: BLE001 - the index is a cache: a lost update costs stamp reads later
            pass

    def mtime(self, name: str) -> float:
        try:
            modified = self.fs.info(self._key(name)).get("LastModified")
            return float(modified.timestamp()) if modified is not None else 0.0
        except Exception:  # noqa: BLE001
            return 0.0

    def after_deletes(self) -> None:
        pass


def _sharded_size(folder: str) -> int | None:
    from envkit.checkpoint.dcp_format import committed_size

    return committed_size(folder)


__all__ = ["INDEX_NAME", "LEGACY_ORDER_NAME", "Listing", "LocalListing", "ObjectListing", "as_listing"]
