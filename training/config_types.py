"""Recipe values checked and converted against the type annotations of the fields they fill.

YAML and `--set` give loosely typed values: PyYAML reads `3e-3` (no dot) as the STRING "3e-3", and a
string learning rate then fails deep inside the optimizer. `coerce(value, annotation, name)` turns a
value into what the annotation asks for, or raises `RecipeTypeError` naming the field and the
expected type. It is driven by the annotations only, so a field added to a recipe dataclass (or to
`transformers.TrainingArguments`) is checked without new code.

Rules (the value is the YAML-parsed one):
    None            only where the annotation allows None (`X | None`, `Optional[X]`)
    bool            a bool, or the strings true/false/yes/no/on/off (any case); never 0/1
    int             an int (not a bool); a float with an integral value; a string that parses as one
    float           an int or a float (ints are kept as ints); a string that parses as a finite float
                    ("3e-3" -> 0.003); NaN and infinity are refused (no recipe number means either; the
                    ranges of the numbers are training/config.py's `VALUE_RANGES`)
    str             a str; an int or float is written back as text (YAML read `2024` as a number)
    list[X], tuple  a list/tuple, every element coerced to X (a scalar is refused: write [a, b])
    dict[K, V]      a dict, values coerced to V
    Enum            a member or a value of the enum (kept as given; its owner converts it)
    Literal[...]    one of the literals
    a dataclass     an instance, or a dict of its fields (coerced recursively, unknown keys refused)
    X | Y | ...     the value as is if it already has one of the types, else the first conversion
                    that succeeds, trying bool, int, float, then the others in annotation order
    Any, unknown    accepted unchanged
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import math
import types
import typing
from typing import Any

_TRUE, _FALSE = {"true", "yes", "on"}, {"false", "no", "off"}
logger = logging.getLogger(__name__)


class RecipeTypeError(ValueError):
    """A recipe value that does not fit its field; the message names the field and the expected type."""


def describe(annotation) -> str:
    """A short human name of an annotation ("float", "list[str]", "int or None", ...)."""
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "anything"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(describe(a) for a in args if a is not Ellipsis)}]" if args else origin.__name__
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return f"one of {', '.join(repr(m.value) for m in annotation)}"
        return annotation.__name__
    return str(annotation)


def _fail(name: str, annotation, value, hint: str = "") -> RecipeTypeError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return RecipeTypeError(f"{name}: expected {describe(annotation)}, got {type(value).__name__} {shown}{hint}")


def _exact(value, annotation) -> bool:
    """Whether `value` already has the (non-generic) type `annotation`, bool and int kept apart."""
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and not (isinstance(value, float) and not math.isfinite(value))
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and not dataclasses.is_dataclass(annotation) and typing.get_origin(annotation) is None:
        return isinstance(value, annotation)
    return False


def _to_bool(value, name, annotation):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _fail(name, annotation, value, " (write true or false)")


def _to_int(value, name, annotation):
    if isinstance(value, bool):
        raise _fail(name, annotation, value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise _fail(name, annotation, value) from None
            if number.is_integer():
                return int(number)
    raise _fail(name, annotation, value)


NOT_FINITE = " (a finite number: NaN and infinity are not usable values)"


def _to_float(value, name, annotation):
    if isinstance(value, bool):
        raise _fail(name, annotation, value)
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _fail(name, annotation, value, " (a number such as 3e-3 or 0.003)") from None
    else:
        raise _fail(name, annotation, value)
    if isinstance(number, float) and not math.isfinite(number):
        raise _fail(name, annotation, value, NOT_FINITE)
    return number


def _to_str(value, name, annotation):
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _fail(name, annotation, value)


def _to_dataclass(value, name, annotation):
    if isinstance(value, annotation):
        return value
    if not isinstance(value, dict):
        raise _fail(name, annotation, value, " (a mapping of its fields)")
    return annotation(**coerce_fields(annotation, value, name))


def _coerce_one(value, annotation, name):
    """Coerce to a single (non-union) annotation; raises RecipeTypeError."""
    if annotation is Any or annotation is typing.Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
        raise _fail(name, annotation, value)
    if value is None:
        raise _fail(name, annotation, value)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        if value in args:
            return value
        raise _fail(name, annotation, value)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(name, annotation, value, " (write a list: [a, b])")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],)
        if origin is tuple and args and len(args) != 1:
            if len(value) != len(args):
                raise _fail(name, annotation, value, f" ({len(args)} entries)")
            return tuple(coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        element = args[0] if args else Any
        items = [coerce(v, element, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or annotation) is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _fail(name, annotation, value)
        value_type = args[1] if len(args) == 2 else Any
        return {k: coerce(v, value_type, f"{name}.{k}") for k, v in value.items()}
    if annotation is bool:
        return _to_bool(value, name, annotation)
    if annotation is int:
        return _to_int(value, name, annotation)
    if annotation is float:
        return _to_float(value, name, annotation)
    if annotation is str:
        return _to_str(value, name, annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if isinstance(value, annotation):
            return value
        try:
            annotation(value)
        except ValueError:
            raise _fail(name, annotation, value) from None
        return value
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _to_dataclass(value, name, annotation)
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise _fail(name, annotation, value)
    return value  # an annotation we cannot check (a string forward reference, a TypeVar, ...)


_PREFERENCE = (bool, int, float)


def coerce(value, annotation, name: str):
    """`value` converted to `annotation` (module docstring), or a `RecipeTypeError` naming `name`."""
    origin = typing.get_origin(annotation)
    if origin not in (typing.Union, types.UnionType):
        return _coerce_one(value, annotation, name)
    members = typing.get_args(annotation)
    if value is None:
        if type(None) in members:
            return None
        raise _fail(name, annotation, value)
    if any(_exact(value, m) for m in members):
        return value
    ordered = [m for m in _PREFERENCE if m in members] + [m for m in members if m not in _PREFERENCE and m is not type(None)]
    hint, inner = "", None
    for member in ordered:
        try:
            return _coerce_one(value, member, name)
        except RecipeTypeError as error:
            hint = hint or (NOT_FINITE if str(error).endswith(NOT_FINITE) else "")
            # an entry of a list / mapping of the right kind: its own error names it (`name.key`, `name[i]`)
            inner = inner or (error if str(error).startswith((f"{name}.", f"{name}[")) else None)
    if inner is not None:
        raise inner
    raise _fail(name, annotation, value, hint)


def field_types(cls) -> dict[str, Any]:
    """`{field name: annotation}` of a dataclass (Any where an annotation cannot be resolved)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception as error:  # noqa: BLE001 - e.g. a class defined inside a function
        logger.warning("the fields of %s are not type-checked: its annotations do not resolve (%s)", cls.__name__, error)
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def coerce_fields(cls, values: dict, prefix: str) -> dict:
    """The keyword arguments of dataclass `cls` from `values`, each coerced to its field's annotation;
    an unknown key is a RecipeTypeError naming it and listing the known ones."""
    types_by_name = field_types(cls)
    if not isinstance(values, dict):
        raise RecipeTypeError(f"{prefix or 'recipe'}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
    dotted = (lambda key: f"{prefix}.{key}") if prefix else str
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        close = sorted({m for k in unknown for m in difflib.get_close_matches(k, list(types_by_name), n=3)})
        if close:
            known = f"did you mean {', '.join(dotted(m) for m in close)}?"
        elif len(types_by_name) > 20:
            known = f"see {cls.__name__} for the {len(types_by_name)} accepted keys"
        else:
            known = f"{prefix or 'a recipe'} has {', '.join(sorted(types_by_name))}"
        raise RecipeTypeError(f"unknown key(s) {', '.join(dotted(k) for k in unknown)}; {known}")
    return {key: coerce(value, types_by_name[key], dotted(key)) for key, value in values.items()}
