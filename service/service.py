"""The BentoML service: a project's model scored with online features, with per-stage timing.

Run it with ``bentoml serve service.service:ScoringService --arg project=DIR``
(``make serve`` does that for the example project with an embedded Redis and
demo data).  The project comes from ``--arg project=DIR`` (``bentoml serve`` and
``bentoml build``), else from ``FEATSERVE_PROJECT``: the argument wins when
both are set.  The project, the configuration (``features.settings.Settings``,
from the environment) and the models of the request and response bodies
generated from the project are read once, at import; no request looks
anything up.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
from typing import Any

import bentoml
from opentelemetry.util.types import AttributeValue
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from features.breaker import CircuitBreaker
from features.burst_log import BurstLog
from features.errors import (
    RegistryError,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from features.ingest.push import PushedUpdate, parse_pushed, write_pushed
from features.project import Project
from features.project_loader import load_project
from features.redaction import install_log_redaction
from features.serving.resolver import EntityFeatures, ResolvedBatch
from features.settings import Settings
from features.sources import Degraded
from features.stores.write_rules import epoch_ms
from features.timing import Stage, StageTimer
from models.train import check_servable, default_model_name, load
from service.api_info import show_project_info
from service.bentoml_adapter import (
    BENTOML_ROUTES,
    ConnectionLimits,
    declare_json_outputs,
    install_adaptations,
)
from service.composer import check_settings, compose
from service.inputs import TOP_K, request_models
from service.metrics import StoreGauges, observe_request, publish_settings, start_series
from service.middleware.access_tokens import BearerTokenMiddleware
from service.middleware.admission import AdmissionMiddleware
from service.middleware.client_errors import ClientErrorMiddleware
from service.middleware.drain import DRAIN, DrainMiddleware
from service.middleware.refusal_log import REFUSAL_LOGGER, RefusalLog, RefusalLogMiddleware
from service.middleware.request_body import RequestBodyMiddleware
from service.responses import response_models
from service.scoring import Resolution, ScoreRequest
from service.tracing import StageSpans, tracing_config

__all__ = ["PROJECT", "SETTINGS", "ScoringService"]

SETTINGS = Settings()
"""This process's configuration, read from the environment once."""


def _chosen_project() -> Project:
    """The project ``--arg project=DIR`` names, else ``FEATSERVE_PROJECT``."""
    argument = getattr(bentoml.use_arguments(), "project", None)
    folder = argument or SETTINGS.project
    if not folder:
        raise RuntimeError(
            "no project to serve: pass `--arg project=DIR` to bentoml serve (or build), "
            "or set FEATSERVE_PROJECT=DIR"
        )
    return load_project(folder)


PROJECT = _chosen_project()
"""The project this process serves, loaded once."""

_REQUESTS = request_models(PROJECT, SETTINGS.batch_max)
_RESPONSES = response_models(PROJECT)
_MODEL_TAG = SETTINGS.model_tag or f"{default_model_name(PROJECT)}:latest"
_DEADLINE_S = SETTINGS.feature_deadline_s(PROJECT.budget)
_CANDIDATES = PROJECT.candidates

_log = logging.getLogger(__name__)

PUSH_RETRY_AFTER_S = 2
"""Seconds a client should wait before retrying a /push that a store could not take (Redis
full, failing over, unreachable): about when a Sentinel or Cluster failover has promoted a
replica (2.3-4.5 s in docs/reliability.md), without holding a producer back long."""

install_log_redaction()


async def _status(request: Request) -> JSONResponse:
    scorer: ScoringService = request.app.state.scorer
    return JSONResponse(await scorer.status())


status_app = Starlette(routes=[Route("/status", _status, methods=["GET"])])


_TRACING = tracing_config(SETTINGS)

CONTAINER_IMAGE = bentoml.images.Image(
    base_image="localhost/featserve-base:bookworm",
    # A distro BentoML does not know, so its Dockerfile adds no apt-get step: for Debian it
    # installs build-essential and git, compilers the running service never needs.
    distro="featserve-base",
    python_version="3.11",
).run(
    # BentoML makes these under BENTOML_HOME at start-up: made here, they let the container
    # run with a read-only root, writable only at /tmp and the metrics directory.
    "mkdir -p /home/bentoml/bentos /home/bentoml/models /home/bentoml/envs /home/bentoml/tmp "
    "/home/bentoml/prometheus_multiproc_dir"
)
"""The container: Debian with Python 3.11 and uv (made by .ci/container/build-image), and
the folders BentoML expects."""


@bentoml.asgi_app(status_app, path="/ops")
@bentoml.service(
    image=CONTAINER_IMAGE,
    workers=SETTINGS.workers,
    logging={"access": {"enabled": SETTINGS.access_log}},
    **({} if _TRACING is None else {"tracing": _TRACING}),
)
class ScoringService:
    """Scores requests with the project's model and features from Redis."""

    model_ref = bentoml.models.BentoModel(_MODEL_TAG)

    def __init__(self) -> None:
        check_settings(SETTINGS)
        model = load(self.model_ref.tag)
        check_servable(model, PROJECT)
        self.model_tag = model.tag
        parts = compose(PROJECT, SETTINGS, model, _DEADLINE_S, BurstLog(_log))
        self.store = parts.store
        self.redis_writes = parts.redis_writes
        self.write_store = parts.write_store
        self.backing = parts.backing
        self.resolver = parts.resolver
        self.scorer = parts.scorer
        self.inference = parts.inference
        self.gauges = parts.gauges
        self.entity = PROJECT.entity.name
        self.all_groups = self.resolver.selection(self.entity)
        self.spans = StageSpans.from_bentoml()
        groups = PROJECT.registry.groups_of(self.entity)
        related_groups = [
            group
            for named in PROJECT.request_entities
            for group in PROJECT.registry.groups_of(named.entity.name)
        ]
        publish_settings(
            SETTINGS.latency_budget(PROJECT.budget), _DEADLINE_S, groups, related_groups
        )
        start_series(
            ("score", "score_batch", "features"),
            [api.route for api in ScoringService.apis.values()],  # type: ignore[attr-defined]
            groups,
            related_groups,
        )
        self.related_fields = tuple(
            (named.field, named.candidates) for named in PROJECT.request_entities
        )
        # Each request input the body may leave out, with what stands in for it.
        self.input_defaults = tuple(
            (item.name, item.type == "timestamp" and item.default is None, item.default)
            for item in PROJECT.request
        )
        self.gauges_task: asyncio.Task[None] | None = None
        status_app.state.scorer = self

    @bentoml.on_startup
    async def connect_to_redis(self) -> None:
        """Reach Redis before the first request: open the worker's connections (each within
        the connect timeout), so that no request's deadline pays for connecting; a cluster
        store first loads its slot map, which takes longer than a feature deadline."""
        await self.store.warm(SETTINGS.warm_connections)

    @bentoml.on_startup
    async def sample_store_gauges(self) -> None:
        """Keep the breaker and pool gauges current, sampled every second in the background
        (nothing is paid per request)."""
        self.gauges_task = asyncio.get_running_loop().create_task(self.gauges.run())

    @bentoml.on_startup
    def freeze_startup_objects(self) -> None:
        """Move everything built so far out of the garbage collector's sight."""
        gc.collect()
        gc.freeze()

    @bentoml.on_shutdown
    async def close_store(self) -> None:
        """Stop sampling the gauges; close the connections to Redis and the backing store."""
        if self.gauges_task is not None:
            self.gauges_task.cancel()
        await self.store.close()
        await self.redis_writes.close()
        if self.backing is not None:
            await self.backing.close()

    def __is_ready__(self) -> bool:
        # Ready whenever the model is loaded (without Redis, answers come from defaults),
        # until a SIGTERM starts the drain.
        return not DRAIN.draining

    def _request(self, body: Any, now: int) -> ScoreRequest:
        """One request to score from a validated body (a model or a mapping of its fields)."""
        values = body if isinstance(body, dict) else body.__dict__
        inputs = {}
        for name, use_now, default in self.input_defaults:
            value = values[name]
            inputs[name] = value if value is not None else (now if use_now else default)
        related = tuple(
            tuple(values[field]) if candidates else values[field]
            for field, candidates in self.related_fields
        )
        return ScoreRequest(values[PROJECT.entity_field], inputs, related)

    @bentoml.api(input_spec=_REQUESTS.score, output_spec=_RESPONSES.score)
    async def score(self, ctx: bentoml.Context, **body: Any) -> Any:
        """Score one request."""
        timer = StageTimer()
        with timer.stage(Stage.TOTAL):
            request = self._request(body, _now())
            [scored], resolved = await self.scorer.score([request], timer)
            if _CANDIDATES is not None:
                _keep_best(scored, _CANDIDATES.field, body.get(TOP_K))
        threshold = self.scorer.threshold
        body = scored if threshold is None else {**scored, "threshold": threshold}
        return _RESPONSES.score.model_validate(self._timed(ctx, timer, "score", resolved, body))

    @bentoml.api(input_spec=_REQUESTS.score_batch, output_spec=_RESPONSES.score_batch)
    async def score_batch(self, requests: list[Any], ctx: bentoml.Context) -> Any:
        """Score many requests with one Redis round trip and one model call."""
        timer = StageTimer()
        with timer.stage(Stage.TOTAL):
            now = _now()
            batch = [self._request(item, now) for item in requests]
            scored, resolved = await self.scorer.score(batch, timer)
            if _CANDIDATES is not None:
                for result, item in zip(scored, requests, strict=True):
                    _keep_best(result, _CANDIDATES.field, getattr(item, TOP_K))
        threshold = self.scorer.threshold
        body: dict[str, Any] = {"results": scored}
        if threshold is not None:
            body["threshold"] = threshold
        return _RESPONSES.score_batch.model_validate(
            self._timed(ctx, timer, "score_batch", resolved, body)
        )

    @bentoml.api(input_spec=_REQUESTS.features)
    async def features(
        self,
        entity_ids: list[str],
        ctx: bentoml.Context,
        groups: list[str] | None = None,
        entity: str | None = None,
    ) -> dict[str, Any]:
        """Each entity's resolved values with their source, for debugging."""
        timer = StageTimer()
        kind = entity or self.entity
        try:
            selection = (
                self.all_groups
                if groups is None and kind == self.entity
                else self.resolver.selection(kind, groups)
            )
        except RegistryError as exc:
            ctx.response.status_code = 400
            return {"error": f"groups: {exc}"}
        with timer.stage(Stage.TOTAL):
            resolved = await self.resolver.resolve_batch(entity_ids, selection, timer)
        now_s = time.time()
        body = {"entities": [_describe(one, now_s) for one in resolved.entities()]}
        if kind == self.entity:
            return self._timed(ctx, timer, "features", Resolution(resolved), body)
        # Another entity's groups: named entity:group in metrics, as /score names them.
        return self._timed(
            ctx,
            timer,
            "features",
            Resolution(
                ResolvedBatch(resolved.entity_ids, ()), (resolved,), (None,) * len(entity_ids)
            ),
            body,
        )

    @bentoml.api(input_spec=_REQUESTS.push)
    async def push(self, updates: list[Any], ctx: bentoml.Context) -> dict[str, Any]:
        """Write feature updates from a streaming producer: all valid, or none written.

        Updates already past their group's TTL are not written (``expired``); an
        update a store refuses for its data is a 422 naming it, the others written.
        """
        now_ms = epoch_ms(time.time)
        pushed = [
            PushedUpdate(
                getattr(update, "entity", self.entity),
                update.group,
                update.entity_id,
                update.event_timestamp,
                update.values,
            )
            for update in updates
        ]
        parsed, refused = parse_pushed(
            pushed, PROJECT.registry, now_ms, round(SETTINGS.max_clock_skew_s * 1000)
        )
        if refused:
            ctx.response.status_code = 422
            return {
                "error": f"{len(refused)} of {len(updates)} updates refused; nothing was written",
                "refused": [refusal.as_dict() for refusal in refused],
            }
        try:
            result = await write_pushed(parsed, self.write_store, now_ms)
        except (StoreUnavailable, StoreTimeout) as exc:
            ctx.response.status_code = 503
            ctx.response.headers["Retry-After"] = str(PUSH_RETRY_AFTER_S)
            return {"error": f"{exc}; retrying is safe: older values never replace newer ones"}
        except StoreError as exc:
            # The store's own words (hosts, script hashes) go to the log, not to the client.
            _log.error("POST /push: a store failed to take %d updates: %s", len(parsed), exc)
            ctx.response.status_code = 503
            ctx.response.headers["Retry-After"] = str(PUSH_RETRY_AFTER_S)
            return {
                "error": "a feature store failed to take the write (details in the server log); "
                "retrying is safe: older writes never replace newer ones"
            }
        for written in parsed:
            self.resolver.forget(written.entity_id, written.group)
        body: dict[str, Any] = {
            "written": result.written,
            "stale": list(result.stale),
            "expired": list(result.expired),
        }
        if result.refused:
            ctx.response.status_code = 422
            body["error"] = (
                f"{len(result.refused)} of {len(updates)} updates refused by a store for their "
                "data (retrying cannot help); the others were written"
            )
            body["refused"] = [refusal.as_dict() for refusal in result.refused]
        return body

    def _timed(
        self,
        ctx: bentoml.Context,
        timer: StageTimer,
        endpoint: str,
        resolved: Resolution,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        timing_ms = timer.milliseconds()
        ctx.response.headers["Server-Timing"] = timer.server_timing()
        observe_request(
            endpoint, timing_ms, resolved.scored, None, resolved.related, resolved.degraded
        )
        self.spans.record(timer, lambda: _span_attributes(resolved))
        return {**body, "timing_ms": timing_ms}

    async def status(self) -> dict[str, Any]:
        """What a person wants to know: the model, whether Redis answers reads, the breakers."""
        redis_up = await self.store.ping()
        redis_breaker = next(t.breaker for t in self.resolver.tiers if t.store is self.store)
        if not redis_up:
            redis = self.store.DOWN
        elif redis_breaker.failing:
            redis = f"failing reads: {redis_breaker.last_failure} (serving from fallbacks)"
        else:
            redis = "up"
        node_breakers = self.store.node_breakers()
        nodes = (
            {"redis_nodes": {name: _breaker_status(b) for name, b in node_breakers.items()}}
            if node_breakers
            else {}
        )
        return {
            "model": self.model_tag,
            "inference": self.inference,
            "redis_mode": SETTINGS.redis_mode,
            "redis": redis,
            **nodes,
            "breakers": {
                tier.source.value: _breaker_status(tier.breaker) for tier in self.resolver.tiers
            },
            "redis_memory": _memory_status(self.gauges),
            "feature_deadline_ms": _DEADLINE_S * 1000,
            "cache_ttl_s": SETTINGS.cache_ttl_s,
            "max_in_flight": SETTINGS.max_in_flight,
        }


show_project_info(
    ScoringService,
    PROJECT.title or PROJECT.name,
    PROJECT.description or f"Scores requests with the model of project {PROJECT.name}.",
    PROJECT.version,
)
_API_ROUTES = frozenset(api.route for api in ScoringService.apis.values())  # type: ignore[attr-defined]
_ROUTES = _API_ROUTES | BENTOML_ROUTES | {f"/ops{route.path}" for route in status_app.routes}  # type: ignore[attr-defined]
"""Every path the service answers; any other is named ``other`` in metrics and logs."""
logging.getLogger(REFUSAL_LOGGER).setLevel(logging.INFO)
# Outermost first: a request without its token is refused before its body is read, and a
# request takes an in-flight slot only once its whole body is in.
install_adaptations(
    edge=[
        Middleware(DrainMiddleware),
        Middleware(
            RefusalLogMiddleware, routes=_ROUTES, log=RefusalLog(logging.getLogger(REFUSAL_LOGGER))
        ),
        Middleware(
            BearerTokenMiddleware,
            write_token=SETTINGS.write_token.get_secret_value() if SETTINGS.write_token else None,
            read_token=SETTINGS.read_token.get_secret_value() if SETTINGS.read_token else None,
            metrics_open=SETTINGS.metrics_access == "open",
        ),
        Middleware(
            RequestBodyMiddleware,
            max_bytes=SETTINGS.max_body_bytes,
            read_timeout_s=SETTINGS.body_timeout_s,
        ),
        Middleware(
            AdmissionMiddleware,
            limit=SETTINGS.max_in_flight,
            paths=_API_ROUTES,
            wait_s=SETTINGS.admission_wait_ms / 1000,
            hold_s=SETTINGS.refusal_hold_ms / 1000,
        ),
    ],
    routes=_ROUTES,
    limits=ConnectionLimits(
        header_timeout_s=SETTINGS.header_timeout_s,
        max_header_bytes=SETTINGS.max_header_bytes,
        max_headers=SETTINGS.max_headers,
        max_connections=SETTINGS.max_connections,
    ),
    drain_s=SETTINGS.drain_s,
    tracing_layer=_TRACING is not None or SETTINGS.access_log,
    input_models={api.input_spec.__name__ for api in ScoringService.apis.values()},  # type: ignore[attr-defined]
)
ScoringService.add_asgi_middleware(ClientErrorMiddleware)  # type: ignore[attr-defined]

declare_json_outputs(ScoringService.apis.values())  # type: ignore[attr-defined]


def _now() -> int:
    return int(time.time())


def _span_attributes(resolution: Resolution) -> dict[str, AttributeValue]:
    """What the ``features`` span of a sampled request says about its resolution: entities,
    groups, sources and degraded reasons (each counted per entity group), and whether the
    feature deadline cut some group's answer short."""
    sources: collections.Counter[str] = collections.Counter()
    degraded: collections.Counter[str] = collections.Counter()
    parts = (resolution.scored, *resolution.related)
    groups = [group for part in parts for group in part.groups]
    for group in groups:
        sources.update(source.value for source in group.sources)
        degraded.update(reason.value for reason in group.degraded if reason is not None)
    return {
        "featserve.entities": sum(len(part.entity_ids) for part in parts),
        "featserve.groups": [
            group.group.name
            if part is resolution.scored
            else f"{group.group.entity.name}:{group.group.name}"
            for part in parts
            for group in part.groups
        ],
        "featserve.sources": [f"{source}={count}" for source, count in sorted(sources.items())],
        "featserve.degraded": [f"{reason}={count}" for reason, count in sorted(degraded.items())],
        "featserve.deadline_fired": Degraded.DEADLINE.value in degraded,
    }


def _keep_best(result: dict[str, Any], field: str, top_k: int | None) -> None:
    """With ``top_k``, keep only the best ``top_k`` candidates of ``result``, best first."""
    if top_k is not None:
        ranked = sorted(result[field], key=lambda answer: answer["score"], reverse=True)
        result[field] = ranked[:top_k]


def _describe(entity: EntityFeatures, now_s: float) -> dict[str, Any]:
    described: dict[str, Any] = {
        "entity_id": entity.entity_id,
        "groups": {
            name: {
                "source": result.source.value,
                "values": {
                    k: list(v) if isinstance(v, tuple) else v for k, v in result.values.items()
                },
                "defaulted": list(result.defaulted),
                "age_s": _rounded(result.age_s(now_s)),
            }
            for name, result in entity.groups.items()
        },
    }
    degraded = {
        name: result.degraded.value
        for name, result in entity.groups.items()
        if result.degraded is not None
    }
    if degraded:
        described["degraded"] = degraded
    return described


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _memory_status(gauges: StoreGauges) -> dict[str, Any]:
    """The last memory sample of each Redis server, by node (empty name: a single server)."""
    if gauges.memory_error:
        return {"unknown": gauges.memory_error}
    return {
        report.node: {
            "used_bytes": report.used_bytes,
            "max_bytes": report.max_bytes,
            "used_share": None if report.used_share is None else round(report.used_share, 3),
            "policy": report.policy,
            "evicted_keys": report.evicted_keys,
        }
        for report in gauges.memory
    }


def _breaker_status(breaker: CircuitBreaker) -> dict[str, Any]:
    age_s = breaker.last_failure_age_s
    return {
        "state": breaker.state.value,
        "reason": breaker.reason,
        "last_failure": breaker.last_failure,
        "last_failure_age_s": None if age_s is None else round(age_s, 3),
    }
