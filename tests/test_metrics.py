"""monitor.metrics: a custom collector reading immutable snapshots at scrape time, bounded labels."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from na64_online.monitor.health import ChannelFinding, HealthReport
from na64_online.monitor.metrics import (
    ERROR_KINDS,
    NOTICE_KINDS,
    MonitorSnapshot,
    Na64Collector,
    ServiceHealth,
    SnapshotStore,
    register_metrics,
)
from na64_online.monitor.quality import SUBSYSTEMS, QualityState, SpillQuality


def record(run=5, spill=1, **kw):
    rec = {
        "run": run, "spill": spill, "events": 1000, "lost_events": 2, "decode_errors": 4, "modules_missing": 1,
        "complete": True, "beam": 20000, "triggers_accepted": 1002, "triggers_raw": 1100,
        "hadron_fraction": 0.02, "hadron_fraction_srd": 0.025, "eot": 19600.0, "candidates": [17, 311],
        "alarms": [], "spill_duration_us": 4_800_000, "dead_time_fraction": 1 - 1002 / 1100,
        "errors_by_src": {"610": {"adc_bad_key": 2, "data_bad_marker": 1}, "-1": {"weird_new_kind": 1}},
        "notices_by_src": {"610": {"module_missing": 1, "unknown_channel": 3}},
        "lost_messages": {"total": 3, "by_ldc": {"1": 3}}, "dropped_events": 7, "incomplete_events": 1,
        "processing_seconds": 0.3,
    }
    rec.update(kw)
    return rec


def quality(overall=QualityState.WARNING):
    subs = {s: QualityState.GOOD for s in SUBSYSTEMS}
    subs["hcal"] = overall
    return SpillQuality(5, 1, overall, subs, ())


@pytest.fixture
def setup():
    registry = CollectorRegistry()
    store = register_metrics(registry)
    return registry, store


def value(registry, name, labels=None):
    return registry.get_sample_value(name, labels or {})


def test_empty_scrape(setup):
    registry, _ = setup
    text = generate_latest(registry).decode()
    assert "na64_spills_total 0.0" in text
    assert value(registry, "na64_quality_state", {"subsystem": "overall"}) == -1
    assert value(registry, "na64_decode_errors_total", {"kind": "adc_bad_key"}) == 0
    generate_openmetrics(registry)  # units and names valid for OpenMetrics too


def test_spills_fold_into_counters(setup):
    registry, store = setup
    findings = [ChannelFinding(10, "ECAL", 0, 4, 1, "dead", 0.0, 0.3, 2, (5, 1)),
                ChannelFinding(75, "HCAL", 0, 2, 1, "hot", 0.9, 0.1, 2, (5, 1))]
    store.publish_spill(record(), quality(), HealthReport(5, 1, True, 1000, tuple(findings)))
    store.publish_spill(record(spill=2, processing_seconds=3.0), quality(QualityState.BAD), findings[:1])
    v = lambda name, labels=None: value(registry, name, labels)  # noqa: E731
    assert v("na64_spills_total") == 2
    assert v("na64_events_total") == 2000
    assert v("na64_lost_events_total") == 4
    assert v("na64_dropped_events_total") == 14
    assert v("na64_lost_messages_total") == 6
    assert v("na64_decode_errors_total", {"kind": "adc_bad_key"}) == 4
    assert v("na64_decode_errors_total", {"kind": "data_bad_marker"}) == 2
    assert v("na64_decode_errors_total", {"kind": "other"}) == 2  # unknown label, bounded
    assert v("na64_decode_notices_total", {"kind": "module_missing"}) == 2
    assert v("na64_decode_notices_total", {"kind": "unknown_channel"}) == 6
    assert v("na64_eot_total") == pytest.approx(39200.0)
    assert v("na64_candidates_total") == 4
    assert v("na64_beam_particles_last_spill") == 20000
    assert v("na64_beam_rate_hertz") == pytest.approx(20000 / 4.8)
    assert v("na64_dead_time_ratio") == pytest.approx(1 - 1002 / 1100)
    assert v("na64_hadron_fraction_ratio", {"estimator": "hcal"}) == 0.02
    assert v("na64_hadron_fraction_ratio", {"estimator": "srd"}) == 0.025
    assert v("na64_spill_number") == 2 and v("na64_run_number") == 5
    assert v("na64_quality_state", {"subsystem": "hcal"}) == 3
    assert v("na64_quality_state", {"subsystem": "overall"}) == 3
    assert v("na64_quality_state", {"subsystem": "ecal"}) == 0
    assert v("na64_channel_findings", {"detector": "ECAL", "kind": "dead"}) == 1
    assert v("na64_channel_findings", {"detector": "HCAL", "kind": "hot"}) == 0  # last spill only
    assert v("na64_spill_processing_seconds_count") == 2
    assert v("na64_spill_processing_seconds_sum") == pytest.approx(3.3)
    assert v("na64_spill_processing_seconds_bucket", {"le": "0.5"}) == 1
    assert v("na64_spill_processing_seconds_bucket", {"le": "+Inf"}) == 2


def test_label_sets_are_bounded(setup):
    registry, store = setup
    for i in range(20):
        store.publish_spill(record(spill=i, decode_errors=1, errors_by_src={str(i): {f"garbage_{i}": 1}}))
    kinds = {s.labels["kind"] for m in registry.collect() if m.name == "na64_decode_errors" for s in m.samples
             if s.name == "na64_decode_errors_total"}
    assert kinds == set(ERROR_KINDS)
    notices = {s.labels["kind"] for m in registry.collect() if m.name == "na64_decode_notices" for s in m.samples
               if s.name == "na64_decode_notices_total"}
    assert notices == set(NOTICE_KINDS)
    assert value(registry, "na64_decode_errors_total", {"kind": "other"}) == 20


def test_new_run_resets_run_gauges_not_counters(setup):
    registry, store = setup
    store.publish_spill(record(run=5))
    store.publish_spill(record(run=5, spill=2))
    assert value(registry, "na64_run_eot") == pytest.approx(39200)
    store.publish_spill(record(run=6, spill=1, eot=100.0, candidates=[]))
    assert value(registry, "na64_run_eot") == 100.0 and value(registry, "na64_run_spills") == 1
    assert value(registry, "na64_run_candidates") == 0
    assert value(registry, "na64_eot_total") == pytest.approx(39300)
    assert value(registry, "na64_run_number") == 6


def test_service_health_read_at_scrape_time():
    registry = CollectorRegistry()
    store = SnapshotStore()
    now = [1000.0]
    registry.register(Na64Collector(store, clock=lambda: now[0]))
    health = ServiceHealth(started=900.0, messages_received=10, events_received=5000, bytes_received=10**6,
                           ingest_events_per_second=2500.0, lag_seconds=0.25, queue_depth=3, queue_capacity=64,
                           dropped_messages=1, last_message_time=998.0, sources_connected=2)
    store.publish_service(health)
    assert value(registry, "na64_ingest_events_total") == 5000
    assert value(registry, "na64_ingest_bytes_total") == 10**6
    assert value(registry, "na64_ingest_lag_seconds") == 0.25
    assert value(registry, "na64_ingest_queue_tasks") == 3
    assert value(registry, "na64_ingest_dropped_messages_total") == 1
    assert value(registry, "na64_ingest_last_message_age_seconds") == 2.0
    now[0] = 1010.0  # nothing published: the age still grows, computed at scrape
    assert value(registry, "na64_ingest_last_message_age_seconds") == 12.0
    store.publish_service(dataclasses.replace(health, queue_depth=9))
    assert value(registry, "na64_ingest_queue_tasks") == 9


def test_snapshots_are_immutable():
    snap = MonitorSnapshot().with_spill(record(), quality())
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.spills = 3
    with pytest.raises(TypeError):
        snap.last["events"] = 0
    with pytest.raises(TypeError):
        snap.decode_errors["adc_bad_key"] = 0
    assert snap.quality["overall"] == "WARNING"
    again = snap.with_spill(record(spill=2))
    assert snap.spills == 1 and again.spills == 2  # the old snapshot is untouched


def test_concurrent_publish_and_scrape(setup):
    registry, store = setup
    stop = threading.Event()

    def publisher():
        i = 0
        while not stop.is_set() and i < 300:
            store.publish_spill(record(spill=i))
            store.publish_service(ServiceHealth(events_received=i))
            i += 1

    t = threading.Thread(target=publisher)
    t.start()
    try:
        for _ in range(30):
            generate_latest(registry)
    finally:
        stop.set()
        t.join()
    assert value(registry, "na64_spills_total") == store.monitor.spills


def test_bad_messages_counter_bounded_labels_and_health_dict():
    """na64_bad_messages_total{ldc,kind}: every kind for each LDC label the ingest reports (issue 8 §4)."""
    import dataclasses

    from prometheus_client import CollectorRegistry, generate_latest

    from na64_online.monitor.metrics import BAD_MESSAGE_KINDS, ServiceHealth, register_metrics

    assert dataclasses.asdict(ServiceHealth())["bad_messages"] == {}  # /api/health before the first snapshot
    registry = CollectorRegistry()
    store = register_metrics(registry)
    store.publish_service(ServiceHealth(bad_messages={"1": {"duplicate": 2, "sequence_jump": 1},
                                                      "unknown": {"bad_envelope": 3}},
                                        memory_budget_bytes=1 << 30, memory_buffered_bytes={"builder": 7},
                                        worker_refused_tasks=5))
    text = generate_latest(registry).decode()
    lines = [l for l in text.splitlines() if l.startswith("na64_bad_messages_total{")]
    assert len(lines) == 2 * len(BAD_MESSAGE_KINDS)
    assert 'na64_bad_messages_total{kind="duplicate",ldc="1"} 2.0' in lines
    assert 'na64_bad_messages_total{kind="bad_envelope",ldc="unknown"} 3.0' in lines
    assert 'na64_bad_messages_total{kind="reordered",ldc="1"} 0.0' in lines
    assert "na64_memory_budget_bytes 1.073741824e+09" in text
    assert 'na64_memory_buffered_bytes{stage="builder"} 7.0' in text
    assert "na64_worker_refused_tasks_total 5.0" in text


def test_the_archive_writers_queue_delay_and_losses_are_read_at_scrape_time():
    registry = CollectorRegistry()
    writer = {"pending_spills": 0, "dropped": 0, "failed": 0, "attempts_failed": 0, "behind_since": None}
    register_metrics(registry, archive=lambda: writer)
    v = lambda name: value(registry, name)  # noqa: E731
    assert v("na64_archive_pending_spills") == 0 and v("na64_archive_behind_seconds") == 0
    writer.update(pending_spills=7, dropped=2, failed=1, attempts_failed=4, behind_since=time.monotonic() - 90)
    assert v("na64_archive_pending_spills") == 7 and 90 <= v("na64_archive_behind_seconds") < 150
    assert v("na64_archive_spills_dropped_total") == 2 and v("na64_archive_writes_failed_total") == 1
    assert v("na64_archive_write_retries_total") == 4
    plain = CollectorRegistry()
    register_metrics(plain, archive=True)  # archived, without a writer of its own: no queue to show
    assert value(plain, "na64_archive_pending_spills") is None


def test_per_source_quality_archive_alarm_and_process_metrics():
    registry = CollectorRegistry()
    view = {"active": [{"name": "no_beam", "severity": "warning", "state": "acknowledged"},
                       {"name": "no_data", "severity": "warning", "state": "raised", "silenced_by": "bob"}],
            "delivery": {"sent": 3, "failed": 2, "dropped": 1, "last_success": 1234.5}}
    store = register_metrics(registry, sources=["610", "620"], alarms=lambda: view, archive=True, process=True)
    assert value(registry, "na64_archive_spills_total") == 0
    store.publish_spill(record(), quality())
    store.publish_spill(record(spill=2, errors_by_src={"999": {"adc_bad_key": 5}, "event": {"x": 1}}),
                        quality(QualityState.BAD))
    store.publish_archive_write(now=2000.0)
    v = lambda name, labels=None: value(registry, name, labels)  # noqa: E731
    assert v("na64_decode_errors_by_source_total", {"src_id": "610"}) == 3
    assert v("na64_decode_errors_by_source_total", {"src_id": "620"}) == 0
    assert v("na64_decode_errors_by_source_total", {"src_id": "other"}) == 5  # srcID not in the map: bounded
    assert v("na64_decode_errors_by_source_total", {"src_id": "event"}) == 2
    assert v("na64_spills_by_quality_total", {"quality": "WARNING"}) == 1
    assert v("na64_spills_by_quality_total", {"quality": "BAD"}) == 1
    assert v("na64_spills_by_quality_total", {"quality": "GOOD"}) == 0
    assert v("na64_archive_spills_total") == 1 and v("na64_archive_last_write_timestamp_seconds") == 2000.0
    assert v("na64_alarm_active", {"alertname": "no_beam", "severity": "warning", "state": "acknowledged"}) == 1
    assert v("na64_alarm_active", {"alertname": "no_data", "severity": "warning", "state": "silenced"}) == 1
    assert v("na64_alertmanager_sent_total") == 3 and v("na64_alertmanager_failed_total") == 2
    assert v("na64_alertmanager_dropped_total") == 1
    assert v("na64_alertmanager_last_success_timestamp_seconds") == 1234.5
    assert v("process_resident_memory_bytes") > 0
    from na64_online import __version__
    build = [s for s in registry.collect() if s.name == "na64_build_info"][0].samples[0]
    assert build.labels["version"] == __version__ and build.value == 1
    generate_openmetrics(registry)
