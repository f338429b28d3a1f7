"""Process lifecycle: signals set an asyncio.Event, and a service's run coroutine ends cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from arena_core.errors import ConfigurationError

EXIT_CONFIGURATION_ERROR = 2


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM (Kubernetes, `arena down`) and SIGINT (Ctrl-C) both request a graceful stop."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs `main(stop)` until it returns; exits 2 with the message on a configuration error."""

    async def runner() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await main(stop)

    try:
        asyncio.run(runner())
    except ConfigurationError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIGURATION_ERROR) from None
