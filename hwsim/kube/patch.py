"""The three patch formats the API server accepts, as pure functions on JSON values.

- JSON merge patch (RFC 7386): maps merge, `null` deletes, lists are replaced.
- Strategic merge patch: merge patch plus per-field list merging by a merge key
  (`status.conditions` by `type`, containers by `name`) and the `$patch`, `$retainKeys`,
  `$setElementOrder/` and `$deleteFromPrimitiveList/` directives. Lists without a merge key
  are atomic and replaced, as in the real server (node `spec.taints` is such a list).
- JSON patch (RFC 6902): add, remove, replace, move, copy, test.

Nothing here mutates its inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from nodefence.hwsim.kube.errors import BadRequest, Invalid, UnsupportedMediaType

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of `target` by `patch`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, merge_keys: Mapping[str, str]) -> Any:
    """Strategic merge patch; `merge_keys` maps dotted paths of lists to their merge key."""
    return _smp_value(copy.deepcopy(target), patch, merge_keys, "")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _smp_value(target: Any, patch: Any, keys: Mapping[str, str], path: str) -> Any:
    if isinstance(patch, dict):
        return _smp_map(target if isinstance(target, dict) else {}, patch, keys, path)
    return copy.deepcopy(patch)


def _smp_map(
    target: dict[str, Any], patch: dict[str, Any], keys: Mapping[str, str], path: str
) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise BadRequest(f"unknown patch type: {directive!r} in map at {path or '.'}")
    if "$retainKeys" in patch:
        retain = set(patch["$retainKeys"] or [])
        target = {k: v for k, v in target.items() if k in retain}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value or []
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            drop = value or []
            if isinstance(target.get(field), list):
                target[field] = [v for v in target[field] if v not in drop]
            continue
        sub = _join(path, key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, list) and sub in keys:
            target[key] = _smp_list(target.get(key), value, keys, sub)
        else:
            merged = _smp_value(target.get(key), value, keys, sub)
            if merged is None:
                target.pop(key, None)
            else:
                target[key] = merged
    for field, order in orders.items():
        if isinstance(target.get(field), list):
            target[field] = _reorder(target[field], order, keys.get(_join(path, field), ""))
    return target


def _smp_list(target: Any, patch: list[Any], keys: Mapping[str, str], path: str) -> list[Any]:
    current = copy.deepcopy(target) if isinstance(target, list) else []
    key = keys[path]
    if not key:  # a set of scalars: union in order, `$patch: delete` entries are not expected
        return current + [v for v in patch if v not in current]
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise BadRequest(f"map in list at {path} has no merge key {key!r}")
        index = next(
            (
                i
                for i, cur in enumerate(current)
                if isinstance(cur, dict) and cur.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            current = [c for c in current if not (isinstance(c, dict) and c.get(key) == item[key])]
        elif index is None:
            current.append(_smp_map({}, item, keys, path))
        else:
            current[index] = _smp_map(current[index], item, keys, path)
    return current


def _reorder(items: list[Any], order: list[Any], key: str) -> list[Any]:
    def ident(v: Any) -> Any:
        return v.get(key) if key and isinstance(v, dict) else v

    wanted = [ident(o) for o in order]
    ranked = [i for w in wanted for i in items if ident(i) == w]
    return ranked + [i for i in items if ident(i) not in wanted]


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise Invalid(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise Invalid(f"doc is missing path: {path!r}")
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, last = _parent(doc, parts, path), parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise Invalid(f"doc is missing path: {path!r}")


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _parent(doc, parts, path), parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent):
            raise Invalid(f"add operation index out of range: {path!r}")
        parent.insert(index, value)
    else:
        raise Invalid(f"doc is missing path: {path!r}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise Invalid("cannot remove the whole document")
    _get(doc, path)
    parent, last = _parent(doc, parts, path), parts[-1]
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; Invalid (422) when an operation cannot apply or a `test` fails."""
    if not isinstance(operations, list):
        raise BadRequest("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise BadRequest(f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            value = copy.deepcopy(op.get("value"))
            doc = _add(_remove(doc, path), path, value) if path else value
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_get(doc, op.get("from", "")))
            if kind == "move":
                doc = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise Invalid(f"testing value {path} failed")
        else:
            raise BadRequest(f"unknown JSON patch operation {kind!r}")
    return doc


def apply_patch(
    current: dict[str, Any], patch: Any, patch_type: str, merge_keys: Mapping[str, str] | None
) -> dict[str, Any]:
    """`current` patched as the content type says; `merge_keys=None` refuses strategic (415).

    The real server refuses strategic merge patch on custom resources, which have no Go struct
    to read merge keys from; so does this one.
    """
    if patch_type in (MERGE, STRATEGIC) and not isinstance(patch, dict):
        raise BadRequest(f"a {patch_type} patch must be a JSON object")
    if patch_type == MERGE:
        patched = merge_patch(current, patch)
    elif patch_type == STRATEGIC and merge_keys is not None:
        patched = strategic_merge_patch(current, patch, merge_keys)
    elif patch_type == JSON_PATCH:
        patched = json_patch(current, patch)
    else:
        raise UnsupportedMediaType(
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE}{', ' + STRATEGIC if merge_keys is not None else ''}"
        )
    if not isinstance(patched, dict):
        raise BadRequest("the patched object is not a JSON object")
    return patched
