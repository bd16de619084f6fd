"""Typed YAML configs with ``key=value`` overrides.

Config classes are dataclasses; each field's ``metadata["help"]`` documents it. Loading
reports *every* problem at once (unknown keys, wrong types) in one error line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path

import yaml

from minitron.errors import MinitronError
from minitron.io import write_json_atomic


def doc(default, help: str, **kw):
    """A dataclass field with a default and its documentation."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def at_least_one(obj, keys, prefix: str = "") -> list[str]:
    """Problems for every field in `keys` of `obj` that is below 1 (counts, sizes, intervals)."""
    return [f"{prefix}{k}={getattr(obj, k)} must be >= 1" for k in keys if getattr(obj, k) < 1]


def parse_overrides(pairs: list[str]) -> dict:
    """``["a.b=3", "c=x"]`` -> ``{"a": {"b": 3}, "c": "x"}`` (values parsed as YAML scalars)."""
    tree: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise MinitronError(f"override {pair!r} is not key=value (e.g. parallel.tensor_parallel=2)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise MinitronError(f"override {pair!r} conflicts with another override of {p!r}")
        node[leaf] = value
    return tree


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MinitronError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise MinitronError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MinitronError(f"{path}: top level must be a mapping of keys")
    return data


T = typing.TypeVar("T")


def build(cls: type[T], data: dict, source: str = "config") -> T:
    """Instantiate dataclass `cls` from nested dicts, reporting all problems together."""
    problems: list[str] = []
    obj = _build(cls, data, "", problems)
    if problems:
        raise MinitronError(f"{source}: " + "; ".join(problems))
    return obj


def load(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    data = load_yaml(path) if path else {}
    return build(cls, merge(data, parse_overrides(list(overrides))), str(path or "config"))


def save(obj, path: str | Path) -> None:
    """Write a config (or job) dataclass as JSON, for `load_saved` in another process."""
    write_json_atomic(path, dataclasses.asdict(obj))


def load_saved(cls: type[T], path: str | Path) -> T:
    """Read what `save` wrote back into `cls`, through the same checks as a YAML config."""
    path = Path(path)
    if not path.is_file():
        raise MinitronError(f"{path}: job file not found")
    return build(cls, json.loads(path.read_text()), str(path))


def add_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` flag per field of `cls`, typed and documented from the field itself.

    Every flag defaults to None ("not given"), so values from a config file apply unless a flag
    overrides them (`apply_flags`).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if tp is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        elif typing.get_origin(tp) is typing.Literal:
            parser.add_argument(flag, choices=list(typing.get_args(tp)), default=None, help=help_text)
        else:
            parser.add_argument(flag, type=tp, default=None, help=help_text)


def apply_flags(obj, args: argparse.Namespace):
    """Set every field of `obj` whose flag (from `add_flags`) was given; returns `obj`."""
    for f in dataclasses.fields(obj):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(obj, f.name, value)
    return obj


def _build(cls, data, prefix, problems):
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # init=False: state, not configuration
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            problems.append(f"unknown key '{prefix}{key}'" + _suggest(key, fields))
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"missing required key '{prefix}{name}'")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}", problems)
    if any(p for p in problems):
        try:
            return cls(**kwargs)
        except TypeError:
            return None
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        problems.extend(obj.check())
    return obj


def _coerce(tp, value, key, problems):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", problems)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:  # the first type the value fits (e.g. int | Literal["auto"])
            trial: list[str] = []
            coerced = _coerce(option, value, key, trial)
            if not trial:
                return coerced
        if len(options) == 1:
            problems.extend(trial)
        else:
            allowed = " or ".join(_describe(a) for a in options) + (" or null" if type(None) in args else "")
            problems.append(f"{key}={value!r} must be {allowed}")
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            problems.append(f"{key}={value!r} must be one of {list(typing.get_args(tp))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key} must be a list, got {value!r}")
            return value
        (item,) = typing.get_args(tp) or (object,)
        return [_coerce(item, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        problems.append(f"{key}={value!r} must be {tp.__name__}")
    return value


def _describe(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(repr(v) for v in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _suggest(key, fields) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(fields)})"


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def describe(cls, prefix: str = "") -> list[str]:
    """``key: help (default)`` lines for documentation and ``minitron config --explain``."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        optional = [a for a in typing.get_args(tp) if a is not type(None)] \
            if typing.get_origin(tp) in (typing.Union, types.UnionType) else []
        if len(optional) == 1 and dataclasses.is_dataclass(optional[0]):  # an optional section: its keys too
            lines.append(f"{prefix}{f.name}: {f.metadata.get('help', '')} (default: null)")
            lines.extend(describe(optional[0], f"{prefix}{f.name}."))
        elif dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, f"{prefix}{f.name}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
            lines.append(f"{prefix}{f.name}: {f.metadata.get('help', '')} (default: {default!r})")
    return lines
