"""The feature registry: entities, feature groups and features, declared once.

Everything else (keys, stores, the resolver, training, the service) reads
these declarations; this module imports nothing else of ours but the dtypes
and the error tree.  A declaration that cannot be right (a duplicate name, a
default of the wrong type, an unknown dtype) raises ``RegistryError`` when it
is made, which for a project means when it is loaded (``features.project``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from features.dtypes import DTYPES, Dtype
from features.errors import RegistryError

__all__ = [
    "Entity",
    "Feature",
    "FeatureGroup",
    "Registry",
    "Structure",
]


class Structure(StrEnum):
    """The Redis data structure a feature group is stored in."""

    HASH = "hash"
    """One hash per entity; fields are feature names, values decimal strings."""
    SORTED_SET = "sorted_set"
    """Members ranked by score (a timestamp); the group's one feature is the top-N list."""
    STRING = "string"
    """One opaque blob per entity (an embedding); the group has exactly one feature."""


@dataclass(frozen=True)
class Entity:
    """A kind of thing features describe (a user, a card, a merchant)."""

    name: str
    description: str = ""
    key_prefix: str = ""
    """Put before the entity's Redis keys (``features.project.Project`` sets it for every
    entity of a project that declares one), so projects can share one Redis."""

    def __post_init__(self) -> None:
        _check_identifier(self.name, "entity name")
        if not all(c.isascii() and (c.isalnum() or c in "_-.:") for c in self.key_prefix):
            raise RegistryError(
                f"entity {self.name!r}: key prefix {self.key_prefix!r} may hold letters, "
                "digits, '_', '-', '.' and ':' only"
            )

    @property
    def key_name(self) -> str:
        """The entity as its keys start: the key prefix, then the name (``user``)."""
        return f"{self.key_prefix}{self.name}"


@dataclass(frozen=True)
class Feature:
    """One named value with a dtype and the default the model was trained with."""

    name: str
    type_name: str
    """The declared type: a key of ``features.dtypes.DTYPES`` (``int``, ``float``, ...)."""
    default: Any
    description: str = ""
    dim: int | None = None
    """Vector length for ``float32_vector``; maximum list length for ``str_list``."""
    minimum: float | None = None
    """The smallest valid value of an int or float feature; writes below it are refused."""
    maximum: float | None = None
    """The largest valid value of an int or float feature; writes above it are refused."""
    dtype: Dtype = field(init=False, repr=False, compare=False)
    """The type object that parses, formats and checks this feature's values (from
    ``type_name``; an attribute, not a property, because every value read goes through it)."""

    def __post_init__(self) -> None:
        _check_identifier(self.name, "feature name")
        if self.name.startswith("_"):
            raise RegistryError(f"feature {self.name!r}: names starting with '_' are reserved")
        if self.type_name not in DTYPES:
            raise RegistryError(
                f"feature {self.name!r}: unknown dtype {self.type_name!r} "
                f"(known: {', '.join(sorted(DTYPES))})"
            )
        object.__setattr__(self, "dtype", DTYPES[self.type_name])
        try:
            normalized = self.dtype.normalize(self.default, self.dim)
        except (TypeError, ValueError) as exc:
            raise RegistryError(
                f"feature {self.name!r}: default {self.default!r} is not a valid "
                f"{self.type_name}: {exc}"
            ) from None
        object.__setattr__(self, "default", normalized)
        if (self.minimum is not None or self.maximum is not None) and self.type_name not in (
            "int",
            "float",
        ):
            raise RegistryError(f"feature {self.name!r}: only int and float features take a range")
        problem = self.out_of_range(normalized)
        if problem:
            raise RegistryError(f"feature {self.name!r}: default {problem}")

    def out_of_range(self, value: Any) -> str | None:
        """Why ``value`` (already normalized) is outside the declared range, or ``None``."""
        if self.minimum is not None and value < self.minimum:
            return f"{value!r} is below the minimum {self.minimum!r}"
        if self.maximum is not None and value > self.maximum:
            return f"{value!r} is above the maximum {self.maximum!r}"
        return None


@dataclass(frozen=True)
class FeatureGroup:
    """Features of one entity that are written together and stored under one key."""

    name: str
    entity: Entity
    structure: Structure
    freshness: timedelta
    features: tuple[Feature, ...]
    top_n: int | None = None
    """For sorted sets: how many members (newest first) a read returns."""
    by_name: Mapping[str, Feature] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"group {self.entity.name}:{self.name}"
        _check_identifier(self.name, f"{where}: group name")
        if self.freshness <= timedelta(0):
            raise RegistryError(f"{where}: freshness must be positive, got {self.freshness}")
        if not self.features:
            raise RegistryError(f"{where}: declares no features")
        names = [feature.name for feature in self.features]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise RegistryError(f"{where}: duplicate feature names {duplicates}")
        self._check_structure(where)
        object.__setattr__(
            self, "by_name", MappingProxyType({feature.name: feature for feature in self.features})
        )

    def _check_structure(self, where: str) -> None:
        scalar = {"int", "float"}
        if self.structure is Structure.HASH:
            wrong = [f.name for f in self.features if f.type_name not in scalar]
            if wrong:
                raise RegistryError(f"{where}: a hash holds int or float features, not {wrong}")
            return
        if len(self.features) != 1:
            raise RegistryError(f"{where}: a {self.structure} group holds exactly one feature")
        expected = "str_list" if self.structure is Structure.SORTED_SET else "float32_vector"
        if self.features[0].type_name != expected:
            raise RegistryError(f"{where}: a {self.structure} group's feature must be {expected}")
        if self.structure is Structure.SORTED_SET and (self.top_n is None or self.top_n < 1):
            raise RegistryError(f"{where}: a sorted_set group needs top_n >= 1")

    @property
    def ttl(self) -> timedelta:
        """How long a written key lives in Redis: twice the freshness window."""
        return 2 * self.freshness

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature names in declaration order."""
        return tuple(feature.name for feature in self.features)

    @property
    def defaults(self) -> Mapping[str, Any]:
        """The training-time default of every feature, by name."""
        return MappingProxyType({feature.name: feature.default for feature in self.features})


class Registry:
    """All entities and feature groups the service knows, looked up by name."""

    def __init__(self, groups: Iterable[FeatureGroup]) -> None:
        self._groups: dict[tuple[str, str], FeatureGroup] = {}
        self._entities: dict[str, Entity] = {}
        for group in groups:
            key = (group.entity.name, group.name)
            if key in self._groups:
                raise RegistryError(f"duplicate feature group {group.entity.name}:{group.name}")
            known = self._entities.setdefault(group.entity.name, group.entity)
            if known != group.entity:
                raise RegistryError(f"entity {group.entity.name!r} is declared twice, differently")
            self._groups[key] = group

    @property
    def entities(self) -> tuple[Entity, ...]:
        """Every declared entity."""
        return tuple(self._entities.values())

    def groups_of(self, entity_type: str) -> tuple[FeatureGroup, ...]:
        """The feature groups of one entity type, in declaration order."""
        self.entity(entity_type)
        return tuple(g for (e, _), g in self._groups.items() if e == entity_type)

    def entity(self, name: str) -> Entity:
        """The entity called ``name``; ``RegistryError`` names the known ones otherwise."""
        try:
            return self._entities[name]
        except KeyError:
            raise RegistryError(
                f"unknown entity type {name!r} (known: {', '.join(sorted(self._entities))})"
            ) from None

    def group(self, entity_type: str, name: str) -> FeatureGroup:
        """The group ``name`` of ``entity_type``; ``RegistryError`` otherwise."""
        try:
            return self._groups[(entity_type, name)]
        except KeyError:
            self.entity(entity_type)
            known = ", ".join(g.name for g in self.groups_of(entity_type))
            raise RegistryError(
                f"unknown feature group {entity_type}:{name} (known: {known})"
            ) from None


def _check_identifier(name: str, what: str) -> None:
    if not (isinstance(name, str) and name.isidentifier() and name.isascii()):
        raise RegistryError(f"{what} {name!r} must be an ASCII identifier")
