"""Dataclasses whose `__init__` is written by hand (`init=False`: a generated frozen
`__init__` costs one `object.__setattr__` per field, on objects made every judging round or
every message): each must still take every field, in order, with the field's default, and
store what it is given, so adding a field without updating its `__init__` fails here."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from typing import Any

import pytest

import nodefence.agent


def _hand_written() -> list[type[Any]]:
    found: dict[str, type[Any]] = {}
    for info in pkgutil.walk_packages(nodefence.agent.__path__, "nodefence.agent."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == module.__name__
                and not obj.__dataclass_params__.init  # type: ignore[attr-defined]
                and "__init__" in vars(obj)
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


CLASSES = _hand_written()


def test_the_hot_objects_are_found() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"Heartbeat", "NodeVerdict", "PolicyDecision"} <= names, names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_a_hand_written_init_takes_every_field_in_order_with_its_default(cls: type[Any]) -> None:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in params] == [f.name for f in fields]
    for f, p in zip(fields, params, strict=True):
        if f.default is not dataclasses.MISSING:
            assert p.default == f.default, f.name
        elif f.default_factory is dataclasses.MISSING:
            assert p.default is inspect.Parameter.empty, f.name


@pytest.mark.parametrize(
    "cls", [c for c in CLASSES if not hasattr(c, "__post_init__")], ids=lambda c: c.__qualname__
)
def test_a_hand_written_init_stores_what_it_is_given_and_the_defaults(cls: type[Any]) -> None:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    given = {f.name: object() for f in fields}
    built = cls(**given)
    for f in fields:
        assert getattr(built, f.name) is given[f.name], f.name
    required = {
        f.name: given[f.name]
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    plain = cls(**required)
    for f in fields:
        if f.default is not dataclasses.MISSING:
            assert getattr(plain, f.name) == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert getattr(plain, f.name) == f.default_factory(), f.name
            if isinstance(getattr(plain, f.name), list | dict | set):  # a fresh one each time
                assert getattr(cls(**required), f.name) is not getattr(plain, f.name), f.name
