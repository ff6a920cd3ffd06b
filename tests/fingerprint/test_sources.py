from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from envkit.errors import BadInput
from envkit.fingerprint import collect
from envkit.fingerprint.sources import (
    cudnn_from_int,
    parse_nvidia_smi,
    read_torch_version_py,
)
from tests.fakes import (
    make_reference_prefix,
)


def test_collect_from_h200_probe_files_with_stand_in_nvidia_smi(h200: dict) -> None:
    fp = collect(site_dirs=[h200["site"]], proc_root=h200["proc"], use_live_torch=False)
    assert fp.torch.version == "2.11.0+cu130"
    assert fp.torch.cuda == "13.0"
    # what torch loads (the pip wheel), not the system's libcudnn 9.14 that collect_env guessed
    assert fp.torch.cudnn == "9.19.0"
    assert "9.14" in h200["probe"]["collect_env"]
    assert fp.torch.git == "70d99e998b4955e0049d13a98d77ae1b14db1f45"
    assert fp.gpu.driver == "580.159.04"
    assert [(d.name, d.capability, d.memory_mib) for d in fp.gpu.devices] == [("NVIDIA H200", "9.0", 143771)]
    assert fp.gpu.nccl == "2.28.9" == ".".join(map(str, h200["probe"]["nccl"]))
    assert fp.torch.cudnn == cudnn_from_int(h200["probe"]["cudnn"])


def test_driver_without_nvidia_smi_still_reports_driver(h200: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    fp = collect(site_dirs=[h200["site"]], proc_root=h200["proc"], use_live_torch=False)
    assert fp.gpu.driver == "580.159.04"
    assert fp.gpu.devices == ()


def test_no_driver_means_no_gpu_query(tmp_path: Path) -> None:
    fp = collect(site_dirs=[], proc_root=tmp_path, use_live_torch=False)
    assert fp.gpu.driver is None and fp.gpu.devices == ()
    assert fp.torch.version is None


def test_collect_never_imports_torch() -> None:
    code = "import sys, envkit.fingerprint as f; f.collect(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_live_torch_facts_when_torch_is_imported() -> None:
    torch = pytest.importorskip("torch")
    fp = collect()
    assert fp.torch.version == str(torch.__version__)
    assert fp.determinism is not None
    assert dict(fp.determinism)["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()


def test_prefix_reads_conda_pytorch_build(tmp_path: Path) -> None:
    prefix = make_reference_prefix(tmp_path / "env")
    fp = collect(prefix, proc_root=tmp_path)
    assert fp.torch.version == "2.0.1"
    assert fp.torch.cuda == "11.8"
    assert fp.torch.cudnn == "8.7.0"
    assert fp.torch.build == "py3.11_cuda11.8_cudnn8.7.0_0"
    assert fp.python.version == "3.11.4"
    assert fp.platform.conda_subdir == "linux-64"
    assert fp.environment is not None and fp.environment.lock_hash == "sha256:" + "0" * 64
    assert ("pytorch-cuda", "11.8") in {(p.name, p.version) for p in fp.packages}
    assert fp.determinism is None  # another environment: nothing in-process applies


def test_prefix_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such environment folder"):
        collect(tmp_path / "missing")


def test_version_py_is_parsed_not_executed(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    source = tmp_path / "version.py"
    source.write_text(f"__version__ = '9.9.9'\ncuda = None\nopen({str(canary)!r}, 'w').write('x')\n")
    assert read_torch_version_py(source) == {"__version__": "9.9.9", "cuda": None}
    assert not canary.exists()


@pytest.mark.parametrize(("raw", "dotted"), [(8700, "8.7.0"), (8902, "8.9.2"), (91900, "9.19.0"), (90100, "9.1.0")])
def test_cudnn_from_int(raw: int, dotted: str) -> None:
    assert cudnn_from_int(raw) == dotted


def test_parse_nvidia_smi_several_devices() -> None:
    devices = parse_nvidia_smi("NVIDIA A100-SXM4-80GB, 8.0, 81920\nNVIDIA H100 80GB HBM3, 9.0, 81559\n\n")
    assert [(d.name, d.capability, d.memory_mib) for d in devices] == [
        ("NVIDIA A100-SXM4-80GB", "8.0", 81920),
        ("NVIDIA H100 80GB HBM3", "9.0", 81559),
    ]


def test_live_torch_never_creates_a_cuda_context_mocked_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only process on a GPU host (mocked: there is no GPU here) must not initialise CUDA."""
    torch = pytest.importorskip("torch")

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("collect() touched a CUDA device in a process that never used CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", forbidden)
    monkeypatch.setattr(torch.cuda, "get_device_properties", forbidden)
    fp = collect(query_devices=False)
    assert fp.gpu.devices == ()
    assert fp.determinism is not None  # the live facts were still read
