"""The model's input schema: which columns, in which order, from where.

Training and serving both build the model's input matrix from one
``ModelSchema``: stored features read from the online store, the request's
``amount``, then the features ``features.derive`` computes inline.  The
trained model carries its schema in its metadata (``to_metadata``); the
service compares it with the schema its own code builds (``digest``,
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

from features.derive import DERIVED_FEATURES, STORED_INPUTS, derive_batch, derive_one
from features.registry import FRAUD_REGISTRY, Registry

__all__ = [
    "REQUEST_INPUTS",
    "InputDtype",
    "InputSource",
    "InputSpec",
    "ModelSchema",
    "build_matrix",
    "build_row",
    "fraud_schema",
    "require_same_schema",
]

InputSource = Literal["stored", "request", "derived"]
InputDtype = Literal["int", "float"]

REQUEST_INPUTS: tuple[str, ...] = ("amount",)
"""Inputs taken from the request itself, as ``build_row``/``build_matrix`` receive them."""


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
    inputs: tuple[InputSpec, ...]
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(spec.name for spec in self.inputs)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate inputs {duplicates}")
        for spec in self.inputs:
            known = {"request": REQUEST_INPUTS, "derived": DERIVED_FEATURES}.get(spec.source)
            if known is not None and spec.name not in known:
                raise ValueError(f"{spec.source} input {spec.name!r} is not one of {known}")
        stored = {spec.name for spec in self.inputs if spec.source == "stored"}
        needed = sorted(set(STORED_INPUTS) - stored)
        if needed and any(spec.source == "derived" for spec in self.inputs):
            raise ValueError(f"derived inputs need the stored inputs {needed}")
        object.__setattr__(self, "_names", names)

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


def fraud_schema(registry: Registry = FRAUD_REGISTRY) -> ModelSchema:
    """The fraud model's schema: ``user:features`` in declaration order, amount, derived."""
    group = registry.group("user", "features")
    stored = tuple(
        InputSpec(feature.name, "stored", cast(InputDtype, feature.type_name), feature.default)
        for feature in group.features
    )
    request = tuple(InputSpec(name, "request", "float") for name in REQUEST_INPUTS)
    derived = tuple(InputSpec(name, "derived", "float") for name in DERIVED_FEATURES)
    return ModelSchema(entity_type="user", groups=(group.name,), inputs=stored + request + derived)


def require_same_schema(trained: ModelSchema, current: ModelSchema, model: str) -> None:
    """Raise ``ValueError`` saying what differs when ``model`` was trained on other inputs."""
    if trained.digest == current.digest:
        return
    changes = "\n".join(f"  - {line}" for line in trained.differences(current))
    raise ValueError(
        f"model {model} was trained on inputs this code no longer builds "
        f"(schema {trained.digest[:12]}, current {current.digest[:12]}); "
        f"from the model's schema to the current one:\n{changes}\n"
        "Retrain it with `python -m models.train`."
    )


def build_row(
    schema: ModelSchema, stored: Mapping[str, Any], amount: float, timestamp: int
) -> npt.NDArray[np.float64]:
    """The model input of one request, shape ``(1, len(schema.inputs))``, float64.

    ``stored`` holds every stored input (defaults already filled in); extra keys are ignored.
    """
    amount = float(amount)
    values = {**stored, **derive_one(amount, int(timestamp), stored), "amount": amount}
    names = schema.names
    return np.fromiter((values[name] for name in names), np.float64, len(names)).reshape(1, -1)


def build_matrix(
    schema: ModelSchema,
    stored: Mapping[str, npt.ArrayLike],
    amount: npt.ArrayLike,
    timestamp: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """The model input of many requests, shape ``(n, len(schema.inputs))``, float64.

    Row ``i`` equals ``build_row`` of request ``i`` exactly.  ``stored`` maps every stored
    input to a column of length n; ``amount`` and ``timestamp`` are columns of length n.
    """
    amount_col = np.asarray(amount, dtype=np.float64)
    timestamp_col = np.asarray(timestamp, dtype=np.int64)
    if amount_col.ndim != 1 or timestamp_col.shape != amount_col.shape:
        raise ValueError(
            f"amount and timestamp must be columns of one length, got shapes "
            f"{amount_col.shape} and {timestamp_col.shape}"
        )
    derived = derive_batch(amount_col, timestamp_col, stored)
    matrix = np.empty((amount_col.shape[0], len(schema.inputs)), dtype=np.float64)
    for column, spec in enumerate(schema.inputs):
        if spec.source == "stored":
            values = np.asarray(stored[spec.name], dtype=np.float64)
        elif spec.source == "request":
            values = amount_col
        else:
            values = derived[spec.name]
        if values.shape != amount_col.shape:
            raise ValueError(
                f"input {spec.name!r} has shape {values.shape}, {amount_col.shape} expected"
            )
        matrix[:, column] = values
    return matrix
