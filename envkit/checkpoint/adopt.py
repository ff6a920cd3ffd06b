"""``envkit stamp FILE``: adopt an unstamped torch checkpoint into a stamped one, without unpickling it.

The file is read once: its bytes are copied to a temporary file beside it while the payload
digest (bytes up to the central directory) and every checksum sidecar's digest are computed;
a sidecar that does not match refuses the adoption (exit 1) before anything is renamed. The
stamp is appended as the archive's last member (``ziptail.append_last_member``), the copy is
fsynced and renamed over the original, and the folder fsynced: the old bytes stay under the
name until the new file is durable. Sidecars are then rewritten for the new bytes.

The writer's environment is unknown: the stamp records the live environment's fingerprint,
and its meta says so (``adopted: true``, ``adopted_at``; ``saved_at`` is the file's mtime).

A legacy (non-zip, torch < 1.6) file is refused with advice rather than loaded and re-saved:
re-saving means unpickling it and writing different bytes, which is what ``envkit.save`` is for.
No torch import here.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from envkit.atomic import atomic_write, discard, fsync_dir, temp_path_for, write_target
from envkit.checkpoint.devices import with_storage_devices
from envkit.checkpoint.hashing import new_hasher
from envkit.checkpoint.paths import is_folder_checkpoint
from envkit.checkpoint.reader import read_stamp
from envkit.checkpoint.sidecar import Sidecar, SidecarCheck, judge, new_hashers, read_sidecars, sidecar_text
from envkit.checkpoint.stamp import DIGEST_ALGORITHMS, MEMBER, Payload, Stamp
from envkit.checkpoint.writer import build_meta
from envkit.checkpoint.ziptail import append_last_member, first_member, torch_layout
from envkit.errors import BadInput, CorruptCheckpoint, os_error_input

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from envkit.fingerprint import Fingerprint

_CHUNK = 8 * 1024 * 1024
LEGACY_ADVICE = ("a legacy (pre-zip) torch file; envkit stamp adopts zip checkpoints without unpickling them: "
                 "re-save it with `envkit.save(torch.load(PATH, weights_only=True), PATH)`")


@dataclass(frozen=True)
class Adoption:
    """What ``adopt`` did: the stamp now in the file, whether it was there already, the sidecars checked and rewritten."""

    path: Path
    stamp: Stamp
    already_stamped: bool = False
    sidecar: SidecarCheck | None = None
    rewritten: tuple[Path, ...] = ()

    def to_json(self) -> dict[str, Any]:
        payload = self.stamp.payload
        return {
            "checkpoint": str(self.path),
            "adopted": not self.already_stamped,
            "already_stamped": self.already_stamped,
            "digest": payload.digest if payload is not None else None,
            "fingerprint": self.stamp.fingerprint.digest if not self.already_stamped else None,
            "meta": dict(self.stamp.meta),
            "sidecar": [s.to_json() for s in self.sidecar.sidecars] if self.sidecar is not None else None,
            "sidecars_rewritten": [str(p) for p in self.rewritten],
        }


def adopt(path: str | os.PathLike[str], *, digest: str = "xxh3_128", fingerprint: Fingerprint | None = None) -> Adoption:
    """Stamp the unstamped torch checkpoint at ``path`` in place, atomically.

    BadInput (exit 2): not a checkpoint file, a legacy or foreign-layout file, a malformed sidecar.
    CorruptCheckpoint (exit 1): a sidecar's digest does not match (the file is left as it was).
    A file already stamped is left as it is (``already_stamped``).
    """
    p = Path(path)
    if digest not in DIGEST_ALGORITHMS:
        raise BadInput(f"unknown digest {digest!r}; use one of {', '.join(DIGEST_ALGORITHMS)}")
    if is_folder_checkpoint(p) or p.is_dir():
        raise BadInput(f"{p}: a folder; envkit stamp FILE adopts one torch checkpoint file")
    info = read_stamp(p)  # not a checkpoint, an unsafe pickle: exit 2, nothing unpickled
    if info.stamp is not None and info.stamp.payload is not None:
        return Adoption(p, info.stamp, already_stamped=True)
    if info.format == "legacy":
        raise BadInput(f"{p}: {LEGACY_ADVICE}")
    if info.format != "zip":
        raise BadInput(f"{p}: a {info.format} file, not a torch.save checkpoint; envkit stamp adopts torch.save zip files")
    sidecars = read_sidecars(p)  # MalformedSidecar (exit 2) before anything is written
    target = write_target(p)
    try:
        mtime = datetime.fromtimestamp(os.stat(target).st_mtime, timezone.utc)
    except OSError as exc:
        raise os_error_input(exc, p, "check the file and its permissions") from None
    now = datetime.now(timezone.utc)
    meta = build_meta({"adopted": True, "adopted_at": now.isoformat(timespec="milliseconds"),
                       "adopted_sidecars": [s.path.name for s in sidecars]}, p, saved_at=mtime)
    if fingerprint is None:
        from envkit.fingerprint import collect

        fingerprint = collect()
    stamp, checked, after = _rewrite(p, target, sidecars, digest, lambda payload: Stamp(fingerprint, payload, meta))
    rewritten = tuple(atomic_write(s.path, sidecar_text(s, after[s.algorithm]), what="the sidecar") for s in sidecars)
    return Adoption(p, stamp, sidecar=checked, rewritten=rewritten)


def _rewrite(p: Path, target: Path, sidecars: tuple[Sidecar, ...], digest: str,
             stamp_for: Any) -> tuple[Stamp, SidecarCheck | None, dict[str, str]]:
    """The stamped copy, committed over ``target``; (stamp, sidecar check, new sidecar digests)."""
    tmp = temp_path_for(target)
    try:
        with open(target, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            layout = torch_layout(src, size)
            if layout is None:
                raise BadInput(f"{p}: not laid out as torch.save writes a zip; re-save it with envkit.save")
            cd_offset = layout[1]
            with open(tmp, "w+b") as out:
                payload_hasher = new_hasher(digest)
                side = new_hashers(sidecars)
                after: dict[str, Any] = {}
                src.seek(0)
                position = 0
                while True:
                    if position == cd_offset:
                        after = {name: h.copy() for name, h in side.items()}  # the new file's bytes so far
                    want = min(_CHUNK, cd_offset - position) if position < cd_offset else _CHUNK
                    chunk = src.read(want)
                    if not chunk:
                        break
                    out.write(chunk)
                    for h in side.values():
                        h.update(chunk)
                    if position < cd_offset:
                        payload_hasher.update(chunk)
                    position += len(chunk)
                if position != size:
                    raise BadInput(f"{p}: the file changed while it was read ({position} of {size} bytes); try again")
                checked = judge(sidecars, side) if sidecars else None
                if checked is not None and not checked.ok:
                    raise CorruptCheckpoint(f"{checked.problem(p)}; envkit stamp left the file as it was: "
                                            "restore it from a good copy, or remove the sidecar if it is the one that is wrong")
                stamp = stamp_for(Payload(f"{digest}:{payload_hasher.hexdigest()}", cd_offset))
                out.flush()
                first = first_member(out, cd_offset, cd_offset)
                data_pkl = first[1] if first is not None and first[0] == f"{layout[0]}/data.pkl" else None
                stamp = with_storage_devices(stamp, data_pkl)
                append_last_member(out, layout, f"{layout[0]}/{MEMBER}", stamp.to_bytes())
                out.flush()
                out.seek(cd_offset)
                tail = out.read()
                for h in after.values():
                    h.update(tail)
                os.fsync(out.fileno())
            os.chmod(tmp, stat.S_IMODE(os.fstat(src.fileno()).st_mode))
        os.replace(tmp, target)  # the old bytes stay under the name until the new file is durable
        fsync_dir(target.parent)
    except OSError as exc:
        discard(tmp)
        raise os_error_input(exc, p, "the file was left as it was; free space or fix the folder, then try again") from None
    except BaseException:
        discard(tmp)
        raise
    return stamp, checked, {name: h.hexdigest() for name, h in after.items()}
