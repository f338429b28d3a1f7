"""Prometheus metric families shared by every service, and the `/metrics` HTTP server.

Names follow ``arena_<subsystem>_<noun>_<unit>``; every label here is bounded (service, RPC
method, status code, consumer, outcome). Service-specific families live in each service's own
``metrics.py``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

from arena_core.errors import ConfigurationError

LATENCY_BUCKETS_SECONDS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

SERVICE_INFO = Info("arena_service", "Build information of the running service.", ["service"])
SERVICE_UP = Gauge(
    "arena_service_serving", "1 while the service reports SERVING on gRPC health.", ["service"]
)
NATS_CONNECTED = Gauge(
    "arena_nats_connected", "1 while the service is connected to NATS.", ["service"]
)

GRPC_HANDLED = Counter(
    "arena_grpc_server_handled_total",
    "RPCs completed by the server, by method and status code.",
    ["service", "method", "code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "arena_grpc_server_handling_seconds",
    "Time to complete an RPC on the server.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
GRPC_IN_FLIGHT = Gauge(
    "arena_grpc_server_in_flight_requests", "RPCs being handled now.", ["service", "method"]
)

EVENTS_PUBLISHED = Counter(
    "arena_events_published_total",
    "Events published to JetStream; duplicate=true when JetStream dropped a repeat by msg id.",
    ["service", "event_type", "duplicate"],
)
EVENTS_CONSUMED = Counter(
    "arena_events_consumed_total",
    "Messages taken from a durable consumer, by how handling ended.",
    ["service", "consumer", "outcome"],
)
EVENT_HANDLING_SECONDS = Histogram(
    "arena_events_handling_seconds",
    "Time to handle one consumed message.",
    ["service", "consumer"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
EVENTS_DEAD_LETTERED = Counter(
    "arena_events_dead_lettered_total",
    "Messages moved to the dead-letter stream instead of being retried again.",
    ["service", "consumer", "reason"],
)
CONSUMER_PENDING = Gauge(
    "arena_consumer_pending_messages",
    "Messages waiting for a durable consumer (not yet delivered plus awaiting ack).",
    ["service", "consumer"],
)


class MetricsServer:
    """The `/metrics` endpoint on its own port, stopped with the service."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
        self._host, self._port, self._registry = host, port, registry
        self._shutdown: Callable[[], None] | None = None

    def start(self) -> None:
        try:
            server, thread = start_http_server(self._port, self._host, registry=self._registry)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"ARENA_METRICS__PORT: port {self._port} is already in use"
                ) from None
            raise

        def shutdown() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        self._shutdown = shutdown

    def stop(self) -> None:
        if self._shutdown is not None:
            self._shutdown()
            self._shutdown = None
