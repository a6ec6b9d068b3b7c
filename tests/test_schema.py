"""learnq.pipeline.schema: typed dataclasses from dicts, errors naming the key path, exact round trips."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from learnq.errors import ConfigError
from learnq.pipeline.schema import from_dict, to_dict


@dataclass
class Inner:
    size: int
    ratio: float = 0.5
    tags: tuple[str, ...] = ()


@dataclass
class Outer:
    name: str = "x"
    limit: int | None = None
    flag: bool = False
    inner: Inner = field(default_factory=lambda: Inner(1))
    items: list[Inner] = field(default_factory=list)
    table: dict[str, int] = field(default_factory=dict)
    anything: Any = None


def test_builds_nested_values_and_converts():
    out = from_dict(Outer, {"name": "a", "limit": 3, "inner": {"size": 2, "ratio": 1, "tags": ["p", "q"]},
                            "items": [{"size": 5}], "table": {"k": 7}, "anything": [1, "b"]})
    assert out == Outer("a", 3, False, Inner(2, 1.0, ("p", "q")), [Inner(5)], {"k": 7}, [1, "b"])
    assert isinstance(out.inner.ratio, float) and isinstance(out.inner.tags, tuple)


def test_round_trip_through_json_is_exact():
    obj = Outer("n", None, True, Inner(3, 0.25, ("a",)), [Inner(1), Inner(2, 2.5)], {"a": 1}, {"z": [1.5]})
    assert from_dict(Outer, json.loads(json.dumps(to_dict(obj)))) == obj


@pytest.mark.parametrize(("data", "message"), [
    ({"nmae": "a"}, "nmae: unknown key"),
    ({"limit": "3"}, "limit: expected int, got str"),
    ({"limit": 2.0}, "limit: expected int"),
    ({"flag": 1}, "flag: expected bool, got int"),
    ({"inner": {"size": True}}, "inner.size: expected int, got bool"),
    ({"inner": {"ratio": 0.1}}, "inner.size: missing"),
    ({"inner": {"size": 1, "tags": "ab"}}, "inner.tags: expected array of str, got str"),
    ({"inner": {"size": 1, "tags": ["a", 2]}}, "inner.tags[1]: expected str, got int"),
    ({"items": [{"size": 1}, {"size": 1, "extra": 0}]}, "items[1].extra: unknown key"),
    ({"table": {"a": "b"}}, "table.a: expected int, got str"),
    ({"inner": 3}, "inner: expected a table, got int"),
])
def test_errors_name_the_key_path(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert message in str(info.value)


@dataclass
class _Train:
    epochs: int = 1


def test_prefix_path_is_prepended():
    with pytest.raises(ConfigError, match=r"^train\.epochs: expected int, got str"):
        from_dict(_Train, {"epochs": "3"}, "train")


def test_union_of_two_types_names_both():
    @dataclass
    class Either:
        value: int | str = 0

    assert from_dict(Either, {"value": "a"}).value == "a"
    with pytest.raises(ConfigError, match=r"value: expected int or str, got float"):
        from_dict(Either, {"value": 1.5})
