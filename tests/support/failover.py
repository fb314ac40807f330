"""What the failover drills of the cluster and the Sentinel e2e tests share."""

from __future__ import annotations

import secrets

from service.harness.failover_drill import FailoverResult

__all__ = [
    "BACK_WITHIN_S",
    "IDS",
    "SERVICE_ENV",
    "USERS",
    "WRITER",
    "check_failover",
    "key_of",
]

USERS = 300
IDS = [f"u{i:06d}" for i in range(USERS)]
BACK_WITHIN_S = 20.0
"""The promise: this long after the kill, every user is read from Redis again."""
AFTER_PROMOTION_S = 5.0
"""How soon after the promotion answers must come from Redis again."""
FALLBACKS = {"stale", "unavailable"}
"""Where a fault sends an answer when there is no backing store: the last value seen, or the
training defaults standing in for the fault (never ``default``, which means "no data")."""
REASONS = {"deadline", "store_error", "breaker_open", "error_reply"}
"""The degraded-answer reasons a lost primary may cause."""
_TOKEN = secrets.token_urlsafe(24)
WRITER = {"Authorization": f"Bearer {_TOKEN}"}
"""Headers for ``/push`` and ``/ops/status``, which need the write token."""
SERVICE_ENV = {
    "FEATSERVE_CACHE_TTL_S": "0",
    # Room for a shared CI machine's stalls: a healthy shard must not time out and fall back.
    "FEATSERVE_FEATURE_DEADLINE_MS": "100",
    "FEATSERVE_WRITE_TOKEN": _TOKEN,
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
    assert set(fell_back) <= FALLBACKS, result.sources_affected
    # Every answer says whether a fault shaped it, and why.
    for sample in (*result.before, *result.after):
        if sample.status == 200 and sample.source in FALLBACKS:
            assert sample.degraded in REASONS, sample
        elif sample.status == 200:
            assert sample.degraded is None, sample
