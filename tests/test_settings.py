"""Settings that say where Redis is, by mode."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from features.settings import Settings


def test_sentinels_are_read_as_host_port_pairs() -> None:
    settings = Settings(sentinels="10.0.0.1:26379, sentinel-b:26380", sentinel_master="main")
    assert settings.sentinel_addresses == [("10.0.0.1", 26379), ("sentinel-b", 26380)]


@pytest.mark.parametrize("value", ["10.0.0.1", "host:port", ":26379", "h:99999", "a:1,,b:2"])
def test_a_sentinel_that_is_not_host_port_is_refused_by_name(value: str) -> None:
    with pytest.raises(ValidationError, match="is not host:port"):
        Settings(sentinels=value)


@pytest.mark.parametrize(
    ("options", "missing"),
    [
        ({}, "REDIS_URL is not set"),
        ({"redis_mode": "cluster"}, "REDIS_URL is not set"),
        ({"redis_mode": "sentinel", "sentinels": "h:1"}, "needs FEATSERVE_SENTINELS"),
        ({"redis_mode": "sentinel", "sentinel_master": "m"}, "needs FEATSERVE_SENTINELS"),
        ({"redis_url": "redis://h:1/0"}, None),
        ({"redis_mode": "cluster", "redis_url": "redis://h:1/0"}, None),
        ({"redis_mode": "sentinel", "sentinels": "h:1", "sentinel_master": "m"}, None),
    ],
)
def test_what_is_missing_to_reach_redis_depends_on_the_mode(
    options: dict[str, str], missing: str | None
) -> None:
    said = Settings(**options).redis_missing  # type: ignore[arg-type]
    assert (said is None) if missing is None else (missing in (said or ""))


def test_the_mode_and_replica_reads_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEATSERVE_REDIS_MODE", "sentinel")
    monkeypatch.setenv("FEATSERVE_SENTINELS", "h:1")
    monkeypatch.setenv("FEATSERVE_SENTINEL_MASTER", "m")
    monkeypatch.setenv("FEATSERVE_READ_FROM_REPLICAS", "true")
    settings = Settings()
    assert (settings.redis_mode, settings.sentinel_master, settings.read_from_replicas) == (
        "sentinel",
        "m",
        True,
    )


def test_metrics_behind_the_read_token_needs_one() -> None:
    with pytest.raises(ValidationError, match="FEATSERVE_READ_TOKEN"):
        Settings(metrics_access="read")
    assert Settings(metrics_access="read", read_token=SecretStr("r" * 16)).metrics_access == "read"
