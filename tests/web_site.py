"""A monitor filled by replaying a simulated run into a real SQLite archive: what the web tests serve."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from na64_online.config import load_config
from na64_online.sim.simulator import SimulationConfig, write_raw_file
from na64_online.decoders.channelmap import ChannelMap
from na64_online.monitor.metrics import SnapshotStore, register_metrics
from na64_online.service import Replayer


def replayed_run(tmp: Path, *, spills: int, events: int, seed: int, hadron_fraction: float = 0.3,
                 environ: dict[str, str] | None = None
                 ) -> tuple[Replayer, CollectorRegistry, SnapshotStore, list[dict]]:
    """Simulate ``spills`` spills of ``events`` events, replay them into ``tmp/qa.sqlite`` (configured by the
    ``NA64_*`` variables of ``environ``, else the defaults).

    Returns the replayer (its ``monitor`` is what the web app serves), the Prometheus registry
    the monitor's metrics are registered in, the metrics store and the QA records."""
    raw = tmp / "run.dat"
    write_raw_file(raw, SimulationConfig(spills=spills, events_per_spill=events, hadron_fraction=hadron_fraction,
                                         seed=seed))
    registry = CollectorRegistry()
    store = register_metrics(registry)
    replayer = Replayer(load_config(environ=environ or {}), ChannelMap.default(), archive_path=tmp / "qa.sqlite",
                        metrics=store)
    records = [r for r, _ in replayer.replay_file(raw) if r is not None]
    assert len(records) == spills
    return replayer, registry, store, records
