"""Exports from the archive: the bad-spill list (CSV/JSON) and histograms as ROOT or JSON files.

:class:`ArchiveExports` is a base of :class:`~.store.Archive` (it reads through the
store's ``_execute`` and ``_spill_filter``: SQLAlchemy Core, either back end).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

import numpy as np

from sqlalchemy import select

from ..model import to_json
from .codec import _iso, _state_of, decode_histogram, histogram_to_json

log = logging.getLogger(__name__)

#: Quality states counted as bad by default (``bad_spills``).
BAD_STATES: tuple[str, ...] = ("BAD",)
#: ``overall`` of a spill cut short by a stop of the live service (monitor.quality.INTERRUPTED)
INTERRUPTED = "INTERRUPTED"


_ROOT_NAME_BAD = re.compile(r"[^A-Za-z0-9_./+\-]")


def _root_name(name: str) -> str:
    cleaned = _ROOT_NAME_BAD.sub("_", name).strip("/")
    return re.sub(r"/+", "/", cleaned) or "unnamed"


def _root_writable(h: Any):
    """uproot cannot write integer storages: give it a Double copy."""
    import hist

    if h.storage_type.__name__ in ("Int64", "AtomicInt64", "Unlimited"):
        out = hist.Hist(*h.axes, storage=hist.storage.Double(), name=getattr(h, "name", None), label=getattr(h, "label", None))
        out.view(flow=True)[...] = np.asarray(h.view(flow=True), dtype=float)
        return out
    return h


class ArchiveExports:
    """Bad-spill list and histogram exports of an archive (mixed into :class:`~.store.Archive`)."""

    # ---------------------------------------------------------------- bad spills

    def bad_spills(self, run: int | None = None, states: Sequence[str] = BAD_STATES,
                   include_interrupted: bool = True, version: str | None = None) -> list[dict]:
        """Spills whose overall quality is in ``states`` (default ``BAD``), ordered by run and spill.

        Each row: run, spill, time (ISO UTC), overall, failing_subsystems,
        reasons, alarms, complete, events, beam, eot, hadron_fraction,
        decode_errors, lost_events. ``include_interrupted``: also the spills
        the live service was stopped in — ``overall`` INTERRUPTED (not judged,
        no failing subsystem), so an analyst sees they have no verdict.
        """
        states_u = tuple(s.upper() for s in states)
        wanted = states_u + ((INTERRUPTED,) if include_interrupted and INTERRUPTED not in states_u else ())
        from .schema import spills

        rows = self._execute(select(spills.c.run, spills.c.spill, spills.c.time, spills.c.overall, spills.c.record,
                                    spills.c.quality)
                             .where(self._spill_filter(run, wanted, None, None, version))
                             .order_by(spills.c.run, spills.c.spill))
        return [self._bad_row(r, states_u) for r in rows]

    @staticmethod
    def _bad_row(row: Mapping[str, Any], states: tuple[str, ...]) -> dict:
        record = json.loads(row["record"])
        quality = json.loads(row["quality"]) if row["quality"] else {}
        subsystems = quality.get("subsystems") or {}
        failing = [str(name) for name, st in subsystems.items() if _state_of(st) in states]
        reasons: list[str] = []
        for check in quality.get("checks") or []:
            if isinstance(check, str):
                reasons.append(check)
                continue
            if not isinstance(check, Mapping) or _state_of(check) not in states:
                continue
            text = check.get("detail") or check.get("message") or check.get("reason") or ""
            name, sub = str(check.get("name") or ""), str(check.get("subsystem") or "")
            label = name if (not sub or name.startswith(sub + ".")) else (f"{sub}: {name}" if name else sub)
            reasons.append(f"{label}: {text}" if label and text else (label or str(text)))
        for extra in quality.get("reasons") or []:
            reasons.append(str(extra))
        if record.get("complete") is False and not any("incomplete" in r.lower() for r in reasons):
            reasons.append("incomplete spill")
        if row["overall"] == INTERRUPTED:
            reasons = [str(r) for r in quality.get("reasons") or ["interrupted: not judged"]]
        alarms = [str(a.get("name")) for a in record.get("alarms") or [] if isinstance(a, Mapping)]
        return {
            "run": row["run"],
            "spill": row["spill"],
            "time": _iso(row["time"]),
            "overall": row["overall"],
            "failing_subsystems": failing,
            "reasons": reasons,
            "alarms": alarms,
            "complete": record.get("complete"),
            "events": record.get("events"),
            "beam": record.get("beam"),
            "eot": record.get("eot"),
            "hadron_fraction": record.get("hadron_fraction"),
            "decode_errors": record.get("decode_errors"),
            "lost_events": record.get("lost_events"),
        }

    BAD_SPILL_COLUMNS = (
        "run", "spill", "time", "overall", "failing_subsystems", "reasons", "alarms", "complete",
        "events", "beam", "eot", "hadron_fraction", "decode_errors", "lost_events",
    )

    def export_bad_spills(
        self,
        dest: str | os.PathLike | IO[str],
        fmt: str = "csv",
        run: int | None = None,
        states: Sequence[str] = BAD_STATES,
        version: str | None = None,
    ) -> int:
        """Write the bad-spill list as CSV or JSON to a path or text file; returns the number of spills.

        CSV: one line per spill, columns :attr:`BAD_SPILL_COLUMNS`, lists joined
        with ``"; "``, ``null`` as an empty cell. JSON: ``{"generated", "run",
        "states", "count", "spills": [rows]}``.
        """
        fmt = fmt.lower()
        if fmt not in ("csv", "json"):
            raise ValueError(f"bad-spill export format must be 'csv' or 'json', not {fmt!r}")
        rows = self.bad_spills(run=run, states=states, version=version)
        if isinstance(dest, (str, os.PathLike)):
            with open(dest, "w", newline="", encoding="utf-8") as fh:
                ArchiveExports._write_bad(fh, rows, fmt, run, states)
        else:
            ArchiveExports._write_bad(dest, rows, fmt, run, states)
        return len(rows)

    @staticmethod
    def _write_bad(fh: IO[str], rows: list[dict], fmt: str, run: int | None, states: Sequence[str]) -> None:
        if fmt == "json":
            doc = {
                "generated": _iso(time.time()),
                "run": run,
                "states": [s.upper() for s in states],
                "count": len(rows),
                "spills": rows,
            }
            json.dump(to_json(doc), fh, indent=1, allow_nan=False)
            fh.write("\n")
            return
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(ArchiveExports.BAD_SPILL_COLUMNS)
        for row in rows:
            cells = []
            for col in ArchiveExports.BAD_SPILL_COLUMNS:
                value = row[col]
                if isinstance(value, list):
                    value = "; ".join(str(v) for v in value)
                elif value is None:
                    value = ""
                elif isinstance(value, bool):
                    value = "true" if value else "false"
                cells.append(value)
            writer.writerow(cells)

    # ---------------------------------------------------------------- histogram export

    def _histograms_for(self, run: int, spill: int | None, version: str | None = None
                        ) -> list[tuple[int, str, bytes]]:
        from .schema import histograms, spills

        where = (spills.c.run == run) & self._version_clause(version)
        if spill is not None:
            where &= spills.c.spill == spill
        rows = self._execute(select(spills.c.spill, histograms.c.name, histograms.c.data)
                             .select_from(histograms.join(spills, spills.c.id == histograms.c.spill_id))
                             .where(where).order_by(spills.c.spill, histograms.c.name))
        return [(r["spill"], r["name"], r["data"]) for r in rows]

    def _summed(self, rows: list[tuple[int, str, bytes]]) -> tuple[dict, list[int]]:
        """Sum each histogram over the spills (incompatible binning: kept per first spill, logged)."""
        totals: dict[str, Any] = {}
        spills: set[int] = set()
        for spill, name, blob in rows:
            spills.add(spill)
            h = decode_histogram(blob)
            if name not in totals:
                totals[name] = h
                continue
            try:
                totals[name] = totals[name] + h
            except ValueError as exc:
                log.warning("histogram %s of spill %s cannot be added to the run sum: %s", name, spill, exc)
        return totals, sorted(spills)

    def export_histograms_root(
        self, path: str | os.PathLike, run: int, spill: int | None = None, *, per_spill: bool = False,
        version: str | None = None,
    ) -> list[str]:
        """Write histograms to a ROOT file with uproot; returns the keys written.

        ``spill`` given: that spill's histograms at the top level. ``spill=None``:
        the run's histograms summed over its archived spills at the top level,
        plus (``per_spill=True``) each spill's in a directory ``spill_NNNNN``.
        A ``TObjString`` ``na64_online_info`` (JSON) records run, spills and
        time. Names are cleaned for ROOT (``/`` makes sub-directories); integer
        storages are written as doubles (TH*D); histograms uproot cannot write
        (more than 3 axes, …) are skipped with a warning.
        """
        import uproot

        rows = self._histograms_for(run, spill, version)
        if spill is None:
            objects, spills = self._summed(rows)
            items = list(objects.items())
            if per_spill:
                items += [(f"spill_{s:05d}/{n}", decode_histogram(b)) for s, n, b in rows]
        else:
            items = [(n, decode_histogram(b)) for _, n, b in rows]
            spills = [spill] if rows else []
        written: list[str] = []
        with uproot.recreate(path) as f:
            for name, h in items:
                key = _root_name(name)
                try:
                    f[key] = _root_writable(h)
                except Exception as exc:  # uproot raises assorted types for unsupported objects
                    log.warning("histogram %s not written to ROOT: %s", name, exc)
                    continue
                written.append(key)
            f["na64_online_info"] = json.dumps(
                {"run": run, "spill": spill, "spills": spills, "summed": spill is None, "exported": _iso(time.time())}
            )
        return written

    def export_histograms_json(
        self, dest: str | os.PathLike | IO[str], run: int, spill: int | None = None, version: str | None = None
    ) -> int:
        """Write histograms as JSON in the project's one histogram shape (:class:`~..model_served.HistogramJSON`,
        as the API answers); returns how many.

        ``{"run", "spill", "spills", "summed", "histograms": {name: histogram}}``;
        ``spill=None`` sums over the run's archived spills as for ROOT.
        """
        rows = self._histograms_for(run, spill, version)
        if spill is None:
            objects, spills = self._summed(rows)
        else:
            objects = {n: decode_histogram(b) for _, n, b in rows}
            spills = [spill] if rows else []
        doc = {
            "run": run,
            "spill": spill,
            "spills": spills,
            "summed": spill is None,
            "histograms": {name: histogram_to_json(h) for name, h in objects.items()},
        }
        if isinstance(dest, (str, os.PathLike)):
            with open(dest, "w", encoding="utf-8") as fh:
                json.dump(to_json(doc), fh, allow_nan=False)
        else:
            json.dump(to_json(doc), dest, allow_nan=False)
        return len(objects)


def bad_spills_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The CSV text of :meth:`Archive.bad_spills` rows (for a web download)."""
    buf = io.StringIO()
    ArchiveExports._write_bad(buf, list(rows), "csv", None, BAD_STATES)
    return buf.getvalue()
