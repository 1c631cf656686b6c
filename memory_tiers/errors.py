"""The exception root and its few children; third-party errors are re-raised from these."""

from __future__ import annotations

import ssl

import redis

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)
"""What an unreachable Redis raises (redis-py's own errors, and the socket's)."""

_REFUSALS = (
    redis.AuthenticationError,
    redis.exceptions.AuthorizationError,
    redis.exceptions.NoPermissionError,
    ssl.SSLCertVerificationError,
)


class MemoryTiersError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(MemoryTiersError):
    """A setting, schema or checkpoint does not fit what the caller expects."""


class ServerError(MemoryTiersError):
    """The embedded Redis cannot be found, started or stopped."""


class FeatureError(MemoryTiersError, ValueError):
    """A state cannot be turned into a feature vector; the message names the field and value."""


class ModelError(MemoryTiersError):
    """A model checkpoint is missing, unreadable or does not match the schema or dimensions."""


class StoreError(MemoryTiersError):
    """A Redis operation on the tier indexes or records failed."""


class PartialCommitError(StoreError):
    """A commit's MULTI/EXEC ran with some commands failing: Redis applied the others (it never
    rolls a transaction back). The message says which failed and whether the XACK applied."""

    def __init__(self, message: str, acked: int) -> None:
        super().__init__(message)
        self.acked = acked
        """Entries the commit's XACK removed from the pending list (0 if the XACK failed)."""


class EntryError(MemoryTiersError, ValueError):
    """A stream entry breaks the protocol (missing agent_id, state not a JSON object, ...)."""


MISSING_INDEX_ERRORS = ("unknown index name", "no such index")
"""What RediSearch says, lower-cased, about an index that does not exist."""


def is_connection_error(error: BaseException) -> bool:
    """Whether `error`, or an error it came from, means Redis could not be reached: an outage.

    Redis refusing us is no outage, though redis-py raises it as a ConnectionError: bad
    credentials, an ACL that forbids a command, a server certificate we do not trust. Those
    need a fix, so a daemon stops at start instead of retrying them forever.
    """
    chain = error_chain(error)
    if any(isinstance(e, _REFUSALS) for e in chain):
        return False
    return any(isinstance(e, CONNECTION_ERRORS) for e in chain)


def error_chain(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain
