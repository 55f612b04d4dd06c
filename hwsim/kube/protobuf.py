"""Decoding the few protobuf request bodies kubectl sends, into the JSON objects they stand for.

kubectl's typed clients write `application/vnd.kubernetes.protobuf`: `kubectl drain` posts an
Eviction that way, `kubectl create configmap|secret|namespace` their objects. The body is the
`k8s\\0` magic and a `runtime.Unknown` envelope (type meta + raw message). Only the kinds and
fields below are known; anything else is refused as an unsupported media type.
"""

from __future__ import annotations

import base64
from typing import Any, Union

from nodefence.hwsim.kube.errors import BadRequest, UnsupportedMediaType

Obj = dict[str, Any]
# A field type: "string", "bytes", "int", "bool", a message schema, or ("map"|"list", type).
FieldType = Union[str, "Schema", tuple[str, Any]]
Schema = dict[int, tuple[str, FieldType]]

MAGIC = b"k8s\x00"

_STRING_MAP = ("map", "string")
_OBJECT_META: Schema = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    6: ("resourceVersion", "string"),
    11: ("labels", _STRING_MAP),
    12: ("annotations", _STRING_MAP),
    14: ("finalizers", ("list", "string")),
}
_DELETE_OPTIONS: Schema = {
    1: ("gracePeriodSeconds", "int"),
    2: ("preconditions", {1: ("uid", "string"), 2: ("resourceVersion", "string")}),
    3: ("orphanDependents", "bool"),
    4: ("propagationPolicy", "string"),
    5: ("dryRun", ("list", "string")),
}
KINDS: dict[str, Schema] = {
    "Eviction": {1: ("metadata", _OBJECT_META), 2: ("deleteOptions", _DELETE_OPTIONS)},
    "DeleteOptions": _DELETE_OPTIONS,
    "ConfigMap": {
        1: ("metadata", _OBJECT_META),
        2: ("data", _STRING_MAP),
        3: ("binaryData", ("map", "bytes")),
        4: ("immutable", "bool"),
    },
    "Secret": {
        1: ("metadata", _OBJECT_META),
        2: ("data", ("map", "bytes")),
        3: ("type", "string"),
        4: ("stringData", _STRING_MAP),
        5: ("immutable", "bool"),
    },
    "Namespace": {
        1: ("metadata", _OBJECT_META),
        2: ("spec", {1: ("finalizers", ("list", "string"))}),
    },
}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise BadRequest("truncated protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, varint value or length-delimited bytes); fixed-width fields skipped."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            size, pos = _varint(data, pos)
            out.append((number, data[pos : pos + size]))
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise BadRequest(f"unsupported protobuf wire type {wire}")
    return out


def _scalar(kind: str, raw: int | bytes) -> Any:
    if kind == "int":
        return int(raw) if isinstance(raw, int) else 0
    if kind == "bool":
        return bool(raw)
    data = raw if isinstance(raw, bytes) else b""
    return base64.b64encode(data).decode() if kind == "bytes" else data.decode()


def decode_message(data: bytes, schema: Schema) -> Obj:
    """A message's known fields as a JSON object."""
    out: Obj = {}
    for number, raw in _fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        if isinstance(kind, dict):
            out[name] = decode_message(raw if isinstance(raw, bytes) else b"", kind)
        elif isinstance(kind, tuple) and kind[0] == "map":
            entry = dict(_fields(raw if isinstance(raw, bytes) else b""))
            key = _scalar("string", entry.get(1, b""))
            out.setdefault(name, {})[key] = _scalar(kind[1], entry.get(2, b""))
        elif isinstance(kind, tuple):
            out.setdefault(name, []).append(_scalar(kind[1], raw))
        else:
            out[name] = _scalar(kind, raw)
    return out


def decode(body: bytes) -> Obj:
    """The JSON object a Kubernetes protobuf body encodes; 415 for kinds not known here."""
    if not body.startswith(MAGIC):
        raise BadRequest("a protobuf body must start with the k8s magic prefix")
    envelope = dict(_fields(body[len(MAGIC) :]))
    meta_raw = envelope.get(1, b"")
    type_meta = dict(_fields(meta_raw if isinstance(meta_raw, bytes) else b""))
    api_version = _scalar("string", type_meta.get(1, b""))
    kind = _scalar("string", type_meta.get(2, b""))
    schema = KINDS.get(kind)
    if schema is None:
        raise UnsupportedMediaType(
            f"hwsim decodes protobuf only for {', '.join(sorted(KINDS))}, not {kind!r}; "
            "send application/json"
        )
    raw = envelope.get(2, b"")
    obj = decode_message(raw if isinstance(raw, bytes) else b"", schema)
    return {"apiVersion": api_version, "kind": kind, **obj}
