"""Checkpoint locations that are URLs (``s3://bucket/run/x.pth``, ``gs://``, ``memory://``, ``file://``).

Cheap to import (no fsspec): the readers ask ``is_url`` before touching the local file system,
and send a URL to ``envkit.checkpoint.remote``. A plain path, absolute or relative, is never a
URL and stays on the local code path. ``ObjectPath`` is how a URL travels where a ``Path`` is
expected (``CheckpointInfo.path``, ``CheckpointFile.path``, ``ResumeInfo.path``): it prints as the
URL, has ``name``/``parent``/``/``, and refuses to be used as a local path (``os.fspath`` raises),
so that nothing opens ``./s3:/bucket/...`` by mistake.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PosixPath

SCHEMES = ("s3", "s3a", "gs", "gcs", "memory", "file", "az", "abfs")
_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)


def scheme_of(location: object) -> str | None:
    """The URL scheme of ``location`` (lower case), or None for a local path (a ``Path`` always is one)."""
    if isinstance(location, ObjectPath):
        return location.scheme
    return _match(location) if isinstance(location, str) else None


def _match(text: str) -> str | None:
    m = _URL.match(text)
    return m.group(1).lower() if m else None


def is_url(location: object) -> bool:
    """``s3://...`` and the other fsspec schemes; never a plain path, nor a ``file://`` URL (a local path)."""
    return scheme_of(location) not in (None, "file")


class ObjectPath(PosixPath):
    """A URL where a ``Path`` is expected; local file-system methods refuse it."""

    url: str

    def __new__(cls, url: str) -> ObjectPath:
        m = _URL.match(url)
        if m is None:
            raise ValueError(f"not a URL: {url!r}")
        rest = url[m.end():].rstrip("/")
        self = super().__new__(cls, "/" + rest)
        self.url = f"{m.group(1).lower()}://{rest}"
        return self

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectPath({self.url!r})"

    def __fspath__(self) -> str:
        raise TypeError(f"{self.url} is a URL, not a local path")

    def __truediv__(self, name: object) -> ObjectPath:
        return ObjectPath(f"{self.url}/{str(name).strip('/')}")

    @property
    def parent(self) -> ObjectPath:
        head, _, _ = self.url.rpartition("/")
        return self if head.endswith(":/") else ObjectPath(head)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: object) -> bool:
        return str(self) < str(other)

    def __reduce__(self) -> tuple[type[ObjectPath], tuple[str]]:
        return (ObjectPath, (self.url,))


def as_location(location: str | os.PathLike[str]) -> Path:
    """``location`` as a ``Path``: an ``ObjectPath`` for a URL; a ``file://`` URL is the local path it names."""
    if isinstance(location, Path):
        return location
    text = os.fspath(location)
    scheme = scheme_of(text)
    if scheme is None:
        return Path(location)
    if scheme == "file":
        from urllib.parse import unquote, urlsplit

        return Path(unquote(urlsplit(text).path))
    return ObjectPath(text)


__all__ = ["SCHEMES", "ObjectPath", "as_location", "is_url", "scheme_of"]
