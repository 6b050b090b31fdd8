"""Prometheus metrics of one server: requests, errors, latency, tokens, and the batcher's passes.

Each app owns its registry (no process-global collectors), so several apps, or tests, never share
counts. `MetricsMiddleware` times every HTTP request, labelled by route template (not raw path, so
`/v1/inference/{model}` stays one series); `ServingMetrics` is also the AsyncEngine's BatchObserver.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("qrerank_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.errors = Counter(
            "qrerank_errors", "HTTP requests answered with a 4xx/5xx", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "qrerank_request_seconds", "HTTP request latency", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("qrerank_prompt_tokens", "prompt tokens of answered requests", ["model"], registry=r)
        self.batch_requests = Histogram(
            "qrerank_batch_requests",
            "requests merged into one engine pass",
            ["kind"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_sequences = Histogram(
            "qrerank_batch_sequences", "documents/texts in one engine pass", ["kind"], buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "qrerank_batch_seconds", "duration of one engine pass", ["kind"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "qrerank_queue_seconds",
            "wait from submission to engine pass",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "qrerank_batch_retries", "requests of failed merged passes retried alone", ["kind"], registry=r
        )
        self.cancelled = Counter("qrerank_cancelled", "queued requests dropped by their callers", ["kind"], registry=r)
        self.disconnects = Counter(
            "qrerank_client_disconnects",
            "requests whose client left before the answer (stage: body or waiting)",
            ["route", "stage"],
            registry=r,
        )
        self.engine_faults = Gauge(
            "qrerank_engine_faults", "batching worker faults survived (each failed the requests it held)", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_disconnect(self, route: str, stage: str) -> None:
        self.disconnects.labels(route, stage).inc()

    # BatchObserver
    def observe_batch(self, kind: str, queue_seconds: Sequence[float], sequences: int, run_seconds: float) -> None:
        self.batch_requests.labels(kind).observe(len(queue_seconds))
        self.batch_sequences.labels(kind).observe(sequences)
        self.batch_seconds.labels(kind).observe(run_seconds)
        queue = self.queue_seconds.labels(kind)
        for seconds in queue_seconds:
            queue.observe(seconds)

    def observe_retry(self, kind: str, requests: int) -> None:
        self.retries.labels(kind).inc(requests)

    def observe_cancelled(self, kind: str) -> None:
        self.cancelled.labels(kind).inc()


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware task per request): status and latency of every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # a response never started is a server fault

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            route = scope.get("route")  # set by the router on a match
            template = getattr(route, "path", "unmatched")
            self.metrics.observe_request(template, status, time.perf_counter() - start)
