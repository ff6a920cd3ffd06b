from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from envkit.errors import BadInput, MalformedStamp
from envkit.fingerprint import Fingerprint, collect, read_fingerprint_file
from envkit.fingerprint.schema import HostInfo, TorchInfo


def test_json_round_trip_keeps_digest() -> None:
    fp = collect()
    again = Fingerprint.from_json(json.loads(json.dumps(fp.to_json())))
    assert again == fp
    assert again.digest == fp.digest


def test_digest_ignores_host_but_not_content() -> None:
    fp = collect()
    assert fp.with_host(HostInfo("elsewhere", "2000-01-01T00:00:00+00:00", "/x")).digest == fp.digest
    assert replace(fp, torch=TorchInfo(version="0.0.1")).digest != fp.digest


def test_frozen() -> None:
    fp = collect()
    with pytest.raises(AttributeError):
        fp.python = None  # type: ignore[misc]


def test_unknown_schema_is_refused() -> None:
    with pytest.raises(MalformedStamp, match="unknown fingerprint schema"):
        Fingerprint.from_json({"schema": "envkit.fingerprint/99"})


def test_malformed_values_are_refused() -> None:
    with pytest.raises(MalformedStamp, match="malformed"):
        Fingerprint.from_json({"schema": "envkit.fingerprint/1", "python": ["not", "an", "object"]})


def test_old_fingerprint_fixture_still_loads(data_dir: Path) -> None:
    fp = read_fingerprint_file(data_dir / "fingerprint-v1.json")
    doc = json.loads((data_dir / "fingerprint-v1.json").read_text())
    assert fp.digest == doc["digest"]
    assert fp.python.version == doc["python"]["version"]


def test_read_fingerprint_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(BadInput, match="bad.json: not valid JSON"):
        read_fingerprint_file(bad)
    with pytest.raises(BadInput, match="no such file|No such file"):
        read_fingerprint_file(tmp_path / "missing.json")
    with pytest.raises(BadInput, match="is a directory"):
        read_fingerprint_file(tmp_path)


def test_digest_is_the_sha256_hashlib_gives() -> None:
    """sha256_of uses CPython's built-in sha256 to spare the OpenSSL start-up; same bytes, same digest."""
    import hashlib

    from envkit.fingerprint.schema import canonical_json, sha256_of

    fp = collect()
    content = fp._content()
    assert fp.digest == sha256_of(content) == "sha256:" + hashlib.sha256(canonical_json(content)).hexdigest()


def test_digest_is_computed_once_and_survives_a_copy() -> None:
    fp = collect()
    assert fp.digest is fp.digest
    moved = replace(fp, host=HostInfo(hostname="elsewhere"))
    assert moved.digest == fp.digest and moved.to_json()["host"]["hostname"] == "elsewhere"
    changed = replace(fp, torch=TorchInfo(version="0.0.1"))
    assert changed.digest != fp.digest
