"""The model's input schema: which columns, in which order, from where.

Training and serving both build the model's input matrix from one
``ModelSchema`` (``schema_of`` a project: its model's input order, each name a
stored feature, a request input or a derived feature) with one
``InputBuilder``, which calls the project's derived-feature functions.  The
trained model carries its schema in its metadata (``to_metadata``); the
service compares it with the schema the loaded project declares (``digest``,
``differences``) and refuses to serve a model whose inputs it would build
differently.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import numpy as np
import numpy.typing as npt

from features.project import DerivedFeatures, Project
from features.registry import Structure

__all__ = [
    "InputBuilder",
    "InputDtype",
    "InputSource",
    "InputSpec",
    "ModelSchema",
    "require_same_schema",
    "schema_of",
]

InputSource = Literal["stored", "request", "derived"]
InputDtype = Literal["int", "float"]


@dataclass(frozen=True)
class InputSpec:
    """One column of the model's input: its name, where it comes from, its type."""

    name: str
    source: InputSource
    dtype: InputDtype
    default: int | float | None = None
    """The training default of a stored input (served when every store misses); else None."""

    def __post_init__(self) -> None:
        if self.source not in get_args(InputSource):
            raise ValueError(f"input {self.name!r}: unknown source {self.source!r}")
        if self.dtype not in get_args(InputDtype):
            raise ValueError(f"input {self.name!r}: unknown dtype {self.dtype!r}")
        if self.source != "stored":
            if self.default is not None:
                raise ValueError(f"input {self.name!r}: only stored inputs have a default")
            return
        object.__setattr__(self, "default", _checked_default(self.name, self.dtype, self.default))

    def to_metadata(self) -> dict[str, Any]:
        """This input as a JSON-serialisable dict; no ``default`` key when there is none.

        (BentoML rejects ``None`` anywhere in a model's metadata.)
        """
        data: dict[str, Any] = {"name": self.name, "source": self.source, "dtype": self.dtype}
        if self.default is not None:
            data["default"] = self.default
        return data

    def describe(self) -> str:
        """A short human-readable form, e.g. ``stored int, default 0``."""
        default = "" if self.default is None else f", default {self.default!r}"
        return f"{self.source} {self.dtype}{default}"


def _checked_default(name: str, dtype: str, default: Any) -> int | float:
    is_int = isinstance(default, int) and not isinstance(default, bool)
    if dtype == "int":
        if not is_int:
            raise ValueError(f"input {name!r}: default {default!r} is not an int")
        return int(default)
    if not (is_int or isinstance(default, float)) or not math.isfinite(default):
        raise ValueError(f"input {name!r}: default {default!r} is not a finite float")
    return float(default)


@dataclass(frozen=True)
class ModelSchema:
    """The ordered inputs of a model and the feature groups they are read from."""

    entity_type: str
    groups: tuple[str, ...]
    """The scored entity's groups by name; another entity's as ``entity:group``."""
    inputs: tuple[InputSpec, ...]
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(spec.name for spec in self.inputs)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate inputs {duplicates}")
        object.__setattr__(self, "_names", names)

    def groups_by_entity(self) -> dict[str, tuple[str, ...]]:
        """The groups read, by entity name: the scored entity first."""
        found: dict[str, list[str]] = {self.entity_type: []}
        for name in self.groups:
            entity, _, group = name.rpartition(":")
            found.setdefault(entity or self.entity_type, []).append(group)
        return {entity: tuple(groups) for entity, groups in found.items()}

    @property
    def names(self) -> tuple[str, ...]:
        """Input names, in column order."""
        return self._names

    def to_metadata(self) -> dict[str, Any]:
        """The schema as a JSON-serialisable dict (lists, not tuples)."""
        return {
            "entity_type": self.entity_type,
            "groups": list(self.groups),
            "inputs": [spec.to_metadata() for spec in self.inputs],
        }

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any]) -> ModelSchema:
        """The schema ``to_metadata`` wrote; ``ValueError`` if ``data`` is not one."""
        try:
            return cls(
                entity_type=str(data["entity_type"]),
                groups=tuple(str(group) for group in data["groups"]),
                inputs=tuple(
                    InputSpec(
                        name=str(item["name"]),
                        source=item["source"],
                        dtype=item["dtype"],
                        default=item.get("default"),
                    )
                    for item in data["inputs"]
                ),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a model schema: {exc!r}") from None

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the schema; equal digests, equal schemas."""
        canonical = json.dumps(self.to_metadata(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def differences(self, other: ModelSchema) -> list[str]:
        """What changes going from this schema to ``other``, one line each; empty if equal."""
        lines: list[str] = []
        if self.entity_type != other.entity_type:
            lines.append(f"entity type changed: {self.entity_type!r} -> {other.entity_type!r}")
        if self.groups != other.groups:
            lines.append(f"feature groups changed: {list(self.groups)} -> {list(other.groups)}")
        mine = {spec.name: spec for spec in self.inputs}
        theirs = {spec.name: spec for spec in other.inputs}
        for spec in other.inputs:
            if spec.name not in mine:
                lines.append(f"input {spec.name!r} added ({spec.describe()})")
        for spec in self.inputs:
            if spec.name not in theirs:
                lines.append(f"input {spec.name!r} removed ({spec.describe()})")
        for spec in self.inputs:
            new = theirs.get(spec.name)
            if new is None:
                continue
            for attribute in ("source", "dtype", "default"):
                before, after = getattr(spec, attribute), getattr(new, attribute)
                if before != after or type(before) is not type(after):
                    lines.append(
                        f"input {spec.name!r} {attribute} changed: {before!r} -> {after!r}"
                    )
        shared_before = [name for name in self.names if name in theirs]
        shared_after = [name for name in other.names if name in mine]
        if shared_before != shared_after:
            lines.append(f"inputs reordered: {shared_before} -> {shared_after}")
        return lines


def schema_of(project: Project) -> ModelSchema:
    """The schema ``project`` declares: its model's inputs in order, each with its source
    and dtype (a stored feature's training default too), read from the hash groups of the
    entities a request names that hold a model input or a feature the derived features
    read (``ModelSchema.groups``)."""
    stored = project.stored_features
    derived = set(project.derived.names) if project.derived else set()
    inputs = []
    for name in project.model.inputs:
        if name in stored:
            feature = stored[name]
            dtype = cast(InputDtype, feature.type_name)
            inputs.append(InputSpec(name, "stored", dtype, feature.default))
        elif name in derived:
            inputs.append(InputSpec(name, "derived", "float"))
        else:
            kind = project.input_by_name(name).type
            inputs.append(InputSpec(name, "request", "float" if kind == "float" else "int"))
    needed = set(project.model.inputs) | set(project.derived.reads if project.derived else ())
    groups = tuple(
        group.name if entity is project.entity else f"{entity.name}:{group.name}"
        for entity in project.entities
        for group in project.registry.groups_of(entity.name)
        if group.structure is Structure.HASH and needed & set(group.feature_names)
    )
    return ModelSchema(entity_type=project.entity.name, groups=groups, inputs=tuple(inputs))


def require_same_schema(trained: ModelSchema, current: ModelSchema, model: str) -> None:
    """Raise ``ValueError`` saying what differs when ``model`` was trained on other inputs."""
    if trained.digest == current.digest:
        return
    changes = "\n".join(f"  - {line}" for line in trained.differences(current))
    raise ValueError(
        f"model {model} was trained on inputs this code no longer builds "
        f"(schema {trained.digest[:12]}, current {current.digest[:12]}); "
        f"from the model's schema to the current one:\n{changes}\n"
        "Retrain it (`featserve train PROJECT`, or `make train` for the example)."
    )


class InputBuilder:
    """Builds the model's input rows from stored values and request inputs, by ``schema``,
    with the project's derived features: training and serving call the same one."""

    def __init__(self, schema: ModelSchema, derived: DerivedFeatures | None) -> None:
        self._schema = schema
        self._names = schema.names
        self._derived = derived
        read = [spec.name for spec in schema.inputs if spec.source != "derived"]
        self._columns_read = tuple(dict.fromkeys([*read, *(derived.reads if derived else ())]))

    @property
    def schema(self) -> ModelSchema:
        """The schema the rows follow."""
        return self._schema

    def row(self, values: Mapping[str, Any]) -> npt.NDArray[np.float64]:
        """The input of one request, shape ``(1, len(schema.inputs))``, float64.

        ``values`` holds every stored feature the model or the derived features need
        (defaults already filled in) and every request input; extra keys are ignored.
        """
        if self._derived is not None:
            values = {**values, **self._derived.one(values)}
        names = self._names
        return np.fromiter((values[name] for name in names), np.float64, len(names)).reshape(1, -1)

    def matrix(self, columns: Mapping[str, npt.ArrayLike], n_rows: int) -> npt.NDArray[np.float64]:
        """The input of ``n_rows`` requests, shape ``(n_rows, len(schema.inputs))``, float64.

        Row ``i`` equals ``row`` of request ``i`` exactly.  ``columns`` maps every stored
        feature and request input (as ``row`` takes them) to a column of ``n_rows`` values.
        """
        # Each column read becomes an array once: checked here, put in the matrix below.
        read: dict[str, npt.NDArray[Any]] = {}
        for name in self._columns_read:
            read[name] = np.asarray(columns[name])
            if read[name].shape != (n_rows,):
                raise ValueError(
                    f"input {name!r} has shape {read[name].shape}, ({n_rows},) expected"
                )
        derived = self._derived.batch(columns) if self._derived is not None else {}
        matrix = np.empty((n_rows, len(self._schema.inputs)), dtype=np.float64)
        for column, spec in enumerate(self._schema.inputs):
            source = derived if spec.source == "derived" else read
            values = np.asarray(source[spec.name], dtype=np.float64)
            if values.shape != (n_rows,):
                raise ValueError(
                    f"input {spec.name!r} has shape {values.shape}, ({n_rows},) expected"
                )
            matrix[:, column] = values
        return matrix
