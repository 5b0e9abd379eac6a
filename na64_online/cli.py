"""Command line: ``na64-online simulate | replay | dump | serve | demo | worker | keys | archive | config | format``.

Bad input (missing file, not a DATE stream, bad map or config, bad option)
ends with one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def _collector_paused(freeze: bool = False):
    """The cyclic garbage collector off while the start-up imports and builds (its state restored after).

    Importing the configuration and the monitor creates some 50 000 objects, nearly all kept for the life of
    the process, and next to no garbage cycles: the collector would walk them about a hundred times over
    (with the freeze at exit, :func:`run`, 5 % of a small replay's instructions). Reference counting still
    frees everything else at once. ``freeze``: then move what exists to the permanent generation
    (``gc.freeze``), so that the first collection after the pause does not walk it all once more (1.4 %);
    for the module's own imports only (once per process: what they made lives as long)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if collecting:
            gc.enable()


with _collector_paused(freeze=True):
    import argparse
    import math
    import os
    import sys
    from pathlib import Path
    from typing import Sequence

    import numpy as np

    from . import __version__
    from .config import load_channel_map, Config, load_config
    from .decoders import layout
    from .decoders.channelmap import ChannelMap
    from .errors import DaqError
    from .monitor.alarms import ALARM_STATES
    from .logs import LOG_FORMAT_ENV, LOG_FORMATS, configure_logging
    from .monitor.model import dumps
    from .monitor.quality import INTERRUPTED, QualityState

EXIT_USAGE = 2
EXIT_DATA = 1
EXIT_FAILED = 3  # the live service failed (a core thread died): its supervisor restarts it
EXIT_INTERNAL = 70  # EX_SOFTWARE: an error the program did not foresee


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _load(args) -> tuple[Config, ChannelMap]:
    overrides = {}
    if getattr(args, "map", None):
        overrides["channel_map"] = args.map
    config = load_config(getattr(args, "config", None), overrides=overrides)
    return config, load_channel_map(config)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="TOML", help="configuration file (default: $NA64_CONFIG, else built-in)")
    p.add_argument("--map", metavar="CSV", help="channel map / calibration CSV (default: the packaged one)")


# ---------------------------------------------------------------- replay
def _add_log_format(p: argparse.ArgumentParser) -> None:
    default = os.environ.get(LOG_FORMAT_ENV, "text")
    p.add_argument("--log-format", choices=LOG_FORMATS, default=default if default in LOG_FORMATS else "text",
                   help="log lines on stderr: text, or one JSON object per line with run and spill "
                        "(journald, Loki); default text")


def _use_log_format(log_format: str, level: int) -> None:
    """Configure logging; local worker processes inherit the format through the environment."""
    os.environ[LOG_FORMAT_ENV] = log_format
    configure_logging(level, log_format)


def _say(text: str) -> None:
    """A status line of serve/demo on stderr: plain text, or a JSON log line with ``--log-format json``."""
    if os.environ.get(LOG_FORMAT_ENV) == "json":
        import logging

        logging.getLogger("na64_online.cli").warning("%s", text)
    else:
        print(text, file=sys.stderr, flush=True)


def _summary_line(record: dict) -> str:
    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    dropped = record.get("dropped_events") or 0
    if record.get("interrupted"):
        state = "INTERRUPTED (the service stopped during this spill; not judged)"
    else:
        state = "complete" if record["complete"] else "INCOMPLETE"
    return (
        f"run {record['run']} spill {record['spill']}: {record['events']} events, "
        + (f"{dropped} events DROPPED (decoding fell behind), " if dropped else "")
        + f"lost {record['lost_events']}, errors {record['decode_errors']}, "
        + (f"skipped {record['skipped_bytes']} bytes, " if record.get("skipped_bytes") else "")
        + (f"header mismatches {record['header_mismatch']}, " if record.get("header_mismatch") else "")
        + (f"duplicate events {record['duplicate_event']}, " if record.get("duplicate_event") else "")
        + f"{state}, beam {fmt(record['beam'], 'd')}, "
        f"hadron fraction {fmt(record['hadron_fraction'], '.4f')}, EOT {fmt(record['eot'], '.4g')}, "
        f"candidates {record['candidates']}, quality {record.get('quality', {}).get('overall', '—')}"
        + (f", ALARMS {', '.join(a['name'] for a in record['alarms'])}" if record.get("alarms") else "")
    )


def cmd_replay(args) -> int:
    with _collector_paused():  # start-up: the service's modules, the configuration, the monitor it builds
        from .service import Replayer

        config, channel_map = _load(args)
        replayer = Replayer(config, channel_map, archive_path=args.archive)
    show_progress = sys.stderr.isatty() and not args.quiet
    status = 0
    try:
        for path in args.files:
            for record, note in replayer.replay_file(path, progress=show_progress):
                if note:
                    print(f"na64-online: {note.level}: {path}: {note.text}", file=sys.stderr)
                    status = max(status, EXIT_DATA) if note.level == "error" else status
                if record is not None:
                    print(dumps(record) if args.json else _summary_line(record), flush=True)
    finally:
        replayer.close()
    return status


# ---------------------------------------------------------------- reprocess
def cluster_config_from_args(config: Config, args):
    """The ``[cluster]`` configuration with the ``reprocess`` command-line options applied."""
    changes = {}
    for opt, name in (("scheduler", "scheduler"), ("workers", "workers"), ("retries", "retries"), ("ahead", "ahead"),
                      ("tls_ca", "tls_ca_file"), ("tls_cert", "tls_cert_file"), ("tls_key", "tls_key_file")):
        value = getattr(args, opt)
        if value is not None:
            changes[name] = value
    return config.cluster.replace(**changes)


def cmd_reprocess(args) -> int:
    """Raw files on a Dask cluster (each spill a task reading its own bytes), merged in order as replay does."""
    from .reprocess import Reprocessor, require_dask

    require_dask()  # before anything else: without Dask, say how to install it
    config, channel_map = _load(args)
    cluster = cluster_config_from_args(config, args)
    status = 0

    def on_record(record: dict) -> None:
        print(dumps(record) if args.json else _summary_line(record), flush=True)

    def on_note(path: str, level: str, text: str) -> None:
        nonlocal status
        print(f"na64-online: {level}: {path}: {text}", file=sys.stderr, flush=True)
        if level == "error":
            status = EXIT_DATA

    runner = Reprocessor(config, channel_map, cluster, archive=args.archive,
                         progress=sys.stderr.isatty() and not args.quiet)
    stats = runner.run(args.files, on_record, on_note)
    print(f"na64-online: {stats.summary()}", file=sys.stderr, flush=True)
    return status


# ---------------------------------------------------------------- dump
def cmd_dump(args) -> int:
    from .daq.rawfile import RawFile
    from .events import dump_event

    config, channel_map = _load(args)
    out = dump_event(RawFile(args.file), args.spill, args.event, args.run, config, channel_map)
    if out is None:
        raise DaqError(f"{args.file}: no event {args.event} in spill {args.spill}" + (
            f" of run {args.run}" if args.run is not None else ""))
    print(dumps(out) if args.json else _dump_text(out))
    return 0


def _dump_text(out: dict) -> str:
    lines = [
        f"run {out['run']} spill {out['spill']} event {out['event']} {out['type']} trigger mask {out['trigger_mask']:#x}",
        f"E_PS {out['e_ps']:.3f} GeV  E_ECAL {out['e_ecal']:.3f} GeV  E_HCAL {out['e_hcal']:.3f} GeV  "
        f"SRD {[round(x, 4) for x in out['srd']]}  VETO {[round(x, 4) for x in out['veto']]}  "
        f"electron {out['electron']}  candidate {out['candidate']}",
        f"{'detector':8} {'mod':>3} {'x':>2} {'y':>2} {'src':>4} {'port':>4} {'ch':>3} {'ped_e':>8} {'ped_o':>8} "
        f"{'ampl':>8} {'E/GeV':>8} sat",
    ]
    for c in out["channels"]:
        lines.append(
            f"{c['detector']:8} {c['module']:3d} {c['x']:2d} {c['y']:2d} {c['src_id']:4d} {c['port']:4d} "
            f"{c['channel']:3d} {c['pedestal_even']:8.2f} {c['pedestal_odd']:8.2f} {c['amplitude']:8.2f} "
            f"{c['energy_gev']:8.4f} {'yes' if c['saturated'] else ''}"
        )
    for i in out["issues"]:
        lines.append(f"issue: {i['kind']}: {i['reason']} (srcID {i['src_id']}, byte {i['byte_offset']})")
    return "\n".join(lines)


# ---------------------------------------------------------------- simulate
def _int_in(low: int, high: int):
    """An argparse type: an integer in [low, high] (run and spill numbers are 32-bit words in the raw format)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    parse.__name__ = "integer"
    return parse


def _float_in(low: float, high: float = math.inf):
    """An argparse type: a finite number in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g}")
        return value

    parse.__name__ = "number"
    return parse


UINT32 = _int_in(0, 2**32 - 1)
COUNT = _int_in(0, 2**31 - 1)
POSITIVE = _int_in(1, 2**31 - 1)
SECONDS = _float_in(0.0, 1e7)
FRACTION = _float_in(0.0, 1.0)


def _endpoint(text: str) -> str:
    from .daq.endpoints import check_endpoint

    try:
        return check_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> tuple[int, int, int]:
    try:
        src, port, channel = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SRC/PORT/CHANNEL, got {text!r}") from None
    # srcID is 10 bits, port 3 bits, channel = ADC id (2 bits) * 16 + channel id (4 bits): layout.py
    if not (0 <= src <= 1023 and 0 <= port <= layout.ADC_PORT_MASK and 0 <= channel <= 63):
        raise argparse.ArgumentTypeError(f"{text!r}: srcID 0..1023, port 0..7, channel 0..63")
    return src, port, channel


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None
    if not 0 <= number < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: port {number} is outside 0..65535")
    return host or "127.0.0.1", number


def _scheduler(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("tcp", "tls", "ucx", "ws", "wss") or not rest:
        raise argparse.ArgumentTypeError(f"expected a Dask scheduler address like tcp://HOST:8786, got {text!r}")
    return text


def _rate(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name, FRACTION(value)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"expected KIND=PROBABILITY, got {text!r} ({exc})") from None


def simulation_config_from_args(args, config: Config | None = None):
    """The simulation of the command line over the beam profile of ``config`` (``[beam] profile``):
    its energy and hadron contamination unless ``--hadron-fraction`` / ``--muon-fraction`` say otherwise."""
    from .decoders.beam import profile
    from .sim.simulator import SimulationConfig, beam_settings

    beam = beam_settings(profile((config or Config()).beam.profile), args.hadron_fraction, args.muon_fraction)

    return SimulationConfig(
        run=args.run,
        spills=args.spills,
        first_spill=args.first_spill,
        events_per_spill=args.events,
        seed=args.seed,
        **beam,
        dead_channels=tuple(args.dead_channel),
        noisy_channels=tuple(args.noisy_channel),
        hot_channels=tuple(args.hot_channel),
        header_bytes=args.header_bytes,
        super_events=not args.plain_events,
        corruption_rates=dict(args.corrupt),
        zero_suppression=not args.no_zero_suppression,
        signal_fraction=args.signal_fraction,
        pileup_probability=args.pileup,
        pedestal_drift_per_spill=args.pedestal_drift,
    )


def cmd_simulate(args) -> int:
    from .sim.simulator import write_raw_file

    config, channel_map = _load(args)
    try:
        sim_config = simulation_config_from_args(args, config)
    except ValueError as exc:
        raise DaqError(f"bad simulation settings: {exc}") from None
    if args.publish:
        return _publish_simulation(args, sim_config, channel_map)
    if args.out is None:
        raise DaqError("simulate needs --out FILE (or --publish ENDPOINT --ldc N)")
    write_raw_file(args.out, sim_config, channel_map)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def _publish_simulation(args, sim_config, channel_map) -> int:
    """``simulate --publish EP --ldc N``: be readout node(s) N, publishing on EP (spec §9)."""
    import threading

    from .daq.publisher import (
        PublisherConfig, ReadoutPublisher, parse_corruptions, parse_sequences, simulated_ldc_spills,
    )
    from .sim.simulator import ReadoutSimulator

    ldcs = args.ldc or []
    if len(ldcs) != len(args.publish):
        raise DaqError("give one --ldc N for each --publish ENDPOINT")
    try:
        lose = parse_sequences(args.lose)
        corrupt = parse_corruptions(args.corrupt_message)
        configs = [
            PublisherConfig(
                endpoint=ep, ldc=ldc, spill_duration_s=args.spill_duration, spill_gap_s=args.spill_gap,
                fast=args.fast, batch_events=args.batch_events, nodrop=args.nodrop,
                wait_subscribers=args.wait_subscribers, wait_timeout_s=args.wait_timeout, lose=lose,
                loss_probability=args.loss_rate, corrupt=corrupt, seed=args.seed + ldc,
            )
            for ep, ldc in zip(args.publish, ldcs)
        ]
    except ValueError as exc:
        raise DaqError(f"bad publishing settings: {exc}") from None
    errors: list[BaseException] = []

    def node(cfg: PublisherConfig) -> None:
        try:
            sim = ReadoutSimulator(sim_config, channel_map)
            with ReadoutPublisher(cfg) as pub:
                print(f"LDC {cfg.ldc}: publishing on {pub.endpoint}", file=sys.stderr, flush=True)
                pub.publish(simulated_ldc_spills(sim, cfg.ldc))
                st = pub.stats
                print(f"LDC {cfg.ldc}: sent {st.messages} messages, {st.events} events, {st.bytes / 1e6:.1f} MB "
                      f"({st.lost_injected} lost, {st.corrupted} corrupted on purpose)", file=sys.stderr)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(c,), daemon=True) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    import zmq

    zmq.Context.instance().term()  # lets the last messages out (each publisher lingers up to 1 s)
    for exc in errors:
        if isinstance(exc, (DaqError, OSError, KeyboardInterrupt)):
            raise exc
        raise DaqError(f"publishing failed: {exc}") from exc
    return 0


# ---------------------------------------------------------------- serve / worker
def ingest_config_from_args(config: Config, args):
    """The ``[ingest]`` configuration with the ``serve`` command-line options applied."""
    from .daq.ingest import IngestConfig

    ingest = getattr(config, "ingest", None) or IngestConfig()
    changes = {}
    if args.connect:
        changes["endpoints"] = tuple(args.connect)
    for opt, name in (("workers", "workers"), ("worker_bind", "worker_bind"), ("spill_timeout", "spill_timeout_s")):
        value = getattr(args, opt)
        if value is not None:
            changes[name] = value
    if args.expected_ldc:
        changes["expected_ldcs"] = tuple(args.expected_ldc)
    return ingest.replace(**changes)  # a ConfigError names the key


def cmd_serve(args) -> int:
    """Live: subscribe to the readout nodes, build, decode, one QA record per finished spill."""
    import logging
    import threading

    from .service import LiveService

    _use_log_format(args.log_format, logging.INFO)
    config, channel_map = _load(args)
    config = _with_http(config, args.http)
    ingest = ingest_config_from_args(config, args)
    if not ingest.endpoints:
        raise DaqError("serve needs at least one --connect ENDPOINT (or [ingest] endpoints in the config)")
    done = threading.Event()
    on_record = _record_printer(args.json, args.max_spills, done)
    # the very per-spill code replay runs: SpillMonitor.handle (quality, alarms, archive, metrics)
    service = LiveService(config, channel_map, ingest, archive_path=args.archive, on_record=on_record,
                          web=False if args.no_web else None)
    try:
        with _stop_signals(done):  # SIGTERM/SIGINT, also during the warm-up: a clean stop, exit status 0
            _say("na64-online: warming up (decoder kernels, workers) before subscribing …")
            service.start(abort=done)
            if not done.is_set():  # else stopped while warming up
                web = f"; HTTP on {service.web.url}" if service.web is not None else ""
                _say(f"na64-online: serving {', '.join(ingest.endpoints)}; workers at "
                      f"{service.ingest.worker_endpoint}{web}")
                _run_until(done, args.duration, failed=lambda: service.failure)
    finally:
        service.stop()
    return _exit_status(service)


def _exit_status(service) -> int:
    """0, or EXIT_FAILED with one line on stderr when a core thread of the service died."""
    if service.failure:
        _say(f"na64-online: error: the service failed: {service.failure}")
        return EXIT_FAILED
    return 0


def _with_http(config: Config, http) -> Config:
    if http is None:
        return config
    return config.replace(web=config.web.replace(host=http[0], port=http[1]))  # a ConfigError names the key


def _record_printer(as_json: bool, max_records: int, done):
    """A live service's ``on_record``: print each record; set ``done`` after ``max_records`` (0: never)."""
    count = 0

    def on_record(record: dict) -> None:
        nonlocal count
        print(dumps(record) if as_json else _summary_line(record), flush=True)
        count += 1
        if max_records and count >= max_records:
            done.set()

    return on_record


def _stop_signals(done):
    """A context in which SIGINT and SIGTERM only set ``done`` (the service then stops cleanly)."""
    import contextlib
    import signal

    @contextlib.contextmanager
    def installed():
        old = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    return installed()


def _run_until(done, max_seconds: float = 0.0, failed=lambda: None) -> None:
    """Wait for ``done`` (set by a callback, or by SIGINT/SIGTERM under the callers' :func:`_stop_signals`),
    ``max_seconds``, or ``failed()`` to say why."""
    import time

    deadline = time.monotonic() + max_seconds if max_seconds else None
    while not done.is_set() and (deadline is None or time.monotonic() < deadline) and not failed():
        done.wait(0.2)


def cmd_demo(args) -> int:
    """Two simulated readout nodes on 127.0.0.1 feeding the live service (and its HTTP API)."""
    import itertools
    import logging
    import threading

    from .daq.publisher import PublisherConfig, ReadoutPublisher, SharedSimulation
    from .decoders.beam import profile as beam_profile
    from .sim.simulator import ReadoutSimulator, SimulationConfig, beam_settings
    from .service import LiveService

    _use_log_format(args.log_format, logging.WARNING if args.log_format == "text" else logging.INFO)
    config, channel_map = _load(args)
    config = _with_http(config, args.http)
    from .web.auth import hash_token, new_token

    demo_token = new_token()  # a one-off write token for this demo process only
    config = config.replace(web=config.web.replace(tokens={**config.web.tokens, "demo": hash_token(demo_token)}))
    try:
        sim_config = SimulationConfig(
            spills=args.spills or 4095, events_per_spill=args.events,
            **beam_settings(beam_profile(config.beam.profile), args.hadron_fraction),
            dead_channels=tuple(args.dead_channel), seed=args.seed, spill_duration_s=args.spill_duration,
        )
        publishers = [
            ReadoutPublisher(PublisherConfig("tcp://127.0.0.1:0", ldc, spill_duration_s=args.spill_duration,
                                             spill_gap_s=args.spill_gap, wait_subscribers=1))
            for ldc in (1, 2)
        ]
    except ValueError as exc:
        raise DaqError(f"bad demo settings: {exc}") from None
    done = threading.Event()
    on_record = _record_printer(args.json, args.spills, done)
    ingest = config.ingest.replace(endpoints=tuple(p.endpoint for p in publishers), workers=args.workers,
                                   expected_ldcs=(1, 2))
    service = LiveService(config, channel_map, ingest, archive_path=args.archive, on_record=on_record)

    web_started, service_started = threading.Event(), threading.Event()

    simulation = SharedSimulation(ReadoutSimulator(sim_config, channel_map), (1, 2))

    def node(publisher: ReadoutPublisher) -> None:
        try:
            spills = simulation.node_spills(publisher.config.ldc)
            web_started.wait()  # not while the service imports the web stack: while it waits for its workers
            first = next(spills)
            service_started.wait()
            if not done.is_set():
                publisher.publish(itertools.chain([first], spills))
        except Exception as exc:  # noqa: BLE001 - a demo node failing ends the demo with its reason
            _say(f"na64-online: simulated LDC {publisher.config.ldc} stopped: {exc}")
            done.set()

    try:
        with _stop_signals(done):
            _say("na64-online demo: warming up (decoder kernels, workers) before subscribing …")
            for publisher in publishers:
                threading.Thread(target=node, args=(publisher,), daemon=True).start()
            try:
                service.start(abort=done, while_warming=web_started.set)
            except BaseException:
                done.set()  # the nodes publish nothing
                raise
            finally:
                web_started.set()
                service_started.set()
            web = f"; dashboard API on {service.web.url}" if service.web is not None else ""
            _say(f"na64-online demo: LDC 1 and 2 at {', '.join(ingest.endpoints)}{web}; Ctrl-C stops")
            if service.web is not None:
                _say(f"na64-online demo: write token for this run (user 'demo'): {demo_token}\n"
                      f"  e.g. curl -X POST -H 'Authorization: Bearer {demo_token}' -H 'Content-Type: application/json'"
                      f" -d '{{}}' {service.web.url}/api/histograms/run/reset")
            _run_until(done, failed=lambda: service.failure)
    finally:
        service.stop()
        for publisher in publishers:
            publisher.close(linger_ms=0)
    return _exit_status(service)


def cmd_token(args) -> int:
    """A new write token for NAME: the token (hand it to the person) and the line the service keeps."""
    from .web.auth import USER_NAME, hash_token, new_token

    if not USER_NAME.match(args.name):
        raise DaqError(f"token: name {args.name!r} must be 1-64 letters, digits, ' ._@-', starting alnum")
    token = new_token()
    digest = hash_token(token)
    print(token)
    print(f"# give the token above to {args.name} (it is shown once, only its hash is kept); then add either", file=sys.stderr)
    print(f"#   to [web.tokens] in the config:   \"{args.name}\" = \"{digest}\"", file=sys.stderr)
    print(f"#   or to the [web] tokens_file:     {args.name} {digest}", file=sys.stderr)
    return 0


def cmd_worker(args) -> int:
    """A decoder worker for a service on this or another host (set up by the service with text, never pickle)."""
    import logging

    import zmq

    from .daq.memory import MAX_HEAP_BLOCK_BYTES, retain_freed_memory
    from .daq.workers import run_worker, worker_curve_keys
    from .sim.warmup import warm_up_processor
    from .worker_setup import build_processor

    if bool(args.key) != bool(args.server_key):
        raise DaqError("--key and --server-key go together (CurveZMQ: this worker's secret key, the service's "
                       "public key)")
    if not 1 <= args.capacity <= 1024:
        raise DaqError(f"--capacity must be within 1..1024, got {args.capacity}")
    curve = worker_curve_keys(args.key, args.server_key) if args.key else None
    configure_logging(logging.INFO, args.log_format, prefix=f"worker {os.getpid()} ")
    # each task lands in the memory the last one freed (its pages mapped already), not in new pages
    retain_freed_memory(keep_bytes=2 * (args.capacity + 1) * MAX_HEAP_BLOCK_BYTES)
    try:
        run_worker(args.connect, build_processor, capacity=args.capacity, parent_pid=args.parent_pid, curve=curve,
                   warm_up=warm_up_processor)
    except zmq.ZMQError as exc:
        raise DaqError(f"worker: cannot connect to {args.connect}: {exc}") from None
    return 0


def cmd_keys(args) -> int:
    """Create CurveZMQ key pairs for the worker port (one per NAME)."""
    from .daq.workers import make_keys

    for name in args.names:
        if not name or "/" in name or name.startswith("."):
            raise DaqError(f"bad key name {name!r}")
        public, secret = make_keys(args.dir, name)
        print(f"{public}  (public: copy to the other side)\n{secret}  (secret: keep on this host, mode 0600)")
    return 0


# ---------------------------------------------------------------- archive (analysts)
def cmd_archive(args) -> int:
    from .monitor.archive import Archive
    from .monitor.archive.store import is_url

    if not is_url(args.db) and not Path(args.db).is_file():
        raise DaqError(f"no archive at {args.db}")
    with Archive(args.db, readonly=True) as archive:
        if args.action == "spills":
            for row in archive.list_spills(run=args.run, quality=args.quality, version=args.version):
                print(dumps(row))
        elif args.action == "versions":
            for row in archive.versions(run=args.run):
                print(dumps(row))
        elif args.action == "compare":
            if args.run is None or not args.versions:
                raise DaqError("archive compare needs --run R and --versions A B")
            known = {row["version"] for row in archive.versions(run=args.run)}
            for version in args.versions:
                if version not in known:
                    raise DaqError(f"version {version!r} has no spill of run {args.run} in {archive.name} "
                                   f"(versions there: {', '.join(sorted(known)) or 'none'})")
            for row in archive.compare(args.run, *args.versions):
                print(dumps(row))
        elif args.action == "bad-spills":
            n = archive.export_bad_spills(args.out or sys.stdout, args.format, run=args.run, version=args.version)
            if args.out:
                print(f"wrote {n} bad spills to {args.out}", file=sys.stderr)
        elif args.action == "alarms":
            for row in archive.alarm_history(name=args.name, state=args.state, run=args.run):
                print(dumps(row))
        elif args.action == "export":
            _export(archive, args)
    return 0


def _export(archive, args) -> None:
    """``archive DB export``: the run (summed) or one spill, to FILE.root or FILE.json; nothing to write is an error."""
    if args.run is None or not args.out:
        raise DaqError("archive export needs --run and --out (FILE.root or FILE.json)")
    suffix = Path(args.out).suffix.lower()
    if suffix not in (".root", ".json"):
        raise DaqError(f"--out {args.out}: the file name must end in .root or .json, which selects the format")
    spills = [row["spill"] for row in archive.list_spills(run=args.run, version=args.version)]
    if not spills:
        runs = [row["run"] for row in archive.runs()]
        raise DaqError(f"run {args.run} is not in {args.db} (runs there: {_ranges(runs) or 'none'})")
    if args.spill is not None and args.spill not in spills:
        raise DaqError(f"spill {args.spill} of run {args.run} is not in {args.db} (spills there: {_ranges(spills)})")
    if suffix == ".json":
        n = archive.export_histograms_json(args.out, args.run, args.spill, version=args.version)
    else:
        n = len(archive.export_histograms_root(args.out, args.run, args.spill, per_spill=args.per_spill,
                                               version=args.version))
    print(f"wrote {n} histograms to {args.out}", file=sys.stderr)


def _ranges(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1-3, 7"``."""
    spans: list[list[int]] = []
    for n in sorted(set(numbers)):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


# ---------------------------------------------------------------- config
def cmd_config_show(args) -> int:
    """The effective configuration: every value with where it came from."""
    from .config import show_json, show_toml

    config = load_config(args.config, overrides={"channel_map": args.map} if args.map else None)
    print(show_json(config) if args.json else show_toml(config), end="" if not args.json else "\n")
    return 0


def cmd_config_check(args) -> int:
    """Validate a configuration file (and the files it names); 0, or EXIT_DATA with one line per problem."""
    from .config import check_config

    problems = check_config(args.file, environ=os.environ if args.env else {}, files=args.files)
    for problem in problems:
        print(f"na64-online: error: {args.file}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.file}: valid configuration")
    return EXIT_DATA if problems else 0


def cmd_format(args) -> int:
    print(layout.markdown(), end="")
    return 0


# ---------------------------------------------------------------- parser
def _arguments_simulate(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--out", metavar="FILE", help="raw file to write")
    p.add_argument("--run", type=UINT32, default=1)
    p.add_argument("--spills", type=POSITIVE, default=1)
    p.add_argument("--first-spill", type=UINT32, default=1)
    p.add_argument("--events", type=POSITIVE, default=1000, help="events per spill")
    p.add_argument("--seed", type=UINT32, default=0)
    p.add_argument("--hadron-fraction", type=FRACTION, default=None,
                   help="hadrons per beam particle (default: the beam profile's expectation, 0.015 for electrons-100)")
    p.add_argument("--muon-fraction", type=FRACTION, default=None, help="muons per beam particle (default 0.005)")
    p.add_argument("--signal-fraction", type=FRACTION, default=2e-4, help="missing-energy signal-like events")
    p.add_argument("--pileup", type=FRACTION, default=0.02, help="pile-up probability per event")
    p.add_argument("--pedestal-drift", type=_float_in(-4096.0, 4096.0), default=0.0, metavar="ADC", help="pedestal drift per spill")
    p.add_argument("--dead-channel", type=_address, action="append", default=[], metavar="SRC/PORT/CH")
    p.add_argument("--noisy-channel", type=_address, action="append", default=[], metavar="SRC/PORT/CH")
    p.add_argument("--hot-channel", type=_address, action="append", default=[], metavar="SRC/PORT/CH")
    p.add_argument("--header-bytes", type=int, default=68, choices=(68, 80))
    p.add_argument("--plain-events", action="store_true", help="per-LDC plain events instead of super events")
    p.add_argument("--no-zero-suppression", action="store_true")
    p.add_argument("--corrupt", type=_rate, action="append", default=[], metavar="KIND=P",
                   help="inject a §5 corruption with probability P per event (repeatable)")
    g = p.add_argument_group("live publishing (a readout node, spec §9)")
    g.add_argument("--publish", type=_endpoint, action="append", default=[], metavar="ENDPOINT",
                   help="bind a PUB socket here (e.g. tcp://*:5550) and send LDC --ldc's data; repeatable")
    g.add_argument("--ldc", type=_int_in(0, 255), action="append", metavar="N", help="readout node id, one per --publish")
    g.add_argument("--spill-duration", type=SECONDS, default=4.8, metavar="S", help="seconds per spill (4.8)")
    g.add_argument("--spill-gap", type=SECONDS, default=10.0, metavar="S", help="seconds between spills (10)")
    g.add_argument("--fast", action="store_true", help="as fast as possible (benchmarks)")
    g.add_argument("--nodrop", action="store_true", help="block on slow subscribers instead of dropping")
    g.add_argument("--batch-events", type=POSITIVE, default=200, metavar="N", help="events per message at most")
    g.add_argument("--wait-subscribers", type=COUNT, default=0, metavar="N",
                   help="wait for N subscribers before the first spill")
    g.add_argument("--wait-timeout", type=SECONDS, default=30.0, metavar="S")
    g.add_argument("--lose", action="append", default=[], metavar="SEQS",
                   help="sequence numbers not to send, e.g. 3,7,10-12 (loss injection)")
    g.add_argument("--loss-rate", type=FRACTION, default=0.0, metavar="P", help="lose each message with probability P")
    g.add_argument("--corrupt-message", action="append", default=[], metavar="SEQ:KIND",
                   help="damage message SEQ (magic, version, short-envelope, frames, count, truncate, swap)")
    p.set_defaults(func=cmd_simulate)


def _arguments_replay(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per spill per line")
    p.add_argument("--archive", metavar="DB", help="also store every spill in this archive (SQLite file or URL)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)


def _arguments_reprocess(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="raw files, at the same path on every worker host")
    p.add_argument("--scheduler", type=_scheduler, metavar="ADDRESS",
                   help="an existing Dask scheduler, e.g. tcp://HOST:8786 (default: a LocalCluster on this host)")
    p.add_argument("--workers", type=_int_in(1, 1024), metavar="N", help="LocalCluster worker processes (default 2)")
    p.add_argument("--retries", type=_int_in(0, 100), metavar="N", help="re-runs of a failed task (default 2)")
    p.add_argument("--ahead", type=_int_in(0, 1 << 20), metavar="N",
                   help="decoded spills of later files the client holds per worker thread while it merges a file "
                        "(default 16, ~0.3 MB each for 10^5 events; 0: one file indexed at a time)")
    p.add_argument("--archive", metavar="DB", help="also store every spill in this archive")
    p.add_argument("--json", action="store_true", help="one JSON object per spill per line")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--tls-ca", metavar="PEM", help="Dask TLS: CA certificate ([cluster] tls_ca_file)")
    p.add_argument("--tls-cert", metavar="PEM", help="Dask TLS: this client's certificate ([cluster] tls_cert_file)")
    p.add_argument("--tls-key", metavar="PEM", help="Dask TLS: this client's private key ([cluster] tls_key_file)")
    p.set_defaults(func=cmd_reprocess)


def _arguments_dump(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--spill", type=UINT32, required=True)
    p.add_argument("--event", type=UINT32, required=True, help="event number in burst")
    p.add_argument("--run", type=UINT32, help="run number (when a file holds several)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dump)


def _arguments_serve(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--connect", type=_endpoint, action="append", default=[], metavar="ENDPOINT",
                   help="a readout node's PUB endpoint (repeatable; also [ingest] endpoints)")
    p.add_argument("--json", action="store_true", help="one JSON object per finished spill per line")
    p.add_argument("--workers", type=COUNT, metavar="N", help="local decoder worker processes (0: in-process)")
    p.add_argument("--worker-bind", type=_endpoint, metavar="ENDPOINT", help="where workers connect, e.g. tcp://*:5570")
    p.add_argument("--spill-timeout", type=_float_in(0.001, 1e6), metavar="S", help="close a spill after S s without data")
    p.add_argument("--expected-ldc", type=_int_in(0, 255), action="append", metavar="N",
                   help="readout nodes whose END_OF_BURST completes a spill (repeatable; default 1 and 2)")
    p.add_argument("--archive", metavar="DB", help="also store every spill in this archive (SQLite file or URL)")
    p.add_argument("--max-spills", type=COUNT, default=0, metavar="N", help="stop after N QA records")
    p.add_argument("--duration", type=SECONDS, default=0.0, metavar="S", help="stop after S seconds")
    p.add_argument("--http", type=_host_port, metavar="HOST:PORT", help="HTTP API / metrics address ([web])")
    p.add_argument("--no-web", action="store_true", help="no HTTP server")
    _add_log_format(p)
    p.set_defaults(func=cmd_serve)


def _arguments_demo(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--spills", type=COUNT, default=0, metavar="N", help="stop after N spills (default: until Ctrl-C)")
    p.add_argument("--events", type=POSITIVE, default=5000, metavar="N", help="events per spill")
    p.add_argument("--spill-duration", type=SECONDS, default=4.8, metavar="S")
    p.add_argument("--spill-gap", type=SECONDS, default=3.0, metavar="S", help="time between spills")
    p.add_argument("--hadron-fraction", type=FRACTION, default=None,
                   help="hadrons per beam particle (default: the beam profile's expectation)")
    p.add_argument("--dead-channel", type=_address, action="append", default=[], metavar="SRC/PORT/CH")
    p.add_argument("--workers", type=COUNT, default=1, metavar="N")
    p.add_argument("--archive", metavar="DB", help="also store every spill in this archive (SQLite file or URL)")
    p.add_argument("--http", type=_host_port, metavar="HOST:PORT", help="HTTP API address (default 127.0.0.1:8064)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--seed", type=UINT32, default=0)
    _add_log_format(p)
    p.set_defaults(func=cmd_demo)


def _arguments_token(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the person's name, as it will show in acknowledgements")
    p.set_defaults(func=cmd_token)


def _arguments_worker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", type=_endpoint, required=True, metavar="ENDPOINT", help="the service's worker endpoint")
    p.add_argument("--capacity", type=POSITIVE, default=2, metavar="N", help="tasks held at once")
    p.add_argument("--key", metavar="FILE", help="this worker's CurveZMQ secret-key certificate (NAME.key_secret)")
    p.add_argument("--server-key", metavar="FILE", help="the service's CurveZMQ public-key certificate (server.key)")
    p.add_argument("--parent-pid", type=POSITIVE, help=argparse.SUPPRESS)  # local workers: exit with the service
    _add_log_format(p)
    p.set_defaults(func=cmd_worker)


def _arguments_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="where to write NAME.key (public) and NAME.key_secret")
    p.add_argument("names", nargs="+", metavar="NAME", help="e.g. server, or a worker host's name")
    p.set_defaults(func=cmd_keys)


def _arguments_archive(p: argparse.ArgumentParser) -> None:
    p.add_argument("db", metavar="DB", help="the archive: an SQLite file, or a URL (postgresql://USER@HOST/DB)")
    p.add_argument("action", choices=("spills", "bad-spills", "alarms", "export", "versions", "compare"))
    p.add_argument("--version", metavar="V", help="processing version (default: per spill the one stored last; "
                   "'*': every version)")
    p.add_argument("--versions", nargs=2, metavar=("A", "B"), help="compare: the two processing versions")
    p.add_argument("--run", type=UINT32)
    p.add_argument("--spill", type=UINT32, help="export: one spill (default: the run summed)")
    p.add_argument("--quality", type=str.upper, choices=[state.name for state in QualityState] + [INTERRUPTED],
                   help="spills: only this overall state")
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="bad-spills output format")
    p.add_argument("--name", help="alarms: this alarm name (* wildcards)")
    p.add_argument("--state", type=str.lower, choices=ALARM_STATES, help="alarms: only transitions to this state")
    p.add_argument("--per-spill", action="store_true", help="export: also each spill in its own ROOT folder")
    p.add_argument("--out", metavar="FILE", help="output file (bad-spills default: stdout)")
    p.set_defaults(func=cmd_archive)


def _arguments_config(p: argparse.ArgumentParser) -> None:
    config_sub = p.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    p = config_sub.add_parser("show", help="the effective configuration (TOML; --json) with each value's source: "
                                           "default, file:PATH, env:NA64_SECTION__KEY, argument, derived:KEY or "
                                           "profile:NAME")
    _add_common(p)
    p.add_argument("--json", action="store_true", help='{"section.key": {"value": ..., "source": ...}, ...}')
    p.set_defaults(func=cmd_config_show)
    p = config_sub.add_parser("check", help="validate a configuration file and the files it names: exit 0, or 1 "
                                            "with one line per problem")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--env", action="store_true", help="with the NA64_* environment variables on top (as the service)")
    p.add_argument("--files", action="store_true",
                   help="also read the files it names (channel map, alarm rules, tokens file), as on the service's host")
    p.set_defaults(func=cmd_config_check)


def _arguments_format(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_format)


# name: (help line, function adding the command's arguments and ``func``), in --help's order
_COMMANDS = {
    "simulate": ("write simulated raw data (readout simulator)", _arguments_simulate),
    "replay": ("decode raw files; one QA record per spill", _arguments_replay),
    "reprocess": ("decode raw files on a Dask cluster; records identical to replay", _arguments_reprocess),
    "dump": ("print one decoded event", _arguments_dump),
    "serve": ("live: subscribe to readout nodes, one QA record per spill", _arguments_serve),
    "demo": ("the service fed by the built-in readout simulator (two LDCs on 127.0.0.1)", _arguments_demo),
    "token": ("make a write token for a person (HTTP writes: acknowledge, reset, reference)", _arguments_token),
    "worker": ("a decoder worker for a serve process (this or another host)", _arguments_worker),
    "keys": ("create CurveZMQ key pairs for the worker port", _arguments_keys),
    "archive": ("read the QA archive: spills, bad-spill list, alarm history, histograms", _arguments_archive),
    "config": ("show the effective configuration, or check a configuration file", _arguments_config),
    "format": ("print the raw-format bit layouts (generated from the decoder's tables)", _arguments_format),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The program's parser. Given the ``argv`` it will parse, and when that starts with a command's name, the
    parser has that command alone: building all of them (argparse looks up its messages' translations once
    per parser) costs a ``replay`` ≈ 1 % of its start-up. Nothing the user sees differs: with a valid command
    first, argparse prints no other command's name or arguments (the program's ``--help``, ``--version`` and an
    unknown command come before or instead of one, and get every command)."""
    only = argv[0] if argv and argv[0] in _COMMANDS else None
    parser = _Parser(prog="na64-online", description="NA64 online decoding and data-quality monitoring")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_line, add_arguments) in _COMMANDS.items():
        if only is None or name == only:
            add_arguments(sub.add_parser(name, help=help_line))
    return parser


def _skip_numba_extensions() -> None:
    """The kernels use no numba extension, but numba loads every installed one before its first compile or
    cache load — awkward's (installed with uproot) costs each command ~0.6 s of start-up. Done only in the
    command's own process, never on import, so a program that imports the package keeps its extensions.
    Numba itself is not imported here: a command whose kernels are all compiled ahead of time never loads
    it (decoders/_aot.py); the guard is set as soon as anything does."""
    entrypoints = sys.modules.get("numba.core.entrypoints")
    if entrypoints is not None:
        _skip_entrypoints(entrypoints)
    else:
        sys.meta_path.insert(0, _NumbaEntrypointsHook())
    if "numba.np.arraymath" not in sys.modules:
        sys.meta_path.insert(0, _NumbaBlasProbe())


def _skip_entrypoints(entrypoints) -> None:
    if hasattr(entrypoints, "_already_initialized"):  # numba's private guard; without it nothing is skipped
        entrypoints._already_initialized = True


class _NumbaEntrypointsHook:
    """Sets numba's extension guard (:func:`_skip_numba_extensions`) right after ``numba.core.entrypoints``
    is first executed, whoever imports it; then removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "numba.core.entrypoints":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            _skip_entrypoints(module)

        spec.loader.exec_module = exec_module
        return spec


class _NumbaBlasProbe:
    """Refuses ``scipy.linalg.cython_blas`` (and its parents) to numba's import-time BLAS probe only
    (``numba.np.arraymath`` asks whether ``np.dot`` could call BLAS, which loads scipy.linalg: 0.3-0.7 s of
    every command's start-up).

    The kernels call no BLAS (no ``np.dot``, ``np.convolve`` or ``np.correlate`` in numba code); numba then
    types those with its own loops. Any other import of scipy.linalg, and numba's probe once answered, are
    left alone: the finder removes itself after refusing once."""

    def find_spec(self, name, path=None, target=None):
        if name not in ("scipy", "scipy.linalg", "scipy.linalg.cython_blas"):  # parents are imported first
            return None
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "_check_blas" and frame.f_globals.get("__name__") == "numba.np.arraymath":
                sys.meta_path.remove(self)
                raise ImportError("numba's BLAS probe: not needed by the kernels")
            frame = frame.f_back
        return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    _skip_numba_extensions()
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (``… | head``): no message; silence the interpreter's flush of stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except DaqError as exc:
        print(f"na64-online: error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except OSError as exc:
        print(f"na64-online: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if os.environ.get("NA64_DEBUG"):
            raise
        kind = "ZeroMQ" if type(exc).__module__.startswith("zmq") else type(exc).__name__
        print(f"na64-online: error: {kind}: {exc} (NA64_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def run() -> int:
    """The ``na64-online`` program: :func:`main` on the command line's arguments, then what the interpreter's
    exit would collect is frozen (``gc.freeze``): at exit the interpreter runs the cyclic collector over every
    object left (≈ 5 % of a small replay's instructions) although the process's memory goes anyway. Objects
    still go by reference counting; only garbage cycles left at exit are not finalised, as the interpreter
    does not promise to either."""
    status = main()
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(run())
