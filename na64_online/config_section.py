"""The base of every configuration section, and configuration errors that name the key.

Each layer declares its own section as a :class:`ConfigSection` (``[monitor]``
in ``monitor/pipeline.py``, ``[web]`` in ``web/config.py``, …): a frozen
pydantic model that refuses unknown keys, with its limits as ``Field``
constraints and validators. :mod:`na64_online.config` composes the sections
into the service configuration.

Every failure is one :class:`ConfigError` whose message names each failing
key as ``section.key``, the value, the reason and — when known — where the
value came from (``file:PATH``, ``env:NA64_SECTION__KEY``, ``argument``).
"""

from __future__ import annotations

import types
import typing
from typing import Any, Callable, ClassVar, Iterable, Mapping, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError


class FieldProblem(ValueError):
    """Raised by a validator that looks at several fields: ``key`` is the field the message is about."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Problem(NamedTuple):
    """One failing key: ``key`` dotted (``monitor.chunk_events``), ``source`` where its value came from."""

    key: str
    reason: str
    source: str | None = None

    def __str__(self) -> str:
        return (f"{self.key}: " if self.key else "") + self.reason + (f" ({self.source})" if self.source else "")


def section_class(annotation: Any) -> type[BaseModel] | None:
    """The model class a field holds (``Model`` or ``Model | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            found = section_class(option)
            if found is not None:
                return found
    return None


def _is_mapping(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_mapping(a) for a in typing.get_args(annotation))
    return origin in (dict, Mapping) or annotation in (dict, Mapping)


def _tuple_length(loc: tuple, model: type[BaseModel] | None) -> str:
    """The number of values of the fixed-length tuple setting at ``loc`` (as text; "more" if unknown)."""
    annotation: Any = None
    for item in loc:
        field = model.model_fields.get(item) if model is not None and isinstance(item, str) else None
        if field is None:
            return "more"
        annotation, model = field.annotation, section_class(field.annotation)
    for option in typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
            else (annotation,):
        args = typing.get_args(option)
        if typing.get_origin(option) is tuple and args and Ellipsis not in args:
            return str(len(args))
    return "more"


def _key_path(loc: tuple, model: type[BaseModel] | None) -> tuple[str, ...]:
    """A pydantic error location as configuration keys: union and function tags dropped, indices kept."""
    parts: list[str] = []
    mapping = False
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
            continue
        if model is not None:
            field = model.model_fields.get(item)
            parts.append(item)
            if field is None:  # an unknown key
                model = None
                continue
            model, mapping = section_class(field.annotation), _is_mapping(field.annotation)
        elif mapping:  # a key of a table-valued setting (e.g. a name in web.tokens)
            parts.append(item)
            mapping = False
        # else: a union member or validator tag, not a key
    return tuple(parts)


_TYPE_REASONS = {
    "int_type": "expected an integer", "int_parsing": "expected an integer", "int_from_float": "expected an integer",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "bool_type": "expected true or false", "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "model_type": "expected a table", "model_attributes_type": "expected a table", "dict_type": "expected a table",
    "tuple_type": "expected a list", "list_type": "expected a list", "iterable_type": "expected a list",
    "frozen_set_type": "expected a list", "set_type": "expected a list",
    "path_type": "expected a path (a string)",
    "missing": "required",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reason(error: Mapping[str, Any], model: type[BaseModel] | None, key: tuple[str, ...]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        owner = model
        for part in key[:-1]:
            owner = section_class(owner.model_fields[part].annotation) if owner is not None else None
        known = sorted(owner.model_fields) if owner is not None else []
        import difflib  # only for a configuration error: not on every command's start-up

        near = difflib.get_close_matches(key[-1], known, n=3, cutoff=0.6)
        if near:
            return "unknown key; did you mean " + " or ".join(near) + "?"
        return "unknown key; known: " + ", ".join(known)
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind in ("too_short", "too_long") and "actual_length" in ctx:
        wanted = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return f"expected {wanted} values, got {ctx['actual_length']}"
    if kind in _TYPE_REASONS:
        reason = _TYPE_REASONS[kind]
        return reason if kind == "missing" else f"{reason}, got {_short(value)}"
    msg = str(error["msg"])
    msg = msg[len("Input should be "):] if msg.startswith("Input should be ") else msg
    if msg.startswith(("greater", "less", "a finite")) or msg.startswith("at "):
        msg = "must be " + msg
    return f"{msg}, got {_short(value)}"


def problems_of(exc: ValidationError, model: type[BaseModel] | None, *, prefix: tuple[str, ...] = (),
                source: Callable[[tuple[str, ...]], str | None] = lambda key: None) -> list[Problem]:
    """The failing keys of ``exc`` (one entry per key; the reasons of a union's options joined by "or")."""
    found: dict[tuple[str, ...], list[str]] = {}
    for error in exc.errors(include_url=False):
        inner = (error.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError) and getattr(inner, "problems", None):
            # a section validated by its own __init__ (pydantic calls it for nested sections): its keys are
            # named from the top already
            for problem in inner.problems:
                key = tuple(problem.key.split("."))[len(prefix):]
                found.setdefault(key, [])
                if problem.reason not in found[key]:
                    found[key].append(problem.reason)
            continue
        loc = tuple(error["loc"])
        if error["type"] == "missing" and loc and isinstance(loc[-1], int):  # a list too short for a tuple
            loc = loc[:-1]
            wanted = _tuple_length(loc, model)
            error = {**error, "type": "too_short", "ctx": {"min_length": wanted, "actual_length": len(error["input"])}}
        key = _key_path(loc, model)
        failure = (error.get("ctx") or {}).get("error")
        if isinstance(failure, FieldProblem):
            key += (failure.key,)
        reason = _reason(error, model, key)
        reasons = found.setdefault(key, [])
        if reason not in reasons:
            reasons.append(reason)
    return [Problem(".".join(prefix + key) or "config", _either(reasons),
                    source(tuple(part.split("[")[0] for part in key)))
            for key, reasons in found.items()]


def _either(reasons: list[str]) -> str:
    """Reasons of a union's options as one: "expected a string or a list, got 5"."""
    tails = {r.rpartition(", got ")[2] for r in reasons}
    if len(reasons) > 1 and len(tails) == 1 and all(r.startswith("expected ") and ", got " in r for r in reasons):
        return "expected " + " or ".join(r[len("expected "):].rpartition(", got ")[0] for r in reasons) + \
            f", got {tails.pop()}"
    return " or ".join(reasons)


def config_error(problems: Iterable[Problem], heading: str = "") -> ConfigError:
    """One :class:`ConfigError` for ``problems`` (``.problems`` keeps the list)."""
    problems = list(problems)
    text = "; ".join(str(p) for p in problems)
    if len(problems) > 1:
        text = f"{len(problems)} problems: {text}"
    error = ConfigError(f"{heading}: {text}" if heading else text)
    error.problems = problems
    return error


class ConfigSection(BaseModel):
    """A frozen configuration section: unknown keys and bad values are a :class:`ConfigError` naming the key.

    ``section`` is the name the section has in the configuration file (``"monitor.cuts"``), used in
    the messages of a section built on its own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)

    section: ClassVar[str] = ""

    def __init__(self, /, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            prefix = tuple(type(self).section.split(".")) if type(self).section else ()
            raise config_error(problems_of(exc, type(self), prefix=prefix)) from None

    def replace(self, **changes: Any):
        """A copy with ``changes``, validated like a configuration file."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})


def validate_section(cls: type[ConfigSection], data: Any, where: str, source: str | None = None) -> ConfigSection:
    """``cls`` from a mapping read from somewhere (``where``: the section's dotted name in messages)."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise config_error(problems_of(exc, cls, prefix=tuple(where.split(".")),
                                       source=lambda key: source)) from None
