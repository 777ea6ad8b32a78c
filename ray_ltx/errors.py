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
    """The MLflow tracking server cannot be reached or refused a request."""

    exit_code = 7


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite."""

    exit_code = 8
