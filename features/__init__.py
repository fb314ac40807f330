"""featserve's feature layer: registry, keys, stores, cache, resolver and derived features."""

from features.errors import (
    FeatureServeError,
    InvalidEntityId,
    RegistryError,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from features.keys import feature_key, validate_entity_id
from features.registry import FRAUD_REGISTRY, Entity, Feature, FeatureGroup, Registry, Structure
from features.serving.cache import FeatureCache
from features.serving.resolver import EntityFeatures, GroupResult, Resolver, Source
from features.settings import Settings
from features.timing import StageTimer

__all__ = [
    "FRAUD_REGISTRY",
    "Entity",
    "EntityFeatures",
    "Feature",
    "FeatureCache",
    "FeatureGroup",
    "FeatureServeError",
    "GroupResult",
    "InvalidEntityId",
    "Registry",
    "RegistryError",
    "Resolver",
    "Settings",
    "Source",
    "StageTimer",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "Structure",
    "feature_key",
    "validate_entity_id",
]
