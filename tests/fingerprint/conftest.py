from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import make_nvidia_smi_stand_in, make_proc, make_site, path_with


@pytest.fixture
def h200(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The H200 machine of the probe, rebuilt from its recorded files (no GPU exists here)."""
    probe = json.loads((data_dir / "gpu-h200-probe.json").read_text())
    site = make_site(tmp_path / "venv", probe["dists"], probe["version_py"])
    proc = make_proc(tmp_path / "root", probe["/proc/driver/nvidia/version"])
    name, _driver, cap, memory, *_ = [f.strip() for f in probe["nvidia_smi"].split(",")]
    make_nvidia_smi_stand_in(tmp_path / "bin", f"{name}, {cap}, {memory.split()[0]}")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    return {"probe": probe, "site": site, "proc": proc}
