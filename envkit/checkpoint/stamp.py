"""The checkpoint stamp, schema ``envkit.stamp/1`` (docs/architecture.md).

A stamp read from a file keeps its fingerprint as the JSON it found and builds the
``Fingerprint`` on first use: ``latest()`` and ``verify`` need only the payload record
and the meta, and so never import the fingerprint schema.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from envkit.errors import BadInput, MalformedStamp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from envkit.fingerprint.schema import Fingerprint

SCHEMA = "envkit.stamp/1"
SUPPORTED_SCHEMAS = (SCHEMA,)
MEMBER = "extra/envkit.json"  # under the archive's own top folder
DICT_KEY = "envkit"
MAX_STAMP_BYTES = 8 * 1024 * 1024
DIGEST_ALGORITHMS = ("xxh3_128", "sha256")
_DIGEST = re.compile(r"^(xxh3_128|sha256):([0-9a-f]+)$")
STORAGES_FORMAT = "envkit.storages/1"


@dataclass(frozen=True)
class Payload:
    """The digest and length of the bytes torch.save wrote, recorded in the stamp."""

    digest: str
    length: int

    @property
    def algorithm(self) -> str:
        return self.digest.split(":", 1)[0]


@dataclass(frozen=True)
class StorageDigests:
    """Each storage's digest, recorded by the save that wrote them: format ``envkit.storages/1``.

    torch's writer computes the CRC-32 of every record while it writes it (the same pass) and
    lists them in the zip's central directory; the stamp pins that directory with a digest of
    its bytes (``directory``, over its first ``length`` bytes, ``records`` records). A stamp
    stays the same size however many tensors there are (200,000 would be megabytes listed
    one by one), and CRC-32 is the one digest a child interpreter with nothing but the
    standard library and torch can compute too (``envkit trial``). Optional: stamps written
    before it, by envkit's zipfile fallback, or with torch's CRCs turned off have none.
    """

    directory: str
    length: int
    records: int
    algorithm: str = "crc32"
    format: str = STORAGES_FORMAT

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "algorithm": self.algorithm, "directory": self.directory,
                "length": self.length, "records": self.records}

    @classmethod
    def from_json(cls, doc: Any, *, source: str) -> StorageDigests | None:
        """None for a format this envkit does not know (a newer envkit wrote it: not an error)."""
        if not isinstance(doc, Mapping):
            raise MalformedStamp(f"{source}: the stamp's storages record is not an object; re-save the checkpoint")
        if doc.get("format") != STORAGES_FORMAT or doc.get("algorithm") != "crc32":
            return None
        directory, length, records = doc.get("directory"), doc.get("length"), doc.get("records")
        def count(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        if not isinstance(directory, str) or not _DIGEST.match(directory) or not count(length) or not count(records):
            raise MalformedStamp(f"{source}: the stamp's storages record is malformed; re-save the checkpoint")
        return cls(directory, int(length), int(records))  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class Stamp:
    """``Stamp(fingerprint, payload, meta)`` when writing; ``from_json`` when reading."""

    fingerprint_doc: Fingerprint | Mapping[str, Any]  # a Fingerprint, or its JSON as read from a file
    payload: Payload | None
    meta: Mapping[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA
    source: str = "stamp"  # names the file in errors raised on first use
    storages: StorageDigests | None = None  # optional (envkit.storages/1); older stamps have none

    @cached_property
    def fingerprint(self) -> Fingerprint:
        """The environment that wrote the checkpoint; MalformedStamp (naming the file) when it is not one."""
        from envkit.fingerprint.schema import Fingerprint

        if isinstance(self.fingerprint_doc, Fingerprint):
            return self.fingerprint_doc
        return Fingerprint.from_json(self.fingerprint_doc, source=self.source)

    def __eq__(self, other: object) -> bool:  # a stamp read back equals the one written
        if not isinstance(other, Stamp):
            return NotImplemented
        mine = (self.schema, self.payload, dict(self.meta), self.storages, self.fingerprint)
        return mine == (other.schema, other.payload, dict(other.meta), other.storages, other.fingerprint)

    __hash__ = None  # type: ignore[assignment]  # meta is a dict

    @property
    def epoch(self) -> Any:
        return self.meta.get("epoch")

    @property
    def step(self) -> Any:
        return self.meta.get("step")

    @property
    def metrics(self) -> Mapping[str, Any]:
        metrics = self.meta.get("metrics")
        return metrics if isinstance(metrics, Mapping) else {}

    def to_json(self) -> dict[str, Any]:
        doc = {
            "schema": self.schema,
            "fingerprint": self.fingerprint.to_json(),
            "payload": {"digest": self.payload.digest, "length": self.payload.length} if self.payload else None,
            "meta": dict(self.meta),
        }
        if self.storages is not None:  # absent, not null: a stamp without it reads as before
            doc["storages"] = self.storages.to_json()
        return doc

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, doc: Any, *, source: str) -> Stamp:
        if not isinstance(doc, Mapping):
            raise MalformedStamp(f"{source}: the envkit stamp is not a JSON object; re-save the checkpoint with envkit.save")
        schema = doc.get("schema")
        if schema not in SUPPORTED_SCHEMAS:
            raise MalformedStamp(
                f"{source}: unknown stamp schema {str(schema)[:80]!r} (this envkit reads {', '.join(SUPPORTED_SCHEMAS)}); "
                "upgrade envkit to read it"
            )
        payload_doc = doc.get("payload")
        payload = None
        if payload_doc is not None:
            if not isinstance(payload_doc, Mapping):
                raise MalformedStamp(f"{source}: the stamp's payload record is not an object; re-save the checkpoint")
            digest, length = payload_doc.get("digest"), payload_doc.get("length")
            if not isinstance(digest, str) or not _DIGEST.match(digest):
                raise MalformedStamp(f"{source}: the stamp's payload digest {str(digest)[:80]!r} is malformed; re-save the checkpoint")
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                raise MalformedStamp(f"{source}: the stamp's payload length is malformed; re-save the checkpoint")
            payload = Payload(digest, length)
        meta = doc.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise MalformedStamp(f"{source}: the stamp's meta record is not an object; re-save the checkpoint")
        fingerprint = doc.get("fingerprint")
        if not isinstance(fingerprint, Mapping):
            raise MalformedStamp(f"{source}: the fingerprint is not a JSON object; re-save the checkpoint")
        storages_doc = doc.get("storages")
        storages = None if storages_doc is None else StorageDigests.from_json(storages_doc, source=source)
        return cls(fingerprint, payload, dict(meta), schema, source, storages)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str) -> Stamp:
        if len(data) > MAX_STAMP_BYTES:
            raise MalformedStamp(
                f"{source}: the envkit stamp is {len(data)} bytes, over the {MAX_STAMP_BYTES} byte limit; "
                "the file was not written by envkit or was tampered with"
            )
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise MalformedStamp(f"{source}: the envkit stamp is not valid JSON ({exc}); re-save the checkpoint") from None
        return cls.from_json(doc, source=source)


# -- meta and metrics: plain JSON numbers, checked before anything is written ---------------

INT_KEYS = ("epoch", "step")
_NUMBER_HINT = "a number (an int, a float, a 0-d tensor or a numpy scalar)"


def _scalar(value: Any) -> Any:
    """A 0-d tensor or array, or a numpy scalar, as the Python number it holds; anything else as it is.

    Duck-typed on ``ndim == 0`` and ``item()``, so torch and numpy are never imported here.
    """
    if isinstance(value, (str, bytes, bool, int, float)) or value is None:
        return value
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return value.item()  # torch.Tensor, numpy.ndarray, numpy.float32, numpy.int64, ...
    return value


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}" if type(value).__module__ != "builtins" else type(value).__name__
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{article} {kind} of shape {tuple(shape)}" if shape is not None and not isinstance(shape, (str, bytes)) else f"{article} {kind}"


def as_number(value: Any, key: str, *, source: str) -> int | float:
    """A metric as a Python int or float (NaN and inf kept); BadInput naming the key otherwise."""
    number = _scalar(value)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        hint = " (use .item() or .mean().item() for one number)" if getattr(value, "ndim", 0) else ""
        raise BadInput(f"{source}: metric {key!r} is {_describe(value)}; it must be {_NUMBER_HINT}{hint}")
    return int(number) if isinstance(number, int) else float(number)


def normalise_metrics(metrics: Mapping[str, Any] | None, *, source: str) -> dict[str, int | float]:
    """``metrics`` with 0-d tensors and numpy scalars made Python numbers; BadInput (naming the key) for anything else.

    Non-finite values stay floats here (a filename template can format them); the stamp
    records them as null (see ``normalise_meta``).
    """
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise BadInput(f"{source}: metrics must be a dict of name -> number, not {_describe(metrics)}")
    out: dict[str, int | float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise BadInput(f"{source}: metric name {key!r} is not a string; name every metric with a string")
        out[key] = as_number(value, key, source=source)
    return out


def _json_value(value: Any, where: str, source: str, depth: int = 0) -> Any:
    value = _scalar(value)
    if value is None or isinstance(value, (str, bool, int)):
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None  # JSON has no NaN or inf
    if depth > 32:
        raise BadInput(f"{source}: meta {where} is nested too deeply; keep meta to plain, shallow JSON data")
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise BadInput(f"{source}: meta {where} has the key {k!r}, which is not a string; JSON keys are strings")
            out[k] = _json_value(v, f"{where}[{k!r}]", source, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]", source, depth + 1) for i, v in enumerate(value)]
    raise BadInput(
        f"{source}: meta {where} is {_describe(value)}; meta holds plain JSON data (numbers, strings, lists, dicts), "
        "0-d tensors and numpy scalars"
    )


def normalise_meta(meta: Mapping[str, Any] | None, *, source: str) -> dict[str, Any]:
    """Stamp meta as plain JSON: numbers from 0-d tensors and numpy scalars, NaN/inf as null.

    ``epoch`` and ``step`` must be ints (numpy ints and 0-d integer tensors too), ``metrics``
    a dict of numbers. Raises BadInput naming the key and what it should be, so that a
    save fails before anything is written.
    """
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise BadInput(f"{source}: meta must be a dict, not {_describe(meta)}")
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise BadInput(f"{source}: meta key {key!r} is not a string; JSON keys are strings")
        if key in INT_KEYS and value is not None:
            number = _scalar(value)
            if isinstance(number, bool) or not isinstance(number, int):
                raise BadInput(f"{source}: meta {key!r} is {_describe(value)}; it must be an int")
            out[key] = int(number)
        elif key == "metrics" and value is not None:
            out[key] = {k: (v if math.isfinite(v) else None) for k, v in normalise_metrics(value, source=source).items()}
        else:
            out[key] = _json_value(value, repr(key), source)
    return out
