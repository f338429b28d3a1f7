"""`helm test`: every service answers gRPC health SERVING, and a NATS round trip works.

Runs in the CPU image with the services' own ARENA_NATS__* settings, so it authenticates exactly
as they do. ARENA_TEST_TARGETS lists the services as ``name=host:port`` pairs, comma-separated;
ARENA_TEST_TIMEOUT_SECONDS bounds the wait for each of them.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import nats

from arena_core.bus.connection import connect_options
from arena_core.rpc.health import check_health
from arena_core.settings import ServiceSettings, load_settings


def parse_targets(raw: str) -> dict[str, str]:
    targets = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, address = item.partition("=")
        if not address:
            raise SystemExit(f"ARENA_TEST_TARGETS: {item!r} is not name=host:port")
        targets[name] = address
    return targets


async def wait_serving(name: str, address: str, timeout: float) -> bool:
    """Polls until SERVING or the deadline: a pod may still be starting when the test runs."""
    deadline = time.monotonic() + timeout
    status = "UNREACHABLE"
    while time.monotonic() < deadline:
        status = await check_health(address, timeout=3.0)
        if status == "SERVING":
            break
        await asyncio.sleep(2.0)
    ok = status == "SERVING"
    print(f"{'ok  ' if ok else 'FAIL'} grpc health {name:<24} {address:<48} {status}", flush=True)
    return ok


async def nats_round_trip(settings: ServiceSettings) -> bool:
    """A request answered through the server, then JetStream's account info."""
    # The services' own connection options (auth, TLS), but one attempt: a test must not wait for
    # a NATS that is not there.
    options = {
        **connect_options(settings.nats, "arena-helm-test"),
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,  # nats-py: a server is dropped after two failed attempts
    }
    try:
        client = await asyncio.wait_for(nats.connect(**options), timeout=30.0)
    except Exception as error:  # noqa: BLE001 - nats-py raises several types for "cannot connect"
        print(f"FAIL nats connect {settings.nats.url}: {error}", flush=True)
        return False
    try:
        subject = f"arena.helm-test.{uuid.uuid4().hex}"
        payload = uuid.uuid4().bytes

        async def echo(message: object) -> None:
            await message.respond(message.data)  # type: ignore[attr-defined]

        await client.subscribe(subject, cb=echo)
        started = time.perf_counter()
        reply = await client.request(subject, payload, timeout=5.0)
        round_trip_ms = (time.perf_counter() - started) * 1000
        if reply.data != payload:
            print("FAIL nats round trip: the reply differs from the request", flush=True)
            return False
        account = await client.jetstream().account_info()
        print(
            f"ok   nats round trip {round_trip_ms:.1f} ms; JetStream: {account.streams} streams, "
            f"{account.consumers} consumers",
            flush=True,
        )
        return True
    except Exception as error:  # noqa: BLE001
        print(f"FAIL nats round trip: {error!r}", flush=True)
        return False
    finally:
        await client.close()


async def main() -> int:
    settings = load_settings(ServiceSettings)
    targets = parse_targets(os.environ.get("ARENA_TEST_TARGETS", ""))
    timeout = float(os.environ.get("ARENA_TEST_TIMEOUT_SECONDS", "60"))
    results = await asyncio.gather(
        nats_round_trip(settings),
        *(wait_serving(name, address, timeout) for name, address in targets.items()),
    )
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
