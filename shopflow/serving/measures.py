"""The service's own Prometheus metrics (next to BentoML's request metrics on /metrics).

Defined here, not in bento/service.py: building a Bento re-imports the service module
(`bentoml.bentos.build_bentofile(reload=True)`), and a process that builds two Bentos (a
challenger's and an experiment's) would register each metric twice.
"""

from __future__ import annotations

import bentoml

STAGE_SECONDS = bentoml.metrics.Histogram(
    name="shopflow_stage_seconds",
    documentation="Seconds spent in each step of a request (embed, retrieve, rerank)",
    labelnames=["endpoint", "stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LOG_RECORDS = bentoml.metrics.Counter(
    name="shopflow_log_records_total",
    documentation="Impressions and events by outcome: written, dropped (queue full), lost (sink)",
    labelnames=["kind", "outcome"],
)
