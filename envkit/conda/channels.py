"""Channel names -> URLs, with the project's mirrors applied before anything is fetched.

In order: ``[tool.envkit.mirrors]`` (by name, or by the URL a name resolves to), then conda's
``.condarc`` settings (``condarc.py``): ``defaults`` is ``default_channels``; a name under
``custom_channels`` is ``<base>/<name>``; any other name is ``<channel_alias>/<name>``
(default ``https://conda.anaconda.org``). Each channel says which setting gave its URL (``via``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from envkit.errors import ChannelError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from envkit.conda.condarc import CondaConfig

CHANNEL_ALIAS = "https://conda.anaconda.org"


@dataclass(frozen=True)
class ResolvedChannel:
    name: str  # as the spec wrote it
    url: str  # where packages are fetched from (after mirrors)
    via: str | None = None  # the setting that gave the URL ("custom_channels in ~/.condarc"); None: the name itself

    @property
    def is_local(self) -> bool:
        return self.url.startswith("file://")


def channel_url(name: str) -> str:
    if "://" in name:
        return name.rstrip("/")
    if name.startswith("/"):
        return Path(name).resolve().as_uri()
    return f"{CHANNEL_ALIAS}/{name.strip('/')}"


def resolve_channels(
    names: tuple[str, ...],
    mirrors: tuple[tuple[str, str], ...] = (),
    *,
    source: Path | None = None,
    condarc: CondaConfig | None = None,
    mirrors_from: Path | None = None,
) -> tuple[ResolvedChannel, ...]:
    """The URLs of the spec's channels: ``mirrors`` first, then ``condarc``; ``defaults`` may give several."""
    table = {}
    for key, mirror in mirrors:
        table[key.rstrip("/")] = mirror.rstrip("/")
        table[channel_url(key)] = mirror.rstrip("/")
    mirrored = f"[tool.envkit.mirrors] in {mirrors_from}" if mirrors_from else "[tool.envkit.mirrors]"
    resolved = []
    for name in names:
        bare = name.rstrip("/")
        found: list[tuple[str, str | None]]
        if bare in table or channel_url(name) in table:
            found = [(table.get(bare, table.get(channel_url(name), "")), mirrored)]
        else:
            found = [(table.get(url, url), mirrored if url in table else via) for url, via in _condarc_urls(name, condarc)]
        for url, via in found:
            channel = ResolvedChannel(name, url, via)
            if channel.is_local:
                _check_local(channel, source)
            resolved.append(channel)
    return tuple(resolved)


def _condarc_urls(name: str, condarc: CondaConfig | None) -> list[tuple[str, str | None]]:
    """(url, the setting that gave it) for one channel name under conda's configuration."""
    if "://" in name or name.startswith("/") or condarc is None:
        return [(channel_url(name), None)]
    bare = name.strip("/")
    if bare == "defaults":
        if condarc.default_channels:
            return [(_named(s.value, condarc)[0], s.where("default_channels")) for s in condarc.default_channels]
        from envkit.conda.condarc import DEFAULT_CHANNELS

        return [(url, "conda's built-in default_channels") for url in DEFAULT_CHANNELS]
    return [_named(bare, condarc)]


def _named(name: str, condarc: CondaConfig) -> tuple[str, str | None]:
    if "://" in name or name.startswith("/"):
        return channel_url(name), None
    parts = name.split("/")
    for n in range(len(parts), 0, -1):  # the longest custom_channels name that prefixes this one
        setting = condarc.custom_channels.get("/".join(parts[:n]))
        if setting is not None:
            return f"{setting.value}/{name}", setting.where(f"custom_channels.{'/'.join(parts[:n])}")
    if condarc.channel_alias is not None:
        return f"{condarc.channel_alias.value}/{name}", condarc.channel_alias.where("channel_alias")
    return channel_url(name), None


def local_path(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


def _check_local(channel: ResolvedChannel, source: Path | None) -> None:
    folder = local_path(channel.url)
    if not (folder / "noarch" / "repodata.json").is_file():
        where = f"{source}: " if source else ""
        via = f" (mirror {channel.url}{', from ' + channel.via if channel.via else ''})" if channel.url != channel_url(channel.name) else ""
        raise ChannelError(
            f"{where}channel {channel.name}{via} not found: {folder} has no noarch/repodata.json; "
            "fix the channel name or index the folder (rattler-index / conda index)"
        )
