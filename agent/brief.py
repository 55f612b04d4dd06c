"""`brief(value)`: a value as an error message may show it, bounded in size and never raising.

Config and inventory errors quote the bad value. A YAML alias bomb can make that value a list
of millions of strings, and a huge YAML integer cannot even be turned into text (Python's
4300-digit limit): quoting either whole would build a huge message or raise a second error.
"""

from __future__ import annotations

LIMIT = 80


def brief(value: object, limit: int = LIMIT) -> str:
    """`repr(value)`, cut to `limit` characters (marked with '...'); never raises."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, list | tuple | dict | set) and len(value) > limit:
        return f"a {type(value).__name__} of {len(value)} items"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # nested past the recursion limit, huge ints inside
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."
