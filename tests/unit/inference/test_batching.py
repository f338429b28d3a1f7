"""Dynamic batching: a short window gathers concurrent requests; keys never mix."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from arena_inference.domain.batching import DynamicBatcher


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay

    async def __call__(self, items: Sequence[str]) -> list[str | Exception]:
        self.batches.append(list(items))
        if self.delay:
            await asyncio.sleep(self.delay)
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in items]


async def test_concurrent_requests_share_one_batch() -> None:
    run = Recorder()
    batcher: DynamicBatcher[str, str] = DynamicBatcher(run, max_batch_size=8, window_seconds=0.01)

    results = await asyncio.gather(*(batcher.submit(f"r{i}") for i in range(5)))

    assert results == ["R0", "R1", "R2", "R3", "R4"]
    assert run.batches == [["r0", "r1", "r2", "r3", "r4"]]


async def test_a_full_batch_goes_without_waiting_out_the_window() -> None:
    run = Recorder()
    batcher: DynamicBatcher[str, str] = DynamicBatcher(run, max_batch_size=2, window_seconds=10)

    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(f"r{i}") for i in range(4))), timeout=2
    )

    assert results == ["R0", "R1", "R2", "R3"]
    assert run.batches == [["r0", "r1"], ["r2", "r3"]]


async def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    run = Recorder(delay=0.05)
    batcher: DynamicBatcher[str, str] = DynamicBatcher(run, max_batch_size=8, window_seconds=0.0)

    first = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(batcher.submit(name)) for name in ("b", "c")]
    await asyncio.gather(first, *later)

    assert run.batches == [["a"], ["b", "c"]]


async def test_different_keys_never_share_a_batch() -> None:
    run = Recorder()
    batcher: DynamicBatcher[str, str] = DynamicBatcher(
        run, max_batch_size=8, window_seconds=0.01, key=lambda item: item[0]
    )

    await asyncio.gather(*(batcher.submit(name) for name in ("x1", "y1", "x2", "y2")))

    assert sorted(run.batches) == [["x1", "x2"], ["y1", "y2"]]


async def test_a_failing_item_fails_alone_and_a_failing_batch_fails_all() -> None:
    run = Recorder()
    batcher: DynamicBatcher[str, str] = DynamicBatcher(run, max_batch_size=8, window_seconds=0.01)

    results = await asyncio.gather(
        batcher.submit("good"), batcher.submit("bad"), return_exceptions=True
    )
    assert results[0] == "GOOD"
    assert isinstance(results[1], ValueError)

    async def broken(items: Sequence[str]) -> list[str | Exception]:
        raise RuntimeError("out of memory")

    failing: DynamicBatcher[str, str] = DynamicBatcher(broken, max_batch_size=8, window_seconds=0)
    with pytest.raises(RuntimeError, match="out of memory"):
        await failing.submit("x")


async def test_a_cancelled_request_is_never_computed() -> None:
    run = Recorder(delay=0.05)
    batcher: DynamicBatcher[str, str] = DynamicBatcher(run, max_batch_size=8, window_seconds=0.0)

    first = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(batcher.submit("gone"))
    kept = asyncio.create_task(batcher.submit("kept"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(first, kept)

    assert run.batches == [["a"], ["kept"]]


async def test_the_window_stays_open_while_requests_keep_arriving() -> None:
    run = Recorder()
    batcher: DynamicBatcher[str, str] = DynamicBatcher(
        run, max_batch_size=16, window_seconds=0.02, max_wait_seconds=1.0
    )

    async def trickle() -> list[str]:
        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(batcher.submit(f"r{i}")))
            await asyncio.sleep(0.005)  # arrivals closer together than the window
        return list(await asyncio.gather(*tasks))

    assert len(await trickle()) == 6
    assert run.batches == [[f"r{i}" for i in range(6)]]


async def test_a_steady_stream_is_cut_at_the_longest_wait() -> None:
    run = Recorder()
    batcher: DynamicBatcher[str, str] = DynamicBatcher(
        run, max_batch_size=100, window_seconds=0.05, max_wait_seconds=0.03
    )

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(batcher.submit(f"r{i}")))
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)

    assert len(run.batches) >= 2


class Overlap(Recorder):
    """Records how many batches were being computed at once."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.running = 0
        self.most_at_once = 0

    async def __call__(self, items: Sequence[str]) -> list[str | Exception]:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            return await super().__call__(items)
        finally:
            self.running -= 1


async def test_batches_are_computed_one_at_a_time_by_default() -> None:
    run = Overlap(delay=0.02)
    batcher: DynamicBatcher[str, str] = DynamicBatcher(run, max_batch_size=2, window_seconds=0)

    await asyncio.gather(*(batcher.submit(f"r{i}") for i in range(6)))

    assert run.most_at_once == 1
    assert run.batches == [["r0", "r1"], ["r2", "r3"], ["r4", "r5"]]


async def test_a_full_batch_is_handed_over_while_the_previous_one_is_computed() -> None:
    run = Overlap(delay=0.05)
    batcher: DynamicBatcher[str, str] = DynamicBatcher(
        run, max_batch_size=2, window_seconds=0.01, max_in_flight=2
    )

    results = await asyncio.gather(*(batcher.submit(f"r{i}") for i in range(6)))

    assert results == ["R0", "R1", "R2", "R3", "R4", "R5"]
    assert run.most_at_once == 2
    assert run.batches == [["r0", "r1"], ["r2", "r3"], ["r4", "r5"]]


async def test_a_partial_batch_waits_for_the_running_one_and_keeps_collecting() -> None:
    run = Overlap(delay=0.05)
    batcher: DynamicBatcher[str, str] = DynamicBatcher(
        run, max_batch_size=4, window_seconds=0.001, max_in_flight=2
    )

    first = [asyncio.create_task(batcher.submit(f"a{i}")) for i in range(4)]
    await asyncio.sleep(0.01)  # the first batch is being computed
    second = [asyncio.create_task(batcher.submit("b0"))]
    await asyncio.sleep(0.02)  # longer than the window: it would have gone alone
    second.append(asyncio.create_task(batcher.submit("b1")))
    await asyncio.gather(*first, *second)

    assert run.most_at_once == 1
    assert run.batches == [["a0", "a1", "a2", "a3"], ["b0", "b1"]]


async def test_closing_cancels_requests_waiting_and_being_computed() -> None:
    run = Overlap(delay=10)
    batcher: DynamicBatcher[str, str] = DynamicBatcher(
        run, max_batch_size=1, window_seconds=0, max_in_flight=2
    )
    tasks = [asyncio.create_task(batcher.submit(f"r{i}")) for i in range(3)]
    await asyncio.sleep(0.01)

    await batcher.close()

    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    assert batcher.queued == 0
