"""resume() reads the newest checkpoint's bytes twice: once to verify it (its stamp comes with that
read), once to load it; the stamp is parsed once. Counted with an audit hook, in a subprocess
(audit hooks cannot be removed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, warnings
import torch
import envkit
from envkit.checkpoint import stamp as stamp_module

folder = sys.argv[1]
warnings.simplefilter("ignore")
model = torch.nn.Linear(4, 2)
with envkit.CheckpointManager(folder, project="p", keep_last=None) as mgr:
    for step in (1, 2, 3):
        newest = mgr.save(epoch=0, step=step, model=model)
opens, parses = [], []
real_from_bytes = stamp_module.Stamp.from_bytes.__func__

def counting_from_bytes(cls, data, *, source):
    parses.append(source)
    return real_from_bytes(cls, data, source=source)

stamp_module.Stamp.from_bytes = classmethod(counting_from_bytes)
target = str(newest)

def hook(event, args):
    if event == "open" and args and str(args[0]) == target:
        opens.append(event)

sys.addaudithook(hook)
with envkit.CheckpointManager(folder, project="p", keep_last=None) as mgr:
    info = mgr.resume(model=torch.nn.Linear(4, 2))
print(json.dumps({"step": info.step, "opens": len(opens), "parses": len([p for p in parses if p == target])}))
"""


def test_resume_opens_the_newest_checkpoint_twice_and_parses_its_stamp_once(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "ck")], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"step": 3, "opens": 2, "parses": 1}


def test_the_manager_resolves_its_policy_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The project's config is read at the manager's first resume, not again per resume path."""
    import warnings

    import torch

    import envkit
    from envkit import config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "envkit.toml").write_text('preset = "compatible"\n')
    reads = []
    real = config.load_config
    monkeypatch.setattr(config, "load_config", lambda *a, **k: reads.append(1) or real(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with envkit.CheckpointManager(tmp_path / "ck", project="p") as mgr:
            mgr.save(epoch=0, step=1, model=torch.nn.Linear(2, 2))
            for _ in range(3):
                assert mgr.resume(model=torch.nn.Linear(2, 2)).step == 1
    assert len(reads) == 1
