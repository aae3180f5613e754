"""``GET /metrics``: what the server is doing, in Prometheus's text format (prometheus-client).

Counted as requests pass (accounting.py): requests by route and status, their duration, the
time to the first token, tokens in and out (by model and by key name, never by key). Read from
the backend when Prometheus scrapes: the queue depth, and for a gateway each upstream's health,
requests in flight and outcomes. Every app has its own registry, so several apps in one process
(the tests) do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

disable_created_metrics()  # no *_created series: half the lines, and nothing a dashboard here reads
PREFIX = "reference_server"
# Seconds. Tokens on a laptop CPU arrive in tens of milliseconds; a long prompt can take seconds.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


# --8<-- [start:metrics]
class Metrics:
    def __init__(self, backend: Any) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered, by route and status.",
                                ["route", "method", "status"], registry=r)
        self.duration = Histogram(f"{PREFIX}_request_duration_seconds", "From the request to the last byte "
                                  "of the response.", ["route"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "From the request to the first generated "
                              "token.", ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Tokens in: prompts and embedding inputs.",
                                     ["model", "key"], registry=r)
        self.completion_tokens = Counter(f"{PREFIX}_completion_tokens", "Tokens out: generated.",
                                         ["model", "key"], registry=r)
        self.cancelled = Counter(f"{PREFIX}_generations_cancelled", "Generations stopped before their end "
                                 "because the client went away.", ["model"], registry=r)
        self.rate_limited = Counter(f"{PREFIX}_rate_limited", "Requests refused by a key's limit or budget.",
                                    ["key", "limit"], registry=r)
        self.in_flight = Gauge(f"{PREFIX}_requests_in_flight", "HTTP requests being answered.", registry=r)
        r.register(BackendCollector(backend))
# --8<-- [end:metrics]


class BackendCollector(Collector):
    """Reads the backend's state at scrape time, so the backend needs no metrics code of its own."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "Requests waiting or running in the backend "
                                "(a gateway: requests outstanding at its upstreams).", value=self.backend.queue_depth)
        upstreams = getattr(self.backend, "upstream_status", None)
        if upstreams is None:
            return
        healthy = GaugeMetricFamily(f"{PREFIX}_upstream_healthy", "1 if the upstream answered its last "
                                    "health check and is not cooling down.", labels=["upstream"])
        outstanding = GaugeMetricFamily(f"{PREFIX}_upstream_outstanding", "Requests sent to the upstream "
                                        "and not finished.", labels=["upstream"])
        outcomes = CounterMetricFamily(f"{PREFIX}_upstream_requests", "Requests sent to each upstream, by "
                                       "outcome (ok, failed_mid_stream, or why it was retried elsewhere).",
                                       labels=["upstream", "outcome"])
        now = time.monotonic()
        for u in upstreams():
            healthy.add_metric([u.url], 1.0 if u.available(now) else 0.0)
            outstanding.add_metric([u.url], u.outstanding)
            for outcome, n in sorted(u.outcomes.items()):
                outcomes.add_metric([u.url, outcome], n)
        yield healthy
        yield outstanding
        yield outcomes
        counts = self.backend.counts
        yield CounterMetricFamily(f"{PREFIX}_upstream_retries", "Requests moved to another upstream "
                                  "before their first token.", value=counts["retries"])
        yield CounterMetricFamily(f"{PREFIX}_upstream_gave_up", "Requests no upstream could start.",
                                  value=counts["gave_up"])


router = APIRouter(tags=["metrics"])


# --8<-- [start:route]
@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
# --8<-- [end:route]
