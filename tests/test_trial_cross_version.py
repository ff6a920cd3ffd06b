"""envkit trial across torch lines, both ways: a checkpoint saved by each torch, tried in the other.

Needs a second interpreter with another torch (and envkit, to save with it): `make test-torch20`
builds `.venv-torch20` (torch 2.0.1, numpy 1.26) and passes its python in ENVKIT_OTHER_PYTHON.
Without it these tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
OTHER = os.environ.get("ENVKIT_OTHER_PYTHON")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not OTHER, reason="set ENVKIT_OTHER_PYTHON (make test-torch20 does)")]

SAVE = """
import sys, torch, envkit
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8))
o = torch.optim.Adam(m.parameters())
m(torch.randn(4, 16)).sum().backward(); o.step()
state = {"model": m.state_dict(), "optimizer": o.state_dict(), "half": torch.arange(6, dtype=torch.float16).view(2, 3).t(),
         "bf16": torch.ones(3, dtype=torch.bfloat16), "flags": torch.tensor([True, False]), "epoch": 1}
envkit.save(state, sys.argv[1], meta={"epoch": 1, "step": 1})
torch.save(state, sys.argv[2])
print(torch.__version__)
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}  # the other interpreter saves with this envkit


def trial(*args: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "envkit", "trial", *args, "--json"], capture_output=True, text=True, env=env(), timeout=600)
    return done.returncode, json.loads(done.stdout)


def saved_by(python: str, folder: Path) -> tuple[Path, Path, str]:
    stamped, plain = folder / "stamped.pth", folder / "plain.pth"
    done = subprocess.run([python, "-c", SAVE, str(stamped), str(plain)], capture_output=True, text=True, env=env(), check=True)
    return stamped, plain, done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("direction", ["saved here, tried there", "saved there, tried here"])
def test_each_torch_loads_the_others_checkpoints_with_the_same_values(tmp_path: Path, direction: str) -> None:
    assert OTHER is not None
    saver, trier = (sys.executable, OTHER) if direction.startswith("saved here") else (OTHER, sys.executable)
    stamped, plain, saved_with = saved_by(saver, tmp_path)
    code, report = trial(str(stamped), str(plain), "--python", trier)
    assert code == 0, report
    assert report["environment"]["torch"] != saved_with  # really two torch lines
    rows = {Path(r["checkpoint"]).name: r for r in report["checkpoints"]}
    assert rows["stamped.pth"]["compared_with"] == "stamp" and rows["plain.pth"]["compared_with"] == "current environment"
    assert all(r["ok"] and r["tensors"] == 22 for r in rows.values()), rows


def test_a_tampered_payload_differs_in_the_other_torch_not_a_load_failure(tmp_path: Path) -> None:
    from tests.checkpoint.test_trial import flip_byte_of

    assert OTHER is not None
    stamped, _, _ = saved_by(sys.executable, tmp_path)
    tampered = tmp_path / "tampered.pth"
    shutil.copy(stamped, tampered)
    flip_byte_of(tampered, "/data/3")
    code, report = trial(str(stamped), str(tampered), "--python", OTHER)
    assert code == 1
    good, bad = report["checkpoints"]
    assert good["ok"] and bad["loads"] and not bad["same_values"] and bad["error"] is None
    assert [d["fields"] for d in bad["differing"]] == [["bytes"]]


def test_a_checkpoint_between_2_and_4_gib_saved_here_loads_in_the_other_torch(tmp_path: Path) -> None:
    """envkit's stamp used to make such archives zip64 (zipfile's 2**31 threshold), which torch
    2.0.1's reader refuses as "invalid header or archive is corrupted"; torch itself does not."""
    import envkit

    assert OTHER is not None
    path = tmp_path / "big.pth"
    envkit.save({"w": torch.zeros(2**29 + 2**20), "step": 1}, path)  # 2.15 GB: offsets past 2**31
    assert 2**31 < path.stat().st_size < 2**32
    code, report = trial(str(path), "--python", OTHER)
    path.unlink()
    assert code == 0, report["checkpoints"][0]["error"]
    assert report["checkpoints"][0]["tensors"] == 1
