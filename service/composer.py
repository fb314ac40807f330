"""The one place the service's parts are built and wired: stores, tiers, cache, resolver,
scorer and the store gauges, from the project, the settings and the loaded model."""

from __future__ import annotations

from dataclasses import dataclass

from features.burst_log import BurstLog
from features.project import Project
from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, Resolver
from features.serving.tiers import backing_tier, redis_tier
from features.settings import Settings
from features.stores.backing import AsyncBackingStore
from features.stores.base import AsyncOnlineStore
from features.stores.factory import async_backing_store, async_online_store
from features.stores.redis import AsyncRedisStore
from features.stores.write_through import AsyncWriteThrough
from models.compiled_trees import CompiledGradientBoosting, fastest_classifier
from models.schema import InputBuilder
from models.train import LoadedModel
from service.metrics import StoreGauges
from service.scoring import Classifier, Regressor, Scorer

__all__ = ["Parts", "check_settings", "compose"]


@dataclass(frozen=True)
class Parts:
    """What serves requests, built once per worker."""

    store: AsyncRedisStore
    """Redis for reads."""
    redis_writes: AsyncRedisStore
    """Redis for writes (the write timeout, primaries only)."""
    write_store: AsyncOnlineStore
    """Where ``/push`` writes: Redis, or Redis then the backing store."""
    backing: AsyncBackingStore | None
    resolver: Resolver
    scorer: Scorer
    inference: str
    """How the model is run, for the status page."""
    gauges: StoreGauges


def check_settings(settings: Settings) -> None:
    """Refuse, naming the setting, a configuration the service cannot serve well."""
    if settings.redis_missing:
        raise RuntimeError(
            f"{settings.redis_missing}: point it at the online store, "
            "or run `make serve` for an embedded Redis with demo data"
        )
    reads_allowed = settings.redis_pool_size * settings.breaker_pool_usage
    if settings.max_in_flight > reads_allowed:
        raise RuntimeError(
            f"FEATSERVE_MAX_IN_FLIGHT={settings.max_in_flight} admits more requests than "
            f"the Redis breaker lets read at once ({reads_allowed:g}: "
            "FEATSERVE_REDIS_POOL_SIZE x FEATSERVE_BREAKER_POOL_USAGE), which would answer "
            "the excess from fallbacks instead of refusing it: lower the first or raise "
            "the pool"
        )


def compose(
    project: Project,
    settings: Settings,
    model: LoadedModel,
    deadline_s: float,
    error_log: BurstLog,
) -> Parts:
    """Build the stores (a backing store behind Redis when configured), the resolver over
    them, the scorer with the fastest way to run ``model``, and the gauges."""
    store = async_online_store(settings)
    cache: FeatureCache[CachedGroup] = FeatureCache(
        settings.cache_ttl_s, settings.cache_maxsize, settings.stale_cache_maxsize
    )
    tiers = [redis_tier(store, settings)]
    redis_writes = async_online_store(settings, for_writes=True)
    write_store: AsyncOnlineStore = redis_writes
    backing: AsyncBackingStore | None = None
    if settings.backing_store:
        backing = async_backing_store(settings.backing_store)
        tiers.append(backing_tier(backing, settings))
        write_store = AsyncWriteThrough(redis_writes, backing)
    resolver = Resolver(project.registry, tiers, cache, deadline_s)
    answer = project.model.answer
    predictor: Classifier | Regressor
    if answer.kind == "class_probability":
        predictor = fastest_classifier(model.estimator)
        inference = (
            "compiled trees (models/compiled_trees.py)"
            if isinstance(predictor, CompiledGradientBoosting)
            else "scikit-learn predict_proba"
        )
    else:
        predictor = model.estimator
        inference = "scikit-learn predict"
    scorer = Scorer(
        resolver,
        predictor,
        InputBuilder(model.schema, project.derived),
        answer,
        model.threshold,
        project.entity_field,
        project.request_entities,
    )
    gauges = StoreGauges(resolver.tiers, store, redis_writes, error_log)
    return Parts(store, redis_writes, write_store, backing, resolver, scorer, inference, gauges)
