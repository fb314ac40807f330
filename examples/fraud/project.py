"""The fraud example: card transactions scored with a user's features from Redis.

``make serve`` serves this project; ``featserve ... --project examples/fraud``
works on it.  Its API is the one featserve answered before projects existed
(``entity_id``, ``amount``, ``timestamp``; ``score``, ``is_fraud``,
``threshold``) and its keys keep their layout (``user:{u000123}:features``,
no prefix), so existing clients, data and scripts keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from features.project import (
    ClassProbability,
    DerivedFeatures,
    LatencyBudget,
    ModelSpec,
    Project,
    RequestInput,
)

from .dataset import entity_id, training_table
from .demo_tables import write_demo_tables
from .derived import DERIVED_FEATURES, READS, derive_batch, derive_one
from .groups import GROUPS, USER, USER_FEATURES

if TYPE_CHECKING:
    from sklearn.ensemble import GradientBoostingClassifier

__all__ = ["PROJECT"]


def gradient_boosting(seed: int) -> GradientBoostingClassifier:
    """100 trees of depth 3.  Trees need no scaling and isolate the training defaults
    (``last_login_ts = 0`` makes ``seconds_since_last_login`` an epoch-sized value no real
    user has) without letting them distort the other rows, which a linear model cannot.
    Its single-row ``predict_proba`` is compiled to lookup tables by the service
    (``models.compiled_trees``).  ``HistGradientBoostingClassifier`` scores as well but
    predicts through an OpenMP pool, whose threads compete with the other processes of a
    small shared host and stretch the single-row tail.  scikit-learn is imported here, not
    with the project: ``featserve materialize`` loads the project and needs no model."""
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(
        n_estimators=100, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=seed
    )


class FraudDemo:
    """Demo tables for ``featserve demo-data`` and synthetic transactions to train on."""

    def entity_id(self, index: int, entity: str | None = None) -> str:
        """``u`` and six digits: ``u000123`` (a request names users only)."""
        return entity_id(index)

    def write_tables(
        self, out_dir: Path, n_entities: int, now: int, fmt: Literal["parquet", "csv"]
    ) -> Mapping[str, Path]:
        """One table per group of users ``u000000`` onwards, by ``user:<group>``."""
        paths = write_demo_tables(out_dir, n_entities, now, fmt=fmt)
        return {f"{USER.name}:{group}": path for group, path in paths.items()}

    def training_table(self, n_entities: int, n_rows: int, seed: int, now: int) -> Any:
        """``n_rows`` labelled transactions of ``n_entities`` users (see ``dataset``)."""
        return training_table(n_entities, n_rows, seed, now)


PROJECT = Project(
    name="fraud",
    title="featserve fraud scoring",
    description="Scores card transactions for fraud with a user's features from Redis: "
    "one pipelined round trip, an in-process cache, fallbacks when Redis fails.",
    version="1.0",
    entity=USER,
    entity_field="entity_id",
    groups=GROUPS,
    request=(
        RequestInput("amount", "float", "Transaction amount.", minimum=0, example=250.0),
        RequestInput(
            "timestamp",
            "timestamp",
            "Transaction time, epoch seconds (UTC); defaults to now.",
            minimum=0,
            maximum=4_102_444_800,
            required=False,
            example=1764230400,
        ),
    ),
    derived=DerivedFeatures(DERIVED_FEATURES, READS, derive_one, derive_batch),
    model=ModelSpec(
        inputs=(*USER_FEATURES.feature_names, "amount", *DERIVED_FEATURES),
        answer=ClassProbability(
            label="is_fraud",
            score_description="Probability of fraud, 0 to 1.",
            label_description="True when the score is at or above the threshold.",
        ),
        estimator=gradient_boosting,
    ),
    budget=LatencyBudget(total_ms=50, features_ms=10),
    demo=FraudDemo(),
)
