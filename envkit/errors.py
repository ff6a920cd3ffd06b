"""The one exception tree of envkit.

Every error carries the exit code the command line uses for it (DESIGN §5) and a
message that says what to do next. Messages are single lines: the CLI prints them
as they are, without a traceback.
"""

from __future__ import annotations

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


class CheckpointWriteError(EnvkitError):
    """A save failed midway; earlier checkpoints are untouched and the temporary file is gone."""

    exit_code = EXIT_REFUSED


class RequeueFailed(EnvkitError):
    """``scontrol requeue`` did not succeed; the checkpoint is saved, resubmit the job by hand."""

    exit_code = 1


class CheckpointDirLocked(EnvkitError):
    """Another process already writes checkpoints to this folder."""

    exit_code = EXIT_BAD_INPUT


class TorchNotInstalled(BadInput):
    """An operation needs torch and it is not importable."""


class EnvironmentDriftWarning(UserWarning):
    """The live environment differs from the checkpoint's in a way the policy only warns about."""


class EphemeralDirectoryWarning(UserWarning):
    """Checkpoints are being written where they will not survive a reboot."""


class RankRngWarning(UserWarning):
    """A checkpoint saved by N ranks resumes on M != N ranks: every rank gets rank 0's random state."""


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


def warn_drift(message: str) -> None:
    warn_at_caller(message, EnvironmentDriftWarning)


class LockError(BadInput):
    """A conda-lock.yml is missing, malformed, or does not cover the platform asked for."""


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
