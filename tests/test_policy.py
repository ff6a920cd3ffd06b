from __future__ import annotations

import re
from dataclasses import replace

import pytest

from envkit import policy
from envkit.errors import ConfigError
from envkit.fingerprint.schema import (
    Fingerprint,
    GpuDevice,
    GpuInfo,
    Package,
    PythonInfo,
    TorchInfo,
)
from envkit.policy import Change, Policy, diff, evaluate, unstamped_change, verdict

BASE = Fingerprint(
    python=PythonInfo("3.11.7", "CPython"),
    torch=TorchInfo("2.0.1", "11.8", "8.7.0", "abc", None),
    gpu=GpuInfo("535.104.05", (GpuDevice("NVIDIA A100-SXM4-80GB", "8.0", 81920),), "2.14.3"),
    packages=(Package("numpy", "1.25.0", "pypi"), Package("torch", "2.0.1", "pypi")),
)


def judge(live: Fingerprint, preset: str = "compatible", **overrides: str) -> dict[str, str]:
    rows = evaluate(diff(BASE, live), Policy.of(preset, overrides))
    return {r.field: r.severity for r in rows}


def test_identical_is_ok() -> None:
    assert diff(BASE, BASE) == ()
    assert verdict(evaluate(diff(BASE, BASE))) == "ok"


def test_python_minor_change_refuses_patch_is_info() -> None:
    assert judge(replace(BASE, python=PythonInfo("3.10.12", "CPython"))) == {"python.version": "refuse"}
    assert judge(replace(BASE, python=PythonInfo("3.11.4", "CPython"))) == {"python.version": "info"}


@pytest.mark.parametrize(
    ("live", "severity"),
    [
        ("1.13.1", "refuse"),  # downgrade: serialization is not forward compatible
        ("2.1.0", "warn"),  # upgrade
        ("2.0.0", "info"),  # patch
        ("2.0.1+cu118", "warn"),  # another build of the same release
    ],
)
def test_torch_version_rules(live: str, severity: str) -> None:
    rows = judge(replace(BASE, torch=replace(BASE.torch, version=live)))
    assert rows["torch.version"] == severity


def test_cuda_cudnn_capability_warn_driver_info() -> None:
    live = replace(
        BASE,
        torch=replace(BASE.torch, cuda="12.1", cudnn="8.9.2"),
        gpu=GpuInfo("550.54.15", (GpuDevice("NVIDIA H100 80GB HBM3", "9.0", 81559),), "2.14.3"),
    )
    assert judge(live) == {
        "torch.cuda": "warn",
        "torch.cudnn": "warn",
        "gpu.capability": "warn",
        "gpu.devices": "info",
        "gpu.driver": "info",
    }


def test_cudnn_patch_is_info() -> None:
    assert judge(replace(BASE, torch=replace(BASE.torch, cudnn="8.7.1"))) == {"torch.cudnn": "info"}


def test_package_changes_warn_and_torch_is_not_counted_twice() -> None:
    live = replace(BASE, packages=(Package("numpy", "2.0.0", "pypi"), Package("torch", "2.1.0", "pypi"), Package("scipy", "1.11", "pypi")))
    assert judge(live) == {"packages.numpy": "warn", "packages.scipy": "warn"}


def test_empty_package_list_means_unknown() -> None:
    assert judge(replace(BASE, packages=())) == {}


def test_strict_refuses_what_compatible_only_warns() -> None:
    live = replace(BASE, torch=replace(BASE.torch, version="2.0.0", cuda="12.1"))
    assert judge(live, "strict") == {"torch.version": "refuse", "torch.cuda": "refuse"}
    assert judge(live, "compatible") == {"torch.version": "info", "torch.cuda": "warn"}


def test_warn_preset_never_refuses() -> None:
    live = replace(BASE, python=PythonInfo("3.12.1", "CPython"))
    assert judge(live, "warn") == {"python.version": "warn"}
    assert judge(live, "warn", **{"python.version": "refuse"}) == {"python.version": "warn"}


def test_overrides_exact_beats_glob() -> None:
    live = replace(BASE, torch=replace(BASE.torch, cuda="12.1"), packages=(Package("numpy", "2.0.0", "pypi"),))
    rows = judge(live, **{"torch.cuda": "refuse", "packages.*": "info", "packages.numpy": "ok"})
    assert rows == {"torch.cuda": "refuse", "packages.numpy": "ok"}


def test_every_row_has_an_actionable_reason() -> None:
    live = replace(BASE, python=PythonInfo("3.10.0", "CPython"), torch=TorchInfo("1.13.1", "11.7", "8.5.0", "x", None))
    for row in evaluate(diff(BASE, live)):
        assert row.reason and len(row.reason) > 20


def test_unstamped_warns_by_default_refuses_under_strict() -> None:
    assert verdict(evaluate([unstamped_change()])) == "warn"
    assert verdict(evaluate([unstamped_change()], Policy.of("strict"))) == "refuse"


def test_bad_policy_values() -> None:
    with pytest.raises(ConfigError, match="unknown policy"):
        Policy.of("lenient")
    with pytest.raises(ConfigError, match="severity must be one of"):
        Policy.of("compatible", {"torch.cuda": "block"})


def test_diff_is_pure_and_ordered() -> None:
    live = replace(BASE, torch=replace(BASE.torch, cuda="12.1", cudnn="9.0.0"))
    first, second = diff(BASE, live), diff(BASE, live)
    assert first == second
    assert [c.field for c in first] == sorted(c.field for c in first)
    assert isinstance(first[0], Change)


# -- issue 10, items 6 and 11 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["strict", "compatible", "warn"])
@pytest.mark.parametrize("override", [None, "ok", "info", "warn"])
def test_a_target_without_torch_refuses_whatever_the_policy(preset: str, override: str | None) -> None:
    rows = evaluate(diff(BASE, replace(BASE, torch=TorchInfo())), Policy.of(preset, {"torch.version": override} if override else {}))
    assert [(r.field, r.severity) for r in rows] == [("torch.version", "refuse")]  # not "CUDA: a CPU build" rows too
    assert "torch is not installed" in rows[0].reason and "install torch 2.0.1" in rows[0].reason
    assert verdict(rows) == "refuse"


def test_a_checkpoint_of_unknown_torch_is_not_refused_for_that() -> None:
    rows = evaluate(diff(replace(BASE, torch=TorchInfo()), BASE), Policy.of("compatible"))
    assert {r.field: r.severity for r in rows} == {"torch.version": "warn"}


@pytest.mark.parametrize(
    ("pattern", "says"),
    [("torch.cdua", "did you mean 'torch.cuda'?"), ("x*", "matches no fingerprint field"), ("gpu", "not a fingerprint field")],
)
def test_policy_overrides_must_name_a_field(pattern: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        Policy.of("compatible", {pattern: "refuse"})
    assert Policy.of("compatible", {"packages.numpy": "refuse", "torch.*": "warn", "stamp": "refuse"}).override_for("stamp") == "refuse"


# -- issue 11: one judge --------------------------------------------------------------------------------------

NO_CUDA = replace(BASE, gpu=GpuInfo(None, (), None))
CPU_TORCH = replace(BASE, torch=replace(BASE.torch, cuda=None, cudnn=None))


@pytest.mark.parametrize("preset", ["strict", "compatible", "warn"])
@pytest.mark.parametrize(
    "live",
    [
        BASE,
        replace(BASE, python=PythonInfo("3.10.12", "CPython")),
        replace(BASE, torch=replace(BASE.torch, version="2.1.0", cuda="12.1")),
        replace(BASE, torch=TorchInfo()),
        replace(BASE, packages=(Package("numpy", "2.0.0", "pypi"),)),
    ],
)
def test_judge_of_two_fingerprints_is_diff_evaluate_verdict(preset: str, live: Fingerprint) -> None:
    active = Policy.of(preset, {"packages.*": "info"})
    judged = policy.judge(BASE, live, active)
    assert judged.differences == evaluate(diff(BASE, live), active)
    assert judged.verdict == verdict(judged.differences)
    assert judged.rows("refuse") == tuple(r for r in judged.differences if r.severity == "refuse")


@pytest.mark.parametrize(
    ("stored", "live", "sides", "says"),
    [
        (None, BASE, (None, "present"), "the checkpoint has no envkit stamp"),  # check, ls: an unstamped checkpoint
        (BASE, None, ("present", None), "the second checkpoint has no envkit stamp"),  # diff: B is unstamped
        (None, None, (None, None), "neither side has an envkit stamp"),
    ],
)
def test_judge_gives_one_stamp_row_naming_the_unstamped_side(stored: Fingerprint | None, live: Fingerprint | None, sides: tuple, says: str) -> None:
    for preset, expected in (("compatible", "warn"), ("strict", "refuse"), ("warn", "warn")):
        judged = policy.judge(stored, live, Policy.of(preset), storage_devices=("cpu",))
        assert [(r.field, (r.stored, r.live)) for r in judged.differences] == [("stamp", sides)]
        assert says in judged.differences[0].reason and judged.verdict == expected


@pytest.mark.parametrize(
    ("stored", "live", "devices", "says"),
    [
        (BASE, NO_CUDA, ("cpu", "cuda:0", "cuda:1"), "no CUDA (no NVIDIA driver, no GPU)"),
        (None, NO_CUDA, ("cuda:0",), "no CUDA (no NVIDIA driver, no GPU)"),  # unstamped: the reader's locations
        (BASE, CPU_TORCH, ("cuda",), "no CUDA (torch 2.0.1 is a CPU build)"),
        (BASE, BASE, ("cuda:0",), None),  # this machine has CUDA
        (BASE, NO_CUDA, ("cpu",), None),  # nothing on CUDA
        (BASE, NO_CUDA, None, None),  # not known (a fingerprint file, ls)
        (NO_CUDA, None, ("cuda:0",), None),  # no live side to place them on
    ],
)
def test_judge_adds_the_cuda_storage_row_last(stored: Fingerprint | None, live: Fingerprint | None, devices: tuple[str, ...] | None, says: str | None) -> None:
    judged = policy.judge(stored, live, Policy.of("strict"), storage_devices=devices)
    rows = [r for r in judged.differences if r.field == "storage.devices"]
    if says is None:
        assert rows == []
        return
    assert judged.differences[-1] == rows[0] and len(rows) == 1
    assert rows[0].live == says and rows[0].severity == "info"
    assert rows[0].stored == ", ".join(sorted(d for d in devices if d.startswith("cuda")))
    assert judged.differences[:-1] == policy.judge(stored, live, Policy.of("strict")).differences


def test_a_judgement_is_frozen() -> None:
    judged = policy.judge(BASE, BASE)
    assert judged == policy.Judgement((), "ok")
    with pytest.raises(AttributeError):
        judged.verdict = "refuse"  # type: ignore[misc]


# -- versions are read by packaging (PEP 440), with a fallback for strings that are not PEP 440 ------


def torch_row(stored: str, live: str) -> tuple[str, str]:
    fp = replace(BASE, torch=replace(BASE.torch, version=stored))
    (row,) = [r for r in evaluate(diff(fp, replace(BASE, torch=replace(BASE.torch, version=live)))) if r.field == "torch.version"]
    return row.severity, row.reason


@pytest.mark.parametrize(
    ("stored", "live", "severity", "says"),
    [
        ("2.13.0+cpu", "2.13.0+cu121", "warn", "another build of torch 2.13.0"),  # local tags: one release
        ("2.13.0", "2.13.0+cpu", "warn", "another build of torch 2.13.0"),
        ("2.1.0a0+git9d3b1f", "2.1.0", "warn", "another build of torch 2.1.0"),  # a pre-release of the same release
        ("2.1.0rc1", "2.0.1", "refuse", "install torch>=2.1.0"),
        ("2.1", "2.0.1", "refuse", "install torch>=2.1.0"),  # padded: 2.1 is 2.1.0
        ("2.0.1", "2.0.1.post1", "warn", "another build of torch 2.0.1"),
        ("2.0.1", "2.0.2+cu118", "info", "patch release"),
        ("v2.1.0", "2.0.1", "refuse", "install torch>=2.1.0"),  # PEP 440 allows a leading v
        ("2.1.0-custom build", "2.0.1", "refuse", "install torch>=2.1.0"),  # not PEP 440: its leading release numbers
        ("unknown", "2.0.1", "warn", "torch version unknown"),
    ],
)
def test_torch_versions_are_read_by_packaging(stored: str, live: str, severity: str, says: str) -> None:
    got, reason = torch_row(stored, live)
    assert got == severity and says in reason, reason


@pytest.mark.parametrize(
    ("stored", "live", "severity"),
    [
        ("3.11.7", "3.11.4+", "info"),  # a CPython built from a branch: not PEP 440, read as 3.11.4
        ("3.12.0rc1", "3.12.1", "info"),
        ("3.11.7", "3.12.0b1", "refuse"),
        ("v3.11.7", "3.11.8", "info"),
        ("3.11.7", "PyPy 7.3", "warn"),  # no release numbers first: unknown
    ],
)
def test_python_versions_are_read_by_packaging(stored: str, live: str, severity: str) -> None:
    fp = replace(BASE, python=PythonInfo(stored, "CPython"))
    rows = evaluate(diff(fp, replace(fp, python=PythonInfo(live, "CPython"))))
    assert {r.field: r.severity for r in rows} == {"python.version": severity}


def test_cuda_versions_compare_major_minor_by_packaging() -> None:
    live = replace(BASE, torch=replace(BASE.torch, cuda="11.8.89"))
    rows = {r.field: r for r in evaluate(diff(BASE, live))}
    assert rows["torch.cuda"].severity == "info" and "patch release" in rows["torch.cuda"].reason
    live = replace(BASE, torch=replace(BASE.torch, cuda="12.1"))
    assert {r.field: r.severity for r in evaluate(diff(BASE, live))}["torch.cuda"] == "warn"
