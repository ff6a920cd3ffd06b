"""Builders for environments on disk: a site-packages, a proc tree, a conda prefix.

They stand in for machines that cannot exist here (a GPU host, a conda env with the
CUDA build of pytorch); everything envkit reads from them is a real file.
"""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path


def make_site(root: Path, dists: dict[str, str], version_py: str | None = None) -> Path:
    site = root / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    for name, version in dists.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if version_py is not None:
        (site / "torch").mkdir(exist_ok=True)
        (site / "torch" / "version.py").write_text(version_py)
    return site


def make_proc(root: Path, driver_text: str) -> Path:
    target = root / "proc" / "driver" / "nvidia"
    target.mkdir(parents=True, exist_ok=True)
    (target / "version").write_text(driver_text)
    return root


def make_nvidia_smi_stand_in(bin_dir: Path, csv_line: str) -> Path:
    """A stand-in `nvidia-smi` (there is no GPU here) that answers envkit's query."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\nprintf '%s\\n' '{csv_line}'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


def make_conda_prefix(
    root: Path,
    records: list[tuple[str, str, str]],
    *,
    subdir: str = "linux-64",
    envkit_meta: dict | None = None,
) -> Path:
    """A conda environment's conda-meta/ with one record per (name, version, build)."""
    meta = root / "conda-meta"
    meta.mkdir(parents=True, exist_ok=True)
    for name, version, build in records:
        doc = {
            "name": name,
            "version": version,
            "build": build,
            "subdir": subdir,
            "channel": "https://conda.anaconda.org/pytorch",
            "files": [],
        }
        (meta / f"{name}-{version}-{build}.json").write_text(json.dumps(doc))
    if envkit_meta is not None:
        (meta / "envkit.json").write_text(json.dumps(envkit_meta))
    (root / "lib" / "python3.11" / "site-packages").mkdir(parents=True, exist_ok=True)
    return root


REFERENCE_RECORDS = [
    ("python", "3.11.4", "h955ad1f_0"),
    ("pytorch", "2.0.1", "py3.11_cuda11.8_cudnn8.7.0_0"),
    ("pytorch-cuda", "11.8", "h7e8668a_5"),
    ("torchvision", "0.15.2", "py311_cu118"),
    ("torchaudio", "2.0.2", "py311_cu118"),
    ("numpy", "1.25.0", "py311h08b1b3b_0"),
    ("pip", "23.1.2", "py311h06a4308_0"),
]


def make_reference_prefix(root: Path) -> Path:
    """The reference environment (Python 3.11, PyTorch 2.0.1, CUDA 11.8) as conda lays it out."""
    prefix = make_conda_prefix(
        root,
        REFERENCE_RECORDS,
        envkit_meta={"name": "pytorch_train_env", "lock_hash": "sha256:" + "0" * 64, "platform": "linux-64"},
    )
    site = prefix / "lib" / "python3.11" / "site-packages"
    (site / "torch").mkdir(exist_ok=True)
    (site / "torch" / "version.py").write_text(
        textwrap.dedent(
            """\
            __version__ = '2.0.1'
            debug = False
            cuda = '11.8'
            git_version = 'e9ebda29d87ce0916ab08c06ab26fd3766a870e5'
            hip = None
            """
        )
    )
    return prefix


def path_with(bin_dir: Path) -> str:
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
