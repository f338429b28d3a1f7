"""Connecting to NATS with every authentication method the settings allow."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client

from arena_core.errors import UnavailableError
from arena_core.settings import NatsSettings

log = logging.getLogger(__name__)

StateCallback = Callable[[bool], Awaitable[None]]


def _tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    if not settings.tls.enabled:
        return None
    context = ssl.create_default_context(
        cafile=str(settings.tls.ca_file) if settings.tls.ca_file else None
    )
    if settings.tls.cert_file and settings.tls.key_file:
        context.load_cert_chain(str(settings.tls.cert_file), str(settings.tls.key_file))
    return context


def connect_options(settings: NatsSettings, name: str) -> dict[str, Any]:
    """The keyword arguments for `nats.connect`, secrets unwrapped only here."""
    options: dict[str, Any] = {
        "servers": settings.servers,
        "name": name,
        "connect_timeout": settings.connect_timeout_seconds,
        # Keep reconnecting for as long as the process lives; health shows the outage.
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "allow_reconnect": True,
    }
    if settings.user:
        options["user"] = settings.user
    if settings.password:
        options["password"] = settings.password.get_secret_value()
    if settings.token:
        options["token"] = settings.token.get_secret_value()
    if settings.creds_file:
        options["user_credentials"] = str(settings.creds_file)
    if settings.nkey_seed_file:
        options["nkeys_seed"] = str(settings.nkey_seed_file)
    if (tls := _tls_context(settings)) is not None:
        options["tls"] = tls
    return options


async def connect(
    settings: NatsSettings, name: str, on_state_change: StateCallback | None = None
) -> Client:
    """Connects, reporting later disconnects and reconnects through `on_state_change`."""
    connected: list[Client] = []

    async def disconnected() -> None:
        if connected and (connected[0].is_draining or connected[0].is_closed):
            return  # our own shutdown, not an outage
        log.warning("NATS disconnected")
        if on_state_change:
            await on_state_change(False)

    async def reconnected() -> None:
        log.info("NATS reconnected")
        if on_state_change:
            await on_state_change(True)

    async def error(exception: Exception) -> None:
        log.warning("NATS error: %s", exception)

    try:
        client = await nats.connect(
            **connect_options(settings, name),
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
    except Exception as exc:  # nats-py raises several unrelated types for "cannot connect"
        raise UnavailableError(f"cannot connect to NATS at {settings.url}: {exc}") from exc
    connected.append(client)
    if on_state_change:
        await on_state_change(True)
    return client
