"""Fuzzing the config and inventory loaders: any input is a loaded file or a named error.

Whatever bytes sit in the file (random YAML, mutated shipped examples, wrong types, huge or
non-finite numbers, deep nesting, non-UTF-8, alias bombs, unknown keys), `load_config` raises
only `ConfigError` and `load_inventory` only `InventoryError`, each naming the file, quickly
and with a message of bounded size. Nothing else escapes.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodefence.agent.config.agent_file import AgentConfig, ConfigError, load_config
from nodefence.agent.config.inventory_file import Inventory, InventoryError, load_inventory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MAX_MESSAGE = 4000  # an error message is for a human: never the repr of a huge value
ENV = {
    "NODE_NAME": "worker-1",
    "NODEFENCE_BMC_PASSWORD": "env-secret",
    "PW": "pw",
    "MQTT_USERNAME": "worker-1",
}

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

Loader = Callable[..., Any]
LOADERS: dict[str, tuple[Loader, type[ValueError]]] = {
    "config": (load_config, ConfigError),
    "inventory": (load_inventory, InventoryError),
}


# --- fixtures: a directory where the examples' secret files really exist -------------------


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="nodefence-fuzz-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def example_text(kind: str, workdir: Path) -> str:
    """The shipped example with every /etc/nodefence/... file it names existing in `workdir`."""
    name = "agent.yaml" if kind == "config" else "inventory.yaml"
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    for found in sorted(set(re.findall(r"/etc/nodefence/[\w./-]+", text))):
        local = workdir / "etc" / found.removeprefix("/etc/nodefence/")
        local.parent.mkdir(parents=True, exist_ok=True)
        if not local.exists():
            local.write_text("s3cret-0123456789abcdef0123456789abcdef\n", encoding="utf-8")
        text = text.replace(found, str(local))
    # Files named relative to the document (the inventory's password and CA files, as the
    # mounted Secret holds them): they are looked for beside it, in `workdir`.
    for relative in sorted(set(re.findall(r"_file: ([\w.-]+)", text))):
        local = workdir / relative
        if not local.exists():
            local.write_text("s3cret-0123456789abcdef0123456789abcdef\n", encoding="utf-8")
    return text


_counter = iter(range(1 << 62))


def write(workdir: Path, data: bytes) -> Path:
    path = workdir / f"case-{next(_counter)}.yaml"
    path.write_bytes(data)
    return path


def check_load(kind: str, path: Path) -> Any:
    """Load `path`; the only error allowed is the documented one, naming the file."""
    loader, error = LOADERS[kind]
    started = time.monotonic()
    try:
        result = loader(path, env=dict(ENV))
    except error as err:
        text = str(err)
        assert text.startswith(str(path)), f"the message does not name the file: {text!r}"
        assert len(text) < MAX_MESSAGE, f"a {len(text)}-character message"
        result = None
    finally:
        path.unlink(missing_ok=True)
    # Not a speed target: a guard against runaway parsing (exponential aliases, huge integers),
    # generous enough for a loaded 2-core CI machine (3000-deep nesting took 13 s at load 25).
    assert time.monotonic() - started < 60.0, "a loader took over 60 s on a small file"
    if result is not None:
        assert isinstance(result, AgentConfig | Inventory)
    return result


# --- strategies ----------------------------------------------------------------------------

_CONFIG_KEYS = [
    "cluster",
    "broker",
    "detection",
    "kubernetes",
    "health",
    "inventory",
    "fencing",
    "metrics",
    "host",
    "port",
    "profile",
    "overrides",
    "max_unhealthy",
    "username_env",
    "password_file",
    "password_env",
    "tls",
    "ca_file",
    "lease_duration",
    "renew_deadline",
    "retry_period",
    "standbys",
    "cold_retry_period",
    "endpoints",
    "after_proof",
]
_INVENTORY_KEYS = [
    "nodes",
    "defaults",
    "fencing",
    "version",
    "levels",
    "devices",
    "type",
    "name",
    "address",
    "port",
    "username",
    "password_file",
    "password_env",
    "timeout",
    "power_timeout",
    "cipher",
    "privilege",
    "lanplus",
    "scheme",
    "auth",
    "ca_file",
    "systems_uri",
    "attempts",
    "backoff",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 10**400, -(10**400), 0, -1, 65536]),
    st.text(max_size=30),
    st.sampled_from(["ipmi", "redfish", "off", "reboot", "40%", "101%", "~", "", " ", "a/b"]),
    st.binary(max_size=12),
)
keys = st.one_of(st.sampled_from(_CONFIG_KEYS + _INVENTORY_KEYS), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)


def dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8")


def paths_of(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys / indexes) into a parsed document, the root included."""
    found = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += paths_of(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += paths_of(v, (*prefix, i))
    return found


@st.composite
def mutated_example(draw: st.DrawFn, kind: str, workdir: Path) -> bytes:
    """The shipped example, parsed, with one to three random edits, dumped back."""
    doc = yaml.safe_load(example_text(kind, workdir))
    for _ in range(draw(st.integers(1, 3))):
        targets = paths_of(doc)
        where = draw(st.sampled_from(targets))
        if not where:
            doc = draw(values) if draw(st.integers(0, 9)) == 0 else doc
            continue
        parent = doc
        for step in where[:-1]:
            parent = parent[step]
        last = where[-1]
        action = draw(st.sampled_from(["replace", "delete", "add_key", "wrap"]))
        if action == "replace":
            parent[last] = draw(values)
        elif action == "delete":
            del parent[last]
        elif action == "wrap":
            parent[last] = [parent[last]] if draw(st.booleans()) else {"x": parent[last]}
        elif isinstance(parent[last], dict):
            parent[last][draw(keys)] = draw(values)
        else:
            parent[last] = draw(values)
    return dump(doc)


@st.composite
def mangled_text(draw: st.DrawFn, kind: str, workdir: Path) -> bytes:
    """The example's raw bytes with random byte-level damage (cut, insert, flip)."""
    data = bytearray(example_text(kind, workdir).encode("utf-8"))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["cut", "insert", "flip", "truncate"]))
        if action == "cut":
            del data[pos : pos + draw(st.integers(1, 40))]
        elif action == "insert":
            chunk = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=8),
                    st.sampled_from(
                        [b"\xff\xfe", b"&a", b"*a", b"!!python/object:os.system", b"\t", b"{", b"]"]
                    ),
                )
            )
            data[pos:pos] = chunk
        elif action == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        else:
            del data[pos:]
    return bytes(data)


# --- properties ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["config", "inventory"])
@FUZZ
@given(data=st.data())
def test_a_random_yaml_document_loads_or_is_a_named_error(
    kind: str, workdir: Path, data: st.DataObject
) -> None:
    check_load(kind, write(workdir, dump(data.draw(values))))


@pytest.mark.parametrize("kind", ["config", "inventory"])
@FUZZ
@given(data=st.data())
def test_a_mutated_example_loads_or_is_a_named_error(
    kind: str, workdir: Path, data: st.DataObject
) -> None:
    check_load(kind, write(workdir, data.draw(mutated_example(kind, workdir))))


@pytest.mark.parametrize("kind", ["config", "inventory"])
@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_damaged_bytes_load_or_are_a_named_error(
    kind: str, workdir: Path, data: st.DataObject
) -> None:
    check_load(kind, write(workdir, data.draw(mangled_text(kind, workdir))))


@pytest.mark.parametrize("kind", ["config", "inventory"])
@settings(FUZZ, max_examples=100)
@given(raw=st.binary(max_size=300))
def test_random_bytes_are_a_named_error(kind: str, workdir: Path, raw: bytes) -> None:
    check_load(kind, write(workdir, raw))


# --- the shipped examples stay valid (the fuzzers start from them) ---------------------------


@pytest.mark.parametrize("kind", ["config", "inventory"])
def test_the_examples_load_in_the_fuzz_workdir(kind: str, workdir: Path) -> None:
    assert check_load(kind, write(workdir, example_text(kind, workdir).encode())) is not None


# --- hostile documents, one by one ----------------------------------------------------------


def alias_bomb(levels: int, slot: str) -> str:
    """A "billion laughs" document: 9**levels strings built from a few hundred bytes.

    `slot` is a YAML template with `{bomb}` where the bomb goes (a field the loader reads).
    """
    defs = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    defs += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    last = levels - 1
    bomb = "[[" + ", ".join(defs) + "], " + ", ".join([f"*a{last}"] * 9) + "]"
    return slot.format(bomb=bomb)


BOMB_SLOTS = [
    ("config", "{bomb}"),
    ("config", "cluster: {bomb}"),
    pytest.param("config", "broker: {{port: {bomb}}}"),
    pytest.param("config", "detection: {{max_unhealthy: {bomb}}}"),
    ("config", "detection: {{overrides: {{fence_after: {bomb}}}}}"),
    ("config", "fencing: {{after_proof: {bomb}}}"),
    pytest.param("config", "kubernetes: {{lease_duration: {bomb}}}"),
    ("inventory", "{bomb}"),
    pytest.param("inventory", "nodes: {{n1: {{levels: [[{{type: {bomb}}}]]}}}}"),
    pytest.param(
        "inventory",
        "fencing: {{attempts: {bomb}}}\nnodes: {{n1: {{levels: [[{{type: ipmi}}]]}}}}",
    ),
    ("inventory", "nodes: {{n1: {{levels: [[{{type: ipmi, privilege: {bomb}}}]]}}}}"),
]


@pytest.mark.parametrize(("kind", "slot"), BOMB_SLOTS)
def test_an_alias_bomb_is_refused_quickly_with_a_short_message(
    kind: str, slot: str, workdir: Path
) -> None:
    # 9**6 (half a million) strings from 300 bytes: a loader that renders the value into its
    # message builds a 40 MB string (350 MB and 10 s for one more level); refusing it must
    # stay small and fast.
    path = write(workdir, alias_bomb(6, slot).encode())
    started = time.monotonic()
    check_load(kind, path)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("kind", ["config", "inventory"])
@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 3000 + "]" * 3000,
        "a: " + "{b: " * 3000 + "1" + "}" * 3000,
        "cluster: " + "9" * 6000,
        "broker: {port: " + "9" * 6000 + "}",
        "kubernetes: {lease_duration: 1e99999}",
        "kubernetes: {lease_duration: .nan}",
        "fencing: {retry_base: -.inf}",
        "nodes: {n: {levels: [[{type: ipmi, timeout: " + "9" * 400 + "}]]}}",
        "nodes: {n: {levels: [[{type: ipmi, timeout: .inf}]]}}",
        "!!python/object/apply:os.system ['true']",
        "\ufeffcluster: x",
        "cluster: x\n\x00",
        "\x1b[31m: 1",
        "%YAML 9.9\n---\na: 1",
        "--- a\n--- b",
        "? [a, b]\n: c",
        "<<: {cluster: x}\n<<: 5",
        "nodes: !!binary aGVsbG8=",
        "nodes: {n: {levels: [[{type: redfish, ca_file: '~nosuchuser9/ca.pem'}]]}}",
    ],
)
def test_a_hostile_document_is_a_named_error(kind: str, text: str, workdir: Path) -> None:
    check_load(kind, write(workdir, text.encode("utf-8", "surrogatepass")))


@pytest.mark.parametrize("kind", ["config", "inventory"])
@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe\x00c\x00l", b"cluster: caf\xe9\n", b"\xc3\x28: 1\n", b"\xed\xa0\x80: 1\n"],
)
def test_non_utf8_bytes_are_a_named_error(kind: str, raw: bytes, workdir: Path) -> None:
    assert check_load(kind, write(workdir, raw)) is None


_DEVICE = (
    "nodes: {{{{n: {{{{levels: [[{{{{type: ipmi, address: a, username: u, {field}}}}}]]}}}}}}}}"
)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        pytest.param("config", "broker: {{tls: {{ca_file: '~nosuchuser9/ca.pem'}}}}"),
        pytest.param("config", 'broker: {{password_file: "a\\0b"}}'),
        ("config", 'broker: {{tls: {{ca_file: "a\\0b"}}}}'),
        ("config", "broker: {{password_file: {bad}}}"),
        pytest.param("inventory", _DEVICE.format(field="password_file: {bad}")),
        pytest.param("inventory", _DEVICE.format(field='password_file: "a\\0b"')),
        pytest.param("inventory", _DEVICE.format(field="password_file: '~nosuchuser9/pw'")),
        pytest.param(
            "inventory",
            _DEVICE.format(field="type: redfish, password_env: PW, ca_file: '~nosuchuser9/ca'"),
        ),
        # A 5000-digit hex integer parses; rendering it into the message then raises
        # ValueError (Python's 4300-digit limit for int -> str).
        pytest.param("config", "metrics: {{port: 0x" + "f" * 5000 + "}}"),
        pytest.param("inventory", "fencing: {{attempts: 0x" + "f" * 5000 + "}}"),
    ],
)
def test_odd_paths_and_values_are_a_named_error(kind: str, text: str, workdir: Path) -> None:
    (workdir / "latin1-password").write_bytes(b"caf\xe9\n")
    check_load(kind, write(workdir, text.format(bad=workdir / "latin1-password").encode()))
