"""A node's name as a label value, the same for every writer and every selector. Pure.

A label value is at most 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at both ends; a node
name is a DNS-1123 subdomain of up to 253 characters. A name that is a valid label value is its
own label value (what operators see today, unchanged); any other name becomes
`sha256_<the first 56 hex digits of SHA-256(name)>`: 63 characters, always valid, and never
another node's label value, since no node name contains `_`. A label only narrows a list:
code that acts on an object compares the full name kept in the object (`spec.nodeName`).
"""

from __future__ import annotations

import hashlib
import re

NODE_LABEL = "nodefence.io/node"  # on FenceOperation records
MAX_LABEL_VALUE = 63
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_HASHED = "sha256_"


def valid_label_value(value: str) -> bool:
    """True for what the API server accepts as a label value (the empty string included)."""
    return len(value) <= MAX_LABEL_VALUE and _LABEL_VALUE.fullmatch(value) is not None


def node_label_value(node: str) -> str:
    """The label value that stands for `node`: its name, or the hash form for a long name."""
    if valid_label_value(node):
        return node
    digest = hashlib.sha256(node.encode()).hexdigest()
    return _HASHED + digest[: MAX_LABEL_VALUE - len(_HASHED)]


def node_selector(key: str, node: str) -> str:
    """The label selector `key=<node_label_value(node)>`."""
    return f"{key}={node_label_value(node)}"
