"""May this environment resume that checkpoint? ``check``, ``guard`` and ``load``; and
``compare``: may one environment resume what another wrote (``envkit diff``).

Each asks ``envkit.policy.judge``; this module reads the checkpoints and fingerprints it judges."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from envkit.checkpoint.reader import CheckpointFile, read_stamp
from envkit.checkpoint.urls import as_location, is_url
from envkit.config import resolve_policy
from envkit.errors import (
    EXIT_OK,
    EXIT_REFUSED,
    BadInput,
    CorruptCheckpoint,
    EnvironmentMismatch,
    TorchNotInstalled,
    os_error_input,
    warn_drift,
)
from envkit.fingerprint import Fingerprint, collect
from envkit.policy import Difference, Policy, judge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True)
class CheckReport:
    """What ``envkit check`` and the guard decide: the differences, graded, and the verdict."""

    checkpoint: Path
    info: CheckpointFile
    live: Fingerprint
    differences: tuple[Difference, ...]
    verdict: str
    policy: Policy
    # an unstamped checkpoint folder: what its files prove (file -> facts, folder.folder_evidence); else None
    evidence: Mapping[str, Mapping[str, Any]] | None = None

    @property
    def stored(self) -> Fingerprint | None:
        return self.info.stamp.fingerprint if self.info.stamp else None

    def rows(self, severity: str) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.severity == severity)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "checkpoint": str(self.checkpoint),
            "stamped": self.info.stamped,
            "format": self.info.format,
            "policy": self.policy.preset,
            "stored": self.stored.to_json() if self.stored else None,
            "live": self.live.to_json(),
            "meta": dict(self.info.stamp.meta) if self.info.stamp else None,
            "differences": [d.to_json() for d in self.differences],
            **({"evidence": {k: dict(v) for k, v in self.evidence.items()}} if self.evidence is not None else {}),
        }

    def exit_code(self, fail_on: str = "refuse") -> int:
        """What ``envkit check --fail-on`` exits with: 1 at or above ``fail_on`` ("refuse" or "warn"), else 0."""
        failing = {"refuse": ("refuse",), "warn": ("refuse", "warn")}[fail_on]
        return EXIT_REFUSED if self.verdict in failing else EXIT_OK

    def summary(self) -> str:
        refused = self.rows("refuse")
        if refused:
            reasons = "; ".join(f"{d.field}: {d.reason}" for d in refused[:3])
            more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
            return f"{self.checkpoint}: this environment may not resume it: {reasons}{more}"
        return f"{self.checkpoint}: {self.verdict}"


def check(
    path: str | os.PathLike[str],
    *,
    policy: Policy | str | None = None,
    live: Fingerprint | None = None,
    info: CheckpointFile | None = None,
) -> CheckReport:
    """Compare a checkpoint's stamp with the live (or a given) environment. Never unpickles.

    ``info``: its stamp, when the caller has read it already (it is not read again).
    """
    from envkit.checkpoint.devices import storage_devices

    info = info or read_stamp(path)
    active = resolve_policy(policy)
    current = live if live is not None else collect()
    stored = info.stamp.fingerprint if info.stamp else None
    judged = judge(stored, current, active, storage_devices=storage_devices(info))
    evidence = None
    if stored is None and info.format == "folder":
        from envkit.checkpoint.folder import folder_evidence

        evidence = folder_evidence(path)
    return CheckReport(as_location(path), info, current, judged.differences, judged.verdict, active, evidence)


def check_against(
    path: str | os.PathLike[str],
    *,
    policy: Policy | str | None = None,
    against: str | os.PathLike[str] | None = None,
    prefix: str | os.PathLike[str] | None = None,
) -> CheckReport:
    """``envkit check``: compare with the live environment, a fingerprint file (``against``)
    or the environment installed at ``prefix``, read from its files."""
    if against is not None and prefix is not None:
        raise BadInput("use --against or --prefix, not both")
    if against is not None:
        from envkit.fingerprint import read_fingerprint_file

        return check(path, policy=policy, live=read_fingerprint_file(Path(against)))
    return check(path, policy=policy, live=collect(prefix) if prefix is not None else None)


def guard(
    path: str | os.PathLike[str],
    policy: Policy | str | None = None,
    *,
    live: Fingerprint | None = None,
    info: CheckpointFile | None = None,
) -> CheckReport:
    """Call before ``load_state_dict``: warns on drift, raises EnvironmentMismatch on refuse.

    ``live`` replaces the live environment (to ask "could that machine resume it?").
    """
    report = check(path, policy=policy, live=live, info=info)
    if report.verdict == "refuse":
        raise EnvironmentMismatch(report.summary(), report)
    warned = report.rows("warn")
    if warned:
        shown = "; ".join(f"{d.field}: {d.reason}" for d in warned[:3])
        more = f" (and {len(warned) - 3} more: run `envkit check {report.checkpoint}`)" if len(warned) > 3 else ""
        warn_drift(f"{report.checkpoint}: the environment differs from the one that wrote it: {shown}{more}")
    return report


def cpu_fallback_location() -> Callable[[Any, str], Any]:
    """A map_location that keeps storages on CPU when the device they were saved on is absent."""
    torch = sys.modules["torch"]

    def restore(storage: Any, location: str) -> Any:
        if location.startswith("cuda"):
            index = int(location.split(":", 1)[1]) if ":" in location else 0
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                return storage
        if location.startswith("mps") and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            return storage
        return None  # torch's default placement

    return restore


def load(
    path: str | os.PathLike[str],
    *,
    map_location: Any = None,
    policy: Policy | str | None = None,
    verify: bool = True,
    info: CheckpointFile | None = None,
    local_copy: Path | None = None,
) -> Any:
    """guard, then the payload digest, then ``torch.load(weights_only=True)``; a safetensors file
    gives its dict of tensors (read and verified in one pass; ``map_location`` a device).

    Without ``map_location`` tensors go where they were saved when that device
    exists here, else to the CPU. ``info``: its stamp, read already. ``local_copy``: a local file
    holding a URL's bytes (a resume's verify kept them), loaded instead of downloading them.
    """
    report = guard(path, policy, info=info)
    if report.info.format == "dcp":
        raise BadInput(f"{path}: a sharded checkpoint (every rank's part through torch.distributed.checkpoint); resume it "
                       "with CheckpointManager(its folder, sharded=True) under the same number of ranks")
    if is_url(path):  # s3://, gs://, ...: the guard from the stamp (one ranged GET, of the tail or of a safetensors header), then a download, verified locally
        return _load_downloaded(report, map_location=map_location, verify=verify, local_copy=local_copy)
    if report.info.format == "folder":
        raise BadInput(f"{path}: a checkpoint folder, not one file; envkit.guard (or envkit.verify) it, then load it with the "
                       "framework that wrote it")
    stamp = report.info.stamp
    if verify and (stamp is None or stamp.payload is None):  # no digest of its own: a checksum sidecar, if any
        from envkit.checkpoint.sidecar import check_sidecars

        checked = check_sidecars(path)  # MalformedSidecar (exit 2) names a sidecar that is not one
        if checked is not None and not checked.ok:
            raise CorruptCheckpoint(f"{checked.problem(Path(path))}; resume from an earlier checkpoint")
    if report.info.format == "safetensors":  # read and hashed in one pass, into tensors
        from envkit.checkpoint.safetensors_format import load_tensors

        return load_tensors(path, map_location=map_location, verify=verify)
    if verify and stamp is not None and stamp.payload is not None:
        from envkit.checkpoint.integrity import verify as verify_checkpoint

        result = verify_checkpoint(path, report.info)
        if result.status in ("corrupt", "unreadable"):  # unstamped: nothing to verify against, not corruption
            raise CorruptCheckpoint(f"{result.problem}; resume from an earlier checkpoint")
    try:
        import torch
    except ImportError:
        raise TorchNotInstalled("envkit.load needs torch; install it with `pip install envkit[torch]`") from None
    location = map_location if map_location is not None else cpu_fallback_location()
    return torch.load(path, map_location=location, weights_only=True)


def _load_downloaded(report: CheckReport, *, map_location: Any, verify: bool, local_copy: Path | None) -> Any:
    import tempfile
    from contextlib import nullcontext
    from dataclasses import replace

    from envkit.checkpoint.remote import download

    where = report.checkpoint
    with nullcontext(None) if local_copy is not None else tempfile.TemporaryDirectory(prefix="envkit-load-") as folder:
        local = local_copy or Path(str(folder)) / where.name
        if local_copy is None:
            with open(local, "wb") as out:
                download(where, out)
        if verify and report.info.stamped:
            from envkit.checkpoint.integrity import verify as verify_file

            result = verify_file(local)
            if result.status in ("corrupt", "unreadable"):
                problem = (result.problem or "does not verify").replace(str(local), str(where))
                raise CorruptCheckpoint(f"{problem}; resume from an earlier checkpoint")
        return load(local, map_location=map_location, policy=report.policy, verify=False, info=replace(report.info, path=local))


@dataclass(frozen=True)
class DiffReport:
    """What ``envkit diff`` shows: the differences between two environments, graded by a policy."""

    a: str
    b: str
    stored: Fingerprint | None
    live: Fingerprint | None
    differences: tuple[Difference, ...]
    verdict: str
    policy: Policy

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "verdict": self.verdict,
            "policy": self.policy.preset,
            "differences": [d.to_json() for d in self.differences],
        }

    def exit_code(self) -> int:
        """``envkit diff`` exits as ``check`` does: 1 when the policy refuses (B may not resume what A wrote)."""
        return EXIT_REFUSED if self.verdict == "refuse" else EXIT_OK


DIFF_SIDES = "each side of `envkit diff` is a checkpoint, a fingerprint JSON (from `envkit fingerprint -o`) or `live`"


def fingerprint_of(source: str) -> Fingerprint | None:
    """``live``, a fingerprint JSON file, or a checkpoint (None when it has no stamp)."""
    if source == "live":
        return collect()
    if is_url(source):  # a checkpoint in a bucket (a fingerprint JSON there is not read)
        info = read_stamp(source)
        return info.stamp.fingerprint if info.stamp else None
    p = Path(source)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise BadInput(f"{p}: no such file; {DIFF_SIDES}") from None
    except OSError as exc:
        raise os_error_input(exc, p) from None
    head = b""
    if stat.S_ISREG(st.st_mode):  # a FIFO or device would block; read_stamp below names the problem
        try:
            with open(p, "rb") as fh:
                head = fh.read(64).lstrip()
        except OSError as exc:
            raise os_error_input(exc, p) from None
    if head.startswith(b"{"):
        from envkit.fingerprint import read_fingerprint_file

        return read_fingerprint_file(p)
    info = read_stamp(p)
    return info.stamp.fingerprint if info.stamp else None


def compare(a: str, b: str, *, policy: Policy | str | None = None) -> DiffReport:
    """Differences between two environments, each ``live``, a fingerprint file or a checkpoint."""
    active = resolve_policy(policy)
    fa, fb = fingerprint_of(a), fingerprint_of(b)
    judged = judge(fa, fb, active)
    return DiffReport(a, b, fa, fb, judged.differences, judged.verdict, active)
