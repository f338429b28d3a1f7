"""Process lifecycle: signals set an asyncio.Event, and a service's run coroutine ends cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from arena_core.errors import ConfigurationError

log = logging.getLogger(__name__)

EXIT_CONFIGURATION_ERROR = 2


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], retry_seconds: float = 1.0) -> None:
    """Cancels the tasks and waits until every one has ended.

    A task that is still running after `retry_seconds` is cancelled again: on Python 3.11
    `asyncio.wait_for` (inside nats-py's requests) can swallow a cancellation that lands as its
    inner call completes, and a background loop would then run on and hold up the shutdown.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_seconds)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for task, outcome in zip(tasks, outcomes, strict=True):
        if isinstance(outcome, Exception):
            log.error("%s had failed: %r", task.get_name(), outcome)


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
