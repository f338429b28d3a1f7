"""Outbound gRPC channels between services: request ids propagated, transient failures retried."""

from __future__ import annotations

import json
from typing import Any

from grpc import aio

from arena_core import logs
from arena_core.rpc.interceptors import CORRELATION_ID_KEY, REQUEST_ID_KEY

# Retry only what is safe to retry: the server never saw the call or is briefly unavailable.
_RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


class _ContextPropagation(
    aio.UnaryUnaryClientInterceptor,
    aio.UnaryStreamClientInterceptor,
):
    """Sends the current request and correlation ids along, so logs join up across services."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_context(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_context(details), request)


def _with_context(details: Any) -> Any:
    metadata = list(details.metadata or ())
    present = {key for key, _ in metadata}
    for key, value in (
        (REQUEST_ID_KEY, logs.request_id.get()),
        (CORRELATION_ID_KEY, logs.correlation_id.get()),
    ):
        if value and key not in present:
            metadata.append((key, value))
    return aio.ClientCallDetails(
        details.method,
        details.timeout,
        aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


def service_channel(target: str, max_message_bytes: int = 64 * 1024 * 1024) -> aio.Channel:
    """An insecure channel for in-cluster traffic (mesh or NetworkPolicy provide the boundary)."""
    return aio.insecure_channel(
        target,
        options=[
            ("grpc.service_config", json.dumps(_RETRY_POLICY)),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
        interceptors=[_ContextPropagation()],
    )
