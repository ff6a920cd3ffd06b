"""`check` says (info) when a checkpoint holds CUDA storages and this machine has no CUDA (item 14).

The real H200 checkpoint (saved on cuda:0, unstamped) is read as it is. A stamped checkpoint with
CUDA storages cannot be made here (no GPU): those tests register a torch serialization tagger that
tags chosen CPU storages 'cuda:N' (named `..._mocked_cuda_tag`), so the bytes torch writes are what
a GPU save writes, and everything else (envkit.save, the stamp, check, load) is the real path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from envkit.checkpoint.devices import META_KEY, locations_in_pickle
from envkit.checkpoint.resume_check import check
from envkit.fingerprint import collect
from envkit.fingerprint.schema import GpuDevice, GpuInfo
from envkit.policy import Policy

REPO = Path(__file__).resolve().parents[2]
H200 = Path(__file__).resolve().parents[1] / "data" / "gpu-h200-cuda_saved.pth"


def check_json(path: Path, *extra: str) -> tuple[int, dict]:
    """`envkit check --json` in a fresh process, which must not import torch to decide."""
    code = (
        "import sys, runpy; sys.argv = ['envkit', 'check', '--json', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('envkit', run_name='__main__')\n"
        "finally:\n    sys.stderr.write('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *extra, str(path)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )
    assert done.stderr.endswith("no torch"), done.stderr
    return done.returncode, json.loads(done.stdout)


def _row(report: dict) -> dict | None:
    rows = [d for d in report["differences"] if d["field"] == "storage.devices"]
    return rows[0] if rows else None


needs_no_cuda = pytest.mark.skipif(
    Path("/proc/driver/nvidia/version").exists(), reason="this machine has an NVIDIA driver: the row must not show"
)


@needs_no_cuda
def test_real_h200_checkpoint_unstamped_gets_the_info_row() -> None:
    code, report = check_json(H200)
    assert code == 0 and not report["stamped"]
    row = _row(report)
    assert row is not None and row["severity"] == "info" and row["stored"] == "cuda:0"
    assert "no CUDA" in row["reason"] and "map_location='cpu'" in row["reason"] and "envkit.load" in row["reason"]


@needs_no_cuda
def test_text_output_says_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "envkit", "check", str(H200)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )
    assert done.returncode == 0
    assert "holds storages on cuda:0; this machine has no CUDA" in done.stdout


def test_a_machine_with_cuda_gets_no_row_and_a_cpu_torch_does() -> None:
    cpu_machine = collect(use_live_torch=False)
    gpu_machine = replace(
        cpu_machine,
        gpu=GpuInfo(driver="580.159.04", devices=(GpuDevice("NVIDIA H200", "9.0", 143771),)),
        torch=replace(cpu_machine.torch, version="2.11.0+cu130", cuda="13.0"),
    )
    assert all(d.field != "storage.devices" for d in check(H200, live=gpu_machine).differences)
    driver_but_cpu_torch = replace(gpu_machine, torch=replace(gpu_machine.torch, version="2.11.0+cpu", cuda=None))
    (row,) = [d for d in check(H200, live=driver_but_cpu_torch).differences if d.field == "storage.devices"]
    assert "torch 2.11.0+cpu is a CPU build" in row.reason and row.severity == "info"
    no_gpu = replace(cpu_machine, gpu=GpuInfo())
    assert any(d.field == "storage.devices" for d in check(H200, live=no_gpu).differences)


def test_locations_of_the_real_h200_pickle() -> None:
    with zipfile.ZipFile(H200) as zf:
        data = zf.read("cuda_saved/data.pkl")
    assert locations_in_pickle(data) == ("cpu", "cuda:0")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_user_strings_that_read_like_devices_are_not_storages(tmp_path: Path, protocol: int) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "x.pth"
    obj = {"cuda:0": "cuda:1", "device": "cuda:2", "w": torch.zeros(3), "cfg": ["cuda", "cuda:3", 7]}
    torch.save(obj, path, pickle_protocol=protocol)
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    assert locations_in_pickle(data) == ("cpu",)


@pytest.fixture
def cuda_tagged() -> Iterator[dict[int, int]]:
    """Register a tagger before torch's own: storages whose data_ptr is in the dict are tagged
    'cuda:<value>', as torch tags storages of a GPU (built afresh per storage, like _cuda_tag)."""
    torch = pytest.importorskip("torch")
    marked: dict[int, int] = {}

    def tagger(storage: object) -> str | None:
        index = marked.get(storage.data_ptr())  # type: ignore[attr-defined]
        return None if index is None else "cuda:" + str(index)

    def deserializer(storage: object, location: str) -> None:
        return None

    registry = torch.serialization._package_registry
    before = list(registry)
    torch.serialization.register_package(-100, tagger, deserializer)
    try:
        yield marked
    finally:
        registry[:] = before


def test_stamp_records_cuda_storages_and_check_says_so_mocked_cuda_tag(tmp_path: Path, cuda_tagged: dict[int, int]) -> None:
    import torch

    import envkit

    model = torch.nn.Linear(4, 4)
    cuda_tagged[model.weight.data_ptr()] = 0
    cuda_tagged[model.bias.data_ptr()] = 1
    path = tmp_path / "gpu.pth"
    stamp = envkit.save({"model": model.state_dict(), "step": torch.tensor(3)}, path)
    assert stamp.meta[META_KEY] == ["cpu", "cuda:0", "cuda:1"]
    assert envkit.read_stamp(path).stamp.meta[META_KEY] == ["cpu", "cuda:0", "cuda:1"]
    if not Path("/proc/driver/nvidia/version").exists():
        code, report = check_json(path)
        row = _row(report)
        assert code == 0 and report["stamped"] and row is not None and row["stored"] == "cuda:0, cuda:1"
        assert report["verdict"] == "ok"  # info only: nothing else differs
    # what the row promises: envkit.load puts them on the CPU here
    state = envkit.load(path)
    assert state["model"]["weight"].device.type == "cpu" and torch.equal(state["model"]["weight"], model.weight.detach())


def test_a_cpu_only_save_records_cpu_and_gets_no_row(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import envkit

    path = tmp_path / "cpu.pth"
    envkit.save({"w": torch.zeros(2)}, path)
    assert envkit.read_stamp(path).stamp.meta[META_KEY] == ["cpu"]
    assert all(d.field != "storage.devices" for d in check(path).differences)


def test_old_stamp_without_the_record_gets_no_row(data_dir: Path) -> None:
    report = check(data_dir / "stamp-v1.pth")
    assert all(d.field != "storage.devices" for d in report.differences)


@needs_no_cuda
def test_the_row_follows_the_projects_policy(tmp_path: Path) -> None:
    copy = tmp_path / "h200.pth"
    shutil.copy(H200, copy)
    report = check(copy, policy=Policy.of("compatible", {"storage.devices": "refuse"}))
    assert report.verdict == "refuse"
    assert [d.severity for d in report.differences if d.field == "storage.devices"] == ["refuse"]
