"""One reader and validator for every TOML file a user writes: the mix spec and the train config.

Both get the same error shape, `FILE: key 'a.b.c': what is wrong`, a "did you mean" hint for a
misspelt key, and choices checked from `Literal[...]` annotations, so a dataclass is the single
statement of which keys exist, their types, their defaults and their allowed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python < 3.11
    import tomli as tomllib

from tinyllama.errors import SpecError


def read_toml(path: Path, what: str) -> dict:
    """A TOML file as a dict; a missing file or a syntax error is a `SpecError` naming it."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: invalid TOML: {e}") from None


def parse_literal(text: str) -> Any:
    """A TOML literal (50, 3e-4, true, [0.9, 0.95], "x"); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def key_error(key: str, msg: str) -> SpecError:
    return SpecError(f"key '{key}': {msg}")


def check_keys(table: dict, allowed: Iterable[str], prefix: str = "") -> None:
    """Every key of `table` must be in `allowed`; the error suggests the closest one."""
    allowed = sorted(allowed)
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(allowed)}"
            raise key_error(f"{prefix}{key}", f"unknown key{extra}")


def coerce(value: Any, typ: Any, key: str) -> Any:
    """`value` checked against the annotation `typ` (bool, int, float, str, Literal[...],
    tuple[...], list[str], Optional[...]); ints are accepted where floats are expected."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)

    def bad(what: str) -> SpecError:
        return key_error(key, f"expected {what}, got {value!r}")

    if origin is typing.Union or (sys.version_info >= (3, 10) and origin is types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, key)
    if origin is typing.Literal:
        if value not in args:
            raise key_error(key, f"must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(coerce(x, a, key) for x, a in zip(value, args))
    if origin is list:
        if not isinstance(value, list):
            raise bad("a list")
        return [coerce(x, args[0], key) for x in value]
    raise TypeError(f"unsupported config type {typ} for {key}")  # a bug here, not user input


def build_dataclass(cls: type, table: Any, prefix: str) -> Any:
    """An instance of dataclass `cls` from a TOML table: unknown keys refused (with a hint),
    each value coerced to its field's annotation, missing fields taking their defaults."""
    where = prefix.rstrip(".")
    if not isinstance(table, dict):
        raise key_error(where, "expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(table, fields, prefix)
    kwargs = {k: coerce(v, hints[k], f"{prefix}{k}") for k, v in table.items()}
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise key_error(f"{prefix}{name}", "required key is missing")
    return cls(**kwargs)


__all__ = ["build_dataclass", "check_keys", "coerce", "key_error", "parse_literal", "read_toml"]
