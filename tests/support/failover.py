"""What the failover drills of the cluster and the Sentinel e2e tests share."""

from __future__ import annotations

from service.harness.failover_drill import FailoverResult

__all__ = ["BACK_WITHIN_S", "IDS", "SERVICE_ENV", "USERS", "check_failover", "key_of"]

USERS = 300
IDS = [f"u{i:06d}" for i in range(USERS)]
BACK_WITHIN_S = 20.0
"""The promise: this long after the kill, every user is read from Redis again."""
AFTER_PROMOTION_S = 5.0
"""How soon after the promotion answers must come from Redis again."""
SERVICE_ENV = {
    "FEATSERVE_CACHE_TTL_S": "0",
    # Room for a shared CI machine's stalls: a healthy shard must not time out and fall back.
    "FEATSERVE_FEATURE_DEADLINE_MS": "100",
}


def key_of(entity_id: str) -> str:
    return f"user:{{{entity_id}}}:features"


def check_failover(result: FailoverResult) -> None:
    """No request failed, and Redis answered again soon after the promotion, well inside
    ``BACK_WITHIN_S`` of the kill, after the kill was felt."""
    assert result.refused == [], result.refused[:3]
    assert result.promoted_after_s is not None, result
    back = result.back_on_redis_after_s
    assert back is not None and back < BACK_WITHIN_S, result.sources_affected
    assert back - result.promoted_after_s < AFTER_PROMOTION_S, (back, result.promoted_after_s)
    fell_back = {k: v for k, v in result.sources_affected.items() if k != "redis"}
    assert fell_back, result.sources_affected  # the kill was felt
