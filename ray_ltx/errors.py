"""User-facing errors: what is wrong, where, and how to fix it.

Every error a user can cause by their input (config, data, cache, checkpoint, output dir)
is a subclass of :class:`UserError`. The CLI prints these without a traceback and exits
with the class's ``exit_code``.
"""

from __future__ import annotations


class UserError(Exception):
    """An error in the user's input, reported as one clear message."""

    exit_code = 1


class ConfigError(UserError):
    """The configuration (YAML or command-line flags) is invalid."""

    exit_code = 2


class DatasetError(UserError):
    """The dataset cannot be read or yields no usable sample."""

    exit_code = 3


class CacheError(UserError):
    """The latent cache is missing, incomplete or was built for something else."""

    exit_code = 4


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete or does not match the configuration."""

    exit_code = 5


class OutputDirError(UserError):
    """The output directory holds another run."""

    exit_code = 6


class TrackingError(UserError):
    """The tracker (an MLflow server, W&B) cannot be reached, refused a request, or is not set up."""

    exit_code = 7


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite."""

    exit_code = 8


class StorageFullError(UserError):
    """No space left where the cache, checkpoints or outputs are written."""

    exit_code = 9


class OutOfMemoryError(UserError):
    """A GPU (or host) ran out of memory: the same settings would run out again."""

    exit_code = 10


def is_disk_full(error: BaseException) -> bool:
    """True if ``error`` (or anything it wraps, Ray's wrappers included) is ENOSPC / EDQUOT."""
    import errno

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(current) or "Disk quota exceeded" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False
