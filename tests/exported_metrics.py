"""The sample names the live service really exports: its own registry, built as ``serve`` builds it."""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path

#: a metric name in a PromQL expression: the service's (na64_…), the process collector's, or Prometheus's up
METRIC_IN_PROMQL = re.compile(r"(?<![A-Za-z0-9_:\"'])((?:na64|process|python)_[A-Za-z0-9_]+|up)\b(?!\s*\()")


@functools.lru_cache(maxsize=1)
def exported_sample_names() -> frozenset[str]:
    """Every sample name of the LiveService's registry (archive configured, so ``na64_archive_*`` too),
    from the ``# TYPE`` lines (families without samples count too; a histogram ``x`` is ``x_bucket``/``_sum``/``_count``)."""
    from prometheus_client import generate_latest

    from na64_online.config import Config
    from na64_online.decoders.channelmap import ChannelMap
    from na64_online.service import LiveService

    with tempfile.TemporaryDirectory() as tmp:
        service = LiveService(Config(), ChannelMap.default(), archive_path=Path(tmp) / "qa.sqlite", web=False,
                              warm_up=False)
        try:
            text = generate_latest(service.registry).decode()
        finally:
            service.monitor.close()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}.get(kind, ("",))
            names.update(name + s for s in suffixes)
    return frozenset(names | {"up"})


def metrics_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (recording-rule names ``a:b:c`` excluded)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(METRIC_IN_PROMQL.findall(without_strings))
