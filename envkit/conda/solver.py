"""The embedded solver: py-rattler, for any platform, with explicit virtual packages."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.conda.channels import ResolvedChannel
from envkit.conda.platforms import VirtualPackage
from envkit.errors import ChannelError, CpuBuildWithCudaPin, SolveError, SpecError


@dataclass(frozen=True)
class PackageName:
    normalized: str


@dataclass(frozen=True)
class SolvedRecord:
    """The fields of rattler's RepoDataRecord a lock is written from (same names and types)."""

    name: PackageName
    version: str
    build: str
    depends: list[str]
    url: str
    md5: bytes | None
    sha256: bytes | None


def solve(
    specs: tuple[str, ...],
    channels: tuple[ResolvedChannel, ...],
    platform: str,
    virtual: tuple[VirtualPackage, ...],
    *,
    cache_dir: Path,
    source: Path,
) -> list[SolvedRecord]:
    """The records that satisfy ``specs`` on ``platform``, solved by rattler in a child process."""
    done = run_rattler({
        "op": "solve", "specs": list(specs), "channels": [c.url for c in channels], "platform": platform,
        "virtual": [[v.name, v.version, v.build] for v in virtual], "cache_dir": str(cache_dir),
    })
    error = done.get("error")
    if error == "spec":
        raise SpecError(f"{source}: bad package line ({done['message']}); write it as `name version` or `name=version`")
    if error == "solver":
        raise SolveError(f"{source}: cannot be solved for {platform}: {done['message']}; relax the pins or add a channel")
    if error == "gateway":
        names = ", ".join(c.name for c in channels)
        raise ChannelError(f"{source}: cannot fetch channels ({names}) for {platform}: {done['message']}; check the channel names and the network")
    return [
        SolvedRecord(PackageName(r["name"]), r["version"], r["build"], r["depends"], r["url"],
                     bytes.fromhex(r["md5"]) if r["md5"] else None, bytes.fromhex(r["sha256"]) if r["sha256"] else None)
        for r in done["records"]
    ]


def install(packages: list[dict[str, Any]], staging: Path, *, prefix: Path, cache_dir: Path) -> str | None:
    """Install these records (LockedPackage fields) into ``staging`` with ``prefix`` patched into
    the files, by rattler in a child process; the error text, or None."""
    done = run_rattler({"op": "install", "packages": packages, "staging": str(staging), "prefix": str(prefix), "cache_dir": str(cache_dir)})
    return done.get("message") if done.get("error") else None


# -- rattler in a child process: Ctrl-C is deterministic -----------------------------------
#
# rattler runs its futures on tokio threads. A KeyboardInterrupt raised inside asyncio.run
# while such a future runs, or the interpreter shutting down while those threads still call
# back into Python, is what made Ctrl-C print a Rust panic; and a cancelled install can keep
# writing into its folder after Python has moved on to removing it. In a child process,
# Ctrl-C means: kill the child, wait until it is gone (nothing writes any more), let the
# caller's cleanup run, exit 130. The child dies of SIGINT itself, silently, when a terminal
# sends it to the whole process group.


def run_rattler(job: dict[str, Any]) -> dict[str, Any]:
    """Run one rattler job in ``python -m envkit.conda.solver``; its JSON answer. A Ctrl-C here
    kills the child and waits for it before the KeyboardInterrupt goes on to the caller."""
    import envkit

    # the child imports this same envkit, wherever it was imported from
    here = str(Path(envkit.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "envkit.conda.solver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        out, err = proc.communicate(json.dumps(job).encode())
    except BaseException:
        # Ctrl-C (or any error here): the child must be gone before anything it wrote is
        # removed, and a second Ctrl-C must not cut that short
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            proc.kill()
            proc.wait()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        raise
    if proc.returncode == -signal.SIGINT:  # a terminal's Ctrl-C reached the child first
        raise KeyboardInterrupt
    try:
        answer = json.loads(out.splitlines()[-1])  # the child's answer is its last line
    except (ValueError, IndexError):
        tail = " ".join(err.decode(errors="replace").split())[-300:]
        raise SolveError(f"rattler stopped (exit {proc.returncode}): {tail or 'no output'}; run it again, or report it") from None
    if not isinstance(answer, dict):
        raise SolveError(f"rattler answered {str(answer)[:200]!r}; run it again, or report it")
    return answer


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def records_of(packages: list[dict[str, Any]]) -> list[Any]:
    """rattler RepoDataRecords of locked packages, given as plain dicts of ``LockedPackage``'s
    fields (they cross to the install child)."""
    import re

    from rattler import BuildString, PackageRecord, RepoDataRecord

    records = []
    for p in packages:
        base, subdir, filename = p["url"].rsplit("/", 2)
        number = re.search(r"_(\d+)$", p["build"])
        record = PackageRecord(
            p["name"],
            p["version"],
            BuildString(p["build"]),
            int(number.group(1)) if number else 0,
            subdir,
            depends=[f"{k} {v}".strip() for k, v in p["depends"]],
            sha256=bytes.fromhex(p["sha256"]) if p["sha256"] else None,
            md5=bytes.fromhex(p["md5"]) if p["md5"] else None,
        )
        records.append(RepoDataRecord(record, filename, p["url"], base + "/"))
    return records


def _child(job: dict[str, Any]) -> dict[str, Any]:
    import rattler
    import rattler.exceptions
    from rattler import BuildString, GenericVirtualPackage, MatchSpec, Version
    from rattler import PackageName as Name

    if job["op"] == "install":
        try:
            asyncio.run(rattler.install(
                records_of(job["packages"]), Path(job["staging"]), cache_dir=Path(job["cache_dir"]),
                show_progress=False, alternative_target_prefix=Path(job["prefix"]), execute_link_scripts=False,
            ))
        except Exception as exc:  # noqa: BLE001 - rattler's install errors are many types
            return {"error": "install", "message": " ".join(str(exc).split())[:300]}
        return {}
    try:
        match_specs = [MatchSpec(s, strict=False) for s in job["specs"]]
    except Exception as exc:  # noqa: BLE001 - rattler raises its own parse error types
        return {"error": "spec", "message": _short(exc)}
    vps = [GenericVirtualPackage(Name(n), Version(v), BuildString(b)) for n, v, b in job["virtual"]]
    try:
        records = asyncio.run(
            rattler.solve(
                job["channels"], match_specs, gateway=rattler.Gateway(cache_dir=Path(job["cache_dir"])),
                platforms=[job["platform"], "noarch"], virtual_packages=vps, channel_relations="disabled",
            )
        )
    except rattler.exceptions.SolverError as exc:
        return {"error": "solver", "message": _short(exc, 400)}
    except rattler.exceptions.GatewayError as exc:
        return {"error": "gateway", "message": _short(exc)}
    return {"records": [
        {"name": r.name.normalized, "version": str(r.version), "build": str(r.build), "depends": list(r.depends), "url": r.url,
         "md5": r.md5.hex() if r.md5 else None, "sha256": r.sha256.hex() if r.sha256 else None}
        for r in records
    ]}


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the solved plan: a CPU pytorch next to a CUDA pin is a refusal (docs/architecture.md) ---------

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


def check_cuda_plan(
    packages: Iterable[tuple[str, str, str]], platform: str, cuda: str | None, *, source: Path, locked: bool = False,
) -> None:
    """CpuBuildWithCudaPin (exit 1) when the plan pairs a CPU build of pytorch with a CUDA pin;
    ``locked``: the plan is an existing lock's, so the fix is to solve it again."""
    cpu, pins = cpu_builds_beside_cuda(packages)
    if not cpu:
        return
    if locked:
        raise CpuBuildWithCudaPin(
            f"{source}: locks the CPU build {', '.join(cpu)} next to {', '.join(pins)} for {platform}; "
            f"solve it again with `envkit lock` (the spec's CUDA pin now sets __cuda) or `envkit lock --with-cuda 11.8`"
        )
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


if __name__ == "__main__":
    # the child: a Ctrl-C kills it at once (the parent cleans up); its answer is one JSON document
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.stdout.write("\n" + json.dumps(_child(json.loads(sys.stdin.buffer.read()))) + "\n")
