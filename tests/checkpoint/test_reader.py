from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import envkit
from envkit.checkpoint.stamp import SCHEMA


def test_read_stamp_does_not_import_torch(stamped: Path) -> None:
    code = f"import sys, envkit; i = envkit.read_stamp({str(stamped)!r}); print(i.stamped, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_old_stamp_fixture_still_reads(data_dir: Path) -> None:
    info = envkit.read_stamp(data_dir / "stamp-v1.pth")
    assert info.stamped and info.stamp.schema == SCHEMA
    assert info.stamp.meta["epoch"] == 2 and info.stamp.meta["step"] == 20
    assert info.stamp.fingerprint.torch.version == "2.13.0+cpu"
    assert envkit.verify(data_dir / "stamp-v1.pth").ok


def test_unstamped_zip_reports_format_and_serialization_version(data_dir: Path) -> None:
    info = envkit.read_stamp(data_dir / "gpu-h200-cuda_saved.pth")
    assert not info.stamped and info.format == "zip" and info.prefix == "cuda_saved"
    assert info.serialization_version == "3"


def test_inspect_lists_records_storages_devices(data_dir: Path) -> None:
    insp = envkit.inspect_checkpoint(data_dir / "gpu-h200-cuda_saved.pth")
    assert insp.devices == ("cpu", "cuda:0")  # the CUDA RNG state is a CPU tensor
    assert len(insp.storages) == sum(1 for n, _ in insp.records if "/data/" in n and not n.endswith("serialization_id"))
    assert dict(insp.top_level).keys() == {"model_state_dict", "optimizer_state_dict", "epoch", "cuda_rng"}
    doc = insp.to_json()
    json.dumps(doc)
    assert doc["stamped"] is False and doc["devices"] == ["cpu", "cuda:0"]


def test_stamp_in_pickled_dict_survives_a_plain_resave(stamped: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    info = envkit.read_stamp(stamped)
    state = torch.load(stamped, weights_only=True)
    state["envkit"] = info.stamp.to_json()
    for legacy in (False, True):
        resaved = tmp_path / f"resaved-{legacy}.pth"
        torch.save(state, resaved, _use_new_zipfile_serialization=not legacy)
        again = envkit.read_stamp(resaved)
        assert again.stamped and again.stamp_source == "pickle"
        assert again.format == ("legacy" if legacy else "zip")
        assert again.stamp.fingerprint == info.stamp.fingerprint
        assert torch.load(resaved, weights_only=True)["epoch"] == 2


def test_someone_elses_envkit_key_is_ignored(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "c.pth"
    torch.save({"envkit": {"note": "mine"}, "w": torch.zeros(2)}, path)
    assert not envkit.read_stamp(path).stamped
