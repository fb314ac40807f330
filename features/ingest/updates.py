"""Validating feature updates: one rule book for ``POST /push`` and ``featserve materialize``.

``parse_update`` turns what a producer sent (an entity id, an event time in
epoch seconds, and values) into a ``FeatureUpdate`` the stores can write,
or raises ``InvalidUpdate`` naming the field and the problem.  Nothing is
truncated or coerced silently: an int feature takes an int, a float
feature any finite number, values must lie in the declared range, a vector
must have its declared dimension.

Null policy: a ``None`` value in a hash group means "no new value": that
field is not written and keeps what Redis holds (or, absent, its training
default).  An update whose values are all ``None`` is refused.

Event times must lie between 1970 and 2100 and, when the caller says what
time it is (``now_ms``), no further ahead of now than the allowed clock skew
(``FEATSERVE_MAX_CLOCK_SKEW_S``): a value dated ahead would outrank every
real write after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from features.dtypes import shown_value
from features.errors import InvalidEntityId, InvalidUpdate
from features.keys import validate_entity_id
from features.registry import FeatureGroup
from features.stores.base import FeatureUpdate
from features.stores.codecs import codec_of

__all__ = ["MAX_EVENT_TIMESTAMP", "event_ms", "parse_update"]

MAX_EVENT_TIMESTAMP = 4_102_444_800
"""2100-01-01 in epoch seconds: later event times are refused as mistakes (milliseconds?)."""


def event_ms(event_timestamp: Any, now_ms: int | None = None, max_skew_ms: int = 0) -> int:
    """Epoch milliseconds of an event time given in epoch seconds; ``InvalidUpdate`` otherwise.

    With ``now_ms``, an event time later than ``now_ms + max_skew_ms`` is refused.
    """
    if not isinstance(event_timestamp, int | float) or isinstance(event_timestamp, bool):
        raise InvalidUpdate(
            "event_timestamp", f"expected epoch seconds, got {type(event_timestamp).__name__}"
        )
    # No math.isfinite, which raises OverflowError for an int too large for a float:
    # NaN and the infinities fail the range check anyway.
    if not 0 <= event_timestamp <= MAX_EVENT_TIMESTAMP:
        raise InvalidUpdate(
            "event_timestamp",
            f"{shown_value(event_timestamp)} is not epoch seconds "
            f"between 0 and {MAX_EVENT_TIMESTAMP}",
        )
    when = round(event_timestamp * 1000)
    if now_ms is not None and when > now_ms + max_skew_ms:
        raise InvalidUpdate(
            "event_timestamp",
            f"{event_timestamp!r} is {(when - now_ms) / 1000:,.0f} s ahead of now; at most "
            f"{max_skew_ms / 1000:,.0f} s ahead is accepted (FEATSERVE_MAX_CLOCK_SKEW_S)",
        )
    return when


def parse_update(
    group: FeatureGroup,
    entity_id: Any,
    event_timestamp: Any,
    values: Mapping[str, Any],
    *,
    now_ms: int | None = None,
    max_skew_ms: int = 0,
) -> FeatureUpdate:
    """A validated update of ``group`` for one entity; ``InvalidUpdate`` names what is wrong.

    ``now_ms`` and ``max_skew_ms``: see ``event_ms``.
    """
    try:
        entity_id = validate_entity_id(entity_id)
    except InvalidEntityId as exc:
        raise InvalidUpdate("entity_id", str(exc)) from None
    when = event_ms(event_timestamp, now_ms, max_skew_ms)
    if not isinstance(values, Mapping) or not values:
        raise InvalidUpdate("values", "expected a non-empty object of feature values")
    unknown = sorted(name for name in values if name not in group.by_name)
    if unknown:
        raise InvalidUpdate(
            "values",
            f"{unknown} not in {group.entity.name}:{group.name} "
            f"(its features: {', '.join(group.feature_names)})",
        )
    return FeatureUpdate(entity_id, group, when, codec_of(group).update_values(group, values, when))
