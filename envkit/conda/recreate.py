"""From a checkpoint's stamp back to the environment that trained it.

The fingerprint of a conda environment lists each conda package with its URL and
md5, so the exact set can be written as an @EXPLICIT list (no solving, same builds)
plus an environment.yml with full pins for people and for `envkit create`. The
fingerprint of a venv lists pip distributions only: a pinned requirements.txt and
the Python version (``.python-version``) rebuild it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from envkit.atomic import fsync_dir, temp_path_for, write_target
from envkit.conda.explicit import render_explicit
from envkit.errors import BadInput, describe_os_error
from envkit.fingerprint.schema import Fingerprint, Package

# Tools of the venv itself, not requirements of the code: `pip freeze` leaves them out too.
_VENV_TOOLS = frozenset({"pip", "setuptools", "wheel", "distribute"})
# Local version tags the PyTorch package index serves (download.pytorch.org/whl/<tag>).
_PYTORCH_TAG = re.compile(r"^(cpu|cu\d+|rocm\d+(?:\.\d+)*|xpu)$")
# Packages published with those tags on the PyTorch index.
_PYTORCH_INDEX_PACKAGES = frozenset({"torch", "torchvision", "torchaudio", "torchtext", "torchdata"})
PYTORCH_INDEX = "https://download.pytorch.org/whl/"


@dataclass(frozen=True)
class Recreated:
    """What ``envkit recreate`` wrote: conda files, or for a venv a requirements.txt and .python-version."""

    files: tuple[Path, ...]
    platform: str
    conda_packages: int
    pip_packages: int
    explicit: Path | None = None
    environment: Path | None = None
    requirements: Path | None = None
    python_version: str | None = None
    not_pinned: tuple[str, ...] = ()


def recreate(checkpoint: Path, out_dir: Path) -> Recreated:
    """Write the files that rebuild the environment that wrote ``checkpoint`` into ``out_dir``
    (made, with its parents, when missing).

    A conda environment (its fingerprint lists conda packages with their URLs): an @EXPLICIT
    list and an environment.yml. A venv (only pip packages): a requirements.txt with a ``==``
    pin for every package pip can install by name, and ``.python-version``.
    """
    from envkit.checkpoint import read_stamp

    info = read_stamp(checkpoint)
    if info.stamp is None:
        raise BadInput(f"{checkpoint}: has no envkit stamp, so the environment that wrote it is unknown; save it with envkit")
    fp: Fingerprint = info.stamp.fingerprint
    platform = (fp.environment.lock_platform if fp.environment else None) or fp.platform.conda_subdir or "unknown"
    conda = [p for p in fp.packages if p.source == "conda"]
    pip = [p for p in fp.packages if p.source == "pypi"]
    if not conda and pip:
        return _recreate_venv(checkpoint, out_dir, fp, pip, platform)
    located = [p for p in conda if p.url]
    if not located:
        raise BadInput(
            f"{checkpoint}: its fingerprint names no conda package URLs (it was not written from an "
            "environment made by conda/envkit, or by an older envkit); recreate it from its environment.yml instead"
        )
    return _recreate_conda(checkpoint, out_dir, fp, located, pip, platform)


def _recreate_conda(
    checkpoint: Path, out_dir: Path, fp: Fingerprint, located: list[Package], pypi: list[Package], platform: str
) -> Recreated:
    import yaml

    pip = sorted((p.name, p.version) for p in pypi)
    channels = sorted({p.url.rsplit("/", 2)[0] for p in located if p.url})
    name = (fp.environment.name if fp.environment and fp.environment.name else None) or "recreated"
    deps: list[object] = [f"{p.name}={p.version}={p.build}" for p in sorted(located, key=lambda p: p.name)]
    if pip:
        deps.append({"pip": [f"{n}=={v}" for n, v in pip]})
    cuda_hint = f"; create with `envkit create --with-cuda {fp.torch.cuda}`" if fp.torch.cuda else ""
    env_text = (
        f"# Recreated by envkit from {checkpoint.name} (fingerprint {fp.digest[:19]}){cuda_hint}\n"
        + yaml.safe_dump({"name": name, "channels": channels, "dependencies": deps}, sort_keys=False)
    )
    explicit_text = render_explicit(
        platform,
        ((p.url, p.md5, None) for p in sorted(located, key=lambda p: p.name) if p.url),
        comment=f"from {checkpoint.name}, fingerprint {fp.digest}",
    )
    explicit = out_dir / f"{name}-{platform}.explicit.txt"
    environment = out_dir / "environment.yml"
    _write_all(out_dir, {explicit: explicit_text, environment: env_text})
    return Recreated((explicit, environment), platform, len(located), len(pip), explicit=explicit, environment=environment)


def _recreate_venv(checkpoint: Path, out_dir: Path, fp: Fingerprint, pip: list[Package], platform: str) -> Recreated:
    from packaging.version import InvalidVersion, Version

    python = fp.python.version
    lines: list[str] = []
    skipped: list[str] = []
    indexes: set[str] = set()
    for p in sorted(pip, key=lambda p: p.name):
        pin = f"{p.name}=={p.version}"
        if p.name in _VENV_TOOLS:
            continue
        if p.name == "envkit":
            skipped.append(f"# {pin}  (envkit itself: install it the way you installed it here)")
            continue
        try:
            local = Version(p.version).local
        except InvalidVersion:
            skipped.append(f"# {pin}  (not a PEP 440 version, so no index serves it by that pin)")
            continue
        if local is not None:
            if p.name in _PYTORCH_INDEX_PACKAGES and _PYTORCH_TAG.match(local):
                indexes.add(PYTORCH_INDEX + local)
            else:
                skipped.append(f"# {pin}  (a local build: install it from where it was built)")
                continue
        lines.append(pin)
    where = ", ".join(str(x) for x in (fp.platform.system, fp.platform.machine, fp.platform.libc) if x)
    header = [
        f"# Recreated by envkit from {checkpoint.name} (fingerprint {fp.digest[:19]}).",
        f"# Written from a venv: Python {python or 'unknown'}"
        + (f" ({fp.python.implementation})" if fp.python.implementation else "")
        + (f" on {where}" if where else "")
        + " (the version is also in .python-version).",
    ]
    if python:
        major_minor = ".".join(python.split(".")[:2])
        header.append(f"#   python{major_minor} -m venv .venv && .venv/bin/pip install -r requirements.txt")
    header.append("# pip, setuptools and wheel are left out, as `pip freeze` does.")
    if indexes:
        header.append("# torch builds with a local tag (+cpu, +cu118, ...) come from the PyTorch index:")
    body = [f"--extra-index-url {url}" for url in sorted(indexes)] + lines
    if skipped:
        body += ["", "# Not pinned here (pip cannot install them by name and version):", *skipped]
    requirements = out_dir / "requirements.txt"
    files: dict[Path, str] = {requirements: "\n".join(header + body) + "\n"}
    if python:
        files[out_dir / ".python-version"] = python + "\n"
    _write_all(out_dir, files)
    return Recreated(
        tuple(files), platform, 0, len(lines), requirements=requirements, python_version=python,
        not_pinned=tuple(line.split()[1] for line in skipped),
    )


def _make_folder(out_dir: Path) -> list[Path]:
    """Make out_dir and its missing parents; the folders made, outermost first."""
    if out_dir.is_dir():
        return []
    if out_dir.exists() or out_dir.is_symlink():
        raise BadInput(f"{out_dir}: exists and is not a folder; pass -o with a folder (it is made when missing)")
    made = [d for d in (out_dir, *out_dir.parents) if not d.exists()][::-1]
    try:
        out_dir.mkdir(parents=True)
    except OSError as exc:
        raise BadInput(f"{describe_os_error(out_dir, exc)}; pass -o with a folder you can write") from None
    return made


def _write_all(out_dir: Path, files: dict[Path, str]) -> None:
    """Write every file or none: durable temporaries first (``envkit.atomic``), then renamed into place."""
    made = _make_folder(out_dir)
    temps: dict[Path, Path] = {}
    try:
        for path, text in files.items():
            target = write_target(path, "-o")  # through a symlink, at its target
            temps[target] = temp_path_for(target)
            with open(temps[target], "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        for target, tmp in temps.items():
            os.replace(tmp, target)
        fsync_dir(out_dir)
    except OSError as exc:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                break
        raise BadInput(f"{describe_os_error(out_dir, exc)}; choose another -o DIR") from None
