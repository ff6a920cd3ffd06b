"""The one exception tree of envkit.

Every error carries the exit code the command line uses for it (docs/architecture.md, the
command-line contract) and a message that says what to do next. Messages are single lines:
the CLI prints them as they are, without a traceback.
"""

from __future__ import annotations

import errno
import os
import warnings

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2


class EnvkitError(Exception):
    """Base of every error envkit raises on purpose."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadInput(EnvkitError):
    """The input cannot be used at all: a missing file, a malformed document, a bad option."""

    exit_code = EXIT_BAD_INPUT


class NotACheckpoint(BadInput):
    """The file is not something torch.save wrote (or it is truncated beyond recognition)."""


class UnsafeCheckpoint(BadInput):
    """The file asks the unpickler for something envkit will not run."""


class MalformedStamp(BadInput):
    """The envkit stamp inside a checkpoint is not valid JSON of a known schema."""


class MalformedSidecar(BadInput):
    """A checksum sidecar (``ckpt.pth.md5``, ``.sha256``) is not what md5sum/sha256sum write."""


class MalformedSafetensors(NotACheckpoint):
    """A file shaped like safetensors (an 8-byte length, then ``{``) whose header safetensors would refuse."""


class StorageUnavailable(BadInput):
    """Object storage cannot be used: the endpoint does not answer, no credentials, access denied, no such bucket.

    Raised, never turned into "this checkpoint is unreadable": a listing that cannot reach its
    bucket must not look like an empty one (resume() would start afresh)."""


class ConfigError(BadInput):
    """The [tool.envkit] configuration cannot be used."""


class SpecError(BadInput):
    """An environment.yml cannot be used (unreadable, malformed YAML, a bad dependency line); `FILE:LINE: problem; fix`."""


class CheckFailed(EnvkitError):
    """A check ran and said no: policy refused, a digest did not match."""

    exit_code = EXIT_REFUSED


class EnvironmentMismatch(CheckFailed):
    """The live environment may not resume this checkpoint under the active policy."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class CorruptCheckpoint(CheckFailed):
    """The checkpoint's bytes do not match the digest its stamp recorded."""


class RequeueFailed(CheckFailed):
    """``scontrol requeue`` did not succeed (exit 1); the checkpoint is saved, resubmit the job by hand."""


class CheckpointWriteError(EnvkitError):
    """A save failed midway; earlier checkpoints are untouched and the temporary file is gone."""

    exit_code = EXIT_REFUSED


class CheckpointDirLocked(EnvkitError):
    """Another process already writes checkpoints to this folder."""

    exit_code = EXIT_BAD_INPUT


class TorchNotInstalled(BadInput):
    """An operation needs torch and it is not importable."""


class MissingExtra(BadInput, ImportError):
    """An integration's framework is not installed: the message names the ``pip install 'envkit[...]'`` line.

    Also an ImportError, so ``except ImportError`` around an optional integration still works."""


class EnvironmentDriftWarning(UserWarning):
    """The live environment differs from the checkpoint's in a way the policy only warns about."""


class EphemeralDirectoryWarning(UserWarning):
    """Checkpoints are being written where they will not survive a reboot."""


class RankRngWarning(UserWarning):
    """A checkpoint saved by N ranks resumes on M != N ranks: every rank gets rank 0's random state."""


class BackgroundSaveWarning(UserWarning):
    """A background save (``async_save=True``) could not run as asked: saved synchronously, or failed with nobody waiting."""


def describe_os_error(path: str | os.PathLike[str], exc: OSError) -> str:
    """A short phrase for an OSError, without the repr noise."""
    reason = exc.strerror or exc.__class__.__name__
    return f"{os.fspath(path)}: {reason}"


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """warnings.warn, attributed to the first frame outside the envkit package: the user's line
    that called envkit.guard / envkit.load / mgr.resume, however deep the call chain inside envkit
    is. (Python 3.12's ``skip_file_prefixes`` does the same; this works on 3.10 and 3.11 too.)"""
    import sys

    frame = sys._getframe(0)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)


# What to do about an OSError on a path the user gave, by errno.
_OS_ERROR_FIXES = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "pass a file, not a folder",
    errno.ENAMETOOLONG: "the path (or one of its names) is longer than this file system allows; use a shorter path",
    errno.ELOOP: "the path goes round a loop of symbolic links; fix the links or pass the real path",
    errno.EACCES: "check its permissions, or run as a user who may read it",
    errno.EPERM: "check its permissions, or run as a user who may read it",
    errno.EROFS: "the file system is read-only; choose a path on a writable one",
    errno.ENOSPC: "the disk is full; free some space or choose another path",
    errno.EEXIST: "something is already there; remove it or choose another path",
    errno.ENXIO: "it is a device or socket, not a file; pass a regular file",
}


def os_error_input(exc: OSError, path: str | os.PathLike[str] | None = None, fix: str | None = None) -> BadInput:
    """The BadInput (exit 2) for an OSError raised on a path the user gave: the path, what happened, what to do."""
    where = path if path is not None else exc.filename
    reason = exc.strerror or exc.__class__.__name__
    advice = fix or _OS_ERROR_FIXES.get(exc.errno or -1, "check the path and its permissions")
    if where is None:
        return BadInput(f"{reason}; {advice}")
    if isinstance(where, bytes):
        where = os.fsdecode(where)
    return BadInput(f"{os.fspath(where)}: {reason}; {advice}")


def error_document(message: str, exit_code: int) -> dict[str, object]:
    """What a command run with ``--json`` prints on stdout when it cannot give its answer."""
    return {"error": message, "exit_code": exit_code}


def warn_drift(message: str) -> None:
    warn_at_caller(message, EnvironmentDriftWarning)


class LockError(BadInput):
    """A conda-lock.yml is missing, malformed, or does not cover the platform asked for."""


class PipIndexUnreachable(LockError):
    """The package index pip is configured with cannot be reached."""


class NoPipDistribution(LockError):
    """A pip requirement has no wheel for a target platform (or cannot be resolved)."""


class ChannelError(BadInput):
    """A channel named by the spec cannot be reached or does not exist."""


class EngineError(BadInput):
    """The requested install engine is not available here."""


class StaleLock(CheckFailed):
    """The lock file no longer matches its spec."""


class SolveError(CheckFailed):
    """The spec cannot be satisfied from its channels for a platform."""


class CpuBuildWithCudaPin(SolveError):
    """A solved plan puts a CPU build of pytorch next to a CUDA pin (pytorch-cuda, cudatoolkit, cuda-version)."""


class InstallError(CheckFailed):
    """Creating an environment failed; nothing was left under the target name."""


class CheckpointSkippedWarning(UserWarning):
    """resume() passed over checkpoints newer than the one it resumed from: they do not verify."""


class MissingStateWarning(UserWarning):
    """resume() was given an optimizer/scheduler/scaler/sampler (or model) the checkpoint holds no state for."""
