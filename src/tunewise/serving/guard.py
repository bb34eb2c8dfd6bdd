"""The guard in front of every route: request size and time limits, allowed hosts, metrics."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any


class ServeMetrics:
    """Prometheus metrics in a registry of the app's own (tests run several apps in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tunewise_requests", "answered requests", ["endpoint", "arm", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "tunewise_request_latency_seconds",
            "request latency, queueing and log write included",
            ["endpoint", "arm"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.arm_failures = Counter(
            "tunewise_arm_failures",
            "model failures per arm (answered by the incumbent when possible)",
            ["arm"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "tunewise_rejected_requests", "requests refused with a 4xx", ["path", "status"], registry=self.registry
        )
        self.internal_errors = Counter("tunewise_internal_errors", "unexpected server errors", registry=self.registry)
        self.log_failures = Counter(
            "tunewise_log_write_failures", "log rows that could not be written", registry=self.registry
        )
        self.feedback = Counter("tunewise_feedback", "feedback stored", ["kind", "duplicate"], registry=self.registry)
        self.batch_size = Histogram(
            "tunewise_batch_size",
            "requests per model call",
            ["arm"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.weights = Gauge("tunewise_arm_weight", "current traffic weight", ["arm"], registry=self.registry)
        self.timeouts = Counter(
            "tunewise_request_timeouts",
            "requests not answered within serve.request_timeout_s (504; the model call is stopped)",
            ["arm"],
            registry=self.registry,
        )


class GuardMiddleware:
    """In front of every route:

    - the Host header (when ``allowed_hosts`` is given: no API key is set): only those names, any
      port, else 400; a page on another site whose name was rebound to 127.0.0.1 (DNS rebinding)
      sends its own name and is refused;
    - bodies over ``max_bytes`` are refused with 413 (Content-Length first, then the streamed size,
      so a chunked upload cannot get around it);
    - a body not fully received within ``body_timeout_s`` (a Content-Length larger than what is
      sent, a client that stalls) is answered 408 and the connection closed, so no connection hangs;
    - every 4xx response is counted.
    """

    def __init__(
        self,
        app: Any,
        max_bytes: int,
        metrics: ServeMetrics,
        body_timeout_s: float = 10.0,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                self.metrics.rejected.labels(_route_label(path), str(message["status"])).inc()
            await send(message)

        headers = dict(scope.get("headers") or [])
        if self.allowed_hosts is not None:
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed_hosts:
                # before the body is read: closing the connection avoids reading what a rebinding page sent
                await _refuse(
                    counting_send,
                    400,
                    f"Host header {host or '(none)'!r} is not accepted: without an "
                    f"API key the server answers only to {', '.join(sorted(self.allowed_hosts))}",
                )
                return
        declared = headers.get(b"content-length")
        has_body = (declared not in (None, b"0")) or b"transfer-encoding" in headers
        if scope.get("method") not in ("POST", "PUT", "PATCH") and not has_body:
            await self.app(scope, receive, counting_send)
            return
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await _refuse(counting_send, 413, f"request body larger than {self.max_bytes} bytes")
                return
        chunks, size = [], 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                await _refuse(
                    counting_send,
                    408,
                    f"request body not received within {self.body_timeout_s:g} s "
                    f"({size} of {declared.decode('latin-1') if declared else 'unknown'} bytes)",
                )
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _refuse(counting_send, 413, f"request body larger than {self.max_bytes} bytes")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, counting_send)


async def _refuse(send: Any, status: int, detail: str) -> None:
    """An error in the documented shape ({"detail": ...}), and the connection closed after it."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _host_name(value: str) -> str:
    """The name of a Host header without its port: ``[::1]:8000`` -> ``[::1]``, ``LocalHost.:80`` -> ``localhost``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end > 0 else value
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") <= 1 else value


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _route_label(path: str) -> str:
    # bounded label values: unknown paths share one label so a scanner cannot blow up the metrics
    known = ("/v1/classify", "/v1/chat/completions", "/v1/feedback", "/v1/arms", "/admin/arms", "/healthz", "/metrics")
    return path if path in known else "other"
