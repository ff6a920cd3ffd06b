"""The fingerprint data model, schema ``envkit.fingerprint/1`` (docs/architecture.md).

Frozen dataclasses in, plain JSON out. The digest is the sha256 of the canonical
JSON (sorted keys, no whitespace) of everything except ``host``, ``runtime`` and the
digest itself. Changing what goes into the digest is a breaking change: bump SCHEMA
and keep a reader for the old one.

``runtime`` holds what one process sees, not what the environment is: the
determinism flags it set, the cuDNN and NCCL its torch loaded, the GPUs its torch
was shown. It exists only when torch was already imported, so keeping it out of the
digest is what makes the digest of one environment the same with and without
``import torch``. It is a section the first readers of schema 1 do not know, and
they ignore unknown sections and leave them out of the digest, so they compute the
same digest for a document written today: the schema stays 1. The top-level
``determinism`` slot is kept, digested as before, for documents written before
``runtime`` existed (envkit 0.1.0 put the flags there); today's writers leave it
null.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache, cached_property

from envkit.errors import MalformedStamp

SCHEMA = "envkit.fingerprint/1"
SUPPORTED_SCHEMAS = (SCHEMA,)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from _typeshed import DataclassInstance

    JSONValue = Any


# The torch switches a fingerprint records under "determinism" (sources.live_torch_facts writes
# them; policy rules may name them as "determinism.<key>").
DETERMINISM_KEYS = (
    "cublas_workspace_config",
    "cudnn_benchmark",
    "cudnn_deterministic",
    "deterministic_algorithms",
    "tf32_cudnn",
    "tf32_matmul",
)


def canonical_json(value: JSONValue) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_of(value: JSONValue) -> str:
    return "sha256:" + _sha256(canonical_json(value)).hexdigest()


@cache
def _sha256_constructor() -> Any:
    """CPython's built-in sha256 where it has one: importing hashlib starts OpenSSL, about a
    twentieth of `envkit check`. The digest is the same (tests/fingerprint/test_schema.py)."""
    try:
        from _sha2 import sha256  # type: ignore[import-not-found]  # CPython >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found]  # CPython 3.10, 3.11
        except ImportError:
            from hashlib import sha256
    return sha256


def _sha256(data: bytes) -> Any:
    return _sha256_constructor()(data)


@dataclass(frozen=True)
class PythonInfo:
    """The interpreter: version and implementation."""

    version: str | None = None
    implementation: str | None = None


@dataclass(frozen=True)
class PlatformInfo:
    """Operating system, machine, libc and the conda subdir they make."""

    system: str | None = None
    machine: str | None = None
    libc: str | None = None
    conda_subdir: str | None = None


@dataclass(frozen=True)
class TorchInfo:
    """The torch build: version, the CUDA and cuDNN it uses, git revision, conda build string."""

    version: str | None = None
    cuda: str | None = None
    cudnn: str | None = None
    git: str | None = None
    build: str | None = None


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as the driver reports it."""

    name: str | None = None
    capability: str | None = None
    memory_mib: int | None = None


@dataclass(frozen=True)
class GpuInfo:
    """The driver, the devices and the NCCL version."""

    driver: str | None = None
    devices: tuple[GpuDevice, ...] = ()
    nccl: str | None = None


@dataclass(frozen=True, order=True)
class Package:
    """One installed distribution: name, version, where it came from (pypi, conda, ...), build."""

    name: str
    version: str
    source: str
    build: str | None = None
    # Where a conda package came from, so that `envkit recreate` can list it exactly.
    # Optional and left out of the JSON when unknown: old fingerprints keep their digest.
    url: str | None = field(default=None, compare=False)
    md5: str | None = field(default=None, compare=False)

    def to_json(self) -> list[Any]:
        origin = {k: v for k, v in (("url", self.url), ("md5", self.md5)) if v is not None}
        if origin:
            return [self.name, self.version, self.source, self.build, origin]
        return [self.name, self.version, self.source, self.build]


@dataclass(frozen=True)
class EnvironmentInfo:
    """The conda environment and the lock it was created from, when known."""

    name: str | None = None
    lock_hash: str | None = None
    lock_platform: str | None = None


@dataclass(frozen=True)
class HostInfo:
    """Where and when the fingerprint was taken: volatile, never part of the digest."""

    hostname: str | None = None
    collected_at: str | None = None
    prefix: str | None = None


@dataclass(frozen=True)
class RuntimeInfo:
    """What the torch of one process loaded and was shown: process-local, never digested.

    ``cudnn`` is ``torch.backends.cudnn.version()``, ``nccl`` is ``torch.cuda.nccl.version()``,
    ``devices`` are the GPUs ``torch.cuda`` enumerates (``CUDA_VISIBLE_DEVICES`` applies, and the
    memory is net of what the driver reserves, so it differs from ``nvidia-smi``'s).
    """

    cudnn: str | None = None
    nccl: str | None = None
    devices: tuple[GpuDevice, ...] = ()


@dataclass(frozen=True)
class Fingerprint:
    """Everything about an environment that decides whether a checkpoint resumes the same way."""

    python: PythonInfo = field(default_factory=PythonInfo)
    platform: PlatformInfo = field(default_factory=PlatformInfo)
    torch: TorchInfo = field(default_factory=TorchInfo)
    gpu: GpuInfo = field(default_factory=GpuInfo)
    # Process settings (cudnn.benchmark, TF32, ...), read when torch is imported; compared by
    # the policy, never digested, except in documents that recorded them before `runtime`.
    determinism: tuple[tuple[str, JSONValue], ...] | None = None
    packages: tuple[Package, ...] = ()
    environment: EnvironmentInfo | None = None
    host: HostInfo = field(default_factory=HostInfo)
    schema: str = SCHEMA
    runtime: RuntimeInfo | None = None
    # True only for a document of envkit 0.1.0 that recorded the flags in the digested slot:
    # its digest is recomputed the way it was written.
    determinism_digested: bool = False

    # -- derived -----------------------------------------------------------------
    @cached_property  # frozen: computed once per object
    def packages_digest(self) -> str:
        return sha256_of([p.to_json() for p in self.packages])

    @cached_property
    def digest(self) -> str:
        return sha256_of(self._content())

    @property
    def effective_cudnn(self) -> str | None:
        """The cuDNN this process loaded when known, else the one the files say torch loads."""
        return (self.runtime.cudnn if self.runtime else None) or self.torch.cudnn

    @property
    def effective_nccl(self) -> str | None:
        return (self.runtime.nccl if self.runtime else None) or self.gpu.nccl

    @property
    def effective_devices(self) -> tuple[GpuDevice, ...]:
        """The driver's devices; torch's view only where the driver listed none."""
        return self.gpu.devices or (self.runtime.devices if self.runtime else ())

    # -- serialisation -----------------------------------------------------------
    def _content(self) -> dict[str, JSONValue]:
        return {
            "schema": self.schema,
            "python": _section(self.python),
            "platform": _section(self.platform),
            "torch": _section(self.torch),
            "gpu": {
                "driver": self.gpu.driver,
                "devices": [_section(d) for d in self.gpu.devices],
                "nccl": self.gpu.nccl,
            },
            "determinism": (
                dict(self.determinism) if self.determinism is not None and self.determinism_digested else None
            ),
            "packages": {
                "digest": self.packages_digest,
                "items": [p.to_json() for p in self.packages],
            },
            "environment": _section(self.environment) if self.environment else None,
        }

    def to_json(self) -> dict[str, JSONValue]:
        doc = self._content()
        runtime = self._runtime_json()
        if runtime is not None:
            doc["runtime"] = runtime
        doc["host"] = _section(self.host)
        doc["digest"] = self.digest
        return doc

    def _runtime_json(self) -> dict[str, JSONValue] | None:
        if self.runtime is None and (self.determinism is None or self.determinism_digested):
            return None
        rt = self.runtime or RuntimeInfo()
        return {
            "cudnn": rt.cudnn,
            "nccl": rt.nccl,
            "devices": [_section(d) for d in rt.devices],
            "determinism": (
                dict(self.determinism) if self.determinism is not None and not self.determinism_digested else None
            ),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, JSONValue], *, source: str = "fingerprint") -> Fingerprint:
        """Rebuild a fingerprint; raises MalformedStamp naming ``source`` when it is not one."""
        if not isinstance(doc, Mapping):
            raise MalformedStamp(f"{source}: the fingerprint is not a JSON object")
        schema = doc.get("schema")
        if not (isinstance(schema, str) and schema.startswith("envkit.fingerprint/")):
            shown = "it has no \"schema\" key" if schema is None else f"its schema is {str(schema)[:80]!r}"
            raise MalformedStamp(
                f"{source}: not an envkit fingerprint ({shown}); pass the JSON written by `envkit fingerprint -o FILE`"
            )
        if schema not in SUPPORTED_SCHEMAS:
            raise MalformedStamp(
                f"{source}: unknown fingerprint schema {str(schema)[:80]!r} (this envkit reads "
                f"{', '.join(SUPPORTED_SCHEMAS)}); upgrade envkit to read it"
            )
        try:
            gpu = doc.get("gpu") or {}
            packages = (doc.get("packages") or {}).get("items") or []
            determinism = doc.get("determinism")
            digested = isinstance(determinism, Mapping)
            runtime_doc = doc.get("runtime")
            runtime = None
            if runtime_doc is not None:
                if not isinstance(runtime_doc, Mapping):
                    raise TypeError("runtime must be an object")
                runtime = RuntimeInfo(
                    cudnn=_opt_str(runtime_doc.get("cudnn")),
                    nccl=_opt_str(runtime_doc.get("nccl")),
                    devices=tuple(_load(GpuDevice, d) for d in runtime_doc.get("devices") or ()),
                )
                if not digested:
                    determinism = runtime_doc.get("determinism")
            env = doc.get("environment")
            return cls(
                python=_load(PythonInfo, doc.get("python")),
                platform=_load(PlatformInfo, doc.get("platform")),
                torch=_load(TorchInfo, doc.get("torch")),
                gpu=GpuInfo(
                    driver=_opt_str(gpu.get("driver")),
                    devices=tuple(_load(GpuDevice, d) for d in gpu.get("devices") or ()),
                    nccl=_opt_str(gpu.get("nccl")),
                ),
                determinism=(
                    tuple(sorted((str(k), v) for k, v in determinism.items()))
                    if isinstance(determinism, Mapping)
                    else None
                ),
                packages=tuple(sorted(_load_package(p) for p in packages)),
                environment=_load(EnvironmentInfo, env) if env else None,
                host=_load(HostInfo, doc.get("host")),
                schema=schema,
                runtime=runtime,
                determinism_digested=digested,
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise MalformedStamp(f"{source}: the fingerprint is malformed ({exc})") from None

    def with_host(self, host: HostInfo) -> Fingerprint:
        return replace(self, host=host)


def _section(obj: object) -> dict[str, JSONValue]:
    return dict(obj.__dict__)


def _opt_str(value: JSONValue) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


_INT_FIELDS = frozenset({"memory_mib"})


def _load(kind: type[DataclassInstance], value: JSONValue) -> Any:
    if value is None:
        return kind()
    if not isinstance(value, Mapping):
        raise TypeError(f"{kind.__name__} must be an object")
    known = kind.__dataclass_fields__
    kwargs: dict[str, str | int | None] = {}
    for key, item in value.items():
        if key not in known:
            continue  # written by a newer envkit; ignored but kept out of comparisons
        if key in _INT_FIELDS:
            kwargs[key] = int(item) if item is not None else None
        else:
            kwargs[key] = _opt_str(item)
    return kind(**kwargs)


def _load_package(item: JSONValue) -> Package:
    if not isinstance(item, (list, tuple)) or not 2 <= len(item) <= 5:
        raise ValueError("a package entry must be [name, version, source, build, {url, md5}]")
    name, version, *rest = item
    source = rest[0] if rest else "unknown"
    build = rest[1] if len(rest) > 1 else None
    origin = rest[2] if len(rest) > 2 else {}
    if not isinstance(origin, Mapping):
        raise ValueError("the fifth item of a package entry must be an object {url, md5}")
    return Package(str(name), str(version), str(source), _opt_str(build), _opt_str(origin.get("url")), _opt_str(origin.get("md5")))
