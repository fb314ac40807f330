"""Per-stage wall-clock timing for one request, under the stage names every part shares.

Every stage of a request reports into one ``StageTimer``; the service turns
it into the JSON ``timing_ms`` body, the ``Server-Timing`` header, the
stage histograms and, for a sampled request, trace spans, so they all agree.
``Stage`` names the stages; ``featserve sla`` reads them back from
``Server-Timing``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from types import TracebackType

__all__ = ["Stage", "StageTimer"]


class Stage(StrEnum):
    """A stage of a request; ``features`` holds ``cache``, ``redis``, ``backing`` and
    ``decode``, and ``total`` holds ``features``, ``derive`` and ``inference``."""

    CACHE = "cache"
    """Lookups in the in-process cache."""
    REDIS = "redis"
    """The Redis round trip (absent when every group was cached)."""
    BACKING = "backing"
    """The backing store's read, for what Redis lacked or could not answer."""
    DECODE = "decode"
    """Turning Redis' replies into typed values."""
    FEATURES = "features"
    """The whole feature resolution."""
    DERIVE = "derive"
    """Building the model's input from stored values and the request."""
    INFERENCE = "inference"
    """The model."""
    TOTAL = "total"
    """The request inside the service, before JSON serialization."""


class StageTimer:
    """Accumulates milliseconds per named stage, in the order stages first ran."""

    __slots__ = ("_clock", "_ms", "_starts")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._ms: dict[Stage, float] = {}
        self._starts: dict[Stage, float] = {}

    def stage(self, name: Stage) -> _Stage:
        """A context manager that adds the time spent inside it to stage ``name``."""
        return _Stage(self, name)

    def add(self, name: Stage, milliseconds: float) -> None:
        """Add ``milliseconds`` to stage ``name``."""
        self._ms[name] = self._ms.get(name, 0.0) + milliseconds

    def now(self) -> float:
        """The timer's clock, in seconds."""
        return self._clock()

    def started(self) -> dict[Stage, float]:
        """When each stage first started, on the timer's clock (stages reported with ``add``
        alone have none)."""
        return dict(self._starts)

    def milliseconds(self) -> dict[str, float]:
        """Each stage's total by name, rounded to the microsecond."""
        return {name.value: round(ms, 3) for name, ms in self._ms.items()}

    def server_timing(self) -> str:
        """The stages as a W3C ``Server-Timing`` header value."""
        return ", ".join(f"{name};dur={ms:.3f}" for name, ms in self._ms.items())


class _Stage:
    __slots__ = ("_name", "_start", "_timer")

    def __init__(self, timer: StageTimer, name: Stage) -> None:
        self._timer = timer
        self._name = name
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = start = self._timer.now()
        self._timer._starts.setdefault(self._name, start)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.add(self._name, (self._timer.now() - self._start) * 1000.0)
