"""From a checkpoint's stamp back to the environment that trained it.

The fingerprint of a conda environment lists each conda package with its URL and
md5, so the exact set can be written as an @EXPLICIT list (no solving, same builds)
plus an environment.yml with full pins for people and for `envkit create`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from envkit.conda.explicit import render_explicit
from envkit.errors import BadInput
from envkit.fingerprint.schema import Fingerprint


@dataclass(frozen=True)
class Recreated:
    explicit: Path
    environment: Path
    platform: str
    conda_packages: int
    pip_packages: int


def recreate(checkpoint: Path, out_dir: Path) -> Recreated:
    import yaml

    from envkit.checkpoint import read_stamp

    info = read_stamp(checkpoint)
    if info.stamp is None:
        raise BadInput(f"{checkpoint}: has no envkit stamp, so the environment that wrote it is unknown; save it with envkit")
    fp: Fingerprint = info.stamp.fingerprint
    conda = [p for p in fp.packages if p.source == "conda"]
    located = [p for p in conda if p.url]
    if not located:
        raise BadInput(
            f"{checkpoint}: its fingerprint names no conda package URLs (it was not written from an "
            "environment made by conda/envkit, or by an older envkit); recreate it from its environment.yml instead"
        )
    platform = (fp.environment.lock_platform if fp.environment else None) or fp.platform.conda_subdir or "unknown"
    pip = sorted((p.name, p.version) for p in fp.packages if p.source == "pypi")
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
    if not out_dir.is_dir():
        raise BadInput(f"{out_dir}: no such folder; create it first or pass -o DIR")
    explicit = out_dir / f"{name}-{platform}.explicit.txt"
    environment = out_dir / "environment.yml"
    _write(explicit, explicit_text)
    _write(environment, env_text)
    return Recreated(explicit, environment, platform, len(located), len(pip))


def _write(path: Path, text: str) -> None:
    from envkit.checkpoint.paths import write_target

    path = write_target(path)  # through a symlink, at its target
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BadInput(f"{path}: cannot write ({exc.strerror}); choose another -o DIR") from None
