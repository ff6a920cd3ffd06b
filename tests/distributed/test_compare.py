"""The pure half of check_consistency: which per-rank differences refuse (no processes)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from envkit.distributed import ConsistencyReport, compare_fingerprints
from envkit.errors import BadInput
from envkit.fingerprint.schema import Fingerprint, GpuDevice, GpuInfo, HostInfo, Package, PythonInfo
from envkit.policy import Policy

H200 = GpuDevice("NVIDIA H200", "9.0", 143771)
A100 = GpuDevice("NVIDIA A100-SXM4-80GB", "8.0", 81920)
BASE = Fingerprint(
    python=PythonInfo("3.11.7", "CPython"),
    gpu=GpuInfo("580.159.04", (H200,) * 8, "2.28.9"),
    packages=(Package("numpy", "1.26.4", "pip", None),),
    host=HostInfo("node-a", "2026-01-01T00:00:00+00:00", "/envs/a"),
)


DEFAULT_POLICY = Policy()


def report(*others: Fingerprint, policy: Policy = DEFAULT_POLICY) -> ConsistencyReport:
    fps = [BASE, *others]
    return ConsistencyReport(len(fps), tuple(f.digest for f in fps), BASE.host.hostname, compare_fingerprints(fps, policy))


def test_hosts_alone_never_differ() -> None:
    other = BASE.with_host(HostInfo("node-b", "2026-02-02T00:00:00+00:00", "/envs/b"))
    assert other.digest == BASE.digest and report(other).differences == ()


def test_per_rank_gpu_visibility_and_driver_patch_are_allowed() -> None:
    """CUDA_VISIBLE_DEVICES per rank: one rank sees one GPU; another node has a newer driver."""
    other = replace(BASE, gpu=GpuInfo("580.160.01", (H200,), "2.28.9"))
    r = report(other)
    assert r.ok and {d.field for d in r.differences[0].rows} == {"gpu.devices", "gpu.driver"}


def test_mixed_gpu_generations_refuse_unless_the_policy_allows_them() -> None:
    other = replace(BASE, gpu=GpuInfo("580.159.04", (A100,), "2.28.9"))
    r = report(other)
    assert not r.ok and "gpu.capability 9.0 -> 8.0" in r.summary()
    assert report(other, policy=Policy.of(None, {"gpu.capability": "info"})).ok


def test_summary_names_every_bad_rank_host_and_field() -> None:
    numpy2 = replace(BASE, packages=(Package("numpy", "2.4.6", "pip", None),), host=HostInfo("node-b", None, "/envs/b"))
    py312 = replace(BASE, python=PythonInfo("3.12.1", "CPython"), host=HostInfo("node-c", None, "/envs/c"))
    text = report(numpy2, py312).summary()
    assert text.startswith("the ranks of this job run different environments: ranks 1, 2 differ from rank 0 (host node-a)")
    assert "rank 1 (host node-b, /envs/b): packages.numpy 1.26.4 -> 2.4.6" in text
    assert "rank 2 (host node-c, /envs/c): python.version 3.11.7 -> 3.12.1" in text


def test_sharded_without_a_process_group_is_bad_input(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import envkit

    with pytest.raises(BadInput, match="sharded=True needs an initialised torch.distributed process group") as err:
        envkit.CheckpointManager(tmp_path / "ck", sharded=True)
    assert err.value.exit_code == 2
    assert not (tmp_path / "ck").exists()  # nothing half-made
