"""``envkit trial``: load checkpoints in another environment's interpreter and compare every tensor.

Before anything runs, envkit's own reader reads each checkpoint (``reader.read_structure``:
the stamp, and the pickle with the restricted unpickler, so a hostile file is refused, exit 2,
before any child starts) and works out what a load must give: every tensor's name, dtype,
shape, stride, offset and the CRC-32 of its storage, the last from the zip's central directory
when the stamp pins it (``StorageDigests``: torch's writer computed them while it wrote the
bytes). Then ``trial_child.py`` runs in the other interpreter (``-I -s``: no envkit, no
PYTHONPATH, no user site there; a timeout; an address-space cap where the OS has one), loads
each checkpoint with ``torch.load(weights_only=True, map_location="cpu")`` (``weights_only=False``
only with ``trust_pickles``) and reports the same facts for what it loaded. A checkpoint without
storage digests (unstamped, or stamped before them) is compared with the same loader run in
this environment instead.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from envkit.errors import EXIT_OK, EXIT_REFUSED, BadInput

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

    from envkit.checkpoint.reader import CheckpointFile

CHILD_SOURCE = Path(__file__).with_name("trial_child.py")
DEFAULT_TIMEOUT = 600.0  # seconds per checkpoint (the first also pays for importing torch)
MEMORY_HEADROOM = 8 << 30  # torch alone maps 1-3 GB of address space; threads reserve more
MAX_LISTED = 1000  # differing, missing and added names a result keeps (the counts are whole)
FIELDS = ("kind", "dtype", "shape", "stride", "offset", "bytes", "value")
STAMP, HERE = "stamp", "current environment"


@dataclass(frozen=True)
class TensorRecord:
    """What a load gives for one key: a tensor, or another leaf (None: not known, not compared)."""

    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    offset: int | None = None
    nbytes: int | None = None  # of its storage
    digest: str | None = None  # "crc32:xxxxxxxx" of its storage's bytes
    leaf: bool = False  # not a tensor: a number, a string, an object
    text: str | None = None  # a plain leaf's repr (trial_child.leaf_value)

    @classmethod
    def from_child(cls, row: Any) -> TensorRecord:
        dtype, shape, stride, offset, nbytes, digest = row
        return cls(dtype, _ints(shape), _ints(stride), offset, nbytes, digest)

    @property
    def kind(self) -> str:
        return "value" if self.leaf else "tensor"

    def value(self, name: str) -> Any:
        if name == "bytes":
            return None if self.digest is None else {"digest": self.digest, "nbytes": self.nbytes}
        if name == "value":
            return self.text
        value = getattr(self, name)
        return list(value) if isinstance(value, tuple) else value


def _leaves(values: Mapping[str, Any]) -> dict[str, TensorRecord]:
    return {name: TensorRecord(leaf=True, text=text) for name, text in values.items()}


def _ints(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


@dataclass(frozen=True)
class TensorDifference:
    name: str
    fields: tuple[str, ...]  # of FIELDS
    expected: TensorRecord
    got: TensorRecord

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.name,
            "fields": list(self.fields),
            "expected": {f: self.expected.value(f) for f in self.fields},
            "got": {f: self.got.value(f) for f in self.fields},
        }


@dataclass(frozen=True)
class TrialResult:
    """One checkpoint tried in the other environment."""

    path: Path
    compared_with: str  # STAMP or HERE
    loaded: bool
    error: str | None = None  # the other environment's error, one line
    problem: str | None = None  # why values could not be compared (the reference failed, the file changed)
    tensors: int = 0  # tensors expected
    keys: int = 0  # other leaves expected (numbers, strings, objects)
    differing: tuple[TensorDifference, ...] = ()
    missing: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    counts: tuple[int, int, int] = (0, 0, 0)  # differing, missing, added (the tuples keep MAX_LISTED)
    seconds: float | None = None

    @property
    def same_values(self) -> bool:
        return self.loaded and self.problem is None and self.counts == (0, 0, 0)

    @property
    def ok(self) -> bool:
        return self.same_values

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.path),
            "ok": self.ok,
            "loads": self.loaded,
            "error": self.error,
            "same_values": self.same_values if self.loaded else None,
            "compared_with": self.compared_with,
            "problem": self.problem,
            "tensors": self.tensors,
            "other_keys": self.keys,
            "differing": [d.to_json() for d in self.differing],
            "missing": list(self.missing),
            "added": list(self.added),
            "differing_count": self.counts[0],
            "missing_count": self.counts[1],
            "added_count": self.counts[2],
            "seconds": None if self.seconds is None else round(self.seconds, 3),
        }


@dataclass(frozen=True)
class TrialReport:
    python: str
    environment: Mapping[str, Any]  # python, executable, torch, numpy of the other environment
    trust_pickles: bool
    results: tuple[TrialResult, ...] = field(default_factory=tuple)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if all(r.ok for r in self.results) else EXIT_REFUSED

    def to_json(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "environment": dict(self.environment),
            "weights_only": not self.trust_pickles,
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "checkpoints": [r.to_json() for r in self.results],
        }


# -- what a load must give, from the file alone ------------------------------------------


@dataclass(frozen=True)
class _Plan:
    path: Path
    expected: dict[str, TensorRecord] | None  # None: compare with this environment's load
    problem: str | None = None


def _expected(path: Path) -> _Plan:
    from envkit.checkpoint.reader import read_structure, walk_tensors
    from envkit.checkpoint.safe_pickle import TensorPlaceholder
    from envkit.checkpoint.trial_child import leaf_value

    info, obj = read_structure(path)  # BadInput (exit 2) for a missing, damaged or hostile file
    members = _stamped_members(path, info)
    if isinstance(members, str):
        return _Plan(path, {}, members)
    if members is None:
        return _Plan(path, None)
    expected: dict[str, TensorRecord] = {}
    for name, t in walk_tensors(obj, leaves=True):
        if not isinstance(t, TensorPlaceholder):
            expected[name] = TensorRecord(leaf=True, text=leaf_value(t))
            continue
        key = t.storage.key if t.storage is not None else None
        member = members.get(f"{info.prefix}/data/{key}") if key is not None else None
        expected[name] = TensorRecord(
            t.dtype, t.shape, t.stride, t.offset,
            member[1] if member else None, f"crc32:{member[0]:08x}" if member else None,
        )  # fmt: skip
    return _Plan(path, expected)


def _stamped_members(path: Path, info: CheckpointFile) -> dict[str, tuple[int, int]] | str | None:
    """name -> (CRC-32, size) of the records torch wrote, when the stamp pins them; a problem
    (the file changed since the save) as a string; None when the stamp has no storage digests."""
    import xxhash

    from envkit.checkpoint.ziptail import directory_records, end_of_directory

    digests = info.stamp.storages if info.stamp is not None else None
    if digests is None or info.format != "zip":
        return None
    changed = f"the zip directory no longer matches the stamp's storage digests: {path} changed after it was saved"
    with open(path, "rb") as fh:
        located = end_of_directory(fh, info.size)
        if located is None or located[1] < digests.length:
            return changed
        fh.seek(located[0])
        directory = fh.read(digests.length)
    if f"xxh3_128:{xxhash.xxh3_128_hexdigest(directory)}" != digests.directory:
        return changed
    members = directory_records(directory)
    if members is None or len(members) != digests.records:
        return changed
    return members


def compare(expected: Mapping[str, TensorRecord], got: Mapping[str, TensorRecord]) -> tuple[list[TensorDifference], list[str], list[str]]:
    """(differing, missing, added), by name; a field is compared where ``expected`` knows it."""
    differing: list[TensorDifference] = []
    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            continue
        if want.leaf != have.leaf:
            differing.append(TensorDifference(name, ("kind",), want, have))
            continue
        fields = [f for f in FIELDS[1:5] if getattr(want, f) is not None and getattr(want, f) != getattr(have, f)]
        if want.digest is not None and (want.digest, want.nbytes) != (have.digest, have.nbytes):
            fields.append("bytes")
        if want.text is not None and want.text != have.text:
            fields.append("value")
        if fields:
            differing.append(TensorDifference(name, tuple(fields), want, have))
    missing = [n for n in expected if n not in got]
    added = [n for n in got if n not in expected]
    return differing, missing, added


def _result(plan: _Plan, done: Mapping[str, Any], reference: Mapping[str, Any] | None) -> TrialResult:
    seconds = done.get("seconds")
    compared_with = STAMP if plan.expected is not None else HERE
    if not done.get("loaded"):
        return TrialResult(plan.path, compared_with, False, str(done.get("error") or "failed to load"), seconds=seconds)
    got = {name: TensorRecord.from_child(row) for name, row in done.get("tensors", {}).items()}
    got.update(_leaves(done.get("values", {})))
    problem = plan.problem
    expected = plan.expected
    if expected is None:
        if reference is None or not reference.get("loaded"):
            why = reference.get("error") if reference else "no answer"
            return TrialResult(plan.path, HERE, True, None, f"this environment cannot load it either ({why}); nothing to compare with",
                               seconds=seconds)
        expected = {name: TensorRecord.from_child(row) for name, row in reference.get("tensors", {}).items()}
        expected.update(_leaves(reference.get("values", {})))
    differing, missing, added = ([], [], []) if problem else compare(expected, got)
    leaves = sum(r.leaf for r in expected.values())
    return TrialResult(
        plan.path, compared_with, True, None, problem, len(expected) - leaves, leaves,
        tuple(differing[:MAX_LISTED]), tuple(missing[:MAX_LISTED]), tuple(added[:MAX_LISTED]),
        (len(differing), len(missing), len(added)), seconds,
    )  # fmt: skip


# -- the child --------------------------------------------------------------------------


def python_of(python: str | os.PathLike[str] | None, prefix: str | os.PathLike[str] | None) -> str:
    """The interpreter --python names, or the one of the environment at --prefix."""
    if (python is None) == (prefix is None):
        raise BadInput("pass the other environment as --python PATH or --prefix DIR (one of them)")
    if python is not None:
        return str(python)
    root = Path(prefix)  # type: ignore[arg-type]
    for candidate in (root / "bin" / "python", root / "bin" / "python3", root / "python.exe"):
        if candidate.exists():
            return str(candidate)
    raise BadInput(f"{root}: no bin/python in this environment; pass its interpreter with --python, or create it first")


def _limits(cap: int | None) -> Any:
    def apply() -> None:  # in the child, before exec
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if cap:
                hard = resource.getrlimit(resource.RLIMIT_AS)[1]
                limit = cap if hard == resource.RLIM_INFINITY else min(cap, hard)
                resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        except (ImportError, ValueError, OSError):
            pass  # no such limit on this OS: the timeout still bounds the child

    return apply


class _Child:
    """One run of trial_child.py: JSON lines read on a thread, a timeout per checkpoint."""

    def __init__(self, python: str, paths: Sequence[Path], *, trust_pickles: bool, memory_cap: int | None) -> None:
        self.python = python
        self.stderr = tempfile.TemporaryFile()
        request = {"checkpoints": [str(p.resolve()) for p in paths], "trust_pickles": trust_pickles, "threads": os.cpu_count() or 1}
        try:
            self.proc = subprocess.Popen(
                [python, "-I", "-s", "-c", CHILD_SOURCE.read_text(encoding="utf-8")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                preexec_fn=_limits(memory_cap), start_new_session=True,
            )  # fmt: skip
        except FileNotFoundError:
            raise BadInput(f"{python}: no such interpreter; pass --python the other environment's python, or --prefix its folder") from None
        except PermissionError:
            raise BadInput(f"{python}: not executable; pass --python the other environment's python") from None
        except OSError as exc:
            raise BadInput(f"{python}: cannot run it ({exc.strerror or exc}); pass --python the other environment's python") from None
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died at once: _read says so

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if isinstance(doc, dict):
                self.lines.put(doc)
        self.lines.put(None)

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next line; None when the child ended or ran past ``timeout`` (then it is killed)."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            self.timed_out = True
            return None

    timed_out = False

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()

    def how_it_ended(self, timeout: float) -> str:
        self.kill()
        if self.timed_out:
            return f"timed out after {timeout:g} s in {self.python} (raise --timeout for a slow load)"
        code = self.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return f"the interpreter ended ({how}) before it answered{self._last_stderr()}"

    def _last_stderr(self) -> str:
        self.stderr.seek(0)
        lines = [line.strip() for line in self.stderr.read()[-4000:].decode("utf-8", "replace").splitlines() if line.strip()]
        return f": {lines[-1][:300]}" if lines else ""

    def close(self) -> None:
        self.kill()
        self.reader.join(5)  # the child is gone: its stdout reaches its end
        if self.proc.stdout is not None and not self.reader.is_alive():
            self.proc.stdout.close()
        self.stderr.close()


def _environment(child: _Child, timeout: float) -> dict[str, Any]:
    first = child.next(timeout)
    if first is not None and "no_torch" in first:
        child.close()
        raise BadInput(f"{child.python}: no usable torch there ({first['no_torch']}); install torch in that environment or pass another --python")
    if first is None and child.timed_out:
        return {}  # slower than --timeout to start: each checkpoint fails with that (exit 1), not bad input
    if first is None or not isinstance(first.get("environment"), dict):
        why = child.how_it_ended(timeout)
        child.close()
        raise BadInput(f"{child.python}: did not start as a Python with torch ({why}); pass --python the other environment's python")
    return first["environment"]


def _answers(child: _Child, paths: Sequence[Path], timeout: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for _ in paths:
        doc = child.next(timeout)
        if doc is None:
            ended = child.how_it_ended(timeout)
            for rest in paths[len(out):]:
                out[str(rest.resolve())] = {"loaded": False, "error": ended}
            break
        out[str(doc.get("path"))] = doc
    child.close()
    return out


def trial(
    checkpoints: Iterable[str | os.PathLike[str]],
    *,
    python: str | os.PathLike[str] | None = None,
    prefix: str | os.PathLike[str] | None = None,
    trust_pickles: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    memory_limit: int | None = None,
) -> TrialReport:
    """Load each checkpoint in the other environment's interpreter and compare every tensor.

    ``memory_limit``: the child's address-space cap in bytes (None: four times the largest
    checkpoint plus 8 GiB; 0: none). BadInput (exit 2) for a bad checkpoint, before any child
    starts, and for an interpreter that is not there or has no torch.
    """
    interpreter = python_of(python, prefix)
    paths = [Path(c) for c in checkpoints]
    if not paths:
        raise BadInput("name at least one checkpoint to try")
    if timeout <= 0:
        raise BadInput(f"--timeout {timeout:g}: give a number of seconds above 0")
    plans = [_expected(p) for p in paths]  # every refusal happens here, before a child runs
    cap = memory_limit if memory_limit is not None else 4 * max(p.stat().st_size for p in paths) + MEMORY_HEADROOM
    other = _Child(interpreter, paths, trust_pickles=trust_pickles, memory_cap=cap or None)
    need_reference = [plan.path for plan in plans if plan.expected is None]
    here: _Child | None = None
    try:  # both children run at once; the reference, in this environment, only for files without digests
        if need_reference:
            here = _Child(sys.executable, need_reference, trust_pickles=trust_pickles, memory_cap=cap or None)
        environment = _environment(other, timeout)
        answers = _answers(other, paths, timeout)
        references: dict[str, dict[str, Any]] = {}
        if here is not None:
            _environment(here, timeout)
            references = _answers(here, need_reference, timeout)
    finally:
        other.close()
        if here is not None:
            here.close()
    results = []
    for plan in plans:
        key = str(plan.path.resolve())
        done = answers.get(key, {"loaded": False, "error": "no answer from the interpreter"})
        results.append(_result(plan, done, references.get(key) if plan.expected is None else None))
    return TrialReport(interpreter, environment, trust_pickles, tuple(results))
