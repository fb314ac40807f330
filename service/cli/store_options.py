"""What the subcommands that reach the stores share: ``--redis-url`` and ``ENTITY:GROUP`` names."""

from __future__ import annotations

import argparse

from features.errors import RegistryError
from features.registry import FeatureGroup, Registry
from features.settings import Settings

__all__ = ["add_redis_url_option", "group_named", "settings_with_redis_url"]


def add_redis_url_option(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the ``--redis-url URL`` option (read by ``settings_with_redis_url``)."""
    parser.add_argument(
        "--redis-url",
        help="default: $REDIS_URL. Prefer the variable: a password in this flag shows in `ps` "
        "to every user of the machine",
    )


def settings_with_redis_url(args: argparse.Namespace) -> Settings:
    """The caller's settings (else the environment's), with ``--redis-url`` when given."""
    settings: Settings = args.settings or Settings()
    if args.redis_url:
        settings = settings.model_copy(update={"redis_url": args.redis_url})
    return settings


def group_named(registry: Registry, name: str) -> FeatureGroup:
    """The group ``name`` (``ENTITY:GROUP``, e.g. ``user:features``) names in ``registry``."""
    entity, _, group = name.partition(":")
    if not group:
        raise RegistryError(f"--group {name!r}: expected ENTITY:GROUP, e.g. user:features")
    return registry.group(entity, group)
