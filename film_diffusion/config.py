"""Typed configs at the edge: YAML (plus ``key.sub=value`` overrides) in, dataclasses out.

Every command reads its config through :func:`load_config`, so a typo in a key, a wrong type or a
bad value is one clear sentence naming the key and the fix, never a traceback from deep inside.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from film_diffusion.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config is wrong in a way the user can fix; the message says how."""


def load_config(source: str | Path | dict | None, cls: type[T], overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build ``cls`` (a dataclass, possibly nested) from a YAML file or a dict, then apply overrides.

    ``overrides`` are ``dotted.key=value`` strings; the value is parsed as YAML (``lr=1e-4``,
    ``conditioning=[film,cross_attention]``).
    """
    if source is None:
        raw: dict = {}
    elif isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"Config file '{path}' does not exist; pass the path of a YAML file.")
        raw = read_yaml_mapping(path, f"Config file '{path}'")
    for override in overrides:
        _apply_override(raw, override)
    return _build(cls, raw, prefix="")


def read_yaml_mapping(path: Path, name: str) -> dict:
    """The mapping a YAML file holds (empty for an empty file); anything else is one sentence beginning with
    ``name``, with the line and column of a syntax error."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{name} is not UTF-8 text (byte {err.start}); save it as UTF-8.") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{name} is not valid YAML ({yaml_problem(err)}); fix the syntax.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must hold a mapping of keys to values at the top level.")
    return raw


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own message spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(err, 'problem', None) or type(err).__name__}{where}"


def config_to_dict(config: Any) -> dict:
    """The inverse of :func:`load_config`: plain dicts, lists and strings (paths too), ready for YAML or JSON."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _apply_override(raw: dict, override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"Override '{override}' must look like key=value (e.g. train.lr=1e-4).")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Override '{override}': '{part}' is not a section, so it has no sub-keys.")
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"Override '{override}': the value is not valid YAML ({yaml_problem(err)}); quote it or "
                          "fix it (lists look like [a,b]).") from None


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"Config key '{prefix.rstrip('.') or '<top>'}' must be a mapping of keys to values, got "
                          f"{raw!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        where = f" in section '{prefix.rstrip('.')}'" if prefix else ""
        close = difflib.get_close_matches(str(unknown[0]), list(known), n=1)
        hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
        raise ConfigError(
            f"Unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(repr(prefix + k) for k in unknown)}"
            f"{where}; {hint}valid keys are: {', '.join(sorted(known))}."
        )
    kwargs = {name: _coerce(hints[name], raw[name], prefix + name) for name in known if name in raw}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"Config section '{prefix.rstrip('.') or '<top>'}': {err}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"Config key '{key}' has an invalid value {value!r}.")
    if hint is Any:
        return value
    if origin is typing.Literal:
        if isinstance(value, bool) and ("no" if value is False else "yes") in args:
            value = "no" if value is False else "yes"  # YAML 1.1 reads an unquoted no / yes as a boolean
        if value not in args:
            raise ConfigError(f"Config key '{key}' is {value!r}; choose one of {', '.join(map(repr, args))}.")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Config key '{key}' must be a list (e.g. [1, 2]), got {value!r}.")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"Config key '{key}' must be a mapping, got {value!r}.")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=key + ".")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-4 as a string
        except ValueError:
            pass
    if hint is Path and isinstance(value, str):
        return Path(value)
    if isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"Config key '{key}' must be of type {expected}, got {value!r}.")
