"""Checksum sidecars: ``ckpt.pth.sha256`` / ``ckpt.pth.md5`` beside an unstamped checkpoint.

The formats ``sha256sum`` and ``md5sum`` write: ``<hex>  <name>`` (``<hex> *<name>`` in binary
mode, a leading backslash when the name is escaped), one line per file, or a bare ``<hex>``.
A sidecar covers the whole file. Every sidecar present is checked in one streaming pass. No torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import MalformedSidecar

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

SIDECAR_ALGORITHMS = {"sha256": 64, "md5": 32}  # suffix -> hex digits; sha256 first
SIDECAR_MOST_BYTES = 64 * 1024
_CHUNK = 8 * 1024 * 1024
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Sidecar:
    """One sidecar: where it is, its algorithm, the digest it records (lowercase hex), its own text."""

    path: Path
    algorithm: str
    hexdigest: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"path": str(self.path), "algorithm": self.algorithm, "digest": f"{self.algorithm}:{self.hexdigest}"}


@dataclass(frozen=True)
class SidecarCheck:
    """The answer for a file's sidecars: ``mismatch`` names the first that does not match (None: all do)."""

    sidecars: tuple[Sidecar, ...]
    actual: dict[str, str]  # algorithm -> the file's hex digest
    mismatch: Sidecar | None

    @property
    def ok(self) -> bool:
        return self.mismatch is None

    @property
    def label(self) -> str:
        """``sidecar md5`` (or ``sidecar sha256+md5``), as verify reports it."""
        return "sidecar " + "+".join(s.algorithm for s in self.sidecars)

    def problem(self, checkpoint: Path) -> str | None:
        s = self.mismatch
        if s is None:
            return None
        return (f"{checkpoint}: {s.algorithm} mismatch with its sidecar {s.path} (recorded {s.hexdigest}, found "
                f"{self.actual[s.algorithm]}): the bytes changed after the sidecar was written")


def sidecar_paths(checkpoint: str | os.PathLike[str]) -> list[Path]:
    """The sidecars present beside ``checkpoint`` (regular files), sha256 first."""
    p = Path(checkpoint)
    found = []
    for suffix in SIDECAR_ALGORITHMS:
        candidate = p.with_name(f"{p.name}.{suffix}")
        if candidate.is_file():
            found.append(candidate)
    return found


def has_sidecar(checkpoint: str | os.PathLike[str]) -> bool:
    return bool(sidecar_paths(checkpoint))


def read_sidecar(path: Path, checkpoint: Path) -> Sidecar:
    """The digest ``path`` records for ``checkpoint``; MalformedSidecar (exit 2) naming it otherwise."""
    algorithm = path.name.rsplit(".", 1)[-1]
    width = SIDECAR_ALGORITHMS[algorithm]
    fix = f"it should hold `<{width} hex digits>  {checkpoint.name}` as `{algorithm}sum` writes it; rewrite or remove it"
    try:
        with open(path, "rb") as fh:
            raw = fh.read(SIDECAR_MOST_BYTES + 1)
    except OSError as exc:
        raise MalformedSidecar(f"{path}: cannot read this {algorithm} sidecar ({exc.strerror or exc}); {fix}") from None
    if len(raw) > SIDECAR_MOST_BYTES:
        raise MalformedSidecar(f"{path}: a {algorithm} sidecar over {SIDECAR_MOST_BYTES} bytes; {fix}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedSidecar(f"{path}: not text; {fix}") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise MalformedSidecar(f"{path}: empty {algorithm} sidecar; {fix}")
    entries = []
    for number, line in lines:
        entry = _parse_line(line.strip(), width)
        if entry is None:
            raise MalformedSidecar(f"{path}:{number}: not a {algorithm} line ({line.strip()[:80]!r}); {fix}")
        entries.append(entry)
    if len(entries) == 1 and entries[0][1] is None:
        return Sidecar(path, algorithm, entries[0][0], text)
    mine = [digest for digest, name in entries if name is not None and os.path.basename(name) == checkpoint.name]
    if len(mine) != 1:
        what = "names no line for" if not mine else "has more than one line for"
        raise MalformedSidecar(f"{path}: {what} {checkpoint.name}; {fix}")
    return Sidecar(path, algorithm, mine[0], text)


def _parse_line(line: str, width: int) -> tuple[str, str | None] | None:
    escaped = line.startswith("\\")
    if escaped:
        line = line[1:]
    digest, _, rest = line.partition(" ")
    digest = digest.lower()
    if len(digest) != width or not set(digest) <= _HEX:
        return None
    if not rest:
        return digest, None
    if rest[:1] not in (" ", "*"):
        return None
    name = rest[1:]
    if not name:
        return None
    if escaped:
        name = name.replace("\\\\", "\0").replace("\\n", "\n").replace("\\r", "\r").replace("\0", "\\")
    return digest, name


def read_sidecars(checkpoint: str | os.PathLike[str]) -> tuple[Sidecar, ...]:
    p = Path(checkpoint)
    return tuple(read_sidecar(s, p) for s in sidecar_paths(p))


def new_hashers(sidecars: tuple[Sidecar, ...]) -> dict[str, Any]:
    import hashlib  # only a file with a sidecar pays for OpenSSL's start-up

    return {s.algorithm: hashlib.new(s.algorithm) for s in sidecars}


def judge(sidecars: tuple[Sidecar, ...], hashers: dict[str, Any]) -> SidecarCheck:
    actual = {name: h.hexdigest() for name, h in hashers.items()}
    mismatch = next((s for s in sidecars if actual[s.algorithm] != s.hexdigest), None)
    return SidecarCheck(sidecars, actual, mismatch)


def check_sidecars(checkpoint: str | os.PathLike[str], opened: BinaryIO | None = None) -> SidecarCheck | None:
    """The file hashed once for every sidecar beside it; None when there is none.

    Raises MalformedSidecar (exit 2) for a sidecar that cannot be read as one, OSError for the file.
    """
    sidecars = read_sidecars(checkpoint)
    if not sidecars:
        return None
    hashers = new_hashers(sidecars)
    fh = opened if opened is not None else open(checkpoint, "rb")
    try:
        fh.seek(0)
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while True:
            n = fh.readinto(view)  # type: ignore[attr-defined]
            if not n:
                break
            for h in hashers.values():
                h.update(view[:n])
    finally:
        if opened is None:
            fh.close()
    return judge(sidecars, hashers)


def sidecar_text(sidecar: Sidecar, hexdigest: str) -> str:
    """The sidecar rewritten for new bytes of the same file, in the form it had."""
    lines = []
    for line in sidecar.text.splitlines():
        stripped = line.strip()
        entry = _parse_line(stripped, len(sidecar.hexdigest)) if stripped else None
        if entry is not None and entry[0] == sidecar.hexdigest:
            start = 1 if stripped.startswith("\\") else 0
            line = stripped[:start] + hexdigest + stripped[start + len(sidecar.hexdigest):]
        lines.append(line)
    return "\n".join(lines) + "\n"
