"""Errors a user can cause.

Every error that bad input, a bad file or a bad option can cause is one of these classes, so a caller can catch
``learnq.errors.LearnqError`` for all of them. Messages name the parameter, file or option that is wrong and say
what to do about it.
"""

from __future__ import annotations


class LearnqError(Exception):
    """Base class of every error learnq raises on purpose."""


class ConfigError(LearnqError, ValueError):
    """A parameter, option or recipe key has a wrong value or type."""


class QuantizationError(LearnqError, ValueError):
    """A tensor cannot be quantized as asked (NaN/Inf values, empty tensor, bits out of range...)."""


class CheckpointError(LearnqError):
    """A model file is missing, truncated, corrupted, of another version, or does not fit the model."""


class DataError(LearnqError):
    """A data set is missing, malformed or of the wrong shape."""


class ModelError(LearnqError):
    """A model cannot be built, or has no layer the method can work on."""


class BusyError(LearnqError):
    """A run directory is being written by another process (the message names it: pid, host, command, since)."""


__all__ = ["LearnqError", "ConfigError", "QuantizationError", "CheckpointError", "DataError", "ModelError",
           "BusyError"]
