"""What a project declares: its features, its request, its derived features, its model.

A project is a folder its owner keeps outside this repository; its
``project.py`` builds one ``Project`` from the classes below (the documented
API a project imports: this module only).  ``features.project_loader`` loads
it once, at start-up; after that the service, the command line and training
see only these frozen objects, never the folder and never a lookup per
request.

A ``Project`` holds

- the entity a request scores and the field of the request that names it, and any other
  entities the request names (``RequestEntity``): one id each (a card's merchant), or a
  list of candidates scored one by one (the items to rank for a user);
- its feature groups (``FeatureGroup`` and ``Feature`` from ``features.registry``,
  re-exported here): dtype, training default, bounds, freshness, structure;
- its request inputs (``RequestInput``): name, type, bounds, required or a default;
- its derived features (``DerivedFeatures``): plain Python functions of the stored
  features and the request inputs, one per row and one per column, which training
  and serving both call;
- its model (``ModelSpec``): the input order, what the model answers
  (``ClassProbability`` with a threshold and a label name, or ``RegressionValue``)
  and how to make the estimator;
- its latency budget, a key prefix for its Redis keys, and, optionally, its demo data.

``Project.digest`` names the version of the declarations a model was trained
on: see its docstring for what it covers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt

from features.budgets import LatencyBudget
from features.errors import ProjectError
from features.registry import Entity, Feature, FeatureGroup, Registry, Structure

__all__ = [
    "Answer",
    "ClassProbability",
    "DemoData",
    "DerivedFeatures",
    "Entity",
    "Feature",
    "FeatureGroup",
    "LatencyBudget",
    "ModelSpec",
    "Project",
    "RegressionValue",
    "RequestEntity",
    "RequestInput",
    "RequestInputType",
    "Structure",
    "TrainingTable",
]

RequestInputType = Literal["int", "float", "timestamp"]
"""``int`` and ``float`` are JSON numbers; ``timestamp`` is epoch seconds (an int) that
defaults to the time the request arrives when it is optional and absent."""

TrainingTable = Mapping[str, npt.NDArray[Any]]
"""Columns of equal length: stored features, request inputs and the label, by name."""

RowFunction = Callable[[Mapping[str, Any]], Mapping[str, float]]
BatchFunction = Callable[[Mapping[str, npt.ArrayLike]], Mapping[str, npt.NDArray[np.float64]]]


@dataclass(frozen=True)
class RequestInput:
    """One value the request carries besides the entity, e.g. an amount or a timestamp."""

    name: str
    type: RequestInputType
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    required: bool = True
    default: int | float | None = None
    """The value of an optional input the request leaves out; an optional ``timestamp``
    without one takes the request's arrival time."""
    example: int | float | None = None
    """Shown on the OpenAPI page."""

    def __post_init__(self) -> None:
        _check_identifier(self.name, "request input")
        if self.type not in get_args(RequestInputType):
            raise ProjectError(
                f"request input {self.name!r}: unknown type {self.type!r} "
                f"(known: {', '.join(get_args(RequestInputType))})"
            )
        if self.required and self.default is not None:
            raise ProjectError(f"request input {self.name!r}: a required input takes no default")
        if not self.required and self.default is None and self.type != "timestamp":
            raise ProjectError(
                f"request input {self.name!r}: an optional {self.type} input needs a default"
            )
        for what in ("default", "example"):
            value = getattr(self, what)
            problem = None if value is None else self.out_of_range(value)
            if problem:
                raise ProjectError(f"request input {self.name!r}: {what} {problem}")

    @property
    def is_integer(self) -> bool:
        """Whether the input is a whole number (``int`` or ``timestamp``)."""
        return self.type != "float"

    def out_of_range(self, value: float) -> str | None:
        """Why ``value`` is outside the declared bounds, or ``None``."""
        if self.minimum is not None and value < self.minimum:
            return f"{value!r} is below the minimum {self.minimum!r}"
        if self.maximum is not None and value > self.maximum:
            return f"{value!r} is above the maximum {self.maximum!r}"
        return None


@dataclass(frozen=True)
class RequestEntity:
    """An entity a request names besides the scored one, by id, under ``field``.

    Its stored features join the scored entity's in the model's input row.  With
    ``candidates`` the field holds a list of ids, at most ``max_count``: the model scores one
    row per candidate (the scored entity's features, the request inputs and that candidate's
    features), and the answer gives one score per candidate in request order, each under
    ``answer_field``.  All the entities' groups are read in one round trip per Redis node.
    """

    field: str
    entity: Entity
    candidates: bool = False
    max_count: int = 100
    """The most ids a candidates field takes."""
    description: str = ""
    answer_field: str = ""
    """The key naming a candidate in its answer; default ``<entity>_id``."""

    def __post_init__(self) -> None:
        _check_identifier(self.field, "request entity field")
        if not self.answer_field:
            object.__setattr__(self, "answer_field", f"{self.entity.name}_id")
        _check_identifier(self.answer_field, "request entity answer field")
        if self.max_count < 1:
            raise ProjectError(f"request entity {self.field!r}: max_count must be at least 1")


@dataclass(frozen=True)
class DerivedFeatures:
    """Features computed at request time from stored features and request inputs.

    ``one`` takes one request's values by name (every stored feature and request input,
    defaults filled in) and returns the derived values by name; ``batch`` takes the same
    names as columns (sequences or arrays of equal length) and returns one float64 column
    per derived feature.  Both must agree exactly: training calls ``batch``, a single
    request is served with ``one``.
    """

    names: tuple[str, ...]
    reads: tuple[str, ...]
    """The stored features and request inputs the functions read."""
    one: RowFunction
    batch: BatchFunction

    def __post_init__(self) -> None:
        for name in self.names:
            _check_identifier(name, "derived feature")
        duplicates = sorted({name for name in self.names if self.names.count(name) > 1})
        if duplicates:
            raise ProjectError(f"derived features named twice: {duplicates}")
        if not (callable(self.one) and callable(self.batch)):
            raise ProjectError("derived features need two functions: one (a row), batch (columns)")


@dataclass(frozen=True)
class ClassProbability:
    """The model answers the probability of one class (``predict_proba``'s ``positive``
    column); the answer also says whether the score reaches the threshold, under ``label``."""

    label: str
    """The name of the yes/no field of the answer, e.g. ``is_risky``."""
    score_description: str = "Probability of the positive class, 0 to 1."
    label_description: str = "True when the score is at or above the threshold."
    threshold: float | None = None
    """A fixed threshold; ``None``: training picks the one that maximises F1 on held-out rows."""
    positive: int = 1
    """The column of ``predict_proba`` that is scored."""
    kind: Literal["class_probability"] = field(default="class_probability", init=False)

    def __post_init__(self) -> None:
        _check_identifier(self.label, "answer label")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ProjectError(f"answer threshold {self.threshold!r} is not within [0, 1]")


@dataclass(frozen=True)
class RegressionValue:
    """The model answers a number (``predict``), e.g. a rating or a ranking score."""

    score_description: str = "The model's prediction."
    kind: Literal["regression"] = field(default="regression", init=False)


Answer = ClassProbability | RegressionValue
"""What the model answers."""


class EstimatorFactory(Protocol):
    """Makes a fresh, unfitted scikit-learn estimator (or ``Pipeline``) for a seed."""

    def __call__(self, seed: int) -> Any:
        """The estimator to fit."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    """The model: its input columns in order, what it answers, how to make it."""

    inputs: tuple[str, ...]
    """Stored features, request inputs and derived features, in the model's column order."""
    answer: Answer
    estimator: EstimatorFactory | None = None
    """What ``featserve train`` fits; ``None`` for a model trained some other way."""
    label_column: str = "label"
    """The column of a training table that holds the target."""


class DemoData(Protocol):
    """What a project may bring for demos and tests: tables to load, rows to train on, and
    the ids of its demo entities."""

    def entity_id(self, index: int, entity: str | None = None) -> str:
        """The id of demo entity number ``index`` of the scored entity, or of ``entity``
        when a request names others too (``featserve sla --entities N`` asks for the
        first ``N`` of each)."""
        ...

    def write_tables(
        self, out_dir: Path, n_entities: int, now: int, fmt: Literal["parquet", "csv"]
    ) -> Mapping[str, Path]:
        """Write one table per feature group for ``featserve materialize``; the paths by
        qualified group name (``entity:group``)."""
        ...

    def training_table(self, n_entities: int, n_rows: int, seed: int, now: int) -> TrainingTable:
        """Labelled rows (stored features as served, request inputs, the label column)."""
        ...


@dataclass(frozen=True)
class Project:
    """Everything featserve needs to serve one model; built by a project's ``project.py``."""

    name: str
    entity: Entity
    groups: tuple[FeatureGroup, ...]
    request: tuple[RequestInput, ...]
    model: ModelSpec
    budget: LatencyBudget
    derived: DerivedFeatures | None = None
    entity_field: str = "entity_id"
    """The request field that names the scored entity."""
    title: str = ""
    """The API's title (OpenAPI); default: the name."""
    description: str = ""
    """The API's description (OpenAPI)."""
    version: str = "0"
    """The API's version (OpenAPI)."""
    key_prefix: str = ""
    """Put before every Redis key of the project (``cards:user:{u1}:stats`` for the prefix
    ``cards:``), so projects can share one Redis; empty: ``user:{u1}:stats``."""
    demo: DemoData | None = None
    request_entities: tuple[RequestEntity, ...] = ()
    """Entities the request names besides the scored one (``RequestEntity``)."""
    registry: Registry = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_identifier(self.name, "project name")
        _check_identifier(self.entity_field, "entity field")
        if self.key_prefix and not _is_key_prefix(self.key_prefix):
            raise ProjectError(
                f"key prefix {self.key_prefix!r}: letters, digits, '_', '-', '.', ':' only"
            )
        if self.key_prefix:
            self._prefix_keys()
        object.__setattr__(self, "registry", Registry(self.groups))
        self.registry.entity(self.entity.name)
        taken = {self.entity_field: "the entity field"}
        self._check_request_entities(taken)
        request_names = [item.name for item in self.request]
        owners: dict[str, str] = {}
        for entity in self.entities:
            for group in self.registry.groups_of(entity.name):
                if group.structure is not Structure.HASH:
                    continue
                for feature in group.features:
                    owner = owners.setdefault(feature.name, entity.name)
                    if owner != entity.name:
                        raise ProjectError(
                            f"stored feature {feature.name!r} is declared by both "
                            f"{owner!r} and {entity.name!r}: a request reads both, so each "
                            "feature name must be unique"
                        )
        for feature in self.stored_features.values():
            taken.setdefault(feature.name, "a stored feature")
        for name in request_names:
            if name in taken:
                raise ProjectError(f"request input {name!r} has the name of {taken[name]}")
            taken[name] = "a request input"
        for name in self.derived.names if self.derived else ():
            if name in taken:
                raise ProjectError(f"derived feature {name!r} has the name of {taken[name]}")
            taken[name] = "a derived feature"
        if self.derived is not None:
            unknown = [name for name in self.derived.reads if name not in taken]
            if unknown:
                raise ProjectError(f"derived features read unknown names {unknown}")
        unknown = [name for name in self.model.inputs if name not in taken]
        if unknown:
            raise ProjectError(
                f"model inputs {unknown} are neither stored features of "
                f"{' or '.join(repr(entity.name) for entity in self.entities)}, "
                "request inputs nor derived features"
            )
        repeated = sorted({n for n in self.model.inputs if self.model.inputs.count(n) > 1})
        if repeated:
            raise ProjectError(f"model inputs named twice: {repeated}")

    def _check_request_entities(self, taken: dict[str, str]) -> None:
        """Each request entity has a field of its own, an entity with feature groups, and
        at most one of them holds candidates."""
        names = {self.entity.name}
        for item in self.request_entities:
            if item.field in taken:
                raise ProjectError(
                    f"request entity field {item.field!r} has the name of {taken[item.field]}"
                )
            taken[item.field] = "a request entity field"
            if item.entity.name in names:
                raise ProjectError(
                    f"request entity {item.field!r}: entity {item.entity.name!r} is named "
                    "twice in a request"
                )
            names.add(item.entity.name)
            if not self.registry.groups_of(item.entity.name):
                raise ProjectError(
                    f"request entity {item.field!r}: entity {item.entity.name!r} has no "
                    "feature group"
                )
        if sum(item.candidates for item in self.request_entities) > 1:
            raise ProjectError("at most one request entity may hold candidates")
        if self.candidates is not None:
            taken.setdefault("top_k", "the option that keeps the best candidates")

    def _prefix_keys(self) -> None:
        """Give every entity of the project the key prefix (its keys become
        ``{prefix}{entity}:{<id>}:{group}``)."""
        prefixed = {
            group.entity.name: replace(group.entity, key_prefix=self.key_prefix)
            for group in self.groups
        }
        groups = tuple(replace(group, entity=prefixed[group.entity.name]) for group in self.groups)
        object.__setattr__(self, "groups", groups)
        entity = prefixed.get(self.entity.name, replace(self.entity, key_prefix=self.key_prefix))
        object.__setattr__(self, "entity", entity)
        others = tuple(
            replace(
                item,
                entity=prefixed.get(
                    item.entity.name, replace(item.entity, key_prefix=self.key_prefix)
                ),
            )
            for item in self.request_entities
        )
        object.__setattr__(self, "request_entities", others)

    @property
    def entities(self) -> tuple[Entity, ...]:
        """The scored entity, then each request entity, in declaration order."""
        return (self.entity, *(item.entity for item in self.request_entities))

    @property
    def candidates(self) -> RequestEntity | None:
        """The request entity whose ids are scored one by one, if any."""
        return next((item for item in self.request_entities if item.candidates), None)

    @property
    def stored_features(self) -> Mapping[str, Feature]:
        """The int and float features of the hash groups of every entity a request names
        (the scored one and the request entities), by name."""
        return {
            feature.name: feature
            for entity in self.entities
            for group in self.registry.groups_of(entity.name)
            if group.structure is Structure.HASH
            for feature in group.features
        }

    def input_by_name(self, name: str) -> RequestInput:
        """The request input called ``name``; ``ProjectError`` otherwise."""
        for item in self.request:
            if item.name == name:
                return item
        raise ProjectError(f"no request input {name!r}")

    @cached_property
    def digest(self) -> str:
        """SHA-256 (hex) of what decides the model's inputs and answer.

        Covered: the scored entity and its field; the request entities (field, entity,
        whether candidates; absent when there are none, so a one-entity project's digest
        is what it was before they existed); every feature group (name, entity,
        structure, top_n, and each feature's name, dtype, default, dim and bounds); the
        request inputs (name, type, bounds, required, default); the derived features'
        names and reads, and the full source text of the file(s) defining their two
        functions (a helper imported from another file is not covered); the model's
        input order and its answer (kind, label, fixed threshold, positive class).
        Not covered: name, title, description, version, freshness windows, key prefix,
        latency budget, estimator and demo data, which change no input of the model.
        """
        declared: dict[str, Any] = {
            "entity": self.entity.name,
            "entity_field": self.entity_field,
            "groups": [_group_declaration(group) for group in self.groups],
            "request": [_request_declaration(item) for item in self.request],
            "derived": None if self.derived is None else _derived_declaration(self.derived),
            "model": {"inputs": list(self.model.inputs), "answer": _answer(self.model.answer)},
        }
        if self.request_entities:
            declared["request_entities"] = [
                {"field": item.field, "entity": item.entity.name, "candidates": item.candidates}
                for item in self.request_entities
            ]
        canonical = json.dumps(declared, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _group_declaration(group: FeatureGroup) -> dict[str, Any]:
    return {
        "name": group.name,
        "entity": group.entity.name,
        "structure": group.structure.value,
        "top_n": group.top_n,
        "features": [
            {
                "name": f.name,
                "type": f.type_name,
                "default": list(f.default) if isinstance(f.default, tuple) else f.default,
                "dim": f.dim,
                "minimum": f.minimum,
                "maximum": f.maximum,
            }
            for f in group.features
        ],
    }


def _request_declaration(item: RequestInput) -> dict[str, Any]:
    return {
        "name": item.name,
        "type": item.type,
        "minimum": item.minimum,
        "maximum": item.maximum,
        "required": item.required,
        "default": item.default,
    }


def _derived_declaration(derived: DerivedFeatures) -> dict[str, Any]:
    sources = sorted({_source_digest(function) for function in (derived.one, derived.batch)})
    return {"names": list(derived.names), "reads": list(derived.reads), "sources": sources}


def _source_digest(function: Callable[..., Any]) -> str:
    """SHA-256 of the text of the file that defines ``function``."""
    try:
        path = inspect.getsourcefile(function)
    except TypeError:
        path = None
    if path is None:
        raise ProjectError(f"derived feature function {function!r} has no source file")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _answer(answer: Answer) -> dict[str, Any]:
    if isinstance(answer, ClassProbability):
        return {
            "kind": answer.kind,
            "label": answer.label,
            "threshold": answer.threshold,
            "positive": answer.positive,
        }
    return {"kind": answer.kind}


def _check_identifier(name: str, what: str) -> None:
    if not (isinstance(name, str) and name.isidentifier() and name.isascii()):
        raise ProjectError(f"{what} {name!r} must be an ASCII identifier")


def _is_key_prefix(prefix: str) -> bool:
    return prefix.isascii() and all(c.isalnum() or c in "_-.:" for c in prefix)
