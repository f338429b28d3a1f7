"""Domain errors shared by every service.

Pure Python: domain code raises these without knowing about gRPC or NATS. The gRPC adapter maps
each class to a status code (see `arena_core.rpc.interceptors`), and event consumers treat them
as permanent failures that go to the dead-letter subject instead of being retried.
"""

from __future__ import annotations


class ArenaError(Exception):
    """Base class of every error a caller can act on."""


class InvalidArgumentError(ArenaError, ValueError):
    """The caller sent something malformed; `where` names the field, file:line or argument."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class NotFoundError(ArenaError, LookupError):
    """A named thing (model, run, dataset, leaderboard) does not exist."""


class AlreadyExistsError(ArenaError):
    """Creating something that already exists under a different definition."""


class FailedPreconditionError(ArenaError):
    """The request is well formed but the system is not in a state to carry it out."""


class ResourceExhaustedError(ArenaError):
    """A budget or quota (battles, tokens, GPU hours, queue space) is spent."""


class UnavailableError(ArenaError):
    """A dependency is temporarily unreachable; retrying later may succeed."""


class ConfigurationError(ArenaError):
    """Settings are invalid; raised at start-up so a service fails fast with a clear message."""
