"""Trace spans for a sampled request's stages, as children of BentoML's request span.

BentoML owns tracing: its ``tracing`` configuration (built here by
``tracing_config`` from the settings and the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``) sets up a tracer provider that exports over
OTLP/HTTP, and its ASGI middleware opens a server span per request with that
provider's sampler.  ``StageSpans.record`` then adds one span per stage the
request's ``StageTimer`` measured, at the times the stages ran, and puts what
the resolver found on the ``features`` span.  An unsampled request costs one
``is_recording()`` check.

BentoML keeps its tracer provider out of OpenTelemetry's global one, so the
tracer comes from its container (an internal name; BentoML is pinned).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from features.settings import Settings
from features.timing import Stage, StageTimer

__all__ = ["StageSpans", "tracing_config"]

_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000


def tracing_config(settings: Settings) -> dict[str, object] | None:
    """BentoML's ``tracing`` service setting, or ``None`` when traces are off.

    On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the sample rate is above
    0; the exporter reads the endpoint (and any ``OTEL_EXPORTER_OTLP_*`` headers
    or timeouts) from the environment itself.
    """
    if not settings.otlp_endpoint or settings.trace_sample_rate <= 0:
        return None
    return {
        "exporter_type": "otlp",
        "sample_rate": settings.trace_sample_rate,
        "otlp": {"protocol": "http", "http": {}},
    }


class StageSpans:
    """Turns a request's stage timings into child spans of the current request span."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @classmethod
    def from_bentoml(cls) -> StageSpans:
        """Spans through the tracer provider BentoML configured for this server."""
        from bentoml._internal.configuration.containers import BentoMLContainer

        return cls(BentoMLContainer.tracer_provider.get().get_tracer("featserve"))

    def record(
        self, timer: StageTimer, describe: Callable[[], Mapping[str, AttributeValue]]
    ) -> None:
        """Add a span per stage of ``timer`` under the current span, if it is sampled.

        ``describe`` is called only for a sampled request; what it returns goes on
        the ``features`` span (entity count, groups, sources, ...).
        """
        parent = trace.get_current_span()
        if not parent.is_recording():
            return
        attributes = describe()
        # The timer's clock is monotonic; spans want epoch nanoseconds.
        offset_ns = time.time_ns() - round(timer.now() * _NS_PER_S)
        context = trace.set_span_in_context(parent)
        durations_ms = timer.milliseconds()
        for name, started in timer.started().items():
            start_ns = offset_ns + round(started * _NS_PER_S)
            span = self._tracer.start_span(
                name,
                context=context,
                start_time=start_ns,
                attributes=attributes if name is Stage.FEATURES else None,
            )
            span.end(end_time=start_ns + round(durations_ms[name] * _NS_PER_MS))
