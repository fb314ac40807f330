"""Where an answer's feature values came from, and why a fault shaped it: the names the
resolver, the metrics, the API and the tools share.

Defined apart from the resolver so that a command line or a test reading answers
(``featserve sla``) names them without loading the read path.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FAULT_SOURCES", "REAL_SOURCES", "Degraded", "Source"]


class Source(StrEnum):
    """Where a feature group's values came from."""

    CACHE = "cache"
    """The in-process cache answered; no store was asked."""
    REDIS = "redis"
    """Redis held the group; fields it lacked were filled from the training defaults."""
    BACKING = "backing"
    """Redis lacked the group or failed, and the backing store held it."""
    STALE = "stale"
    """A store failed or missed the deadline: the last values this worker read, younger than
    the group's freshness window."""
    DEFAULT = "default"
    """Every store was asked and answered, and none holds the entity: the training defaults,
    a real "no data" answer."""
    UNAVAILABLE = "unavailable"
    """A store could not be asked or did not answer, and nothing else stood in: the training
    defaults in place of a fault."""


FAULT_SOURCES = frozenset({Source.STALE, Source.UNAVAILABLE})
"""Sources that only a fault produces."""

REAL_SOURCES = frozenset({Source.CACHE, Source.REDIS})
"""Sources of a real answer: the online store's values, read now or cached, with no
fallback standing in."""


class Degraded(StrEnum):
    """Why a fault shaped a group's answer: the first failure the resolver met for it."""

    BREAKER_OPEN = "breaker_open"
    """A store was skipped: its breaker was open (failures, or its pool nearly exhausted)."""
    DEADLINE = "deadline"
    """A store had not answered when the deadline passed, or no time was left to ask it."""
    STORE_ERROR = "store_error"
    """A store failed the whole read: refused or dropped connection, its own timeout."""
    ERROR_REPLY = "error_reply"
    """The store answered this key with an error that says the store is unwell or refuses
    (``NOPERM``, ``LOADING``, ``BUSY``...)."""
    BAD_VALUE = "bad_value"
    """The store holds something for this key that the registry's declaration cannot hold (a
    key of another structure, ``WRONGTYPE``; a value that does not decode, or outside its
    declared range or length): the key's fault, never the store's, so its breaker is not
    touched and the other keys stand."""
    ABANDONED = "abandoned"
    """The request that was fetching this key for everyone was cancelled mid-read."""
