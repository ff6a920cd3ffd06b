"""The digest of one environment does not depend on whether torch is imported (issue 10, item 14).

What only a process sees (its determinism flags, the cuDNN/NCCL its torch loaded, the GPUs torch
enumerates) lives in the fingerprint's `runtime` section, outside the digest, as `host` is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from envkit.checkpoint.reader import read_stamp
from envkit.fingerprint import Fingerprint, collect
from envkit.fingerprint.schema import GpuDevice, RuntimeInfo
from envkit.policy import diff
from tests.conftest import needs_torch

REPO = Path(__file__).resolve().parents[2]

_PRINT = "import envkit.fingerprint as f, json; fp = f.collect(); print(json.dumps([fp.digest, fp.to_json()]))"


def _collect_in_subprocess(before: str = "", env: dict[str, str] | None = None) -> tuple[str, dict]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", before + "\n" + _PRINT], capture_output=True, text=True, check=True, env=full_env
    )
    digest, doc = json.loads(done.stdout)
    return digest, doc


@pytest.mark.slow
@needs_torch
def test_digest_is_the_same_with_and_without_torch_imported_in_real_processes() -> None:
    plain, plain_doc = _collect_in_subprocess()
    assert "runtime" not in plain_doc and plain_doc["determinism"] is None
    imported, imported_doc = _collect_in_subprocess("import torch")
    assert imported == plain
    # the flags were read (torch was imported), just not digested
    assert imported_doc["runtime"]["determinism"]["cudnn_benchmark"] is False
    assert imported_doc["torch"] == plain_doc["torch"]


@pytest.mark.slow
@needs_torch
@pytest.mark.parametrize(
    ("settings", "env"),
    [
        ("torch.backends.cudnn.benchmark = True", {}),
        ("torch.backends.cudnn.deterministic = True", {}),
        ("torch.use_deterministic_algorithms(True)", {}),
        ("torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = False", {}),
        ("pass", {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}),
    ],
    ids=["cudnn_benchmark", "cudnn_deterministic", "deterministic_algorithms", "tf32", "cublas_workspace"],
)
def test_determinism_flags_are_process_settings_not_the_environment(settings: str, env: dict[str, str]) -> None:
    plain, _ = _collect_in_subprocess()
    toggled, doc = _collect_in_subprocess(f"import torch\n{settings}", env)
    assert toggled == plain
    flags = doc["runtime"]["determinism"]
    assert any(flags[k] not in (None, False)
               for k in ("cudnn_benchmark", "cudnn_deterministic", "deterministic_algorithms", "tf32_matmul", "cublas_workspace_config"))


@needs_torch
def test_a_stamp_written_with_torch_imported_has_the_digest_of_the_environment(stamped: Path) -> None:
    """envkit.save imports torch; `envkit check` and `fingerprint` do not: same environment, same digest."""
    stored = read_stamp(stamped).stamp.fingerprint
    live, _ = _collect_in_subprocess()
    assert stored.digest == live
    assert stored.determinism is not None and not stored.determinism_digested
    done = subprocess.run(
        [sys.executable, "-m", "envkit", "check", "--json", str(stamped)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["verdict"] == "ok" and report["differences"] == []
    assert report["stored"]["digest"] == report["live"]["digest"]


def test_envkit_0_1_0_stamp_keeps_its_recorded_digest_and_flags(data_dir: Path) -> None:
    """stamp-v1.pth recorded the flags in the digested `determinism` slot: read and digested as written."""
    stamp = read_stamp(data_dir / "stamp-v1.pth").stamp
    fp = stamp.fingerprint
    recorded = _stamp_doc(data_dir / "stamp-v1.pth")["fingerprint"]
    assert fp.determinism_digested and dict(fp.determinism)["tf32_cudnn"] is True
    assert fp.digest == recorded["digest"]
    again = Fingerprint.from_json(json.loads(json.dumps(fp.to_json())))
    assert again == fp and again.digest == recorded["digest"]
    # the old stamp still compares field by field with a fingerprint of today's layout
    today = replace(fp, determinism_digested=False, runtime=RuntimeInfo())
    assert today.digest != fp.digest and diff(fp, today) == ()


def _stamp_doc(path: Path) -> dict:
    import zipfile

    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("extra/envkit.json"))
        return json.loads(z.read(name))


def test_runtime_round_trips_and_is_outside_the_digest() -> None:
    fp = collect(use_live_torch=False)
    with_runtime = replace(
        fp,
        runtime=RuntimeInfo(cudnn="9.19.0", nccl="2.28.9", devices=(GpuDevice("NVIDIA H200", "9.0", 143155),)),
        determinism=(("cudnn_benchmark", True),),
    )
    assert with_runtime.digest == fp.digest
    doc = with_runtime.to_json()
    assert doc["determinism"] is None and doc["runtime"]["determinism"] == {"cudnn_benchmark": True}
    back = Fingerprint.from_json(json.loads(json.dumps(doc)))
    assert back == with_runtime and back.digest == fp.digest


def test_policy_compares_what_torch_loaded_when_either_side_knows_it() -> None:
    fp = collect(use_live_torch=False)
    stored = replace(fp, runtime=RuntimeInfo(cudnn="8.7.0"))
    live = replace(fp, runtime=RuntimeInfo(cudnn="8.9.2"))
    assert [(c.field, c.stored, c.live) for c in diff(stored, live)] == [("torch.cudnn", "8.7.0", "8.9.2")]


def test_torch_device_view_does_not_change_the_digest_mocked_gpu(monkeypatch: pytest.MonkeyPatch, h200: dict) -> None:
    """The H200 machine rebuilt from its probe (no GPU here: torch.cuda is mocked with the probe's
    values). nvidia-smi says 143771 MiB, torch 143155 MiB; torch reports cuDNN 91900 and NCCL
    (2, 28, 9). With CUDA in use the digest is still the one collected without torch."""
    torch = pytest.importorskip("torch")
    probe, site, proc = h200["probe"], h200["site"], h200["proc"]
    without = collect(site_dirs=[site], proc_root=proc, use_live_torch=False)

    class Props:
        name = "NVIDIA H200"
        major, minor = probe["devices"][0]["cap"]
        total_memory = 143155 * 1024 * 1024

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props)
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: tuple(probe["nccl"]))
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: probe["cudnn"])
    live = collect(site_dirs=[site], proc_root=proc)
    assert live.digest == without.digest
    assert live.runtime == RuntimeInfo("9.19.0", "2.28.9", (GpuDevice("NVIDIA H200", "9.0", 143155),))
    assert [d.memory_mib for d in live.gpu.devices] == [143771]
    assert diff(without, live) == ()  # torch agrees with the files here: nothing to report


def test_a_reader_that_does_not_know_runtime_computes_the_same_digest() -> None:
    """envkit 0.1.0 ignores unknown sections: dropping `runtime` is what it sees, and the digest holds."""
    fp = replace(collect(use_live_torch=False), runtime=RuntimeInfo(cudnn="9.19.0"), determinism=(("tf32_matmul", True),))
    doc = json.loads(json.dumps(fp.to_json()))
    without = Fingerprint.from_json({k: v for k, v in doc.items() if k != "runtime"})
    assert without.digest == fp.digest == doc["digest"] and without.determinism is None


@pytest.mark.parametrize("runtime", ["x", ["a"], {"devices": "abc"}, {"devices": [5]}])
def test_a_malformed_runtime_section_is_refused_not_a_crash(runtime: object) -> None:
    from envkit.errors import MalformedStamp

    doc = collect(use_live_torch=False).to_json()
    doc["runtime"] = runtime
    with pytest.raises(MalformedStamp, match="malformed"):
        Fingerprint.from_json(doc)
