"""Label keys and values, checked as the real API server checks them. Pure.

The rules and their wording are apimachinery's (`IsQualifiedName` for keys, `IsValidLabelValue`
for values): a value is at most 63 characters of `[A-Za-z0-9_.-]`, starting and ending with an
alphanumeric, or empty; a key is an optional DNS-1123 subdomain prefix (at most 253 characters)
and `/`, then a name part like a value but non-empty. Each problem is one message, as the real
server lists them (a bad key can have several).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE = f"({QUALIFIED_NAME})?"
DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + "(\\." + DNS1123_LABEL + ")*"
VALUE_MAX = 63
NAME_MAX = 63
SUBDOMAIN_MAX = 253

_QUALIFIED_NAME = re.compile(QUALIFIED_NAME)
_LABEL_VALUE = re.compile(LABEL_VALUE)
_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN)
_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an"
    " alphanumeric character"
)
_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or"
    " '.', and must start and end with an alphanumeric character"
)
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or"
    " '.', and must start and end with an alphanumeric character"
)


def max_len_error(length: int) -> str:
    """apimachinery's `MaxLenError`."""
    return f"must be no more than {length} characters"


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    """apimachinery's `RegexError`: the rule, examples, and the regex (its spacing kept)."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def value_problems(value: str) -> list[str]:
    """What is wrong with a label value (empty when it is valid)."""
    problems = []
    if len(value) > VALUE_MAX:
        problems.append(max_len_error(VALUE_MAX))
    if not _LABEL_VALUE.fullmatch(value):
        problems.append(regex_error(_VALUE_MSG, LABEL_VALUE, "MyValue", "my_value", "12345"))
    return problems


def subdomain_problems(value: str) -> list[str]:
    """What is wrong with a DNS-1123 subdomain (empty when it is valid)."""
    problems = []
    if len(value) > SUBDOMAIN_MAX:
        problems.append(max_len_error(SUBDOMAIN_MAX))
    if not _SUBDOMAIN.fullmatch(value):
        problems.append(regex_error(_SUBDOMAIN_MSG, DNS1123_SUBDOMAIN, "example.com"))
    return problems


def key_problems(key: str) -> list[str]:
    """What is wrong with a label key (empty when it is valid)."""
    parts = key.split("/")
    problems = []
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            problems += [f"prefix part {p}" for p in subdomain_problems(prefix)]
    else:
        return [
            "a qualified name "
            + regex_error(_NAME_MSG, QUALIFIED_NAME, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > NAME_MAX:
        problems.append(f"name part {max_len_error(NAME_MAX)}")
    if not _QUALIFIED_NAME.fullmatch(name):
        problems.append(
            "name part " + regex_error(_NAME_MSG, QUALIFIED_NAME, "MyName", "my.name", "123-abc")
        )
    return problems


def label_problems(labels: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every problem of a label set as (the offending key or value, message), key first."""
    found = []
    for key, value in labels.items():
        found += [(key, p) for p in key_problems(key)]
        found += [(value, p) for p in value_problems(value)]
    return found
