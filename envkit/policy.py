"""Pure comparison of two fingerprints and the rules that judge the differences (docs/architecture.md).

``diff(stored, live)`` lists what differs, one row per field. ``evaluate`` gives each
row a severity and a reason a person can act on; the verdict is the worst row.
``judge`` is the three in one step, as check, diff, ls and the rank check use them.
No I/O happens here.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from envkit.errors import ConfigError
from envkit.fingerprint.schema import DETERMINISM_KEYS, Fingerprint, Package

TYPE_CHECKING = False  # not typing's: `envkit check` does not import typing
if TYPE_CHECKING:
    from packaging.version import Version

SEVERITIES = ("ok", "info", "warn", "refuse")
PRESETS = ("strict", "compatible", "warn")
DEFAULT_PRESET = "compatible"
STAMP_FIELD = "stamp"
STORAGE_FIELD = "storage.devices"  # a checkpoint's CUDA storages on a machine without CUDA

# Packages whose versions have fields of their own.
_DEDICATED_PACKAGES = frozenset({"torch", "pytorch", "python"})

Value = object


@dataclass(frozen=True)
class Change:
    """One field that differs between two fingerprints, before a policy grades it."""

    field: str
    stored: Value
    live: Value


@dataclass(frozen=True)
class Difference:
    """A graded change: its severity under the policy and a reason a person can act on."""

    field: str
    stored: Value
    live: Value
    severity: str
    reason: str

    def to_json(self) -> dict[str, Value]:
        return {
            "field": self.field,
            "stored": self.stored,
            "live": self.live,
            "severity": self.severity,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Policy:
    """A preset (strict, compatible, warn) with per-field overrides."""

    preset: str = DEFAULT_PRESET
    overrides: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown policy {self.preset!r}{did_you_mean(self.preset, PRESETS)}; use one of {', '.join(PRESETS)}")
        for pattern, severity in self.overrides:
            if severity not in SEVERITIES:
                raise ConfigError(
                    f"policy override {pattern!r} = {severity!r}: severity must be one of {', '.join(SEVERITIES)}"
                    f"{did_you_mean(severity, SEVERITIES)}"
                )
            problem = field_problem(pattern)
            if problem:
                raise ConfigError(f"policy override {pattern!r}: {problem}")

    @classmethod
    def of(cls, preset: str | None = None, overrides: Mapping[str, str] | None = None) -> Policy:
        return cls(preset or DEFAULT_PRESET, tuple(sorted((overrides or {}).items())))

    def override_for(self, field: str) -> str | None:
        exact = dict(self.overrides).get(field)
        if exact is not None:
            return exact
        matches = [(len(p), sev) for p, sev in self.overrides if fnmatch.fnmatchcase(field, p)]
        return max(matches)[1] if matches else None


# -- the fields a rule can name ----------------------------------------------------

PACKAGE_FIELDS = "packages.*"  # one row per package: packages.<name>


def field_names() -> tuple[str, ...]:
    """Every field ``diff`` can report, by name, from the one place that makes them (``flatten``);
    packages are the open family ``packages.<name>``."""
    fixed = flatten(Fingerprint(determinism=tuple((k, None) for k in DETERMINISM_KEYS)))
    return (*sorted(fixed), STORAGE_FIELD, STAMP_FIELD)


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_problem(pattern: str) -> str | None:
    """Why ``pattern`` names no field a policy can judge (None when it names one): a typo such as
    ``torch.cdua`` would otherwise be a rule that never fires."""
    names = field_names()
    families = sorted({n.split(".", 1)[0] + ".*" for n in names if "." in n})
    known = f"fields are {', '.join(families)}, packages.<name> and {STAMP_FIELD} (each row of `envkit check --json` names one)"
    if pattern in names or (pattern.startswith("packages.") and len(pattern) > len("packages.")):
        return None
    if any(ch in pattern for ch in "*?["):
        if any(fnmatch.fnmatchcase(n, pattern) for n in (*names, "packages.x", "packages.numpy")):
            return None
        return _unknown("the pattern matches no fingerprint field", pattern, names, known)
    return _unknown("not a fingerprint field", pattern, names, known)


def _unknown(what: str, pattern: str, names: tuple[str, ...], known: str) -> str:
    hint = did_you_mean(pattern, (*names, PACKAGE_FIELDS))
    return f"{what}{hint}" if hint else f"{what}; {known}"


# -- diff --------------------------------------------------------------------------


def flatten(fp: Fingerprint) -> dict[str, Value]:
    """The comparable fields of a fingerprint, by dotted name."""
    fields: dict[str, Value] = {
        "python.version": fp.python.version,
        "python.implementation": fp.python.implementation,
        "platform.system": fp.platform.system,
        "platform.machine": fp.platform.machine,
        "platform.libc": fp.platform.libc,
        "platform.conda_subdir": fp.platform.conda_subdir,
        "torch.version": fp.torch.version,
        "torch.cuda": fp.torch.cuda,
        # what this process's torch loaded when it is known (fingerprint `runtime`), else the files
        "torch.cudnn": fp.effective_cudnn,
        "torch.git": fp.torch.git,
        "torch.build": fp.torch.build,
        "gpu.driver": fp.gpu.driver,
        "gpu.nccl": fp.effective_nccl,
        "gpu.devices": ", ".join(sorted(str(d.name) for d in fp.effective_devices)) or None,
        "gpu.capability": ", ".join(sorted({str(d.capability) for d in fp.effective_devices})) or None,
        "environment.lock_hash": fp.environment.lock_hash if fp.environment else None,
    }
    if fp.determinism is not None:
        for key, value in fp.determinism:
            fields[f"determinism.{key}"] = value
    return fields


def diff(stored: Fingerprint, live: Fingerprint) -> tuple[Change, ...]:
    """Every field whose value differs, in a stable order."""
    a, b = flatten(stored), flatten(live)
    # torch on one side only: its CUDA, cuDNN, git and build rows would only repeat that (as "a CPU build")
    one_torch = (stored.torch.version is None) != (live.torch.version is None)
    changes = [
        Change(name, a.get(name), b.get(name))
        for name in sorted(a.keys() | b.keys())
        if a.get(name) != b.get(name)
        and not (name.startswith("determinism.") and (stored.determinism is None or live.determinism is None))
        and not (one_torch and name.startswith("torch.") and name != "torch.version")
    ]
    if stored.packages and live.packages:
        # An empty package list means "not recorded", not "nothing installed".
        pa = {p.name: _package_label(p) for p in stored.packages if p.name not in _DEDICATED_PACKAGES}
        pb = {p.name: _package_label(p) for p in live.packages if p.name not in _DEDICATED_PACKAGES}
        for name in sorted(pa.keys() | pb.keys()):
            if pa.get(name) != pb.get(name):
                changes.append(Change(f"packages.{name}", pa.get(name), pb.get(name)))
    return tuple(changes)


def _package_label(p: Package) -> str:
    return f"{p.version} ({p.build})" if p.build else p.version


# -- rules -------------------------------------------------------------------------


def _version(value: Value) -> Version | None:
    """packaging's reading of a version (``2.13.0+cpu``, ``3.12.0rc1``); for a string that is not PEP 440
    (``3.11.4+``, a vendor's suffix) the release numbers it starts with; None when it has none. packaging
    is imported here, when a version row differs, not on every `envkit check`."""
    from packaging.version import InvalidVersion, Version

    if value is None:
        return None
    try:
        return Version(str(value))
    except InvalidVersion:
        numbers = re.match(r"\d+(?:\.\d+)*", str(value))
        return Version(numbers.group(0)) if numbers else None


def _minor(v: Version) -> tuple[int, int]:
    return v.major, v.minor


def _patch(v: Version) -> tuple[int, int, int]:
    return v.major, v.minor, v.micro


def _rule_python_version(c: Change) -> tuple[str, str]:
    a, b = _version(c.stored), _version(c.live)
    if a is None or b is None:
        return "warn", f"Python version unknown on one side ({c.stored} vs {c.live}); make sure both run the same Python"
    if _minor(a) != _minor(b):
        return "refuse", (
            f"written by Python {c.stored}, this is {c.live}: pickled objects and extensions need the same "
            f"major.minor; resume under Python {a.major}.{a.minor} (see `envkit recreate`)"
        )
    return "info", f"Python patch release differs ({c.stored} -> {c.live}); safe to resume"


NO_TORCH = (
    "torch is not installed in this environment, so it cannot load the checkpoint at all; "
    "install torch {stored} in it (refused under every preset and override)"
)


def _cannot_load(c: Change) -> bool:
    """A target that cannot load the checkpoint at all: no preset or override makes that a warning."""
    return c.field == "torch.version" and c.live is None and c.stored is not None


def _rule_torch_version(c: Change) -> tuple[str, str]:
    a, b = _version(c.stored), _version(c.live)
    if c.live is None:
        return "refuse", NO_TORCH.format(stored=c.stored)
    if a is None or b is None:
        return "warn", f"torch version unknown on the checkpoint's side; this is torch {c.live}"
    pa, pb = _patch(a), _patch(b)
    if pa[:2] > pb[:2]:
        return "refuse", (
            f"written by torch {c.stored}, this is torch {c.live}: torch serialization is not forward "
            f"compatible; install torch>={'.'.join(map(str, pa))} to resume"
        )
    if pa[:2] < pb[:2]:
        return "warn", (
            f"this torch {c.live} is newer than the {c.stored} that wrote it: it loads, but kernels and "
            "numerics may differ; pin torch to the checkpoint's version for an exact resume"
        )
    if pa != pb:
        return "info", f"torch patch release differs ({c.stored} -> {c.live}); safe to resume"
    return "warn", f"another build of torch {'.'.join(map(str, pa))} ({c.stored} -> {c.live}); check its CUDA build"


def _rule_minor_sensitive(label: str) -> Callable[[Change], tuple[str, str]]:
    def rule(c: Change) -> tuple[str, str]:
        a, b = _version(c.stored), _version(c.live)
        if a is not None and b is not None and _minor(a) == _minor(b):
            return "info", f"{label} patch release differs ({c.stored} -> {c.live})"
        if c.stored is None:
            return "warn", (
                f"the checkpoint was written without {label} (a CPU build of torch) and this torch uses "
                f"{label} {c.live}: results will not match a CPU run bit for bit"
            )
        if c.live is None:
            return "warn", (
                f"the checkpoint was written with {label} {c.stored} and this torch has none (a CPU build): "
                f"it loads onto the CPU, but numerics differ; install a {label} {c.stored} build to continue exactly"
            )
        return "warn", (
            f"{label} changed ({_show(c.stored)} -> {_show(c.live)}): kernels and numerics may differ; "
            f"resume with {label} {_show(c.stored)} for an exact continuation"
        )

    return rule


def _fixed(severity: str, text: str) -> Callable[[Change], tuple[str, str]]:
    def rule(c: Change) -> tuple[str, str]:
        return severity, text.format(stored=_show(c.stored), live=_show(c.live), field=c.field)

    return rule


def _show(value: Value) -> str:
    return "none" if value is None else str(value)


_COMPATIBLE: dict[str, Callable[[Change], tuple[str, str]]] = {
    "python.version": _rule_python_version,
    "python.implementation": _fixed("refuse", "written by {stored}, this is {live}; resume with {stored}"),
    "torch.version": _rule_torch_version,
    "torch.cuda": _rule_minor_sensitive("CUDA"),
    "torch.cudnn": _rule_minor_sensitive("cuDNN"),
    "torch.git": _fixed("info", "torch was built from another commit ({stored} -> {live})"),
    "torch.build": _fixed("info", "another conda build of torch ({stored} -> {live})"),
    "gpu.capability": _fixed(
        "warn",
        "GPU compute capability changed ({stored} -> {live}): kernel choice and TF32/bf16 numerics may differ",
    ),
    "gpu.devices": _fixed("info", "different GPUs ({stored} -> {live})"),
    "gpu.driver": _fixed("info", "NVIDIA driver changed ({stored} -> {live})"),
    "gpu.nccl": _fixed("info", "NCCL changed ({stored} -> {live})"),
    "environment.lock_hash": _fixed("info", "the environment was created from another lock ({stored} -> {live})"),
    STORAGE_FIELD: _fixed(
        "info",
        "holds storages on {stored}; this machine has {live}: envkit.load maps them to the CPU "
        "(torch.load needs map_location='cpu')",
    ),
    STAMP_FIELD: lambda c: ("warn", _stamp_reason(c)),
}


def _stamp_reason(c: Change) -> str:
    if c.stored is None and c.live is None:
        return "neither side has an envkit stamp, so there is nothing to compare; re-save them with envkit.save to stamp them"
    side = "the checkpoint" if c.stored is None else "the second checkpoint"
    return (f"{side} has no envkit stamp, so nothing is known of the environment that wrote it; "
            "re-save it with envkit.save to stamp it")


def _compatible(c: Change) -> tuple[str, str]:
    rule = _COMPATIBLE.get(c.field)
    if rule is not None:
        return rule(c)
    if c.field.startswith("platform."):
        return "warn", f"{c.field} changed ({_show(c.stored)} -> {_show(c.live)}); results may differ"
    if c.field.startswith("packages."):
        name = c.field.split(".", 1)[1]
        if c.live is None:
            return "warn", f"{name} {c.stored} is not installed here; install it if the training code imports it"
        if c.stored is None:
            return "warn", f"{name} {c.live} is installed here but was not where the checkpoint was written"
        return "warn", f"{name} changed ({c.stored} -> {c.live})"
    if c.field.startswith("determinism."):
        return "info", f"{c.field} differs ({_show(c.stored)} -> {_show(c.live)}); set it as in the original run"
    return "info", f"{c.field} differs ({_show(c.stored)} -> {_show(c.live)})"


_STRICT_REFUSES = ("python.", "torch.version", "torch.cuda", "torch.cudnn", "gpu.capability", "packages.", STAMP_FIELD)


def _judge(c: Change, preset: str) -> tuple[str, str]:
    severity, reason = _compatible(c)
    if preset == "strict" and c.field.startswith(_STRICT_REFUSES):
        return "refuse", f"{reason} (the strict policy refuses any change here)"
    if preset == "warn" and severity == "refuse":
        return "warn", reason
    return severity, reason


def evaluate(changes: Iterable[Change], policy: Policy = Policy()) -> tuple[Difference, ...]:
    rows = []
    for c in changes:
        if _cannot_load(c):
            rows.append(Difference(c.field, c.stored, c.live, "refuse", NO_TORCH.format(stored=c.stored)))
            continue
        severity, reason = _judge(c, policy.preset)
        override = policy.override_for(c.field)
        if override is not None and override != severity:
            severity = override
            reason = f"{reason} (set to {override} by the project's policy)"
        if policy.preset == "warn" and severity == "refuse":
            severity = "warn"
        rows.append(Difference(c.field, c.stored, c.live, severity, reason))
    return tuple(rows)


def verdict(rows: Iterable[Difference]) -> str:
    worst = max((SEVERITIES.index(r.severity) for r in rows), default=0)
    return {"refuse": "refuse", "warn": "warn"}.get(SEVERITIES[worst], "ok")


STAMPED = "present"


def unstamped_change(stored: bool = False, live: bool = True) -> Change:
    """The one row for a side without an envkit stamp (None); ``present`` marks a side that has one
    (the live environment always does)."""
    return Change(STAMP_FIELD, STAMPED if stored else None, STAMPED if live else None)


def cuda_storage_change(devices: Iterable[str] | None, live: Fingerprint) -> Change | None:
    """A row when the checkpoint holds CUDA storages and the live environment has no CUDA: no
    NVIDIA driver (/proc/driver/nvidia/version) and no GPU in its fingerprint, or a CPU build of
    torch. Nothing imports torch to decide it."""
    cuda = sorted(d for d in devices or () if d == "cuda" or d.startswith("cuda:"))
    if not cuda:
        return None
    if live.gpu.driver is None and not live.effective_devices:
        why = "no NVIDIA driver, no GPU"
    elif live.torch.version is not None and live.torch.cuda is None:
        why = f"torch {live.torch.version} is a CPU build"
    else:
        return None
    return Change(STORAGE_FIELD, ", ".join(cuda), f"no CUDA ({why})")


@dataclass(frozen=True)
class Judgement:
    """What a policy makes of two environments: every graded row and the verdict (the worst row)."""

    differences: tuple[Difference, ...]
    verdict: str

    def rows(self, severity: str) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.severity == severity)


def judge(
    stored: Fingerprint | None,
    live: Fingerprint | None,
    policy: Policy = Policy(),
    *,
    storage_devices: Iterable[str] | None = None,
) -> Judgement:
    """May ``live`` resume what ``stored`` wrote? Pure.

    The rows are ``diff(stored, live)``, or the one ``stamp`` row when a side has no stamp
    (None; the row says which), then the ``storage.devices`` row when the checkpoint holds CUDA
    storages (``storage_devices``, its storage locations) and ``live`` has no CUDA; each graded
    by ``policy``.
    """
    if stored is None or live is None:
        changes: tuple[Change, ...] = (unstamped_change(stored=stored is not None, live=live is not None),)
    else:
        changes = diff(stored, live)
    if live is not None and (on_cuda := cuda_storage_change(storage_devices, live)) is not None:
        changes = (*changes, on_cuda)
    rows = evaluate(changes, policy)
    return Judgement(rows, verdict(rows))
