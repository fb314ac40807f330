"""Write-through: every write lands in the backing store first, then in the online store.

The backing store is what ``featserve rewarm`` refills Redis from, so it is
written first: if it fails nothing reaches Redis, and if Redis fails after
it, running the write again is safe (older values never replace newer).
An update the backing store refuses for its data (``WriteOutcome.refused``)
is not sent to Redis, so the tiers do not part ways; one Redis refuses after
the backing store took it stays in the backing store, and is reported
refused.  Reads come from the online store alone; the resolver asks the
backing store itself, as a separate tier.
"""

from __future__ import annotations

from collections.abc import Sequence

from features.stores.base import (
    AsyncOnlineStore,
    FeatureUpdate,
    OnlineStore,
    ReadAnswer,
    ReadRequest,
    WriteOutcome,
)
from features.timing import StageTimer

__all__ = ["AsyncWriteThrough", "WriteThrough"]


def _for_online(
    updates: Sequence[FeatureUpdate], backing: Sequence[WriteOutcome]
) -> list[FeatureUpdate]:
    return [
        update for update, outcome in zip(updates, backing, strict=True) if outcome.refused is None
    ]


def _combined(
    backing: Sequence[WriteOutcome], online: Sequence[WriteOutcome]
) -> list[WriteOutcome]:
    """The online store's outcomes, and the backing store's refusals in their places."""
    answers = iter(online)
    return [outcome if outcome.refused else next(answers) for outcome in backing]


class WriteThrough:
    """An ``OnlineStore`` whose writes also go to ``backing``, first."""

    def __init__(self, online: OnlineStore, backing: OnlineStore) -> None:
        self._online = online
        self._backing = backing

    def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> Sequence[ReadAnswer]:
        """The online store's answer."""
        return self._online.read(requests, timer)

    def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """Write to the backing store, then what it took to the online store."""
        backing = self._backing.write(updates)
        return _combined(backing, self._online.write(_for_online(updates, backing)))


class AsyncWriteThrough:
    """The same for the service's event loop."""

    def __init__(self, online: AsyncOnlineStore, backing: AsyncOnlineStore) -> None:
        self._online = online
        self._backing = backing

    async def read(
        self, requests: Sequence[ReadRequest], timer: StageTimer | None = None
    ) -> Sequence[ReadAnswer]:
        """The online store's answer."""
        return await self._online.read(requests, timer)

    async def write(self, updates: Sequence[FeatureUpdate]) -> list[WriteOutcome]:
        """Write to the backing store, then what it took to the online store."""
        backing = await self._backing.write(updates)
        return _combined(backing, await self._online.write(_for_online(updates, backing)))
