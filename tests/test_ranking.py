"""Requests that name several entities: a user and the items to rank for it.

Every group of the user and of each candidate is read in one round trip
(counted on the wire, through a proxy), each candidate is scored with the
user's features, the request's inputs and its own, and the answer keeps
request order, each group with its own source.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
import redis

from features.errors import ProjectError
from features.project import Project, RequestEntity
from features.serving.cache import FeatureCache
from features.serving.resolver import CachedGroup, Resolver
from features.serving.tiers import redis_tier
from features.settings import Settings
from features.sources import Degraded
from features.stores.redis import async_redis_store
from features.timing import StageTimer
from models.schema import InputBuilder, schema_of
from models.train import DEFAULT_NOW, TrainResult, train
from service.harness.tcp_proxy import TcpProxy
from service.scoring import Resolution, Scorer, ScoreRequest
from tests.support.ranking import RANKING, expected_scores

NOON = 1764417600
EVENING = NOON + 7 * 3600

USERS = {
    "u1": {"clicks_30d": 40, "impressions_30d": 390, "favourite_category": 7,
           "avg_price_clicked": 30.0},
    "u2": {"clicks_30d": 2, "impressions_30d": 900, "favourite_category": 0,
           "avg_price_clicked": 0.5},
}  # fmt: skip
ITEMS = {
    f"i{n}": {"item_category": category, "item_price": price, "item_ctr_7d": ctr,
              "item_age_days": age}
    for n, (category, price, ctr, age) in enumerate(
        [(7, 29.0, 0.09, 3), (2, 300.0, 0.01, 200), (7, 5.0, 0.2, 40), (11, 31.0, 0.05, 9)]
    )
}  # fmt: skip


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    assert RANKING.demo is not None
    return train(RANKING, RANKING.demo.training_table(300, 4000, 3, DEFAULT_NOW), seed=3)


def write_by_hand(client: redis.Redis) -> None:
    """The users' and items' hashes as a producer would write them, under the prefix."""
    for user, values in USERS.items():
        client.hset(f"rank:user:{{{user}}}:profile", mapping=values)  # type: ignore[arg-type]
    for item, values in ITEMS.items():
        client.hset(f"rank:item:{{{item}}}:stats", mapping=values)  # type: ignore[arg-type]


def rank(
    settings: Settings,
    trained: TrainResult,
    requests: list[ScoreRequest],
    proxy: TcpProxy | None = None,
) -> tuple[list[Any], Resolution]:
    """Score ``requests`` with the ranking project; ``proxy`` counts only the scoring."""

    async def scenario() -> tuple[list[Any], Resolution]:
        store = async_redis_store(settings)
        try:
            assert await store.ping()  # the connection's handshake happens here
            if proxy is not None:
                proxy.reset_counters()
            cache: FeatureCache[CachedGroup] = FeatureCache(0, 0)
            resolver = Resolver(RANKING.registry, [redis_tier(store, settings)], cache, 5.0)
            scorer = Scorer(
                resolver,
                trained.estimator,
                InputBuilder(trained.schema, RANKING.derived),
                RANKING.model.answer,
                trained.threshold,
                RANKING.entity_field,
                RANKING.request_entities,
            )
            return await scorer.score(requests, StageTimer())
        finally:
            await store.close()

    return asyncio.run(scenario())


def ranking(user: str, items: list[str], timestamp: int = EVENING) -> ScoreRequest:
    return ScoreRequest(user, {"timestamp": timestamp}, (tuple(items),))


def test_a_user_and_its_candidates_are_one_round_trip_and_score_as_the_oracle(
    redis_client: redis.Redis, trained: TrainResult
) -> None:
    write_by_hand(redis_client)
    candidates = ["i3", "i0", "i2", "i1", "i0"]
    upstream = redis_client.connection_pool.connection_kwargs["port"]
    with TcpProxy("127.0.0.1", upstream) as proxy:
        settings = Settings(
            redis_url=proxy.redis_url,
            redis_socket_timeout_ms=5000.0,
            redis_connect_timeout_ms=5000.0,
        )
        redis_client.config_resetstat()
        [answer], resolution = rank(settings, trained, [ranking("u1", candidates)], proxy)
        assert proxy.round_trips == 1
    # One HMGET per key: the user's group and each distinct candidate's (a repeat waits for
    # the same read).
    assert redis_client.info("commandstats")["cmdstat_hmget"]["calls"] == 1 + len(set(candidates))
    order = list(trained.schema.names)
    expected = expected_scores(
        trained.estimator, order, USERS["u1"], [ITEMS[i] for i in candidates], EVENING
    )
    assert [c["item_id"] for c in answer["item_ids"]] == candidates
    assert [c["score"] for c in answer["item_ids"]] == pytest.approx(expected, rel=1e-12)
    assert answer["sources"] == {"profile": "redis"}
    assert {tuple(c["sources"].items()) for c in answer["item_ids"]} == {(("item:stats", "redis"),)}
    assert resolution.degraded == (None,)


def test_a_batch_of_rankings_scores_each_as_alone_and_faults_stay_with_their_candidate(
    settings: Settings, redis_client: redis.Redis, trained: TrainResult
) -> None:
    write_by_hand(redis_client)
    redis_client.delete("rank:item:{i2}:stats")
    redis_client.set("rank:item:{i2}:stats", "not a hash")
    requests = [ranking("u1", ["i0", "i2"]), ranking("u2", ["i1"], NOON), ranking("nobody", ["i3"])]
    batch, resolution = rank(settings, trained, requests)
    alone = [rank(settings, trained, [request])[0][0] for request in requests]
    assert batch == alone
    first, second, third = batch
    assert [c.get("degraded") for c in first["item_ids"]] == [None, {"item:stats": "bad_value"}]
    assert first["item_ids"][1]["sources"] == {"item:stats": "unavailable"}
    assert "degraded" not in first
    assert third["sources"] == {"profile": "default"}
    assert resolution.degraded == (Degraded.BAD_VALUE, None, None)
    order = list(trained.schema.names)
    defaults = {f.name: f.default for f in RANKING.stored_features.values()}
    item_defaults = {k: v for k, v in defaults.items() if k.startswith("item_")}
    user_defaults = {k: v for k, v in defaults.items() if not k.startswith("item_")}
    assert [c["score"] for c in first["item_ids"]] == pytest.approx(
        expected_scores(
            trained.estimator, order, USERS["u1"], [ITEMS["i0"], item_defaults], EVENING
        ),
        rel=1e-12,
    )
    assert third["item_ids"][0]["score"] == pytest.approx(
        expected_scores(trained.estimator, order, user_defaults, [ITEMS["i3"]], EVENING)[0],
        rel=1e-12,
    )
    assert second["item_ids"][0]["score"] == pytest.approx(
        expected_scores(trained.estimator, order, USERS["u2"], [ITEMS["i1"]], NOON)[0],
        rel=1e-12,
    )


def test_the_model_reads_the_groups_of_both_entities() -> None:
    registry = RANKING.registry
    assert {group.entity.key_name for group in registry.groups_of("item")} == {"rank:item"}
    assert schema_of(RANKING).groups == ("profile", "item:stats")
    assert schema_of(RANKING).groups_by_entity() == {"user": ("profile",), "item": ("stats",)}


def with_entities(*entities: RequestEntity, **changes: Any) -> Project:
    return replace(RANKING, request_entities=entities, **changes)


@pytest.mark.parametrize(
    ("changed", "problem"),
    [
        (
            lambda item: with_entities(item, replace(item, field="more")),
            "entity 'item' is named twice",
        ),
        (lambda item: with_entities(replace(item, field="user_id")), "has the name of the entity"),
        (lambda item: with_entities(replace(item, field="timestamp")), "'timestamp' has the name"),
        (lambda item: with_entities(replace(item, max_count=0)), "max_count must be at least 1"),
    ],
)
def test_request_entities_are_checked_when_the_project_loads(changed: Any, problem: str) -> None:
    [item] = RANKING.request_entities
    with pytest.raises(ProjectError, match=problem):
        changed(item)


def test_a_feature_name_two_entities_declare_is_refused() -> None:
    [profile, stats] = RANKING.groups
    clash = replace(stats, features=(*stats.features, profile.features[0]))
    with pytest.raises(ProjectError, match="'clicks_30d' is declared by both 'user' and 'item'"):
        replace(RANKING, groups=(profile, clash))


def test_top_k_is_taken_when_a_request_has_candidates() -> None:
    with pytest.raises(ProjectError, match="'top_k' has the name of the option"):
        replace(
            RANKING,
            request=(*RANKING.request, replace(RANKING.request[0], name="top_k")),
        )


def test_a_request_naming_one_entity_of_another_kind_scores_one_row_with_both(
    settings: Settings, redis_client: redis.Redis, trained: TrainResult
) -> None:
    """One id of another kind (a card and its merchant; here a user and one item): one row
    with both entities' features, the other entity's id and groups in the answer."""
    write_by_hand(redis_client)
    [candidates] = RANKING.request_entities
    paired = replace(
        RANKING, request_entities=(replace(candidates, field="item_id", candidates=False),)
    )
    requests = [
        ScoreRequest("u1", {"timestamp": EVENING}, ("i2",)),
        ScoreRequest("u2", {"timestamp": NOON}, ("i9",)),
    ]

    async def scenario() -> tuple[list[Any], Resolution]:
        store = async_redis_store(settings)
        try:
            cache: FeatureCache[CachedGroup] = FeatureCache(0, 0)
            resolver = Resolver(paired.registry, [redis_tier(store, settings)], cache, 5.0)
            scorer = Scorer(
                resolver,
                trained.estimator,
                InputBuilder(trained.schema, paired.derived),
                paired.model.answer,
                None,
                paired.entity_field,
                paired.request_entities,
            )
            return await scorer.score(requests, StageTimer())
        finally:
            await store.close()

    (first, second), resolution = asyncio.run(scenario())
    assert first["item_id"] == "i2"
    assert first["sources"] == {"profile": "redis", "item:stats": "redis"}
    assert second["sources"] == {"profile": "redis", "item:stats": "default"}
    order = list(trained.schema.names)
    item_defaults = {f.name: f.default for f in paired.registry.group("item", "stats").features}
    assert [first["score"], second["score"]] == pytest.approx(
        [
            expected_scores(trained.estimator, order, USERS["u1"], [ITEMS["i2"]], EVENING)[0],
            expected_scores(trained.estimator, order, USERS["u2"], [item_defaults], NOON)[0],
        ],
        rel=1e-12,
    )
    assert resolution.degraded == (None, None)
