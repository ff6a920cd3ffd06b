"""The whole path on a real local channel: lint -> lock -> render -> create -> doctor -> tamper ->
export -> recreate -> create again. Real solver (py-rattler), real installs, real conda-lock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from envkit.cli import main
from tests.conda.channel import CPU_BUILD, CUDA_BUILD
from tests.conda.conftest import write_spec

DEPS = "  - python=3.11\n  - pytorch=2.0.1\n  - numpy\n"
PLATFORMS = ["-p", "linux-64", "-p", "osx-arm64", "-p", "win-64"]


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def pytorch_builds(lock: Path) -> dict[str, str]:
    from envkit.conda.lock import read_lock

    return {p.platform: p.build for p in read_lock(lock).packages if p.name == "pytorch"}


@pytest.mark.slow
def test_lock_picks_cuda_build_only_with_cuda(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, DEPS)
    cpu, cuda = tmp_path / "cpu.yml", tmp_path / "cuda.yml"
    run("lock", "-f", str(spec), *PLATFORMS, "--lockfile", str(cpu))
    run("lock", "-f", str(spec), *PLATFORMS, "--with-cuda", "11.8", "--lockfile", str(cuda))
    assert pytorch_builds(cpu) == {"linux-64": CPU_BUILD, "osx-arm64": CPU_BUILD, "win-64": CPU_BUILD}
    assert pytorch_builds(cuda) == {"linux-64": CUDA_BUILD, "osx-arm64": CPU_BUILD, "win-64": CUDA_BUILD}
    run("lock", "-f", str(spec), "--lockfile", str(cuda), "--check")

    # the hash is conda-lock's own: its API computes the same for the same spec and options
    from conda_lock.content_hash import compute_content_hashes
    from conda_lock.src_parser.environment_yaml import parse_environment_file
    from conda_lock.virtual_package import default_virtual_package_repodata

    from envkit.conda.lock import read_lock
    from envkit.conda.spec import PIP_MAPPING

    lock_spec = parse_environment_file(spec, ["linux-64", "osx-arm64", "win-64"], mapping_url=str(PIP_MAPPING))
    expected = compute_content_hashes(lock_spec, default_virtual_package_repodata(cuda_version="11.8"))
    assert dict(read_lock(cuda).content_hash) == expected


def test_check_names_platform_and_line_when_stale(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, DEPS)
    run("lock", "-f", str(spec), "-p", "linux-64", "-p", "win-64")
    spec.write_text(spec.read_text().replace("numpy\n", "numpy=1.24\n"))
    out = run("lock", "-f", str(spec), "--check", code=1)
    assert "linux-64: content hash differs" in out and "win-64" in out
    assert "+conda: numpy 1.24" in out and "-conda: numpy" in out
    # a comment changes the bytes but not the content: still fresh (slow path, conda-lock's hash)
    spec.write_text(spec.read_text().replace("numpy=1.24\n", "numpy\n") + "# a comment\n")
    run("lock", "-f", str(spec), "--check")


@pytest.mark.slow
def test_conda_lock_render_accepts_the_lock(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, DEPS)
    run("lock", "-f", str(spec), *PLATFORMS, "--with-cuda", "11.8")
    exe = Path(sys.executable).with_name("conda-lock")
    done = subprocess.run(
        [str(exe), "render", "-p", "linux-64", "--kind", "explicit", "conda-lock.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    explicit = (tmp_path / "conda-linux-64.lock").read_text()
    assert "@EXPLICIT" in explicit and f"pytorch-2.0.1-{CUDA_BUILD}.tar.bz2#" in explicit


@pytest.mark.slow
@pytest.mark.torch
def test_create_doctor_export_recreate_create_again(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, DEPS + "  - pip\n")
    lint = json.loads(run("lint", str(spec), "--json"))  # the path starts where a user starts
    assert lint["errors"] == 0, lint
    run("lock", "-f", str(spec), "-p", "linux-64", "-p", "osx-arm64", "--with-cuda", "11.8")
    prefix = tmp_path / "envs" / "train"
    out = run("create", str(spec), "-p", str(prefix), "--dry-run")
    assert CUDA_BUILD in out and not prefix.exists()
    run("create", str(spec), "-p", str(prefix))
    meta = json.loads((prefix / "conda-meta" / "envkit.json").read_text())
    assert meta["platform"] == "linux-64" and meta["engine"] == "rattler" and meta["lock_hash"]
    assert not list(prefix.parent.glob(".*envkit-tmp*"))

    # the fingerprint of the created env names torch, CUDA, cuDNN and its lock
    fp_doc = json.loads(run("fingerprint", "--prefix", str(prefix), "--json"))
    assert fp_doc["torch"]["version"] == "2.0.1"
    assert (fp_doc["torch"]["cuda"], fp_doc["torch"]["cudnn"]) == ("11.8", "8.7.0")
    assert fp_doc["environment"]["lock_hash"] == meta["lock_hash"]

    run("doctor", "-p", str(prefix))
    # tamper: delete a record and change a version
    record = next((prefix / "conda-meta").glob("numpy-*.json"))
    record.unlink()
    py = next((prefix / "conda-meta").glob("python-3.11.4-*.json"))
    py.rename(py.with_name(py.name.replace("3.11.4", "3.11.9")))
    doc = json.loads(py.with_name(py.name.replace("3.11.4", "3.11.9")).read_text())
    doc["version"] = "3.11.9"
    py.with_name(py.name.replace("3.11.4", "3.11.9")).write_text(json.dumps(doc))
    report = json.loads(run("doctor", "-p", str(prefix), "--json", code=1))
    kinds = {(d["kind"], d["name"]) for d in report["drift"]}
    assert ("missing", "numpy") in kinds and ("changed", "python") in kinds
    # a spec change makes the lock stale; doctor says so too
    spec.write_text(spec.read_text() + "  - cudatoolkit\n")
    report = json.loads(run("doctor", "-p", str(prefix), "--json", code=1))
    assert any(d["kind"] == "stale-lock" for d in report["drift"])

    exported = run("export", "-p", str(prefix), "--no-builds")
    assert "prefix:" not in exported and "pytorch=2.0.1" in exported
    assert "pytorch=2.0.1\n" in exported or "- pytorch=2.0.1" in exported
    history = run("export", "-p", str(prefix), "--from-history")
    assert "pytorch=2.0.1" in history and "numpy" in history

    # recreate from a checkpoint stamped with the (untampered part of the) env's fingerprint
    shutil.rmtree(prefix)
    spec.write_text(spec.read_text().replace("  - cudatoolkit\n", ""))
    run("create", str(spec), "-p", str(prefix))
    from envkit.checkpoint.writer import save
    from envkit.fingerprint import collect

    fp = collect(prefix)
    ckpt = tmp_path / "model.pth"
    save({"epoch": 1}, ckpt, fingerprint=fp)
    out_dir = tmp_path / "recreated"
    out_dir.mkdir()
    run("recreate", str(ckpt), "-o", str(out_dir))
    explicit = next(out_dir.glob("*.explicit.txt")).read_text()
    assert "@EXPLICIT" in explicit and f"pytorch-2.0.1-{CUDA_BUILD}.tar.bz2#" in explicit
    again = tmp_path / "envs" / "again"
    assert "--with-cuda 11.8" in (out_dir / "environment.yml").read_text()
    run("create", str(out_dir / "environment.yml"), "-p", str(again), "--with-cuda", "11.8")
    names = lambda p: sorted(x.name for x in (p / "conda-meta").glob("*.json") if x.name != "envkit.json")  # noqa: E731
    assert names(again) == names(prefix)
