"""The checkpoint stamp, schema ``envkit.stamp/1`` (DESIGN §3).

A stamp read from a file keeps its fingerprint as the JSON it found and builds the
``Fingerprint`` on first use: ``latest()`` and ``verify`` need only the payload record
and the meta, and so never import the fingerprint schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from envkit.errors import MalformedStamp

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


@dataclass(frozen=True)
class Payload:
    """The digest and length of the bytes torch.save wrote, recorded in the stamp."""

    digest: str
    length: int

    @property
    def algorithm(self) -> str:
        return self.digest.split(":", 1)[0]


@dataclass(frozen=True, eq=False)
class Stamp:
    """``Stamp(fingerprint, payload, meta)`` when writing; ``from_json`` when reading."""

    fingerprint_doc: Fingerprint | Mapping[str, Any]  # a Fingerprint, or its JSON as read from a file
    payload: Payload | None
    meta: Mapping[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA
    source: str = "stamp"  # names the file in errors raised on first use

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
        mine = (self.schema, self.payload, dict(self.meta), self.fingerprint)
        return mine == (other.schema, other.payload, dict(other.meta), other.fingerprint)

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
        return {
            "schema": self.schema,
            "fingerprint": self.fingerprint.to_json(),
            "payload": {"digest": self.payload.digest, "length": self.payload.length} if self.payload else None,
            "meta": dict(self.meta),
        }

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
        return cls(fingerprint, payload, dict(meta), schema, source)

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
