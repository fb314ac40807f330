"""Keys are namespaced per project: two projects share one Redis without colliding."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import pytest
import redis

from features.errors import ProjectError
from features.ingest.updates import parse_update
from features.project import (
    ClassProbability,
    Entity,
    Feature,
    FeatureGroup,
    LatencyBudget,
    ModelSpec,
    Project,
    Structure,
)
from features.settings import Settings
from features.stores.base import ReadRequest
from features.stores.redis import RedisStore, sync_client
from service.harness.example import EXAMPLE

NOW_MS = int(time.time() * 1000)


def project_with_prefix(prefix: str) -> Project:
    """A second project whose entity and group have the example's names."""
    user = Entity("user")
    group = FeatureGroup(
        "features", user, Structure.HASH, EXAMPLE.groups[0].freshness,
        (Feature("tx_count_1h", "int", 0, minimum=0),),
    )  # fmt: skip
    return Project(
        name="other",
        entity=user,
        groups=(group,),
        request=(),
        model=ModelSpec(("tx_count_1h",), ClassProbability("flag")),
        budget=LatencyBudget(total_ms=50, features_ms=10),
        key_prefix=prefix,
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[RedisStore]:
    store = RedisStore(sync_client(settings))
    yield store
    store.close()


def write(store: RedisStore, project: Project, value: int) -> None:
    group = project.registry.group("user", "features")
    update = parse_update(group, "u000123", NOW_MS / 1000, {"tx_count_1h": value}, now_ms=NOW_MS)
    [outcome] = store.write([update])
    assert outcome.applied


def read(store: RedisStore, project: Project) -> object:
    group = project.registry.group("user", "features")
    [answer] = store.read([ReadRequest("u000123", group, ("tx_count_1h",))])
    assert isinstance(answer, Mapping), answer
    return answer["tx_count_1h"]


def test_the_example_keeps_its_key_layout_and_a_prefixed_project_has_its_own(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    other = project_with_prefix("other:")
    write(store, EXAMPLE, 4)
    write(store, other, 9)
    assert sorted(redis_client.keys("*")) == [
        b"other:user:{u000123}:features",
        b"user:{u000123}:features",
    ]
    assert read(store, EXAMPLE) == 4
    assert read(store, other) == 9


def test_a_prefix_reaches_every_entity_of_the_project() -> None:
    other = project_with_prefix("p1.")
    assert other.entity.key_name == "p1.user"
    assert {group.entity.key_name for group in other.groups} == {"p1.user"}
    assert other.digest == project_with_prefix("p2.").digest


def test_a_prefix_that_could_break_a_key_is_refused() -> None:
    with pytest.raises(ProjectError, match="key prefix"):
        project_with_prefix("a{b}")
