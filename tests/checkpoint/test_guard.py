from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

import envkit
from envkit.checkpoint import check
from envkit.errors import CorruptCheckpoint, EnvironmentDriftWarning, EnvironmentMismatch, EnvkitError
from envkit.fingerprint import collect, read_fingerprint_file
from envkit.fingerprint.schema import TorchInfo

torch = pytest.importorskip("torch")
REFERENCE = Path(__file__).parents[2] / "examples" / "reference-torch20-cu118.fingerprint.json"


def test_check_same_environment_is_ok(stamped: Path) -> None:
    report = check(stamped)
    assert report.verdict == "ok" and report.differences == ()
    doc = report.to_json()
    assert {"verdict", "checkpoint", "stamped", "format", "stored", "live", "differences"} <= doc.keys()
    json.dumps(doc)


def test_check_against_reference_refuses_torch_downgrade(stamped: Path) -> None:
    reference = read_fingerprint_file(REFERENCE)
    if envkit.read_stamp(stamped).stamp.fingerprint.torch.version.startswith("2.0."):
        reference = replace(reference, torch=replace(reference.torch, version="1.13.1"))  # under torch 2.0 itself
    report = check(stamped, live=reference)
    assert report.verdict == "refuse"
    row = {d.field: d for d in report.differences}["torch.version"]
    assert row.severity == "refuse" and "install torch>=" in row.reason
    assert {d.field for d in report.differences} >= {"torch.cuda", "torch.cudnn"}


def test_guard_raises_before_unpickling(stamped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = replace(collect(), torch=TorchInfo(version="1.13.1"))
    monkeypatch.setattr("envkit.checkpoint.resume_check.collect", lambda *a, **k: old)
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(EnvironmentMismatch, match="torch.version") as info:
        envkit.load(stamped)
    assert isinstance(info.value, EnvkitError) and info.value.report.verdict == "refuse"
    assert calls == []


def test_guard_warns_on_drift(stamped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = collect()
    newer = replace(live, torch=replace(live.torch, version="99.0.0"))
    monkeypatch.setattr("envkit.checkpoint.resume_check.collect", lambda *a, **k: newer)
    with pytest.warns(EnvironmentDriftWarning, match="torch.version"):
        report = envkit.guard(stamped)
    assert report.verdict == "warn"


def test_guard_is_silent_when_nothing_changed(stamped: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert envkit.guard(stamped).verdict == "ok"


def test_policy_argument_and_config(stamped: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    live = collect()
    other_cuda = replace(live, torch=replace(live.torch, cuda="12.1"))
    monkeypatch.setattr("envkit.checkpoint.resume_check.collect", lambda *a, **k: other_cuda)
    assert envkit.check(stamped).verdict == "warn"
    assert envkit.check(stamped, policy="strict").verdict == "refuse"
    (tmp_path / "envkit.toml").write_text('[policy]\n"torch.cuda" = "refuse"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EnvironmentMismatch):
        envkit.guard(stamped)


def test_load_verifies_payload(stamped: Path) -> None:
    data = bytearray(stamped.read_bytes())
    info = envkit.read_stamp(stamped)
    data[info.stamp.payload.length - 1] ^= 0x01  # inside the last record torch wrote
    stamped.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="digest mismatch"):
        envkit.load(stamped)


def test_load_returns_the_state(stamped: Path) -> None:
    state = envkit.load(stamped)
    assert state["epoch"] == 2 and state["model_state_dict"]["weight"].shape == (4, 8)


def test_cuda_fixture_loads_on_cpu_through_envkit_but_not_plain_torch(data_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the fixture would load either way")
    path = data_dir / "gpu-h200-cuda_saved.pth"
    # torch >= 2.1 raises RuntimeError; 2.0's weights-only unpickler wraps it in UnpicklingError
    with pytest.raises((RuntimeError, pickle.UnpicklingError), match="CUDA"):
        torch.load(path, weights_only=True)
    with pytest.warns(EnvironmentDriftWarning, match="no envkit stamp"):
        state = envkit.load(path)
    weight = state["model_state_dict"]["weight"]
    assert weight.device.type == "cpu" and weight.shape == (256, 256)
    assert state["optimizer_state_dict"]["state"][0]["exp_avg"].device.type == "cpu"


def test_unstamped_refused_under_strict(data_dir: Path) -> None:
    with pytest.raises(EnvironmentMismatch, match="no envkit stamp"):
        envkit.guard(data_dir / "gpu-h200-cuda_saved.pth", policy="strict")
