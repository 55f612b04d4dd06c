"""Label and field selectors, parsed from their query-string forms as the real server does,
and list paging (`limit`/`continue`).

Label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma-joined.
Field selectors: `path=value`, `path==value`, `path!=value` on the fields a resource allows.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from nodefence.hwsim.kube.errors import BadRequest
from nodefence.hwsim.kube.labels import key_problems, value_problems
from nodefence.hwsim.kube.tables import lookup

Obj = dict[str, Any]

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One label requirement; `op` is one of =, !=, in, notin, exists, !exists."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a label set satisfies this requirement (a missing key satisfies != and notin)."""
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


def _checked(key: str, values: list[str]) -> None:
    """BadRequest for a key or value no label can have, worded as apimachinery's parser."""
    errors = []
    if problems := key_problems(key):
        errors.append(f'key: Invalid value: "{key}": {"; ".join(problems)}')
    for i, value in enumerate(values):
        if problems := value_problems(value):
            errors.append(f'values[{i}][{key}]: Invalid value: "{value}": {"; ".join(problems)}')
    if errors:
        joined = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
        raise BadRequest(f"unable to parse requirement: {joined}")


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Requirements from a `labelSelector` string; BadRequest when it does not parse or names
    a key or value no label can have."""
    out: list[Requirement] = []
    for part in _split_top(text or ""):
        if m := _EQ_RE.match(part):
            key, op, value = m.groups()
            _checked(key, [value])
            out.append(Requirement(key, "!=" if op == "!=" else "=", frozenset([value])))
        elif m := _SET_RE.match(part):
            neg, key, op, values = m.groups()
            if op:
                if neg:
                    raise BadRequest(f"unable to parse requirement: {part.strip()!r}")
                given = [v.strip() for v in values.split(",") if v.strip()]
                _checked(key, given)
                out.append(Requirement(key, op, frozenset(given)))
            else:
                _checked(key, [])
                out.append(Requirement(key, "!exists" if neg else "exists"))
        else:
            raise BadRequest(f"unable to parse requirement: {part.strip()!r}")
    return tuple(out)


def from_label_selector_object(selector: Obj | None) -> tuple[Requirement, ...]:
    """Requirements from a `metav1.LabelSelector` (matchLabels and matchExpressions)."""
    selector = selector or {}
    out = [
        Requirement(k, "=", frozenset([str(v)]))
        for k, v in (selector.get("matchLabels") or {}).items()
    ]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in selector.get("matchExpressions") or []:
        op = ops.get(expr.get("operator", ""))
        if op is None:
            raise BadRequest(f"invalid label selector operator {expr.get('operator')!r}")
        out.append(Requirement(expr["key"], op, frozenset(expr.get("values") or [])))
    return tuple(out)


def labels_match(requirements: tuple[Requirement, ...], obj: Obj) -> bool:
    """Whether an object's labels satisfy every requirement."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


@dataclass(frozen=True)
class FieldRequirement:
    """`path` equals (or, with `negate`, differs from) `value`."""

    path: str
    value: str
    negate: bool = False

    def matches(self, obj: Obj) -> bool:
        """Compare as the server does: absent fields read as empty, booleans as true/false."""
        found = lookup(obj, self.path)
        if isinstance(found, bool):
            text = "true" if found else "false"
        else:
            text = "" if found is None else str(found)
        return (text == self.value) != self.negate


def parse_field_selector(
    text: str | None, allowed: tuple[str, ...]
) -> tuple[FieldRequirement, ...]:
    """Requirements from a `fieldSelector`; BadRequest for a field the resource does not index."""
    out = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        for op in ("!=", "==", "="):
            path, sep, value = part.partition(op)
            if sep:
                break
        else:
            raise BadRequest(f"invalid selector: '{text}'; can't understand '{part}'")
        path = path.strip()
        if path not in allowed:
            raise BadRequest(f"field label not supported: {path}")
        out.append(FieldRequirement(path, value.strip(), negate=op == "!="))
    return tuple(out)


def fields_match(requirements: tuple[FieldRequirement, ...], obj: Obj) -> bool:
    """Whether an object satisfies every field requirement."""
    return all(r.matches(obj) for r in requirements)


@dataclass(frozen=True)
class Selector:
    """A parsed label and field selector together."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Obj) -> bool:
        """Whether `obj` passes both."""
        return labels_match(self.labels, obj) and fields_match(self.fields, obj)


def encode_continue(key: tuple[str, str]) -> str:
    """The `continue` token of a list page that ended at (namespace, name)."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def decode_continue(token: str) -> tuple[str, str]:
    """The (namespace, name) a `continue` token resumes after; BadRequest if malformed."""
    try:
        ns, name = json.loads(base64.urlsafe_b64decode(token.encode()))
        return (str(ns), str(name))
    except (ValueError, binascii.Error, TypeError):
        raise BadRequest("continue key is not valid") from None


def page(items: list[Obj], limit: int, meta: Obj) -> list[Obj]:
    """The first `limit` items (all if 0); sets `continue` and `remainingItemCount` in `meta`."""
    if not limit or len(items) <= limit:
        return items
    last = items[limit - 1]["metadata"]
    meta["continue"] = encode_continue((last.get("namespace", ""), last["name"]))
    meta["remainingItemCount"] = len(items) - limit
    return items[:limit]
