"""The exception tree of featserve.

    FeatureServeError
    ├── RegistryError        a feature declaration that cannot be right
    │   └── ProjectError       a project folder that cannot be loaded or served as declared
    ├── InvalidEntityId      an entity id that would make a bad key
    ├── InvalidUpdate        a feature update (pushed or materialized) that is refused
    └── StoreError           a store could not answer
        ├── StoreUnavailable   connection refused or dropped
        └── StoreTimeout       no answer within the store's timeout

Third-party errors (redis-py's) are translated into these once, at the
store boundary; the rest of the code sees only these.
"""

from __future__ import annotations

__all__ = [
    "FeatureServeError",
    "InvalidEntityId",
    "InvalidUpdate",
    "ProjectError",
    "RegistryError",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
]


class FeatureServeError(Exception):
    """Base of every error featserve raises on purpose."""


class RegistryError(FeatureServeError):
    """A feature declaration or lookup that names something wrong."""


class ProjectError(RegistryError):
    """A project folder that cannot be loaded, or whose declarations cannot be served."""


class InvalidEntityId(FeatureServeError, ValueError):
    """An entity id that is empty, too long, or holds characters keys must not."""


class InvalidUpdate(FeatureServeError, ValueError):
    """A feature update that cannot be written; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class StoreError(FeatureServeError):
    """A store failed to answer a read or a write.

    Its message may name hosts, ports and the store's own error text: it
    belongs in the log.  ``reason`` is what may be shown to anyone (a status
    page): a short category without internals.
    """

    reason = "store_error"


class StoreUnavailable(StoreError):
    """The store refused or dropped the connection."""

    reason = "unreachable"


class StoreTimeout(StoreError):
    """The store did not answer within its timeout."""

    reason = "timeout"
