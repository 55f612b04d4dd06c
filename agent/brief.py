"""`brief(value)`: a value as an error message may show it, bounded in size and never raising.

Config and inventory errors quote the bad value. A YAML alias bomb can make that value a list
of millions of strings (a few nested lists of nine that share their items), and a huge YAML
integer cannot even be turned into text (Python's 4300-digit limit): quoting either whole would
build a huge message, take seconds, or raise a second error. Containers are therefore rendered
piece by piece and the rendering stops as soon as the limit is reached.
"""

from __future__ import annotations

LIMIT = 80


class _Full(Exception):
    """The rendering reached its limit."""


def brief(value: object, limit: int = LIMIT) -> str:
    """`repr(value)`, cut to `limit` characters (marked with '...'); never raises.

    Costs O(limit) whatever the size of `value`."""
    parts: list[str] = []
    budget = [limit + 1]

    def put(text: str) -> None:
        parts.append(text[: budget[0]])
        budget[0] -= len(text)
        if budget[0] <= 0:
            raise _Full

    def render(v: object, depth: int) -> None:
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 256:
            put(f"an integer of {v.bit_length()} bits")
        elif isinstance(v, list | tuple | set | frozenset | dict) and depth > 50:
            put("...")
        elif isinstance(v, dict):
            put("{")
            for i, (k, item) in enumerate(v.items()):
                put(", " if i else "")
                render(k, depth + 1)
                put(": ")
                render(item, depth + 1)
            put("}")
        elif isinstance(v, set | frozenset) and not v:
            put(repr(v))
        elif isinstance(v, list | tuple | set | frozenset):
            ends = {list: "[]", tuple: "()"}.get(type(v), "{}")
            put(ends[0])
            for i, item in enumerate(v):
                put(", " if i else "")
                render(item, depth + 1)
            put("," if isinstance(v, tuple) and len(v) == 1 else "")
            put(ends[1])
        else:
            try:
                text = repr(v)
            except (ValueError, RecursionError):
                text = f"a {type(v).__name__} too large to show"
            put(text)

    try:
        render(value, 0)
    except _Full:
        pass
    text = "".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."
