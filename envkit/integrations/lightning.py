"""envkit inside PyTorch Lightning (>= 2.0): stamped ``.ckpt`` saves, guarded resumes.

    from envkit.integrations.lightning import EnvkitCallback, EnvkitCheckpointIO
    trainer = Trainer(callbacks=[EnvkitCallback()])            # or plugins=[EnvkitCheckpointIO()]
    trainer.fit(model, ckpt_path="checkpoints/last.ckpt")      # EnvironmentMismatch before any weight changes

``Trainer.fit(ckpt_path=...)`` unpickles the checkpoint through ``strategy.checkpoint_io.load_checkpoint``
before any hook sees it (``Callback.on_load_checkpoint`` runs once the weights are in), so only a
``CheckpointIO`` can refuse in time. ``EnvkitCheckpointIO`` reads the stamp without unpickling,
runs the guard and the payload digest check, and only then lets torch load the file.
``EnvkitCallback.setup`` installs it: ``setup`` runs before the trainer restores ``ckpt_path``
(``Trainer._run``: the setup hooks, then ``_restore_modules_and_callbacks``; ``on_fit_start`` comes
after the restore for most strategies, so it would be too late).

Single-file checkpoints (the strategies that save through ``checkpoint_io``: single device, DDP);
strategies that write their own folders (DeepSpeed, sharded FSDP) do not call it. ``lightning`` is
used when importable, else ``pytorch_lightning``; with both installed, use ``lightning.Trainer``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envkit.checkpoint.stamp import DICT_KEY, Stamp
from envkit.errors import MissingExtra
from envkit.fingerprint import Fingerprint, collect
from envkit.policy import Policy

try:
    import lightning.pytorch as _pl
    from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
    from lightning.pytorch.callbacks import Callback

    _PACKAGE = "lightning.pytorch"
except ImportError:
    try:
        import pytorch_lightning as _pl  # type: ignore[no-redef]
        from lightning_fabric.plugins import CheckpointIO, TorchCheckpointIO  # type: ignore[assignment]
        from pytorch_lightning.callbacks import Callback  # type: ignore[assignment]

        _PACKAGE = "pytorch_lightning"
    except ImportError:
        raise MissingExtra(
            "envkit.integrations.lightning needs PyTorch Lightning, which is not installed; "
            "install it with `pip install 'envkit[lightning]'`"
        ) from None



def _wrapping_class() -> Any:
    """AsyncCheckpointIO's base, which wraps another CheckpointIO (private to Lightning; None when absent)."""
    try:
        module = importlib.import_module(f"{_PACKAGE}.plugins.io.wrapper")
    except ImportError:
        return None
    return getattr(module, "_WrappingCheckpointIO", None)


_WrappingCheckpointIO: Any = _wrapping_class()

__all__ = ["EnvkitCallback", "EnvkitCheckpointIO", "checkpoint_meta", "guard_file", "install"]


def checkpoint_meta(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The stamp's meta for a Lightning checkpoint dict: ``epoch``, ``step`` (its ``global_step``),
    ``metrics`` (the score of each ModelCheckpoint's monitored metric, when it has one) and
    ``framework``."""
    meta: dict[str, Any] = {"framework": f"lightning {_pl.__version__}"}
    for key, name in (("epoch", "epoch"), ("global_step", "step")):
        value = checkpoint.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            meta[name] = value
    metrics: dict[str, float] = {}
    callbacks = checkpoint.get("callbacks")
    for state in callbacks.values() if isinstance(callbacks, Mapping) else ():
        if not isinstance(state, Mapping):
            continue
        monitor, score = state.get("monitor"), state.get("current_score")
        if isinstance(monitor, str) and score is not None:
            try:
                metrics[monitor] = float(score)
            except (TypeError, ValueError, RuntimeError):
                continue  # not a number: left out of the stamp, the checkpoint itself keeps it
    if metrics:
        meta["metrics"] = metrics
    return meta


def _local(path: Any) -> Path | None:
    """The path as a local file path, or None for a URL (``s3://``, ``http://``...)."""
    text = os.fspath(path)
    if "://" in text and not text.startswith("file://"):
        return None
    return Path(text[len("file://"):] if text.startswith("file://") else text)


class _Stamper:
    """The fingerprint (collected once, on the first save) and the stamps built from it."""

    def __init__(self, fingerprint: Fingerprint | None = None) -> None:
        self._fingerprint = fingerprint

    @property
    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            self._fingerprint = collect()
        return self._fingerprint

    def meta(self, checkpoint: Mapping[str, Any], path: Any) -> dict[str, Any]:
        from envkit.checkpoint.writer import build_meta

        return build_meta(checkpoint_meta(checkpoint), Path(os.fspath(path)))

    def dict_stamp(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """The stamp the checkpoint dict carries as its ``"envkit"`` key (no payload digest: the
        dict is inside the payload); read by envkit when a re-save dropped the stamp member."""
        return Stamp(self.fingerprint, None, meta).to_json()


class EnvkitCheckpointIO(CheckpointIO):
    """A ``CheckpointIO`` that stamps what it saves and guards what it loads.

    ``inner``: the CheckpointIO to wrap (the strategy's own; None or a plain ``TorchCheckpointIO``
    means Lightning's default). ``policy``: the guard's policy (a preset name or a Policy; None:
    ``[tool.envkit]``, else the default preset). ``digest``: the payload digest's algorithm.
    ``fingerprint``: the environment to record instead of the live one (collected once, at the
    first save, otherwise).

    Saving: with the default IO, envkit's own one-pass writer (``torch.save`` through a hashing
    writer, the stamp appended, fsync, rename: never a partial file under the final name). With
    another ``inner`` (a user's own), it writes, then the file it wrote is stamped in place through
    a copy and a rename, when it is a local torch zip file; remote paths, legacy streams and
    asynchronous writers keep only the ``"envkit"`` key. Every save puts the stamp in the dict too.

    Loading: the stamp is read without unpickling; the guard (EnvironmentMismatch, drift warnings;
    an unstamped file warns, as ``envkit.load`` does) and the payload digest (CorruptCheckpoint)
    run first, then ``inner.load_checkpoint`` unpickles as Lightning would.
    """

    def __init__(
        self,
        inner: CheckpointIO | None = None,
        policy: Policy | str | None = None,
        *,
        digest: str = "xxh3_128",
        fingerprint: Fingerprint | None = None,
    ) -> None:
        from envkit.checkpoint.stamp import DIGEST_ALGORITHMS
        from envkit.errors import BadInput

        if digest not in DIGEST_ALGORITHMS:
            raise BadInput(f"unknown digest {digest!r}; use one of {', '.join(DIGEST_ALGORITHMS)}")
        self.inner: CheckpointIO | None = inner.inner if isinstance(inner, EnvkitCheckpointIO) else inner
        self.policy = policy
        self.digest = digest
        self._stamper = _Stamper(fingerprint)

    @property
    def _own_writer(self) -> bool:
        return self.inner is None or type(self.inner) is TorchCheckpointIO

    def _io(self) -> CheckpointIO:
        return self.inner if self.inner is not None else TorchCheckpointIO()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        meta = self._stamper.meta(checkpoint, path)
        fingerprint = self._stamper.fingerprint
        stamped = {**checkpoint, DICT_KEY: self._stamper.dict_stamp(meta)}
        local = _local(path)
        if self._own_writer and local is not None:
            if storage_options is not None:  # as TorchCheckpointIO does
                raise TypeError(
                    "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg is not supported "
                    f"for `{type(self).__name__}` over the default CheckpointIO; pass your own CheckpointIO as `inner`"
                )
            from envkit.checkpoint.writer import write_stamped

            local.parent.mkdir(parents=True, exist_ok=True)
            write_stamped(stamped, local, stamp_for=lambda payload: Stamp(fingerprint, payload, meta), digest=self.digest)
            return
        self._io().save_checkpoint(stamped, path, storage_options=storage_options)
        asynchronous = _WrappingCheckpointIO is not None and isinstance(self.inner, _WrappingCheckpointIO)
        if local is not None and not asynchronous and local.is_file():
            from envkit.checkpoint.writer import stamp_existing

            stamp_existing(local, stamp_for=lambda payload: Stamp(fingerprint, payload, meta), digest=self.digest)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        local = _local(path)
        if local is not None and local.is_file():
            guard_file(local, self.policy)
        elif local is None or local.exists():  # a missing file: the inner IO raises FileNotFoundError, as Lightning does
            import warnings

            warnings.warn(
                f"{os.fspath(path)}: envkit guards local checkpoint files; this {'URL' if local is None else 'folder'} "
                "is loaded by the inner CheckpointIO without the guard; run `envkit check` on a local copy first",
                UserWarning,
                stacklevel=2,
            )
        kwargs: dict[str, Any] = {}
        if map_location is not None:
            kwargs["map_location"] = map_location
        if weights_only is not None:  # Lightning < 2.4 has no weights_only
            kwargs["weights_only"] = weights_only
        return self._io().load_checkpoint(path, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self._io().remove_checkpoint(path)

    def teardown(self) -> None:
        if self.inner is not None:
            self.inner.teardown()


def guard_file(path: Path, policy: Policy | str | None = None) -> None:
    """The guard and the payload digest check of ``envkit.load``, without the load: raises
    EnvironmentMismatch or CorruptCheckpoint (or BadInput for a file that is no checkpoint).
    ``LightningModule.load_from_checkpoint`` reads files without any CheckpointIO: call this first."""
    from envkit.checkpoint.integrity import verify
    from envkit.checkpoint.reader import read_stamp
    from envkit.checkpoint.resume_check import guard
    from envkit.errors import CorruptCheckpoint

    info = read_stamp(path)
    guard(path, policy, info=info)
    if info.stamped:
        result = verify(path, info)
        if result.status in ("corrupt", "unreadable"):  # unstamped (no digest recorded) is not corruption
            raise CorruptCheckpoint(f"{result.problem}; resume from an earlier checkpoint")


def _installed(io: Any) -> EnvkitCheckpointIO | None:
    if isinstance(io, EnvkitCheckpointIO):
        return io
    if _WrappingCheckpointIO is not None and isinstance(io, _WrappingCheckpointIO):
        inner = getattr(io, "_checkpoint_io", None)
        return inner if isinstance(inner, EnvkitCheckpointIO) else None
    return None


def install(trainer: Any, policy: Policy | str | None = None) -> EnvkitCheckpointIO:
    """Put an EnvkitCheckpointIO around ``trainer.strategy.checkpoint_io`` unless one is there
    (inside a wrapping IO such as AsyncCheckpointIO, so that its background writes are stamped);
    returns the one in use. Call it before ``fit``; EnvkitCallback calls it from ``setup``."""
    strategy = trainer.strategy
    current = strategy.checkpoint_io
    found = _installed(current)
    if found is not None:
        return found
    if _WrappingCheckpointIO is not None and isinstance(current, _WrappingCheckpointIO):
        ours = EnvkitCheckpointIO(current.checkpoint_io, policy)
        current._checkpoint_io = ours  # the setter keeps a configured inner IO: set it directly
        return ours
    ours = EnvkitCheckpointIO(current, policy)
    strategy.checkpoint_io = ours
    return ours


class EnvkitCallback(Callback):
    """Stamps every checkpoint and guards ``ckpt_path`` resumes.

    ``setup`` (before the trainer restores ``ckpt_path``) installs EnvkitCheckpointIO around the
    strategy's CheckpointIO when there is none; ``on_save_checkpoint`` adds the stamp to the
    checkpoint dict as its ``"envkit"`` key, so the dict carries the fingerprint through any
    re-save (a user's CheckpointIO, ``torch.save`` of a loaded checkpoint).
    """

    def __init__(self, policy: Policy | str | None = None) -> None:
        self.policy = policy
        self._stamper = _Stamper()

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._stamper = install(trainer, self.policy)._stamper  # one fingerprint for the key and the member

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        path = getattr(trainer, "default_root_dir", ".")
        checkpoint[DICT_KEY] = self._stamper.dict_stamp(self._stamper.meta(checkpoint, path))
