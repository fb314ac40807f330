"""Fault drills: steady ``/score`` load on a served ScoringService while faults come and go.

``Load`` drives ``/score`` with the one load driver (``service.harness.load.drive``,
paced, on a thread of its own) and keeps every answer (``Answer``): the entity
it scored, when it was sent and answered, its status (and ``Retry-After``), its
``Server-Timing`` stages, and what its body says of the ``features`` group:
source, why it was degraded, how old stale values were, and the score.  The
failover drills (``service.harness.failover_drill``) use the same ``Load``.

``run_drill`` applies a fault under that load and cuts the drill into phases:

- ``before``: healthy;
- ``during``: the fault is on;
- ``backing down too`` (with a ``backing_fault``): the backing store fails as well;
- ``recovering``: from clearing the faults until, with the Redis breaker closed,
  an answer sent since came from Redis;
- ``after``: the ``after_s`` that follow.

An answer belongs to a phase when it was sent after the phase began and
answered before it ended; one that straddles two phases belongs to none, but
stays in ``DrillResult.answers`` with every other.  ``/ops/status`` is polled
to see the Redis breaker open and close.  The e2e tests assert on every
answer; ``bench/faults.py`` runs longer drills and reports the phases.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from features.sources import REAL_SOURCES, Source
from features.timing import Stage
from service.harness.load import (
    MAX_DURATION_S,
    Endpoint,
    LoadPlan,
    Response,
    Sample,
    drive,
)
from service.harness.stats import percentiles

__all__ = [
    "GROUP",
    "Answer",
    "DrillResult",
    "Fault",
    "Load",
    "PhaseStats",
    "run_drill",
    "score_bodies",
]

GROUP = "features"
"""The feature group ``/score`` reads, whose answers the drills follow."""

STATUS_POLL_S = 0.05
"""How often ``/ops/status`` is asked for the Redis breaker's state."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One ``/score`` request and what its answer said of the ``features`` group."""

    sent_at: float
    """``time.monotonic()`` when the request was due (paced load: it was sent then, or later)."""
    answered_at: float
    status: int
    """HTTP status; 0 when no answer came (connection refused, timeout)."""
    entity_id: str
    """The entity the request scored."""
    retry_after: bool = False
    """Whether the answer carried ``Retry-After`` (a 503 that says when to retry)."""
    source: str | None = None
    degraded: str | None = None
    """Why a fault shaped the answer (``deadline``, ``store_error``, ...), or ``None``."""
    stale_age_s: float | None = None
    score: float | None = None
    features_ms: float | None = None
    total_ms: float | None = None

    def within(self, start: float, end: float) -> bool:
        """Whether the request was sent at or after ``start`` and answered by ``end``."""
        return start <= self.sent_at and self.answered_at <= end


def score_bodies(entity_ids: Iterable[str], amount: float = 42.0) -> list[bytes]:
    """A ``/score`` body for each of ``entity_ids``, for ``Load``."""
    return [json.dumps({"entity_id": e, "amount": amount}).encode() for e in entity_ids]


@dataclass(frozen=True)
class Fault:
    """A fault to apply and clear, with a name for reports."""

    name: str
    apply: Callable[[], None]
    clear: Callable[[], None]


class Load:
    """Paced ``/score`` load on a thread of its own, every answer kept.

    ``bodies`` are the request bodies, one picked at random per request;
    ``rate`` is requests per second over ``connections`` connections.
    """

    def __init__(
        self, url: str, bodies: Sequence[bytes], rate: float, connections: int = 2
    ) -> None:
        self._endpoint = Endpoint.parse(f"{url}/score")
        self._bodies = list(bodies)
        self._entity_ids = [json.loads(body)["entity_id"] for body in self._bodies]
        self._plan = LoadPlan(duration_s=MAX_DURATION_S, concurrency=connections, rate=rate)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._answers: list[Answer] = []
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="drill-load", daemon=True)

    def start(self) -> Load:
        """Start sending."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending and wait for the answers in flight; re-raise what stopped the driver."""
        self._stop.set()
        self._thread.join(timeout=self._plan.timeout_s + 10.0)
        if self._failure is not None:
            raise RuntimeError("the load driver failed") from self._failure

    def answers(self, since: float = -math.inf, until: float = math.inf) -> list[Answer]:
        """Answers to requests sent at or after ``since`` and answered by ``until``."""
        with self._lock:
            return [a for a in self._answers if a.within(since, until)]

    def _run(self) -> None:
        try:
            asyncio.run(
                drive(self._endpoint, self._bodies, self._plan, stop=self._stop, observe=self._keep)
            )
        except BaseException as exc:  # handed to stop(), in the caller's thread
            self._failure = exc

    def _keep(self, sample: Sample, response: Response | None) -> None:
        answered_at = time.monotonic()
        entity_id = self._entity_ids[sample.body_index]
        answer = _answer(answered_at - sample.latency_s, answered_at, entity_id, sample, response)
        with self._lock:
            self._answers.append(answer)


def _answer(
    sent_at: float, answered_at: float, entity_id: str, sample: Sample, response: Response | None
) -> Answer:
    if response is None or sample.status != 200:
        return Answer(sent_at, answered_at, sample.status, entity_id, sample.retry_after)
    body = json.loads(response.body)
    return Answer(
        sent_at,
        answered_at,
        sample.status,
        entity_id,
        source=body["sources"][GROUP],
        degraded=body.get("degraded", {}).get(GROUP),
        stale_age_s=body.get("stale_age_s", {}).get(GROUP),
        score=body["score"],
        features_ms=sample.stages_ms.get(Stage.FEATURES),
        total_ms=sample.stages_ms.get(Stage.TOTAL),
    )


@dataclass(frozen=True)
class PhaseStats:
    """What one phase of a drill looked like from the client's side."""

    name: str
    requests: int
    failed: int
    """Answers other than 200, and requests that got no answer."""
    features_p50_ms: float
    features_p90_ms: float
    features_p99_ms: float
    features_max_ms: float
    total_p99_ms: float
    sources: Counter[str]
    degraded: int
    """Answers that said a fault shaped them."""
    wrong_scores: int
    """Answers whose score differs from their entity's score when it was read from Redis."""
    stale_age_max_s: float | None
    failures: tuple[str, ...] = ()
    """A few failed requests, as status, for the report."""
    slowest_sent_at: float | None = None
    """When the request with the slowest feature stage was sent (``time.monotonic``)."""

    @property
    def real(self) -> int:
        """Answers from Redis or the cache."""
        return sum(self.sources[source] for source in REAL_SOURCES)

    @classmethod
    def of(cls, name: str, answers: Sequence[Answer], scores: Mapping[str, float]) -> PhaseStats:
        """Summarize ``answers``; ``scores`` holds each entity's score as read from Redis."""
        timed = [a for a in answers if a.features_ms is not None]
        slowest = max(timed, key=lambda a: a.features_ms or 0.0, default=None)
        p50, p90, p99, top = percentiles(
            (a.features_ms for a in timed if a.features_ms is not None), (50, 90, 99, 100)
        )
        [total_p99] = percentiles((a.total_ms for a in answers if a.total_ms is not None), (99,))
        ages = [a.stale_age_s for a in answers if a.stale_age_s is not None]
        return cls(
            name=name,
            requests=len(answers),
            failed=sum(1 for a in answers if a.status != 200),
            features_p50_ms=p50,
            features_p90_ms=p90,
            features_p99_ms=p99,
            features_max_ms=top,
            total_p99_ms=total_p99,
            sources=Counter(a.source for a in answers if a.source),
            degraded=sum(1 for a in answers if a.degraded),
            wrong_scores=sum(
                1
                for a in answers
                if a.score is not None and a.score != scores.get(a.entity_id, a.score)
            ),
            stale_age_max_s=max(ages, default=None),
            failures=tuple(f"status {a.status}" for a in answers if a.status != 200)[:3],
            slowest_sent_at=None if slowest is None else slowest.sent_at,
        )


@dataclass
class DrillResult:
    """A fault's phases, every answer of the drill, what the breaker did, how long recovery took."""

    fault: str
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Each phase's start and end (``time.monotonic``), in order."""
    answers: list[Answer] = field(default_factory=list)
    """Every answer to a request sent during the drill, whatever its phase."""
    phases: list[PhaseStats] = field(default_factory=list)
    breaker_opened: bool = False
    breaker_closed_after: bool = False
    recovery_s: float | None = None
    """From clearing the faults until, with the breaker closed, a request is answered from Redis."""

    def phase(self, name: str) -> list[Answer]:
        """The answers of phase ``name``."""
        start, end = self.windows[name]
        return [answer for answer in self.answers if answer.within(start, end)]

    def stats(self, name: str) -> PhaseStats:
        """The summary of phase ``name``."""
        return next(phase for phase in self.phases if phase.name == name)


def run_drill(
    url: str,
    load: Load,
    fault: Fault,
    scores: Mapping[str, float],
    *,
    backing_fault: Fault | None = None,
    before_s: float = 1.2,
    during_s: float = 1.5,
    backing_down_s: float = 1.5,
    after_s: float = 1.2,
    recovery_timeout_s: float = 15.0,
) -> DrillResult:
    """Apply ``fault`` (then ``backing_fault`` too) under ``load``, clear them, and measure.

    ``scores`` holds each entity's score as read from Redis before any fault.  A phase
    with a fault starts once the fault is applied and ends when its clearing starts.
    """
    result = DrillResult(fault.name)
    windows: dict[str, tuple[float, float]] = {}
    with httpx.Client(base_url=url, timeout=5.0) as status_client:

        def breaker_state() -> str:
            state: str = status_client.get("/ops/status").json()["breakers"][Source.REDIS]["state"]
            return state

        def hold(seconds: float) -> None:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                result.breaker_opened |= breaker_state() == "open"
                time.sleep(STATUS_POLL_S)

        started = time.monotonic()
        time.sleep(before_s)
        windows["before"] = (started, time.monotonic())
        fault.apply()
        try:
            fault_on = time.monotonic()
            hold(during_s)
            windows["during"] = (fault_on, time.monotonic())
            if backing_fault is not None:
                backing_fault.apply()
                try:
                    both_on = time.monotonic()
                    hold(backing_down_s)
                    windows["backing down too"] = (both_on, time.monotonic())
                finally:
                    backing_fault.clear()
        finally:
            fault_off = time.monotonic()
            fault.clear()
        recovered_at = _recovery(load, breaker_state, fault_off, recovery_timeout_s)
        windows["recovering"] = (fault_off, recovered_at or time.monotonic())
        if recovered_at is not None:
            result.recovery_s = recovered_at - fault_off
            time.sleep(after_s)
            windows["after"] = (recovered_at, time.monotonic())
        result.breaker_closed_after = breaker_state() == "closed"
        finished = time.monotonic()
    result.windows = windows
    result.answers = load.answers(started, finished)
    result.phases = [PhaseStats.of(name, result.phase(name), scores) for name in windows]
    return result


def _recovery(
    load: Load, breaker_state: Callable[[], str], fault_off: float, timeout_s: float
) -> float | None:
    """When the first request sent with the breaker closed was answered from Redis (sent
    time), waiting at most ``timeout_s`` after ``fault_off``; ``None`` if none was.

    One lucky answer while the breaker is still open (a probe) is not recovery.
    """
    closed_at: float | None = None
    while time.monotonic() - fault_off < timeout_s:
        if closed_at is None and breaker_state() == "closed":
            closed_at = time.monotonic()
        if closed_at is not None:
            recovered = [a for a in load.answers(closed_at) if a.source == Source.REDIS]
            if recovered:
                return min(a.sent_at for a in recovered)
        time.sleep(STATUS_POLL_S)
    return None
