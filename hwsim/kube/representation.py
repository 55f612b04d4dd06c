"""A response body in the representation the client asked for: as stored (JSON), as the Table
`kubectl get` prints, or as PartialObjectMetadata (see `nodefence.hwsim.kube.routing.negotiate`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from nodefence.hwsim.kube.resources import ResourceType
from nodefence.hwsim.kube.routing import (
    Representation,
)
from nodefence.hwsim.kube.tables import build_table

Obj = dict[str, Any]


def represent(
    rt: ResourceType, body: Obj, rep: Representation, query: Any, clock: Callable[[], datetime]
) -> Obj:
    """`body` (an object or a list) as `rep` asks; `clock` ages the Table's rows."""
    is_list = "items" in body and body.get("kind", "").endswith("List")
    items = body["items"] if is_list else [body]
    if rep.kind == "Table":
        return build_table(
            rt.printed_columns,
            items,
            clock(),
            api_version=rep.api_version,
            include_object=query.get("includeObject", "Metadata"),
            list_meta=body["metadata"] if is_list else {},
        )
    if rep.kind == "PartialObjectMetadata":
        partial = [
            {
                "kind": "PartialObjectMetadata",
                "apiVersion": rep.api_version,
                "metadata": o["metadata"],
            }
            for o in items
        ]
        if not is_list:
            return partial[0]
        return {
            "kind": "PartialObjectMetadataList",
            "apiVersion": rep.api_version,
            "metadata": body["metadata"],
            "items": partial,
        }
    return body
