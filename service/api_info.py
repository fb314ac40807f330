"""The OpenAPI page under the project's own title, description and version.

BentoML 1.4.40 titles the page with the service's class name and, served
from source, describes it with its own boilerplate README and version
"None".  ``show_project_info`` makes one service's spec say what the project
declares instead, whether served from source or from a Bento.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["show_project_info"]


def show_project_info(service: Any, title: str, description: str, version: str) -> None:
    """Make ``service`` (a ``bentoml.Service``) publish ``title``, ``description`` and
    ``version`` in its OpenAPI spec (``/docs.json`` and the page at ``/``)."""
    base = type(service)

    class ProjectService(base):  # type: ignore[misc,valid-type]
        # No new attributes: BentoML's Service uses slots, and the layouts must match for
        # the object to change class.
        __slots__ = ()

        @property
        def openapi_spec(self) -> Any:
            spec = base.openapi_spec.fget(self)
            info = attrs.evolve(spec.info, title=title, description=description, version=version)
            return attrs.evolve(spec, info=info)

    ProjectService.__name__ = base.__name__
    ProjectService.__qualname__ = base.__qualname__
    service.__class__ = ProjectService
