"""Errors the engine raises; each message names the problem and, where it can, the fix."""


class EngineError(Exception):
    """Base of every error the engine reports to a caller."""


class UnknownModelError(EngineError):
    pass


class UnsupportedModelError(EngineError):
    pass


class CheckpointError(EngineError):
    """A checkpoint file is missing, truncated, corrupted or has the wrong tensors."""


class InvalidRequestError(EngineError):
    """A request the engine can never serve: bad sampling values, too long a prompt."""


class OutOfMemoryError(EngineError):
    """The preallocated arena or the host swap area has no room for what was asked."""
