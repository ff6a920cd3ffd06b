from __future__ import annotations

from pathlib import Path

import pytest

from tests.conda.channel import build_channel


@pytest.fixture(scope="session")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real local channel for the whole session (python, pytorch CPU+CUDA, numpy, pip...)."""
    return build_channel(tmp_path_factory.mktemp("channel") / "local")


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # a shared package cache keeps the tests fast; envs never land in ~/.envkit
    monkeypatch.setenv("ENVKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "envkit-cache"))
    monkeypatch.setenv("ENVKIT_ENVS_DIR", str(tmp_path_factory.getbasetemp() / "envkit-envs"))


def write_spec(folder: Path, channel: Path, deps: str, name: str = "train") -> Path:
    spec = folder / "environment.yml"
    spec.write_text(f"name: {name}\nchannels:\n  - {channel.as_uri()}\ndependencies:\n{deps}")
    return spec
