"""Errors the trainer raises on bad input, each with its own exit status (common.exits)."""
from __future__ import annotations

from common import exits


class TrainerError(RuntimeError):
    """Base class: a message for the user and the process exit status that goes with it."""

    exit_code = exits.FAILURE


class DataError(TrainerError):
    """An image/mask pair or a label file that cannot be used; the message names the file."""

    exit_code = exits.DATAERR


class MissingInput(TrainerError):
    """A file or folder the command needs does not exist."""

    exit_code = exits.NOINPUT


class ToolUnavailable(TrainerError):
    """A runtime the command needs (TensorRT, CUDA...) is not installed here."""

    exit_code = exits.UNAVAILABLE


class ConfigError(TrainerError):
    """An invalid setting, from a flag, an environment variable or the TOML file."""

    exit_code = exits.CONFIG
