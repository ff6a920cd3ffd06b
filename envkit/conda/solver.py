"""The embedded solver: py-rattler, for any platform, with explicit virtual packages."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from envkit.conda.channels import ResolvedChannel
from envkit.conda.platforms import VirtualPackage
from envkit.errors import ChannelError, SolveError, SpecError


def solve(
    specs: tuple[str, ...],
    channels: tuple[ResolvedChannel, ...],
    platform: str,
    virtual: tuple[VirtualPackage, ...],
    *,
    cache_dir: Path,
    source: Path,
) -> list[Any]:
    """The records (rattler RepoDataRecord) that satisfy ``specs`` on ``platform``."""
    import rattler
    import rattler.exceptions
    from rattler import BuildString, GenericVirtualPackage, MatchSpec, PackageName, Version

    try:
        match_specs = [MatchSpec(s, strict=False) for s in specs]
    except Exception as exc:  # noqa: BLE001 - rattler raises its own parse error types
        raise SpecError(f"{source}: bad package line ({_short(exc)}); write it as `name version` or `name=version`") from None
    vps = [GenericVirtualPackage(PackageName(v.name), Version(v.version), BuildString(v.build)) for v in virtual]
    gateway = rattler.Gateway(cache_dir=cache_dir)
    try:
        return asyncio.run(
            rattler.solve(
                [c.url for c in channels],
                match_specs,
                gateway=gateway,
                platforms=[platform, "noarch"],
                virtual_packages=vps,
                channel_relations="disabled",
            )
        )
    except rattler.exceptions.SolverError as exc:
        raise SolveError(f"{source}: cannot be solved for {platform}: {_short(exc, 400)}; relax the pins or add a channel") from None
    except rattler.exceptions.GatewayError as exc:
        names = ", ".join(c.name for c in channels)
        raise ChannelError(f"{source}: cannot fetch channels ({names}) for {platform}: {_short(exc)}; check the channel names and the network") from None


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
