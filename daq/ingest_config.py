"""The live ingest's settings (``[ingest]``): apart from the service, so that reading the configuration
does not load ZeroMQ or the decoders."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from ..config_section import ConfigSection, FieldProblem
from .endpoints import check_endpoint, is_loopback


class IngestConfig(ConfigSection):
    """Live ingest settings (the ``[ingest]`` section of the service configuration)."""

    section: ClassVar[str] = "ingest"

    #: readout nodes' PUB endpoints (``serve --connect``), e.g. "tcp://ldc1.na64:5550"
    endpoints: tuple[str, ...] = ()
    #: LDCs whose END_OF_BURST completes a spill
    expected_ldcs: tuple[int, ...] = (1, 2)
    #: a spill without data for this long is closed (incomplete if an END_OF_BURST is missing)
    spill_timeout_s: float = Field(10.0, gt=0)
    #: an expected LDC silent this long is not waited for when building events
    ldc_down_s: float = Field(10.0, gt=0)
    max_open_spills: int = Field(4, ge=1)
    #: unbuilt sub-events held per spill; beyond, everything pending is built (incomplete if need be)
    max_pending_bytes: int = Field(256 << 20, ge=1)
    #: built events per decoding task
    chunk_events: int = Field(5000, ge=1)
    chunk_bytes: int = Field(32 << 20, ge=1)
    #: a partial chunk is handed on after this long
    chunk_max_age_s: float = Field(0.5, gt=0)
    gdc_id: int = 1
    #: SUB socket: receive high-water mark (messages) and reconnection
    rcvhwm: int = Field(10000, ge=1)
    rcvbuf: int = Field(0, ge=0)
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 2000
    #: dead readout node detection (TCP keepalive: probe interval and timeout, whole seconds)
    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 5000
    #: local decoder worker processes; 0: decode in a thread of the service process
    workers: int = Field(1, ge=0)
    #: memory budget of the service process in MB (its footprint plus every buffer: receive queues,
    #: event builder, decoding tasks); what does not fit is dropped and counted. Worker processes are
    #: outside it. See daq/memory.py.
    max_memory_mb: int = Field(1024, ge=1)
    #: sequence numbers remembered per readout node to tell duplicates and late messages from losses
    sequence_window: int = Field(64, ge=1)
    #: more messages skipped at once than this is a sequence_jump (counted), not lost messages
    max_sequence_jump: int = 100_000
    #: extra in-process worker threads (besides ``workers`` processes)
    worker_threads: int = Field(0, ge=0)
    #: where workers connect; beyond loopback (e.g. "tcp://*:5570", workers on other hosts) it needs
    #: worker_secret_key and worker_clients_dir (CurveZMQ)
    worker_bind: str = "tcp://127.0.0.1:*"
    #: the service's CurveZMQ secret-key certificate (``na64-online keys DIR server``); "" = no CurveZMQ
    worker_secret_key: str = ""
    #: directory of the public-key certificates (NAME.key) of the workers allowed to connect
    worker_clients_dir: str = ""
    #: tasks each worker holds at once
    worker_capacity: int = Field(2, ge=1)
    #: local worker processes read their tasks' payloads from the service's memory (``process_vm_readv``)
    #: instead of receiving them over ipc://; a worker the system does not let read is sent the bytes
    local_worker_reads: bool = True
    #: readout messages the service loop takes at most before it looks at the workers again (merging their
    #: results, handing them the next tasks): a backlog of messages must not leave the workers idle
    messages_per_turn: int = Field(8, ge=1)
    #: tasks waiting for a free worker; beyond, whole events are dropped (counted)
    max_queued_tasks: int = Field(8, ge=1)
    #: a task sent to a worker without result after this long: the worker is taken for dead, the task retried
    task_timeout_s: float = Field(60.0, gt=0)
    task_retries: int = Field(1, ge=0)
    #: a task no worker took within this long fails (its events count as dropped)
    queue_timeout_s: float = Field(60.0, gt=0)
    #: at shutdown, how long to wait for outstanding results
    drain_timeout_s: float = Field(10.0, gt=0)
    #: QA records kept in memory (``IngestService.records``)
    keep_records: int = Field(100, ge=1)
    #: at start, how long to wait for the local workers to have their kernels compiled (READY) before
    #: subscribing to the readout nodes; past it the service subscribes anyway (and says so in the log)
    warmup_timeout_s: float = Field(300.0, gt=0)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, endpoints: tuple[str, ...]) -> tuple[str, ...]:
        for endpoint in endpoints:
            check_endpoint(endpoint)
        return endpoints

    @field_validator("worker_bind")
    @classmethod
    def _worker_bind(cls, endpoint: str) -> str:
        check_endpoint(endpoint)
        return endpoint

    @model_validator(mode="after")
    def _agree(self) -> "IngestConfig":
        if self.max_sequence_jump < self.sequence_window:
            raise FieldProblem("max_sequence_jump", f"must be >= sequence_window ({self.sequence_window}), "
                                                    f"got {self.max_sequence_jump}")
        if not self.expected_ldcs:
            raise FieldProblem("expected_ldcs", "must name at least one LDC")
        if bool(self.worker_secret_key) != bool(self.worker_clients_dir):
            missing = "worker_clients_dir" if self.worker_secret_key else "worker_secret_key"
            raise FieldProblem(missing, "must be set too: worker_secret_key and worker_clients_dir go together")
        if not self.worker_secret_key and not is_loopback(self.worker_bind):
            raise FieldProblem("worker_bind", f"{self.worker_bind} is beyond loopback: set worker_secret_key and "
                                              "worker_clients_dir (CurveZMQ), or bind 127.0.0.1")
        return self

    @property
    def worker_curve(self) -> "CurveServer | None":
        """The worker port's CurveZMQ keys, if configured."""
        if not self.worker_secret_key:
            return None
        from .workers import CurveServer  # ZeroMQ: only when the service starts its workers

        return CurveServer(self.worker_secret_key, self.worker_clients_dir)
