"""What a featserve answer says about its features: sources, and whether a fault shaped it.

``answer_mix`` reads the JSON body of ``/score``, ``/score_batch`` or
``/features`` and counts, over the answers it holds (one per scored request
or per entity; a ranking answer's candidates belong to it), where each feature group
came from and how many answers
were degraded: marked ``degraded`` by the service, or served from a source
that only a fault produces (``features.sources.FAULT_SOURCES``).  ``default``
is a real answer ("nobody holds this entity"), ``backing`` too unless the
service marked it degraded (Redis failed first).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from features.sources import FAULT_SOURCES

__all__ = ["AnswerMix", "answer_mix"]


@dataclass(frozen=True, slots=True)
class AnswerMix:
    """The answers in one response body and where their feature groups came from."""

    answers: int
    """Scored requests (``/score``: 1; ``/score_batch``: its results) or ``/features`` entities."""
    degraded: int
    """Answers shaped by a fault."""
    sources: tuple[tuple[str, int], ...]
    """Feature groups by source, e.g. ``(("redis", 3),)``."""


def answer_mix(body: bytes) -> AnswerMix | None:
    """The mix of a featserve response body; ``None`` when the body holds no answers."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    answers = list(_answers(document))
    if not answers:
        return None
    sources: Counter[str] = Counter()
    degraded = 0
    for by_group, marked in answers:
        sources.update(by_group.values())
        if marked or not FAULT_SOURCES.isdisjoint(by_group.values()):
            degraded += 1
    return AnswerMix(len(answers), degraded, tuple(sorted(sources.items())))


def _answers(document: Mapping[str, Any]) -> Iterable[tuple[Mapping[str, str], bool]]:
    """Each answer's sources by group and whether the service marked it degraded."""
    if isinstance(document.get("results"), list):
        items: Iterable[Any] = document["results"]
    elif isinstance(document.get("entities"), list):
        items = (
            {
                "sources": {
                    name: group.get("source")
                    for name, group in entity.get("groups", {}).items()
                    if isinstance(group, dict)
                },
                "degraded": entity.get("degraded"),
            }
            for entity in document["entities"]
            if isinstance(entity, dict)
        )
    elif isinstance(document.get("sources"), dict):
        items = (document,)
    else:
        return
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("sources"), dict):
            continue
        by_group = {str(k): str(v) for k, v in item["sources"].items() if v is not None}
        marked = bool(item.get("degraded"))
        # A ranking answer: each candidate's groups belong to the request's answer too.
        for value in item.values():
            if not isinstance(value, list):
                continue
            for index, candidate in enumerate(value):
                if isinstance(candidate, dict) and isinstance(candidate.get("sources"), dict):
                    by_group.update(
                        (f"{index}:{k}", str(v))
                        for k, v in candidate["sources"].items()
                        if v is not None
                    )
                    marked = marked or bool(candidate.get("degraded"))
        yield by_group, marked
