"""featserve's configuration: one frozen object built from the environment once.

Every variable is optional; the defaults suit a model with a 10 ms feature
budget (e.g. 10 ms of a 50 ms request) on a loopback or same-zone Redis.  Variables are prefixed
``FEATSERVE_`` except ``REDIS_URL``, which every Redis tool already knows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.budgets import PROFILES, LatencyBudget, ProfileName

__all__ = ["MIN_TOKEN_LENGTH", "RedisMode", "Settings"]

MIN_TOKEN_LENGTH = 16
"""The shortest bearer token accepted: a short one can be guessed."""

RedisMode = Literal["standalone", "cluster", "sentinel"]
"""How Redis is deployed: one server, a Redis Cluster, or a primary watched by Sentinel."""


class Settings(BaseSettings):
    """Typed settings; ``Settings()`` reads them from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="FEATSERVE_",
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        use_attribute_docstrings=True,
        # Some values are secrets (tokens, a password in REDIS_URL): errors name the field only.
        hide_input_in_errors=True,
    )

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "FEATSERVE_REDIS_URL"),
        # It may hold a password: keep it out of every repr that reaches a log.
        repr=False,
    )
    """Where the online store is; unset means ``make serve`` starts an embedded one."""

    redis_mode: RedisMode = "standalone"
    """``standalone``: ``REDIS_URL`` is the server.  ``cluster``: ``REDIS_URL`` names any node
    of a Redis Cluster and the client discovers the rest.  ``sentinel``: the sentinels in
    ``FEATSERVE_SENTINELS`` name the primary of ``FEATSERVE_SENTINEL_MASTER``; ``REDIS_URL``
    (optional) gives only the credentials and database."""

    sentinels: str | None = None
    """For ``sentinel`` mode: the sentinels' addresses, ``host:port,host:port,...``."""

    sentinel_master: str | None = None
    """For ``sentinel`` mode: the name the sentinels monitor the primary under."""

    read_from_replicas: bool = False
    """Read features from replicas instead of primaries (cluster: ``READONLY`` connections to
    each shard's replicas; sentinel: the replicas the sentinels know).  Values then lag the
    primary by the replication delay (usually under a millisecond, seconds under a write
    burst or after a resync); writes always go to primaries."""

    redis_socket_timeout_ms: float = Field(default=50.0, gt=0)
    """How long one Redis read round trip may wait for its reply before it fails (a reply that
    has arrived is always used), and how long the reply of a read abandoned at the feature
    deadline is drained before its connection is closed."""

    redis_connect_timeout_ms: float = Field(default=100.0, gt=0)
    """How long opening a Redis connection may take."""

    redis_write_timeout_ms: float = Field(default=2000.0, gt=0)
    """How long one pipelined write (push, materialize) may take; writes are not on the hot path."""

    redis_pool_size: int = Field(default=32, ge=1)
    """Connections per worker; size it as peak rps x mean latency (s) x 1.5.

    When every connection is busy a read fails at once (served from defaults)
    instead of queueing behind the others."""

    redis_warm_connections: int | None = Field(default=None, ge=0)
    """Connections each worker opens at start-up, before any request, so that no request's
    deadline pays for a connect; unset: ``max_in_flight``, or the pool size when that is 0
    (never more than the pool size)."""

    profile: ProfileName = "payments"
    """The use case whose feature budget sets the default deadline (see ``features.budgets``).
    The service takes its project's own budget instead unless this variable is set."""

    feature_deadline_ms: float | None = Field(default=None, gt=0)
    """How long feature retrieval waits for the stores (from its first read, replies that
    have arrived always used) before answering with what it has; unset: the profile's
    feature budget (payments 10, recommendation 20, search 30, ads 3,
    personalization 40)."""

    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive failures of a store that open its circuit breaker."""

    breaker_reset_s: float = Field(default=1.0, gt=0)
    """How long an open breaker skips its store before letting one probe through."""

    breaker_pool_usage: float = Field(default=0.8, gt=0, le=1)
    """Share of the Redis pool in use above which the Redis breaker opens instead of queueing."""

    backing_store: str | None = None
    """The persistent tier behind Redis: ``sqlite:PATH`` or ``dynamodb:TABLE``; unset: none."""

    stale_cache_maxsize: int = Field(default=100_000, ge=0)
    """Entity groups whose last known values are kept for stale-on-error; 0 turns it off."""

    cache_ttl_s: float = Field(default=5.0, ge=0)
    """How long a feature group stays in the in-process cache; 0 turns the cache off."""

    cache_maxsize: int = Field(default=100_000, ge=0)
    """How many entity groups the in-process cache holds (LRU beyond that); 0 turns it off."""

    project: str | None = None
    """The project folder the service and the commands serve (``features.project``); a
    relative path is taken from the working directory (a Bento's own ``src`` when a Bento
    is served).  ``bentoml serve``/``build --arg project=DIR`` wins over this variable."""

    model_tag: str | None = None
    """The BentoML model the service loads; unset: ``<project name>_model:latest``."""

    max_clock_skew_s: float = Field(default=300.0, ge=0)
    """How far past now an event time may lie (producers' clocks drift); later ones are refused.

    A value dated ahead would outrank every real write after it until its time came."""

    materialize_keys_per_call: int = Field(default=256, ge=1)
    """Entity groups (hashes) one materialization script call writes: more per call costs less
    Redis CPU per entity, and holds Redis (and the online reads queued behind it) longer."""

    materialize_in_flight: int = Field(default=4, ge=1)
    """Script calls a materialization (one process, or each Spark task) sends to one Redis node
    before it waits for the first reply: the most of a node's time it can claim at once."""

    batch_max: int = Field(default=256, ge=1)
    """The most items one ``/score_batch``, ``/features`` or ``/push`` call may carry."""

    write_token: SecretStr | None = None
    """The bearer token ``POST /push`` and ``/ops/*`` require; unset: ``/push`` is refused (403)."""

    read_token: SecretStr | None = None
    """A bearer token the read endpoints require (the write token also works); unset: open."""

    metrics_access: Literal["open", "read"] = "open"
    """Who may read ``/metrics``: ``open`` (anyone who reaches the port, as probes) or
    ``read`` (the read token or the write token, as ``/score``; needs ``read_token``)."""

    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    """The largest request body accepted; a larger one is refused with 413 before it is read."""

    body_timeout_s: float = Field(default=10.0, gt=0)
    """How long a request's whole body may take to arrive once its headers are in; a later one
    is answered 408 and its connection closed.  A request takes an in-flight slot
    (``max_in_flight``) only once its body is in, so slow senders never hold one."""

    drain_s: float = Field(default=5.0, ge=0)
    """How long a worker drains on SIGTERM before it stops accepting: ``/readyz`` answers 503
    and every answer closes its connection meanwhile, so a load balancer and its clients move
    away before the socket closes.  5 s: a Kubernetes Service's endpoints change within a few
    seconds of a pod's deletion; 0 stops at once, as uvicorn does."""

    header_timeout_s: float = Field(default=10.0, gt=0)
    """How long a request's line and headers may take to arrive (from its first byte, or from
    the connect on a new connection); a later one gets 408 and its connection is closed, so a
    connection that sends nothing is closed after this long too."""

    max_header_bytes: int = Field(default=16384, ge=1024)
    """The most bytes a request line and its headers may take; more: 431, connection closed."""

    max_headers: int = Field(default=100, ge=10)
    """The most header fields a request may carry; more: 431, connection closed."""

    max_connections: int = Field(default=1000, ge=1)
    """HTTP connections one worker holds at once; one more closes the oldest idle connection
    (serving no request), or is itself closed when every connection is serving one."""

    workers: int = Field(default=1, ge=1)
    """BentoML worker processes."""

    otlp_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    """Where traces go (OTLP over HTTP), OpenTelemetry's standard variable; unset: no traces."""

    trace_sample_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of requests traced when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; 0 turns traces off."""

    max_in_flight: int = Field(default=16, ge=0)
    """Requests one worker serves at once (``/score``, ``/score_batch``, ``/features``,
    ``/push``); more wait up to ``admission_wait_ms`` for a slot, then are refused with 503
    and ``Retry-After``; 0: no bound."""

    admission_wait_ms: float = Field(default=10.0, ge=0, le=1000)
    """How long a request beyond ``max_in_flight`` waits, in arrival order, for a slot before
    it is refused; 10 ms leaves most of a 50 ms latency budget to the request itself, served
    beside the others in flight; 0: refused without waiting."""

    refusal_hold_ms: float = Field(default=250.0, ge=0, le=1000)
    """How long after it came an overload refusal is sent, at the soonest: a client that
    retries at once then sends at most one request per this long on each connection instead
    of spinning; 0: at once (after ``admission_wait_ms``).  250 ms, not 100: at 64
    connections retrying at once, 100 ms left about 290 refusals a second taking a sixth of
    the worker, 250 ms about 130 (docs/benchmarks.md, "Feast as a peer")."""

    access_log: bool = False
    """Whether BentoML writes an access-log line per request (it costs throughput:
    docs/benchmarks.md)."""

    @field_validator("write_token", "read_token", mode="after")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None or not token.get_secret_value():
            return None
        if len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"a token needs at least {MIN_TOKEN_LENGTH} characters, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return token

    @model_validator(mode="after")
    def _metrics_token_is_set(self) -> Settings:
        if self.metrics_access == "read" and self.read_token is None:
            raise ValueError(
                "FEATSERVE_METRICS_ACCESS=read needs FEATSERVE_READ_TOKEN: the token a "
                "scraper sends"
            )
        return self

    @field_validator("sentinels")
    @classmethod
    def _sentinels_are_addresses(cls, value: str | None) -> str | None:
        if value is not None:
            _addresses(value)
        return value

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``sentinels`` as (host, port) pairs; empty when unset."""
        return _addresses(self.sentinels) if self.sentinels else []

    @property
    def redis_missing(self) -> str | None:
        """What the settings lack to say where Redis is, or ``None`` when they say it."""
        if self.redis_mode != "sentinel":
            return None if self.redis_url else "REDIS_URL is not set"
        if self.sentinels and self.sentinel_master:
            return None
        return (
            "FEATSERVE_REDIS_MODE=sentinel needs FEATSERVE_SENTINELS (host:port,...) "
            "and FEATSERVE_SENTINEL_MASTER"
        )

    @property
    def warm_connections(self) -> int:
        """How many Redis connections a worker opens at start-up."""
        if self.redis_warm_connections is not None:
            return min(self.redis_warm_connections, self.redis_pool_size)
        return min(self.max_in_flight or self.redis_pool_size, self.redis_pool_size)

    def latency_budget(self, declared: LatencyBudget) -> LatencyBudget:
        """The budget to serve under: ``FEATSERVE_PROFILE``'s when it is set, else
        ``declared`` (a project's own)."""
        return PROFILES[self.profile] if "profile" in self.model_fields_set else declared

    def feature_deadline_s(self, declared: LatencyBudget) -> float:
        """The feature deadline in seconds: explicit, else the feature share of
        ``latency_budget(declared)``."""
        milliseconds = self.feature_deadline_ms or self.latency_budget(declared).features_ms
        return milliseconds / 1000.0

    @property
    def deadline_s(self) -> float:
        """The feature deadline in seconds: explicit, or the profile's feature budget."""
        milliseconds = self.feature_deadline_ms or PROFILES[self.profile].features_ms
        return milliseconds / 1000.0


def _addresses(value: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as pairs; ``ValueError`` naming the first that is not one."""
    pairs = []
    for item in value.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item.strip()!r} is not host:port")
        pairs.append((host, int(port)))
    return pairs
