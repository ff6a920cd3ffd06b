"""The embedded solver: py-rattler, for any platform, with explicit virtual packages."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from envkit.conda.channels import ResolvedChannel
from envkit.conda.platforms import VirtualPackage
from envkit.errors import ChannelError, CpuBuildWithCudaPin, SolveError, SpecError


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


# -- the solved plan: a CPU pytorch next to a CUDA pin is a refusal (DESIGN §6) ------------

TORCH_PACKAGES = ("pytorch", "torch", "libtorch", "torchvision", "torchaudio")
CUDA_PIN_PACKAGES = ("pytorch-cuda", "cudatoolkit", "cuda-version")
_CUDA_BUILD = re.compile(r"cuda|cu\d{2,3}|gpu", re.IGNORECASE)


def cpu_builds_beside_cuda(packages: Iterable[tuple[str, str, str]]) -> tuple[list[str], list[str]]:
    """(the CPU torch builds, the CUDA pins) of a plan of (name, version, build), each as
    ``name version build``; the first list is empty unless both are present. Pure."""
    plan = sorted(set(packages))
    pins = [f"{n} {v}" for n, v, _ in plan if n in CUDA_PIN_PACKAGES]
    cpu = [f"{n} {v} {b}" for n, v, b in plan if n in TORCH_PACKAGES and not _CUDA_BUILD.search(b)]
    return (cpu if pins else []), pins


def check_cuda_plan(packages: Iterable[tuple[str, str, str]], platform: str, cuda: str | None, *, source: Path) -> None:
    """CpuBuildWithCudaPin (exit 1) when the plan pairs a CPU build of pytorch with a CUDA pin."""
    cpu, pins = cpu_builds_beside_cuda(packages)
    if not cpu:
        return
    if cuda:
        why = f"the CUDA build does not solve with __cuda {cuda}"
        flag = "pass the CUDA version that build needs (--with-cuda X.Y, e.g. 12.1)"
    else:
        why = "solved with no __cuda"
        flag = "pass --with-cuda 11.8 (or the CUDA version you pin)"
    raise CpuBuildWithCudaPin(
        f"{source}: the plan for {platform} puts the CPU build {', '.join(cpu)} next to {', '.join(pins)} ({why}); "
        f"{flag}, or fix the spec: pytorch=VERSION=*cuda* and a CUDA build on the channels, "
        f"or no {pins[0].split()[0]} for a CPU environment"
    )
