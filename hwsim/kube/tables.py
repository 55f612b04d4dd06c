"""Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for.

Columns read an object and the current time, so AGE is computed the way the real server does
(`HumanDuration`). CRD-style resources use `path_column`, the same `.status.phase` JSON paths
as a CRD's `additionalPrinterColumns`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Obj = dict[str, Any]
Cell = str | int | float | bool | None


@dataclass(frozen=True)
class Column:
    """One printed column: header `name`, OpenAPI `type`, and how to compute the cell."""

    name: str
    value: Callable[[Obj, datetime], Cell]
    type: str = "string"
    format: str = ""
    priority: int = 0
    description: str = ""

    def definition(self) -> Obj:
        """The `columnDefinitions` entry."""
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


_INDEX = re.compile(r"^(?P<key>[^\[]*)(?P<subs>(\[[^\]]*\])*)$")
_FILTER = re.compile(r"^\?\(@\.(?P<field>[\w.]+)==['\"](?P<value>[^'\"]*)['\"]\)$")


def _subscript(obj: Any, sub: str) -> Any:
    """`[0]` (an index) or `[?(@.type=='Ready')]` (the first item whose field equals)."""
    if not isinstance(obj, list):
        return None
    if sub.isdigit():
        return obj[int(sub)] if int(sub) < len(obj) else None
    match = _FILTER.match(sub)
    if match is None:
        return None
    for item in obj:
        if str(lookup(item, match["field"])) == match["value"]:
            return item
    return None


def lookup(obj: Any, path: str) -> Any:
    """The value at a dotted path (`.status.phase` or `status.phase`), with the JSONPath
    subscripts printer columns use (`.status.interfaces[0].ipAddress`,
    `.status.conditions[?(@.type=='Ready')].status`), or None."""
    parts = re.findall(r"(?:[^.\[]|\[[^\]]*\])+", path.strip("."))
    for part in parts:
        match = _INDEX.match(part)
        if match is None or not isinstance(obj, dict):
            return None
        obj = obj.get(match["key"])
        for sub in re.findall(r"\[([^\]]*)\]", match["subs"] or ""):
            obj = _subscript(obj, sub)
    return obj


def parse_time(value: str) -> datetime | None:
    """An RFC 3339 timestamp as written by the store (`Z` suffix, optional fraction)."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


def human_duration(seconds: float) -> str:
    """Kubernetes' `duration.HumanDuration`: `45s`, `3m12s`, `79m`, `5h2m`, `3d4h`, `2y3d`."""
    s = int(seconds)
    if seconds < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def age_of(value: Any, now: datetime) -> str:
    """The age of a timestamp string as kubectl prints it, `<unknown>` when absent."""
    when = parse_time(value) if isinstance(value, str) else None
    if when is None:
        return "<unknown>"
    return human_duration((now - when).total_seconds())


def path_column(name: str, path: str, type: str = "string", priority: int = 0) -> Column:
    """A column that prints the value at a JSON path; `date` columns print as an age."""

    def value(obj: Obj, now: datetime) -> Cell:
        found = lookup(obj, path)
        if type == "date":
            return age_of(found, now)
        if isinstance(found, str | int | float | bool):
            return found
        return None if found is None else str(found)

    return Column(name, value, "string" if type == "date" else type, priority=priority)


NAME = Column(
    "Name",
    lambda o, _: str(lookup(o, "metadata.name") or ""),
    format="name",
    description="Name must be unique within a namespace.",
)
AGE = Column(
    "Age",
    lambda o, now: age_of(lookup(o, "metadata.creationTimestamp"), now),
    description="CreationTimestamp is a timestamp representing the server time when this "
    "object was created.",
)


def build_table(
    columns: tuple[Column, ...],
    objects: list[Obj],
    now: datetime,
    *,
    api_version: str = "meta.k8s.io/v1",
    include_object: str = "Metadata",
    list_meta: Obj | None = None,
) -> Obj:
    """A Table of `objects`; each row carries the object, its metadata only, or nothing."""
    rows = []
    for obj in objects:
        row: Obj = {"cells": [c.value(obj, now) for c in columns]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": api_version,
                "metadata": obj.get("metadata", {}),
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": list_meta or {},
        "columnDefinitions": [c.definition() for c in columns],
        "rows": rows,
    }
