"""DAQ checks: spill completeness, decode errors, missing modules, dropped / incomplete / lost events,
lost messages, dead time, trigger bookkeeping."""

from __future__ import annotations

from ..quality import Inputs, QualityState as S, _count, _num, _upper, check
from .registry import register


def _limits(warning: float, bad: float, unit: str = "") -> str:
    return f"at most {warning:.3g}{unit} (BAD above {bad:.3g}{unit})"


@register("daq")
def complete(i: Inputs):
    ok = bool(i.record.get("complete"))
    return check("daq.complete", S.GOOD if ok else S.WARNING, float(ok),
                 "END_OF_BURST received" if ok else "spill cut off: no END_OF_BURST (from every readout node)",
                 "" if ok else "END_OF_BURST from every readout node")


@register("daq")
def event_rates(i: Inputs):
    """Decode errors, module-missing placeholders, dropped and incomplete events per data event."""
    cfg, events = i.config, i.events
    for name, count, warn, bad in (
        ("decode_errors", int(i.record.get("decode_errors") or 0), cfg.decode_error_rate_warning,
         cfg.decode_error_rate_bad),
        ("modules_missing", int(i.record.get("modules_missing") or 0), cfg.modules_missing_rate_warning,
         cfg.modules_missing_rate_bad),
        ("dropped_events", int(i.record.get("dropped_events") or 0), cfg.dropped_event_rate_warning,
         cfg.dropped_event_rate_bad),
        ("incomplete_events", int(i.record.get("incomplete_events") or 0), cfg.incomplete_event_rate_warning,
         cfg.incomplete_event_rate_bad),
    ):
        rate = count / max(events, 1)
        state = S.BAD if count and not events else _upper(rate, warn, bad)
        yield check(f"daq.{name}", state, rate, f"{count} in {events} events", _limits(warn, bad, " per event"))


@register("daq")
def lost_events(i: Inputs):
    lost, events, cfg = int(i.record.get("lost_events") or 0), i.events, i.config
    rate = lost / max(events + lost, 1)
    return check("daq.lost_events", _upper(rate, cfg.lost_event_rate_warning, cfg.lost_event_rate_bad), rate,
                 f"{lost} lost of {events + lost}", _limits(cfg.lost_event_rate_warning, cfg.lost_event_rate_bad))


@register("daq")
def lost_messages(i: Inputs):
    if "lost_messages" not in i.record:
        return None
    n = _count(i.record.get("lost_messages"))
    return check("daq.lost_messages", S.WARNING if n else S.GOOD, float(n),
                 f"{n} ZeroMQ messages lost (sequence gaps)", "none")


@register("daq")
def dead_time(i: Inputs):
    cfg = i.config
    dead = _num(i.record, "dead_time_fraction")
    raw, accepted = _num(i.record, "triggers_raw"), _num(i.record, "triggers_accepted")
    if dead is None and raw and accepted is not None:
        dead = 1.0 - accepted / raw
    if dead is None:
        return check("daq.dead_time", S.NO_DATA, None, "no trigger scalers")
    return check("daq.dead_time", _upper(dead, cfg.dead_time_warning, cfg.dead_time_bad), dead,
                 f"accepted {accepted} of {raw} raw triggers", _limits(cfg.dead_time_warning, cfg.dead_time_bad))


@register("daq")
def trigger_count(i: Inputs):
    cfg = i.config
    accepted = _num(i.record, "triggers_accepted")
    if accepted is None:
        return check("daq.trigger_count", S.NO_DATA, None, "no trigger scalers")
    recorded = i.events + int(i.record.get("lost_events") or 0)
    mismatch = abs(accepted - recorded) / max(accepted, 1.0)
    return check("daq.trigger_count", _upper(mismatch, cfg.trigger_mismatch_warning, cfg.trigger_mismatch_bad),
                 mismatch, f"{accepted:.0f} accepted triggers, {recorded} events recorded or lost",
                 "events recorded or lost = accepted triggers, "
                 + _limits(cfg.trigger_mismatch_warning, cfg.trigger_mismatch_bad, " apart (relative)"))
