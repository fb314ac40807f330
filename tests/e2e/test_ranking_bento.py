"""The ranking example, built into a Bento and served from the Bento's own requirements
against a real Redis: a user and 100 candidate items per request meet the project's
budget with real answers, and the scores are the model's own for rows built by hand.

A second project with two entity kinds, neither hard-wired: the Bento is built with
``--arg project=examples/ranking`` and loads its packed copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.cli.demo import load_demo_data
from service.harness.local_redis import LocalRedis
from service.harness.served import train_small_model
from tests.support.bento import bento_virtualenv, build_bento, served_bento
from tests.support.oracle import saved_model
from tests.support.ranking import RANKING_PROJECT, expected_scores
from tests.support.sla_check import assert_meets_the_sla

DEMO_USERS = 200
"""Demo users; their project writes five items per user."""

EVENING = 1764417600 + 7 * 3600


@pytest.fixture(scope="module")
def ranking_home(bentoml_home: Path) -> Path:
    """The session's BentoML home, with a small ranking model trained into it too."""
    train_small_model(bentoml_home, RANKING_PROJECT)
    return bentoml_home


@pytest.fixture(scope="module")
def served(
    ranking_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """The ranking Bento served over a Redis with demo data; its URL and Redis' URL."""
    bento = build_bento(ranking_home, "examples/ranking")
    packed = {path.relative_to(bento / "src").as_posix() for path in (bento / "src").rglob("*.py")}
    assert "examples/ranking/project.py" in packed
    python = bento_virtualenv(bento, tmp_path_factory.mktemp("ranking-venv"))
    with LocalRedis(realtime=True) as redis_server:
        load_demo_data(
            redis_server.url, DEMO_USERS, tmp_path_factory.mktemp("demo"), project=RANKING_PROJECT
        )
        with served_bento(
            bento, python, ranking_home, redis_server, tmp_path_factory.mktemp("run")
        ) as url:
            yield url, redis_server.url


def test_the_ranking_bento_meets_its_sla_with_100_candidates_and_real_answers(
    served: tuple[str, str],
) -> None:
    url, _ = served
    assert_meets_the_sla(
        f"{url}/score", RANKING_PROJECT, "--entities", str(DEMO_USERS), "--candidates", "100"
    )


def test_the_ranking_bento_scores_each_candidate_as_the_oracle(
    served: tuple[str, str], ranking_home: Path
) -> None:
    url, redis_url = served
    user = {"clicks_30d": 12, "impressions_30d": 150, "favourite_category": 4,
            "avg_price_clicked": 18.0}  # fmt: skip
    items = {
        "x1": {"item_category": 4, "item_price": 17.0, "item_ctr_7d": 0.12, "item_age_days": 2},
        "x2": {"item_category": 9, "item_price": 95.0, "item_ctr_7d": 0.01, "item_age_days": 300},
        "x3": {"item_category": 4, "item_price": 60.0, "item_ctr_7d": 0.05, "item_age_days": 30},
    }
    client = redis.Redis.from_url(redis_url)
    client.hset("rank:user:{reader}:profile", mapping=user)  # type: ignore[arg-type]
    for name, values in items.items():
        client.hset(f"rank:item:{{{name}}}:stats", mapping=values)  # type: ignore[arg-type]
    order = ["x3", "x1", "x2"]
    response = httpx.post(
        f"{url}/score", json={"user_id": "reader", "item_ids": order, "timestamp": EVENING}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    estimator, metadata = saved_model(ranking_home, "ranking_model")
    inputs = [item["name"] for item in metadata["schema"]["inputs"]]
    expected = expected_scores(estimator, inputs, user, [items[i] for i in order], EVENING)
    assert [c["item_id"] for c in body["item_ids"]] == order
    assert [c["score"] for c in body["item_ids"]] == pytest.approx(expected, rel=1e-9)
    assert body["sources"] == {"profile": "redis"}
    best = httpx.post(
        f"{url}/score",
        json={"user_id": "reader", "item_ids": order, "timestamp": EVENING, "top_k": 2},
    ).json()["item_ids"]
    ranked = sorted(zip(expected, order, strict=True), reverse=True)[:2]
    assert [c["item_id"] for c in best] == [name for _, name in ranked]


def test_the_ranking_api_is_the_projects_own(served: tuple[str, str]) -> None:
    url, _ = served
    schema = httpx.get(f"{url}/docs.json").json()
    assert schema["info"]["title"] == "featserve feed ranking"
    refused = httpx.post(f"{url}/score", json={"user_id": "u000001", "item_ids": ["i1"] * 101})
    assert refused.status_code == 400
    assert "item_ids" in refused.json()["error"]
