"""Channel names -> URLs, with the project's mirrors applied before anything is fetched."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from envkit.errors import ChannelError

CHANNEL_ALIAS = "https://conda.anaconda.org"


@dataclass(frozen=True)
class ResolvedChannel:
    name: str  # as the spec wrote it
    url: str  # where packages are fetched from (after mirrors)

    @property
    def is_local(self) -> bool:
        return self.url.startswith("file://")


def channel_url(name: str) -> str:
    if "://" in name:
        return name.rstrip("/")
    if name.startswith("/"):
        return Path(name).resolve().as_uri()
    return f"{CHANNEL_ALIAS}/{name.strip('/')}"


def resolve_channels(names: tuple[str, ...], mirrors: tuple[tuple[str, str], ...] = (), *, source: Path | None = None) -> tuple[ResolvedChannel, ...]:
    table = {}
    for key, mirror in mirrors:
        table[key.rstrip("/")] = mirror.rstrip("/")
        table[channel_url(key)] = mirror.rstrip("/")
    resolved = []
    for name in names:
        url = channel_url(name)
        url = table.get(name.rstrip("/"), table.get(url, url))
        channel = ResolvedChannel(name, url)
        if channel.is_local:
            _check_local(channel, source)
        resolved.append(channel)
    return tuple(resolved)


def local_path(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


def _check_local(channel: ResolvedChannel, source: Path | None) -> None:
    folder = local_path(channel.url)
    if not (folder / "noarch" / "repodata.json").is_file():
        where = f"{source}: " if source else ""
        via = f" (mirror {channel.url})" if channel.url != channel_url(channel.name) else ""
        raise ChannelError(
            f"{where}channel {channel.name}{via} not found: {folder} has no noarch/repodata.json; "
            "fix the channel name or index the folder (rattler-index / conda index)"
        )
