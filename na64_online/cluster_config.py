"""The ``[cluster]`` configuration section: where ``reprocess`` runs (:mod:`.reprocess`) and how it talks to Dask.

Apart from :mod:`.reprocess` so that reading the configuration (every command) does not import the
reprocessing code; :mod:`.reprocess` re-exports it.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from .config_section import ConfigSection, FieldProblem


class ClusterConfig(ConfigSection):
    """``[cluster]``: where ``reprocess`` runs and how it talks to Dask.

    ``scheduler``: address of an existing Dask scheduler (``tcp://HOST:8786``,
    ``tls://HOST:8786``); ``None`` starts a ``LocalCluster`` of ``workers``
    processes on this host, bound to 127.0.0.1. ``retries``: times a failed
    task is re-run. ``direct_to_workers``: the client fetches each spill's result from the worker that
    made it (True) or through the scheduler (False: only the scheduler must be reachable from the client,
    at the cost of relaying every result, ~0.3 MB per spill of 10^5 events, through it); None: directly
    from a local cluster's workers, through an existing scheduler. ``tls_ca_file``/``tls_cert_file``/``tls_key_file``: PEM
    files; with all three the client (and a local cluster) use Dask's TLS
    ``Security`` with encryption required — the scheduler address must then be
    ``tls://``. ``ahead``: spills of the files after the one being merged that
    the client holds decoded, at most, per worker thread (~0.3 MB each for
    10^5 events): while it holds fewer, the next files are indexed and decoded
    beside the one being merged, a pass per thread; 0: only the file being
    merged is indexed, its spills spread as spill tasks.
    """

    section: ClassVar[str] = "cluster"

    scheduler: str | None = Field(None, pattern=r"^(tcp|tls|ucx|ws|wss)://.+")
    workers: int = Field(2, ge=1, le=1024)
    retries: int = Field(2, ge=0, le=100)
    direct_to_workers: bool | None = None
    ahead: int = Field(16, ge=0, le=1 << 20)
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @model_validator(mode="after")
    def _tls_complete(self) -> "ClusterConfig":
        tls = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if any(tls) and not all(tls):
            missing = [n for n, v in zip(("tls_ca_file", "tls_cert_file", "tls_key_file"), tls) if not v][0]
            raise FieldProblem(missing, "TLS needs all of tls_ca_file, tls_cert_file and tls_key_file")
        if all(tls) and self.scheduler is not None and not self.scheduler.startswith("tls://"):
            raise FieldProblem("scheduler", f"TLS is configured: the address must be tls://…, not {self.scheduler}")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_ca_file is not None
