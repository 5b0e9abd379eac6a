"""Golden QA records: what the project writes and serves for fixed inputs, to prove a refactor changes nothing.

``tests/data/golden/records.json`` was produced by this module from the code
*before* the typed spill model (``monitor/model.py``) replaced the dicts (main at
21b0e59, which holds the other helpers' additions to the record: ``detectors``,
``beam_profile``, quality ``reasons``; the first golden, from b8be43d, was equal to
what the module split produced); the test
``tests/test_model.py::test_records_identical_to_golden`` produces the same
document with the code of today and compares them key for key.

What it holds, for two inputs — the test vector ``tests/data/vectors/small.dat``
and a simulated run with faults (a dead channel, 25 % hadrons, corrupted
events, so that alarms are raised and cleared) — replayed with the default
configuration into an SQLite archive:

- ``replay``: each spill's record as ``replay --json`` prints it;
- ``archive``: each archived spill (record, quality, overall, histogram names),
  the spill list, the bad-spill list and the alarm history;
- ``api``: the answers of ``/api/spills/latest``, ``/api/spills/{run}/{spill}``,
  ``/api/spills``, ``/api/spills/bad``, ``/api/alarms``, ``/api/alarms/history``
  after the last spill, and of ``/api/histograms/spill`` and ``/api/histograms/run``
  as one SHA-256 per histogram (of its JSON with sorted keys).

Values that differ from run to run (times, durations, alarm ids) are replaced by
``"<volatile>"``; everything else must be equal. Regenerate (only when a change
of the record is intended, and say so in the commit)::

    .venv/bin/python tests/golden_records.py tests/data/golden/records.json

To produce it from another commit without installing it: ``git archive COMMIT``
into a folder, copy ``na64_online/`` and each layer folder of ``setup.py``'s
``LAYERS`` into ``PKG/na64_online/``, and run this file with ``PYTHONPATH=PKG``
(and a ``NUMBA_CACHE_DIR`` of its own).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "data" / "golden" / "records.json"
VECTOR = TESTS / "data" / "vectors" / "small.dat"

#: keys whose values change from one run to the next (wall-clock times, durations, random ids)
VOLATILE_KEYS = frozenset({
    "processing_seconds", "finished_at", "published_at", "alarm_id", "raised_at", "acknowledged_at",
    "cleared_at", "time", "stored_at", "generated", "id", "decode_seconds",
})

#: the simulated run: faults that make the monitor find channels, judge spills BAD and raise/clear alarms
SIMULATED = dict(spills=5, events_per_spill=600, seed=11, hadron_fraction=0.25, dead_channels=((610, 1, 15),),
                 hot_channels=((611, 0, 3),), noisy_channels=((612, 0, 2),),
                 corruption_rates={"adc_bad_key": 0.01, "module_missing": 0.01, "event_bad_header_size": 0.002})


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): ("<volatile>" if k in VOLATILE_KEYS and v is not None else _normalise(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _digests(body: dict) -> dict:
    """A histogram answer with each histogram's JSON as the SHA-256 of its canonical text (the bodies are
    megabytes; equal digests, equal JSON); ``since`` (when the run histograms started) is a wall-clock time."""
    out = {k: ("<volatile>" if k == "since" else v) for k, v in body.items() if k != "histograms"}
    out["histograms"] = {name: hashlib.sha256(json.dumps(h, sort_keys=True).encode()).hexdigest()
                         for name, h in body.get("histograms", {}).items()}
    return out


def _simulated_file(path: Path) -> Path:
    try:
        from na64_online.sim.simulator import SimulationConfig, write_raw_file
    except ImportError:  # the code before the simulator had its own sub-package
        from na64_online.daq.simulator import SimulationConfig, write_raw_file
    write_raw_file(path, SimulationConfig(**SIMULATED))
    return path


def _one_input(raw: Path, work: Path) -> dict:
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from na64_online.config import load_config
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online.monitor.archive import Archive
    try:
        from na64_online.monitor.model import dumps
    except ImportError:  # the code before the typed spill model
        from na64_online.monitor.jsonable import dumps
    from na64_online.monitor.metrics import register_metrics
    from na64_online.service import Replayer
    from na64_online.web.app import create_app
    from na64_online.web.config import WebConfig
    from na64_online.web.state import AppState

    registry = CollectorRegistry()
    store = register_metrics(registry)
    replayer = Replayer(load_config(environ={}), ChannelMap.default(), archive_path=work / "qa.sqlite", metrics=store)
    out: dict = {"replay": [], "archive": {}, "api": {}}
    try:
        for record, _ in replayer.replay_file(raw):
            if record is not None:
                out["replay"].append(json.loads(dumps(record)))
        app = create_app(WebConfig(port=0), AppState(monitor=replayer.monitor, registry=registry))
        with TestClient(app) as client:
            spills = client.get("/api/spills", params={"limit": 10000}).json()
            out["api"]["spills"] = spills
            for path in ("/api/spills/latest", "/api/spills/bad", "/api/alarms", "/api/alarms/history"):
                response = client.get(path)
                out["api"][path] = {"status": response.status_code, "body": response.json()}
            for path in ("/api/histograms/spill", "/api/histograms/run"):
                response = client.get(path)
                out["api"][path] = {"status": response.status_code, "body": _digests(response.json())}
            for row in spills:
                path = f"/api/spills/{row['run']}/{row['spill']}"
                out["api"][path] = client.get(path).json()
        with Archive(work / "qa.sqlite", readonly=True) as archive:
            rows = archive.list_spills(limit=10000)
            out["archive"]["spills"] = rows
            out["archive"]["records"] = [archive.get_spill(r["run"], r["spill"]) for r in rows]
            out["archive"]["bad_spills"] = archive.bad_spills()
            out["archive"]["alarm_history"] = archive.alarm_history(limit=10000)
    finally:
        replayer.close()
    return _normalise(json.loads(dumps(out)))


def produce() -> dict:
    """The golden document of the code that is installed now."""
    with tempfile.TemporaryDirectory(prefix="na64-golden-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "vector").mkdir()
        (tmp_path / "simulated").mkdir()
        return {
            "vector": _one_input(VECTOR, tmp_path / "vector"),
            "simulated": _one_input(_simulated_file(tmp_path / "run.dat"), tmp_path / "simulated"),
        }


def main(argv: list[str]) -> int:
    target = Path(argv[1]) if len(argv) > 1 else GOLDEN
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(produce(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
