"""What tracing costs a request that is not sampled, and one that is.

Usage::

    python -m bench.tracing_overhead

In process, no server: a ``StageTimer`` with the stages of one ``/score``,
then ``StageSpans.record`` under a request span that is (a) not sampled, as
every request is with ``FEATSERVE_TRACE_SAMPLE_RATE=0``, and (b) sampled,
through an SDK tracer provider with no exporter.  The baseline is the same
loop without ``record``.  Prints microseconds per request (best of 5 runs).
"""

from __future__ import annotations

import timeit

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.util.types import AttributeValue

from features.timing import Stage, StageTimer
from service.tracing import StageSpans

STAGES = (
    Stage.TOTAL, Stage.FEATURES, Stage.CACHE, Stage.REDIS, Stage.DECODE, Stage.DERIVE,
    Stage.INFERENCE,
)  # fmt: skip
"""The stages of a /score read from Redis, in the order they start."""
ATTRIBUTES: dict[str, AttributeValue] = {"featserve.entities": 1, "featserve.groups": ["features"]}


def one_request(spans: StageSpans | None) -> None:
    """Time seven stages, as a /score does, then record them as spans when ``spans``."""
    timer = StageTimer()
    for stage in STAGES:
        with timer.stage(stage):
            pass
    timer.milliseconds()
    if spans is not None:
        spans.record(timer, lambda: ATTRIBUTES)


def per_request_us(provider: TracerProvider | None, spans: StageSpans | None) -> float:
    """Best of 5 runs of 20,000 requests, microseconds each."""
    number = 20_000

    def run() -> None:
        if provider is None:
            for _ in range(number):
                one_request(spans)
            return
        with provider.get_tracer("bench").start_as_current_span("request"):
            for _ in range(number):
                one_request(spans)

    return min(timeit.repeat(run, number=1, repeat=5)) / number * 1e6


def main() -> None:
    """Print the three cases."""
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    sampled = TracerProvider(sampler=ALWAYS_ON)
    baseline = per_request_us(None, None)
    off = per_request_us(unsampled, StageSpans(unsampled.get_tracer("featserve")))
    on = per_request_us(sampled, StageSpans(sampled.get_tracer("featserve")))
    print(f"stage timing alone:          {baseline:6.2f} us per request")
    print(f"+ spans, request not sampled: {off:6.2f} us (+{off - baseline:.2f})")
    print(f"+ spans, request sampled:     {on:6.2f} us (+{on - baseline:.2f})")


if __name__ == "__main__":
    main()
