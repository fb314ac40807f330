"""Write-through: every write lands in the backing store first, then in the online store.

The backing store is what ``featserve rewarm`` refills Redis from, so it is
written first: if it fails nothing reaches Redis, and if Redis fails after
it, running the write again is safe (older events never replace newer).
Reads come from the online store alone; the resolver asks the backing
store itself, as a separate tier.
"""

from __future__ import annotations

from collections.abc import Sequence

from features.stores.base import (
    AsyncOnlineStore,
    FeatureUpdate,
    OnlineStore,
    ReadAnswer,
    ReadRequest,
)
from features.timing import StageTimer

__all__ = ["AsyncWriteThrough", "WriteThrough"]


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

    def write(self, updates: Sequence[FeatureUpdate]) -> list[bool]:
        """Write to the backing store, then the online store; the online store's flags."""
        self._backing.write(updates)
        return self._online.write(updates)


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

    async def write(self, updates: Sequence[FeatureUpdate]) -> list[bool]:
        """Write to the backing store, then the online store; the online store's flags."""
        await self._backing.write(updates)
        return await self._online.write(updates)
