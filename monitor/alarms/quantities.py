"""The quantities alarm rules may name: a registry of typed accessors generated from the spill model.

Every scalar field of :class:`~..model.SpillRecord` is a quantity by its name
(``hadron_fraction``, ``complete``, ``dropped_events`` …), every scalar field of a
nested model by its dotted name (``lost_messages.total``, ``bad_messages.total``),
every list by ``<name>.count`` (``candidates.count``). Beside them, named accessors
for what is not a plain field:

- ``quality.overall`` and ``quality.subsystems.<subsystem>`` — quality states,
  ordered GOOD < NO_DATA < WARNING < BAD;
- ``channel_findings.count`` and ``channel_findings.<kind>`` — active channel
  findings, all or of one kind (dead, hot, noisy, drifting, saturating);
- ``errors.<kind>`` / ``notices.<kind>`` — decode errors / notices of one kind
  (``errors.adc_bad_key``), summed over the srcIDs.

Each :class:`Quantity` has a ``kind`` — ``number``, ``integer``, ``flag``,
``state`` or ``text`` — against which a rule's threshold is checked when the
rule is loaded; a rule naming a quantity not in :data:`QUANTITIES` is refused
with the near names (:func:`unknown_quantity_message`).

Accessors read the spill's JSON form (:func:`~..model.to_json` of the record,
its quality and channel health); an absent value is ``None`` (the rule's
``missing`` policy applies).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from ...errors import Issue
from .. import model
from ..quality import SUBSYSTEMS

Kind = Literal["number", "integer", "flag", "state", "text"]


@dataclass(frozen=True)
class SpillContext:
    """What a rule is evaluated on: the JSON of one spill's record, quality and channel health."""

    record: Mapping[str, Any]
    quality: Mapping[str, Any] | None = None
    health: Mapping[str, Any] | None = None

    def findings(self) -> list | None:
        """The active channel findings: the record's, else the health report's."""
        found = self.record.get("channel_findings")
        if found is None and self.health is not None:
            found = self.health.get("findings")
        return found if isinstance(found, list) else None


@dataclass(frozen=True)
class Quantity:
    """A named, typed accessor: ``get(context)`` is the value (``None`` when absent)."""

    name: str
    kind: Kind
    get: Callable[[SpillContext], Any]
    doc: str = ""


def _scalar_kind(annotation: Any) -> Kind | None:
    """``number``/``integer``/``flag``/``text`` for a scalar annotation (optional or not), else None."""
    if get_origin(annotation) is typing.Annotated:
        return _scalar_kind(get_args(annotation)[0])
    if get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = {_scalar_kind(a) for a in get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if get_origin(annotation) is Literal:
        return "text"
    return {bool: "flag", int: "integer", float: "number", str: "text"}.get(annotation)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in get_args(annotation) if a is not type(None))
    return get_origin(annotation) is list


def _field(path: tuple[str, ...]) -> Callable[[SpillContext], Any]:
    def get(ctx: SpillContext) -> Any:
        cur: Any = ctx.record
        for key in path:
            if not isinstance(cur, Mapping):
                return None
            cur = cur.get(key)
        return cur
    return get


def _count(path: tuple[str, ...]) -> Callable[[SpillContext], Any]:
    field = _field(path)

    def get(ctx: SpillContext) -> Any:
        value = field(ctx)
        return len(value) if isinstance(value, list) else None
    return get


#: record fields reached through named accessors below, not by walking
_NOT_WALKED = {"quality", "channel_findings", "alarms", "candidate_details", "reference"}


def _walk(cls: type[BaseModel], prefix: tuple[str, ...], out: dict[str, Quantity]) -> None:
    for name, info in cls.model_fields.items():
        if not prefix and name in _NOT_WALKED:
            continue
        path = (*prefix, name)
        dotted = ".".join(path)
        doc = (info.description or "").strip()
        kind = _scalar_kind(info.annotation)
        if kind is not None:
            out[dotted] = Quantity(dotted, kind, _field(path), doc)
        elif (nested := _model_of(info.annotation)) is not None:
            _walk(nested, path, out)
        elif _is_list(info.annotation):
            out[f"{dotted}.count"] = Quantity(f"{dotted}.count", "integer", _count(path), f"number of {name}")


def _quality_state(*keys: str) -> Callable[[SpillContext], Any]:
    def get(ctx: SpillContext) -> Any:
        cur: Any = ctx.quality
        for key in keys:
            if not isinstance(cur, Mapping):
                return None
            cur = cur.get(key)
        return cur
    return get


def _findings(kind: str | None) -> Callable[[SpillContext], Any]:
    def get(ctx: SpillContext) -> Any:
        found = ctx.findings()
        if found is None:
            return None
        return sum(1 for f in found if isinstance(f, Mapping) and (kind is None or f.get("kind") == kind))
    return get


def _issues(key: str, label: str) -> Callable[[SpillContext], Any]:
    def get(ctx: SpillContext) -> Any:
        by_src = ctx.record.get(key)
        if not isinstance(by_src, Mapping):
            return None
        return sum(int(per.get(label, 0)) for per in by_src.values() if isinstance(per, Mapping))
    return get


def build_registry() -> dict[str, Quantity]:
    """Every quantity a rule may name (see the module docstring)."""
    out: dict[str, Quantity] = {}
    _walk(model.SpillRecord, (), out)
    out["quality.overall"] = Quantity("quality.overall", "state", _quality_state("overall"),
                                      "the spill's overall quality state")
    for sub in SUBSYSTEMS:
        name = f"quality.subsystems.{sub}"
        out[name] = Quantity(name, "state", _quality_state("subsystems", sub), f"quality state of {sub}")
    out["channel_findings.count"] = Quantity("channel_findings.count", "integer", _findings(None),
                                             "active channel findings")
    for kind in get_args(model.FindingKind):
        name = f"channel_findings.{kind}"
        out[name] = Quantity(name, "integer", _findings(kind), f"active '{kind}' channel findings")
    for issue in Issue:
        if issue == Issue.NONE:
            continue
        key, group = ("errors_by_src", "errors") if issue.is_error else ("notices_by_src", "notices")
        name = f"{group}.{issue.label}"
        out[name] = Quantity(name, "integer", _issues(key, issue.label), f"{group[:-1]}s '{issue.label}', all srcIDs")
    return out


#: the registry (name -> :class:`Quantity`)
QUANTITIES: dict[str, Quantity] = build_registry()

#: names of the path language rules used before (still refused, with the name to use instead)
_OLD_NAMES = {f"health.findings[kind={k}]": f"channel_findings.{k}" for k in get_args(model.FindingKind)}
_OLD_NAMES["health.findings"] = "channel_findings.count"


def unknown_quantity_message(name: str) -> str:
    """Why ``name`` is refused: the name to use for an old path, else the near names."""
    if name in _OLD_NAMES:
        return (f"unknown quantity {name!r}: the path language (key[field=value], list indices) was replaced "
                f"by named quantities; use {_OLD_NAMES[name]!r}")
    import difflib  # only for a rule naming an unknown quantity: not on every command's start-up

    near = difflib.get_close_matches(name, QUANTITIES, n=5, cutoff=0.5)
    if not near:  # e.g. "hadron" for "hadron_fraction": names that contain it
        near = [q for q in QUANTITIES if name and name.lower() in q][:5]
    hint = f"; near names: {', '.join(near)}" if near else ""
    old = " (the path language with [..] filters and list indices is gone)" if "[" in name else ""
    return f"unknown quantity {name!r}{old}{hint} (all names: docs/alarms.md)"


def quantities_markdown() -> str:
    """The table of every quantity (docs/alarms.md holds it; a test keeps the two equal)."""
    rows = ["| quantity | kind | what |", "|---|---|---|"]
    for name in sorted(QUANTITIES):
        q = QUANTITIES[name]
        rows.append(f"| `{name}` | {q.kind} | {q.doc or 'the record field of this name'} |")
    return "\n".join(rows) + "\n"


__all__ = ["QUANTITIES", "Quantity", "SpillContext", "build_registry", "quantities_markdown",
           "unknown_quantity_message"]
