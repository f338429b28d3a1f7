"""The `grpc.aio` server every service runs: its servicers, health, reflection and interceptors."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from arena_core.errors import ConfigurationError
from arena_core.rpc.interceptors import (
    ErrorMappingInterceptor,
    MetricsInterceptor,
    RequestContextInterceptor,
)
from arena_core.settings import GrpcSettings

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class GrpcService:
    """A servicer, the generated function that registers it, and its full service name."""

    servicer: Any
    register: Callable[[Any, aio.Server], None]
    full_name: str


def grpc_service(
    servicer: Any, register: Callable[[Any, aio.Server], None], descriptor: Any
) -> GrpcService:
    """Binds a servicer using its generated `ServiceDescriptor` for the name, never a string."""
    return GrpcService(servicer=servicer, register=register, full_name=descriptor.full_name)


class GrpcServer:
    """Owns the server and its health state; starts NOT_SERVING until told otherwise."""

    def __init__(
        self, service: str, settings: GrpcSettings, services: Sequence[GrpcService]
    ) -> None:
        self._service = service
        self._settings = settings
        self._services = services
        self._health = HealthServicer()
        self._server: aio.Server | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        return f"{self._settings.host}:{self.port}"

    async def start(self) -> None:
        server = aio.server(
            interceptors=[
                RequestContextInterceptor(),
                MetricsInterceptor(self._service),
                ErrorMappingInterceptor(),
            ],
            options=[
                # Without this a second process could bind the same port and split the traffic.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", self._settings.max_message_bytes),
                ("grpc.max_send_message_length", self._settings.max_message_bytes),
            ],
        )
        self._configure_servicers(server)
        self._configure_health(server)
        self._configure_reflection(server)
        await self._set_all(NOT_SERVING)
        try:
            self.port = server.add_insecure_port(f"{self._settings.host}:{self._settings.port}")
        except RuntimeError:
            raise ConfigurationError(
                f"ARENA_GRPC__PORT: cannot listen on {self._settings.host}:{self._settings.port} "
                "(port in use?)"
            ) from None
        await server.start()
        self._server = server
        log.info("gRPC listening", extra={"address": self.address})

    def _configure_servicers(self, server: aio.Server) -> None:
        for service in self._services:
            service.register(service.servicer, server)

    def _configure_health(self, server: aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)

    def _configure_reflection(self, server: aio.Server) -> None:
        names = [service.full_name for service in self._services]
        names += [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)

    async def set_serving(self, serving: bool) -> None:
        await self._set_all(SERVING if serving else NOT_SERVING)

    async def _set_all(self, status: Any) -> None:
        for name in ["", *(service.full_name for service in self._services)]:
            await self._health.set(name, status)

    async def stop(self) -> None:
        """NOT_SERVING first so load balancers stop routing, then let in-flight RPCs finish."""
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self._settings.grace_seconds)
            self._server = None
