"""safetensors files at URLs: ``envkit.save(tensors, "s3://b/x.safetensors")`` and the reads of one.

Against the real S3 API server of the tests (moto on 127.0.0.1, s3server.py), requests counted
on the server's side. A save is one upload to the final key that appears whole, or not at all;
``check`` reads the header at the head: at most two GETs whatever the size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

import envkit  # noqa: E402
from envkit.checkpoint import remote  # noqa: E402
from envkit.errors import BadInput, CheckpointWriteError  # noqa: E402
from tests.checkpoint.s3server import S3Server  # noqa: E402
from tests.checkpoint.test_remote import drop_the_connection_at_part  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _fs() -> object:
    return remote.filesystem("s3", "s3://any")


def _keys(server: S3Server, bucket: str) -> list[str]:
    import boto3

    listed = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _uploads(server: S3Server, bucket: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _tensors(n: int = 3, big: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {f"layer{i}.weight": torch.randn(4, 3, generator=g) for i in range(n)}
    out["half"] = torch.arange(6, dtype=torch.float16)
    if big:
        out["big"] = torch.randn(big, generator=g)
    return out


def test_save_to_a_url_appears_whole_and_reads_back(tmp_path: Path, bucket: str, s3_server: S3Server) -> None:
    from safetensors.torch import load_file

    url = f"s3://{bucket}/run/model.safetensors"
    tensors = _tensors()
    stamp = envkit.save(tensors, url, meta={"epoch": 1, "step": 7}, metadata={"note": "hello"})
    assert _keys(s3_server, bucket) == ["run/model.safetensors"] and _uploads(s3_server, bucket) == []
    info = envkit.read_stamp(url)
    assert info.format == "safetensors" and info.stamp == stamp and info.stamp.meta["step"] == 7  # type: ignore[union-attr]
    assert envkit.verify(url).ok
    loaded = envkit.load(url)
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], v) for k, v in tensors.items())
    _fs().get_file(f"{bucket}/run/model.safetensors", str(tmp_path / "m.safetensors"))  # type: ignore[attr-defined]
    by_safetensors = load_file(str(tmp_path / "m.safetensors"))  # the safetensors library reads what was uploaded
    assert all(torch.equal(by_safetensors[k], v) for k, v in tensors.items())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata()["note"] == "hello" and f.metadata()["format"] == "pt"
    local = tmp_path / "local.safetensors"  # the same file a local save writes, but for the stamp's own bytes
    envkit.save(tensors, local, meta={"epoch": 1, "step": 7}, metadata={"note": "hello"})
    assert envkit.read_stamp(local).stamp.payload == stamp.payload  # type: ignore[union-attr]
    assert (tmp_path / "m.safetensors").stat().st_size == local.stat().st_size


def test_a_save_that_fails_mid_upload_leaves_the_previous_object(bucket: str, s3_server: S3Server,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure is injected into the client (the second part's upload raises); the server is real."""

    monkeypatch.setattr(remote, "PART_BYTES", 5 * 1024 * 1024)
    url = f"s3://{bucket}/model.safetensors"
    first = envkit.save(_tensors(big=3_000_000), url, meta={"epoch": 0, "step": 1})  # 12 MB: three parts
    with monkeypatch.context() as patched:
        drop_the_connection_at_part(patched, 2)
        with pytest.raises(CheckpointWriteError, match="nothing was left under that key"):
            envkit.save(_tensors(big=3_000_000), url, meta={"epoch": 0, "step": 2})
    assert _keys(s3_server, bucket) == ["model.safetensors"] and _uploads(s3_server, bucket) == []
    assert envkit.read_stamp(url).stamp == first and envkit.verify(url).ok  # the previous object, whole


def test_bad_tensors_are_refused_before_any_request(bucket: str, s3_server: S3Server) -> None:
    s3_server.reset_log()
    with pytest.raises(BadInput, match="not a tensor"):
        envkit.save({"w": torch.ones(2), "n": 3}, f"s3://{bucket}/x.safetensors")
    with pytest.raises(BadInput, match="share memory"):
        w = torch.ones(4)
        envkit.save({"a": w, "b": w}, f"s3://{bucket}/x.safetensors")
    assert [r for r in s3_server.log() if r.method in ("PUT", "POST")] == []
    assert _keys(s3_server, bucket) == []


@pytest.mark.parametrize("tensors", [3, 2_000])  # a header of 1 KB (in the first GET), of 140 KB (one more)
def test_check_reads_the_header_in_at_most_two_gets(bucket: str, s3_server: S3Server, tensors: int) -> None:
    url = f"s3://{bucket}/m{tensors}.safetensors"
    envkit.save(_tensors(tensors, big=4_000_000), url, meta={"epoch": 0, "step": 1})  # 16 MB of data
    size = envkit.read_stamp(url).size
    s3_server.reset_log()
    report = envkit.check(url)
    assert report.verdict == "ok" and report.info.format == "safetensors" and report.info.size == size
    gets = s3_server.log()
    assert [r.method for r in gets] == ["GET"] * (1 if tensors < 100 else 2), gets  # no HEAD, no LIST
    assert sum(r.length or 0 for r in gets) < 400 * 1024 < size


def test_check_and_verify_through_the_command_line(bucket: str, s3_server: S3Server) -> None:
    url = f"s3://{bucket}/cli.safetensors"
    envkit.save(_tensors(big=1_000_000), url, meta={"epoch": 0, "step": 1})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "envkit", "check", url, "--json"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "ok"


def test_verify_finds_a_changed_data_byte_a_changed_header_and_a_cut(tmp_path: Path, bucket: str) -> None:
    url = f"s3://{bucket}/v.safetensors"
    envkit.save(_tensors(big=500_000), url, meta={"epoch": 0, "step": 1})
    blob = _fs().cat_file(f"{bucket}/v.safetensors")  # type: ignore[attr-defined]
    changed = bytearray(blob)
    changed[-1000] ^= 0xFF
    _fs().pipe_file(f"{bucket}/data.safetensors", bytes(changed))  # type: ignore[attr-defined]
    result = envkit.verify(f"s3://{bucket}/data.safetensors")
    assert result.status == "corrupt" and "digest mismatch" in (result.problem or "")
    n = int.from_bytes(blob[:8], "little")
    header = blob[8 : 8 + n].replace(b'"layer0.weight"', b'"layer9.weight"', 1)  # a renamed tensor, same length
    _fs().pipe_file(f"{bucket}/header.safetensors", blob[:8] + header + blob[8 + n :])  # type: ignore[attr-defined]
    result = envkit.verify(f"s3://{bucket}/header.safetensors")
    assert result.status == "corrupt" and "header" in (result.problem or "")
    _fs().pipe_file(f"{bucket}/cut.safetensors", blob[:-4096])  # type: ignore[attr-defined]
    assert envkit.verify(f"s3://{bucket}/cut.safetensors").status in ("corrupt", "unreadable")
    assert envkit.verify(url).ok


def _answer(location: object) -> tuple[object, ...]:
    try:
        got = envkit.read_stamp(location)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - the refusal is the answer
        return (type(exc),)
    return got.stamp, got.format, got.size, got.stamp_source


def test_odd_objects_named_safetensors_are_read_as_the_local_reader_reads_them(tmp_path: Path, bucket: str) -> None:
    envkit.save({"w": torch.arange(100_000.0)}, tmp_path / "zip.pth", meta={"epoch": 0, "step": 1})
    envkit.save(_tensors(), tmp_path / "good.safetensors", meta={"epoch": 0, "step": 1})
    good = (tmp_path / "good.safetensors").read_bytes()
    cases = {
        "empty": b"",
        "a-zip-so-named": (tmp_path / "zip.pth").read_bytes(),  # its stamp is at the tail, not the head
        "header-length-huge": b"\xff" * 8 + b"{" + b"x" * 100,
        "header-cut": good[:40],
        "data-cut": good[:-8],
        "good": good,
    }
    for case, blob in cases.items():
        (tmp_path / f"{case}.safetensors").write_bytes(blob)
        _fs().pipe_file(f"{bucket}/{case}.safetensors", blob)  # type: ignore[attr-defined]
        assert _answer(f"s3://{bucket}/{case}.safetensors") == _answer(tmp_path / f"{case}.safetensors"), case
    assert len(_answer(f"s3://{bucket}/a-zip-so-named.safetensors")) == 4 and len(_answer(f"s3://{bucket}/good.safetensors")) == 4
