"""Fault drills: steady HTTP load on a served FraudScorer while a Redis fault comes and goes.

A drill runs three phases, ``before`` (healthy), ``during`` (the fault is
on) and ``after`` (the fault is cleared, until requests read from Redis
again and a little longer), while ``LoadDriver`` threads post ``/score``
and record each answer's status, its ``Server-Timing`` stages and its
feature source.  ``/ops/status`` is polled to see the Redis breaker open
and close.  The e2e tests assert on the result; ``bench/faults.py`` runs
longer drills and writes their figures to ``docs/reliability.md``.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from service.harness.stats import percentile

__all__ = ["DrillResult", "Fault", "LoadDriver", "PhaseStats", "Sample", "run_drill"]


@dataclass(frozen=True)
class Sample:
    """One answered (or failed) request."""

    sent_at: float
    status: int
    """HTTP status; 0 when the request itself failed (connection refused, timeout)."""
    features_ms: float | None
    total_ms: float | None
    source: str | None
    error: str = ""
    """For failures: the start of the body, or the client's exception."""
    entity_id: str = ""
    """The entity the request scored."""
    retry_after: bool = False
    """Whether the answer carried a ``Retry-After`` header (a 503 that says when to retry)."""
    degraded: str | None = None
    """Why a fault shaped the ``features`` group's answer (``deadline``, ``store_error``...);
    ``None`` when none did."""


@dataclass(frozen=True)
class Fault:
    """A fault to apply and clear, with a name for reports."""

    name: str
    apply: Callable[[], None]
    clear: Callable[[], None]


class LoadDriver:
    """Steady ``/score`` load from a separate process, so the load does not share our GIL.

    ``connections`` threads in that process each post up to ``rate`` requests
    a second (back to back when ``rate`` is None); every answer comes back as
    a ``Sample`` through a queue.
    """

    def __init__(
        self,
        url: str,
        entity_ids: Sequence[str],
        connections: int = 2,
        rate: float | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._queue: multiprocessing.Queue[Sample] = context.Queue()
        self._stop = context.Event()
        self._process = context.Process(
            target=_drive,
            args=(url, list(entity_ids), connections, rate, self._queue, self._stop),
        )
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        # The queue's pipe holds only a few hundred samples: drain it all the time,
        # or the load process blocks on it.
        self._drainer = threading.Thread(target=self._drain, daemon=True)

    def start(self) -> LoadDriver:
        """Start the load process."""
        self._process.start()
        self._drainer.start()
        return self

    def stop(self) -> None:
        """Stop the load and wait for the process."""
        self._stop.set()
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
        self._drainer.join(timeout=5)

    def samples_since(self, moment: float) -> list[Sample]:
        """Samples sent at or after ``moment`` (``time.monotonic()``, shared across processes)."""
        with self._lock:
            return [s for s in self._samples if s.sent_at >= moment]

    def _drain(self) -> None:
        while self._process.is_alive() or not self._queue.empty():
            try:
                sample = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._lock:
                self._samples.append(sample)


def _drive(
    url: str,
    entity_ids: list[str],
    connections: int,
    rate: float | None,
    samples: multiprocessing.Queue[Sample],
    stop: Any,
) -> None:
    threads = [
        threading.Thread(
            target=_post_until_stopped, args=(url, entity_ids, seed, rate, samples, stop)
        )
        for seed in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _post_until_stopped(
    url: str,
    entity_ids: list[str],
    seed: int,
    rate: float | None,
    samples: multiprocessing.Queue[Sample],
    stop: Any,
) -> None:
    rng = random.Random(seed)
    interval = 1.0 / rate if rate else 0.0
    next_send = time.monotonic()
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while not stop.is_set():
            next_send += interval
            # Pacing the load, not waiting for anything: the request rate is the point.
            stop.wait(max(0.0, next_send - time.monotonic()))
            entity_id = rng.choice(entity_ids)
            sent_at = time.monotonic()
            try:
                response = client.post("/score", json={"entity_id": entity_id, "amount": 42.0})
            except httpx.HTTPError as exc:
                samples.put(Sample(sent_at, 0, None, None, None, repr(exc), entity_id))
            else:
                samples.put(_sample(sent_at, response, entity_id))


def _sample(sent_at: float, response: httpx.Response, entity_id: str) -> Sample:
    if response.status_code != 200:
        return Sample(
            sent_at,
            response.status_code,
            None,
            None,
            None,
            response.text[:200],
            entity_id,
            "retry-after" in response.headers,
        )
    stages = dict(
        (name, float(duration))
        for name, _, duration in (
            part.strip().partition(";dur=") for part in response.headers["Server-Timing"].split(",")
        )
    )
    body = response.json()
    return Sample(
        sent_at,
        200,
        stages.get("features"),
        stages.get("total"),
        body["sources"]["features"],
        entity_id=entity_id,
        degraded=body.get("degraded", {}).get("features"),
    )


@dataclass(frozen=True)
class PhaseStats:
    """What one phase of a drill looked like from the client's side."""

    name: str
    requests: int
    failed: int
    """Answers other than 200, and requests that got no answer."""
    features_p50_ms: float
    features_p99_ms: float
    features_max_ms: float
    total_p99_ms: float
    sources: Counter[str]
    failures: tuple[str, ...] = ()
    """A few failed requests, as status and error, for the report."""
    slowest_sent_at: float | None = None
    """When the request with the slowest feature stage was sent (``time.monotonic``)."""

    @classmethod
    def of(cls, name: str, samples: Sequence[Sample]) -> PhaseStats:
        """Summarize ``samples``."""
        timed = [s for s in samples if s.features_ms is not None]
        slowest = max(timed, key=lambda s: s.features_ms or 0.0, default=None)
        features = sorted(s.features_ms for s in timed if s.features_ms is not None)
        totals = sorted(s.total_ms for s in samples if s.total_ms is not None)
        return cls(
            name=name,
            requests=len(samples),
            failed=sum(1 for s in samples if s.status != 200),
            features_p50_ms=percentile(features, 50.0),
            features_p99_ms=percentile(features, 99.0),
            features_max_ms=features[-1] if features else 0.0,
            total_p99_ms=percentile(totals, 99.0),
            sources=Counter(s.source for s in samples if s.source),
            failures=tuple(f"{s.status}: {s.error}" for s in samples if s.status != 200)[:3],
            slowest_sent_at=None if slowest is None else slowest.sent_at,
        )


@dataclass
class DrillResult:
    """A fault's three phases, what the breaker did, and how long recovery took."""

    fault: str
    phases: list[PhaseStats] = field(default_factory=list)
    breaker_opened: bool = False
    breaker_closed_after: bool = False
    recovery_s: float | None = None
    """From clearing the fault until, with the breaker closed, a request is answered from Redis."""


def run_drill(
    url: str,
    driver: LoadDriver,
    fault: Fault,
    before_s: float = 0.5,
    during_s: float = 1.5,
    after_s: float = 0.5,
    recovery_timeout_s: float = 15.0,
) -> DrillResult:
    """Apply ``fault`` under the running ``driver``'s load, clear it, and measure."""
    result = DrillResult(fault.name)
    with httpx.Client(base_url=url, timeout=5.0) as status_client:

        def breaker_state() -> str:
            state: str = status_client.get("/ops/status").json()["breakers"]["redis"]["state"]
            return state

        started = time.monotonic()
        time.sleep(before_s)
        fault_on = time.monotonic()
        fault.apply()
        try:
            while time.monotonic() - fault_on < during_s:
                result.breaker_opened |= breaker_state() == "open"
                time.sleep(0.05)
        finally:
            fault_off = time.monotonic()
            fault.clear()
        # Recovered: the breaker is closed and a request sent since then was answered
        # from Redis (one lucky answer while pooled connections are still dead is not).
        closed_at: float | None = None
        while time.monotonic() - fault_off < recovery_timeout_s:
            if closed_at is None and breaker_state() == "closed":
                closed_at = time.monotonic()
            if closed_at is not None:
                recovered = [s for s in driver.samples_since(closed_at) if s.source == "redis"]
                if recovered:
                    result.recovery_s = recovered[0].sent_at - fault_off
                    break
            time.sleep(0.05)
        time.sleep(after_s)
        result.breaker_closed_after = breaker_state() == "closed"
        finished = time.monotonic()
    samples = driver.samples_since(started)
    result.phases = [
        PhaseStats.of("before", [s for s in samples if s.sent_at < fault_on]),
        PhaseStats.of("during", [s for s in samples if fault_on <= s.sent_at < fault_off]),
        PhaseStats.of("after", [s for s in samples if fault_off <= s.sent_at < finished]),
    ]
    return result
