"""Save with one torch, check and load with another, both ways.

Needs a second interpreter with another torch and envkit installed: `make test-torch20`
builds `.venv-torch20` (torch 2.0.1, the target runtime) and passes its python in
ENVKIT_OTHER_PYTHON. Without it these tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
OTHER = os.environ.get("ENVKIT_OTHER_PYTHON")
pytestmark = pytest.mark.skipif(not OTHER, reason="set ENVKIT_OTHER_PYTHON (make test-torch20 does)")

SAVE = """
import sys, torch, envkit
torch.manual_seed(0)
m = torch.nn.Linear(32, 8)
o = torch.optim.Adam(m.parameters())
m(torch.randn(4, 32)).sum().backward(); o.step()
envkit.save({"model_state_dict": m.state_dict(), "optimizer_state_dict": o.state_dict(), "epoch": 1},
            sys.argv[1], meta={"epoch": 1, "step": 1})
print(torch.__version__)
"""

LOAD = """
import json, sys, warnings, torch, envkit
policy = sys.argv[2]
out = {"torch": str(torch.__version__)}
try:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = envkit.load(sys.argv[1], policy=policy)
    out["loaded"] = True
    out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, envkit.EnvironmentDriftWarning)]
    out["weight_sum"] = float(state["model_state_dict"]["weight"].double().sum())
    out["exp_avg_sum"] = float(state["optimizer_state_dict"]["state"][0]["exp_avg"].double().sum())
except envkit.EnvironmentMismatch as exc:
    out["loaded"] = False
    out["refused"] = str(exc)
print(json.dumps(out))
"""


def other(code: str, *args: str) -> str:
    done = subprocess.run([OTHER, "-c", code, *args], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def here(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def sums(state: dict) -> tuple[float, float]:
    return (
        float(state["model_state_dict"]["weight"].double().sum()),
        float(state["optimizer_state_dict"]["state"][0]["exp_avg"].double().sum()),
    )


def test_other_torch_is_really_another_version() -> None:
    assert other("import torch; print(torch.__version__)") != str(torch.__version__)


def test_saved_by_other_checked_and_loaded_here(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    other_version = other(SAVE, str(path))
    check = subprocess.run([sys.executable, "-m", "envkit", "check", "--json", str(path)], capture_output=True, text=True)
    report = json.loads(check.stdout)
    rows = {d["field"]: d for d in report["differences"]}
    assert rows["torch.version"]["stored"] == other_version
    result = json.loads(here(LOAD, str(path), "compatible"))
    older = tuple(map(int, other_version.split("+")[0].split(".")[:2])) < tuple(map(int, str(torch.__version__).split(".")[:2]))
    if older:  # an older torch wrote it: loads here, with a warning about the upgrade
        assert check.returncode == 0 and report["verdict"] == "warn"
        assert result["loaded"] and any("torch.version" in w for w in result["warnings"])
    assert envkit_verify(path)


def test_saved_here_refused_by_older_torch_then_loaded_under_warn(tmp_path: Path) -> None:
    path = tmp_path / "here.pth"
    here(SAVE, str(path))
    expected = sums(torch.load(path, weights_only=True))
    refused = json.loads(other(LOAD, str(path), "compatible"))
    other_version = refused["torch"]
    if tuple(map(int, other_version.split("+")[0].split(".")[:2])) < tuple(map(int, str(torch.__version__).split(".")[:2])):
        assert refused["loaded"] is False and "torch.version" in refused["refused"]
    forced = json.loads(other(LOAD, str(path), "warn"))
    assert forced["loaded"] is True
    assert (forced["weight_sum"], forced["exp_avg_sum"]) == pytest.approx(expected, rel=0, abs=0)


def envkit_verify(path: Path) -> bool:
    import envkit

    return envkit.verify(path).ok
