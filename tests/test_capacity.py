"""Capacity planning against figures worked out by hand, and against a real Redis's sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from features.settings import Settings
from features.stores.capacity import (
    CapacityInputs,
    estimate_entity_bytes,
    measure_entity_bytes,
    plan_capacity,
)
from service import cli
from service.cli.demo import load_demo_data
from service.harness.example import EXAMPLE_REGISTRY

GIB = 2**30
GROUPS = EXAMPLE_REGISTRY.groups_of("user")


def test_the_sizing_example_of_the_field() -> None:
    # The usual sizing example: 200 B x 10 M users x 1.3 = 2.6 GB.  With 2 GiB nodes kept 35 % free,
    # one node may hold 2 x 2**30 x 0.65 = 1.396e9 B: two shards of 1.3e9 B each (61 %).
    # 20,000 rps x 3 groups = 60,000 commands/s: one node would do.  20 workers (4 x 5)
    # take 1,000 rps each: 1,000 x 0.002 s x 1.5 = 3 connections, 60 per node.
    plan = plan_capacity(
        CapacityInputs(
            entity_bytes=200,
            entities=10_000_000,
            peak_rps=20_000,
            read_latency_ms=2,
            groups_per_entity=3,
            node_memory_bytes=2 * GIB,
            workers=4,
            service_replicas=5,
        )
    )
    assert plan.data_bytes == 2_000_000_000
    assert plan.memory_bytes == pytest.approx(2_600_000_000)
    assert (plan.shards_for_memory, plan.shards_for_throughput, plan.shards) == (2, 1, 2)
    assert plan.memory_per_node_bytes == pytest.approx(1_300_000_000)
    assert plan.node_fill == pytest.approx(1.3e9 / 2**31)
    assert plan.commands_per_s == 60_000
    assert plan.redis_nodes == 4
    assert (plan.rps_per_worker, plan.pool_per_worker, plan.connections_per_node) == (1000, 3, 60)


def test_throughput_can_call_for_more_shards_than_memory() -> None:
    # 500,000 rps x 2 entities x 3 groups = 3,000,000 commands/s: 30 nodes of 100,000.
    plan = plan_capacity(
        CapacityInputs(
            entity_bytes=700,
            entities=1_000_000,
            peak_rps=500_000,
            read_latency_ms=0.5,
            groups_per_entity=3,
            entities_per_request=2,
            workers=8,
            service_replicas=25,
            redis_replicas=2,
        )
    )
    assert (plan.shards_for_memory, plan.shards_for_throughput, plan.shards) == (1, 30, 30)
    assert plan.redis_nodes == 90
    # 500,000 / 200 workers = 2,500 rps; 2,500 x 0.0005 x 1.5 = 1.875: 2 connections.
    assert (plan.pool_per_worker, plan.connections_per_node) == (2, 400)


def test_a_light_load_still_gets_one_connection_and_one_shard() -> None:
    plan = plan_capacity(
        CapacityInputs(
            entity_bytes=100, entities=10, peak_rps=1, read_latency_ms=1, groups_per_entity=1
        )
    )
    assert (plan.shards, plan.pool_per_worker, plan.connections_per_node) == (1, 1, 1)


def run_cli(*argv: str, settings: Settings | None = None) -> int:
    return cli.main(["capacity", *argv], settings)


def test_the_command_prints_the_plan_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--entities", "10000000", "--peak-rps", "20000", "--latency-ms", "2",
            "--bytes-per-entity", "200", "--node-memory-gb", "2", "--workers", "4",
            "--service-replicas", "5", "--json"]  # fmt: skip
    assert run_cli(*argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["memory_bytes"] == pytest.approx(2.6e9)
    assert (printed["shards"], printed["pool_per_worker"], printed["connections_per_node"]) == (
        2,
        3,
        60,
    )
    assert printed["inputs"]["groups_per_entity"] == 3
    assert printed["entity_bytes_source"] == "given"


@pytest.mark.parametrize(("headroom", "warned"), [("0.35", False), ("0.30", False), ("0.2", True)])
def test_a_plan_that_leaves_under_30_percent_free_warns(
    capsys: pytest.CaptureFixture[str], headroom: str, warned: bool
) -> None:
    # 1.6 GB in memory (123 B x 10 M x 1.3) on 2 GiB nodes: keeping 35 % or 30 % free
    # takes two nodes, 37 % full; keeping only 20 % fits it on one, 74.5 % full.
    argv = ["--entities", "10000000", "--peak-rps", "100", "--latency-ms", "1",
            "--bytes-per-entity", "123", "--node-memory-gb", "2", "--headroom", headroom,
            "--json"]  # fmt: skip
    assert run_cli(*argv) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert bool(printed["warnings"]) is warned
    assert ("leaving" in captured.err) is warned
    if warned:
        assert printed["node_fill"] > 0.7
        assert "keep at least 30%" in printed["warnings"][0]


def test_the_command_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--entities", "1000", "--peak-rps", "100", "--latency-ms", "1") == 0
    out = capsys.readouterr().out
    assert "featserve capacity" in out
    assert "connections per node" in out
    assert "estimated from the registry" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--entities", "0", "--peak-rps", "1", "--latency-ms", "1"],
        ["--entities", "1", "--peak-rps", "1", "--latency-ms", "1", "--headroom", "1"],
        ["--entities", "1", "--peak-rps", "1", "--latency-ms", "1", "--entity", "merchant"],
    ],
)
def test_the_command_refuses_bad_arguments(argv: list[str]) -> None:
    assert run_cli(*argv) == 2


def test_measuring_an_empty_redis_fails_clearly(settings: Settings) -> None:
    argv = ["--entities", "1", "--peak-rps", "1", "--latency-ms", "1", "--measure"]
    assert run_cli(*argv, settings=settings) == 3


def test_the_measured_size_is_the_mean_memory_usage_of_an_entitys_keys(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load_demo_data(settings.redis_url, 5, tmp_path)
    by_hand = []
    for number in range(5):
        keys = [f"user:{{u{number:06d}}}:{g}" for g in ("features", "recent_items", "embedding")]
        keys.append(f"user:{{u{number:06d}}}:embedding:_event_ms")
        by_hand.append(sum(redis_client.memory_usage(key, samples=0) or 0 for key in keys))
    mean, sampled = measure_entity_bytes(redis_client, GROUPS, samples=5)
    assert sampled == 5
    assert mean == pytest.approx(sum(by_hand) / 5)
    # The registry's estimate (ids of 7 characters, as the demo's) stays near the real thing.
    assert estimate_entity_bytes(GROUPS, id_length=7) == pytest.approx(mean, rel=0.15)


def test_the_command_measures_a_live_redis(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_demo_data(settings.redis_url, 5, tmp_path)
    argv = ["--entities", "5", "--peak-rps", "1", "--latency-ms", "1", "--measure",
            "--samples", "5", "--json"]  # fmt: skip
    assert run_cli(*argv, settings=settings) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["entity_bytes_source"] == "measured: MEMORY USAGE of 5 entities"
    with redis.Redis.from_url(settings.redis_url or "") as client:
        mean, _ = measure_entity_bytes(client, GROUPS, samples=5)
    assert printed["inputs"]["entity_bytes"] == pytest.approx(mean)
