"""What a request's path is called in metrics and logs: a route of the service, or ``other``.

A path is the one thing in a request line a client writes freely, so it is
never a label value or a log field as such: a scanner's 20,000 paths would be
20,000 series, and the paths themselves (``/user/alice@example.com/...``)
would be published.
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["UNMATCHED_PATH_LABEL", "route_label"]

UNMATCHED_PATH_LABEL = "other"
"""The name of every path that is not one of the service's routes."""


def route_label(path: str, routes: Collection[str]) -> str:
    """``path`` when it is one of ``routes``, else ``UNMATCHED_PATH_LABEL``."""
    return path if path in routes else UNMATCHED_PATH_LABEL
