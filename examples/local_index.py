"""Build real wheels and a PEP 503 "simple" package index in a folder (the demo and the pip tests use it).

A wheel is a zip with a ``NAME-VERSION.dist-info`` (METADATA, WHEEL, RECORD); pip
installs it like any other. The index is the folder layout pip reads from a ``file://``
index URL: ``simple/index.html`` and ``simple/<name>/index.html``, each file linked with
its ``#sha256=`` as PyPI does. Nothing here touches the network.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    requires: tuple[str, ...] = ()
    tag: str = "py3-none-any"

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-{self.tag}.whl"


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def write_wheel(folder: Path, wheel: Wheel) -> Path:
    module = wheel.name.replace("-", "_")
    info = f"{module}-{wheel.version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {wheel.name}\nVersion: {wheel.version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in wheel.requires)
    pure = wheel.tag.endswith("-none-any")
    files = {
        f"{module}/__init__.py": f"__version__ = {wheel.version!r}\n",
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: envkit-tests\nRoot-Is-Purelib: {'true' if pure else 'false'}\nTag: {wheel.tag}\n",
    }
    record = [_record_line(p, body.encode()) for p, body in files.items()] + [f"{info}/RECORD,,"]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / wheel.filename
    with zipfile.ZipFile(target, "w") as zf:
        for path, body in files.items():
            zf.writestr(zipfile.ZipInfo(path, (2023, 1, 1, 0, 0, 0)), body)
        zf.writestr(zipfile.ZipInfo(f"{info}/RECORD", (2023, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
    return target


def build_index(root: Path, wheels: list[Wheel]) -> str:
    """Write the wheels and a simple index under ``root``; returns the index URL (file://)."""
    simple = root / "simple"
    files = root / "files"
    for wheel in wheels:
        write_wheel(files, wheel)
    by_name: dict[str, list[Path]] = {}  # every wheel in the folder, those of earlier calls too
    for path in sorted(files.glob("*.whl")):
        by_name.setdefault(canonicalize_name(path.name.split("-")[0]), []).append(path)
    simple.mkdir(parents=True, exist_ok=True)
    for name, paths in by_name.items():
        page = simple / name
        page.mkdir(exist_ok=True)
        links = []
        for path in paths:
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            href = os.path.relpath(path, page)
            links.append(f'<a href="{html.escape(href)}#sha256={sha}">{html.escape(path.name)}</a><br/>')
        (page / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")
    names = sorted(p.name for p in simple.iterdir() if p.is_dir())
    (simple / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(f'<a href="{n}/">{n}</a><br/>' for n in names) + "\n</body></html>\n")
    return simple.resolve().as_uri()


PIP_VARIABLES_CLEARED = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX", "PIP_REQUIRE_HASHES")


def index_environment(url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with every pip that envkit runs reading ``url`` and nothing else: no config
    files (the machine's may name other indexes, find-links or a constraints file), no retries."""
    env = {k: v for k, v in environ.items() if k not in PIP_VARIABLES_CLEARED}
    env.update(PIP_INDEX_URL=url, PIP_CONFIG_FILE=os.devnull, PIP_RETRIES="0")
    return env


def use_index(monkeypatch: Any, url: str) -> None:
    """``index_environment`` for a test, through pytest's monkeypatch."""
    wanted = index_environment(url, os.environ)
    for var in PIP_VARIABLES_CLEARED:
        monkeypatch.delenv(var, raising=False)
    for var in ("PIP_INDEX_URL", "PIP_CONFIG_FILE", "PIP_RETRIES"):
        monkeypatch.setenv(var, wanted[var])
