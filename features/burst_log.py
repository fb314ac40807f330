"""Log a recurring error once per burst instead of once per request.

When Redis is down every request fails the same way; logging each one would
flood the log and cost more than the request.  ``BurstLog`` writes the first
error of a burst, stays quiet for ``quiet_period_s``, then writes the next one
with the count of errors it held back.  The standard ``logging`` module has no
rate limit of its own, hence this small class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["BurstLog"]


class BurstLog:
    """Writes at most one error record per ``quiet_period_s`` to ``logger``."""

    def __init__(
        self,
        logger: logging.Logger,
        quiet_period_s: float = 10.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._quiet_period_s = quiet_period_s
        self._timer = timer
        self._last_logged: float | None = None
        self._held_back = 0

    def error(self, message: str, exc: BaseException | None = None) -> bool:
        """Log ``message`` unless one was logged within the quiet period; say whether it was."""
        now = self._timer()
        if self._last_logged is not None and now - self._last_logged < self._quiet_period_s:
            self._held_back += 1
            return False
        if self._held_back:
            message = f"{message} ({self._held_back} more like it since the last report)"
        if exc is None:
            self._logger.error("%s", message)
        else:
            self._logger.error("%s: %s", message, exc)
        self._last_logged = now
        self._held_back = 0
        return True
