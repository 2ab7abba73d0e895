"""Debounce and the reload function, on trio's clock with scripted change sets."""

import trio

from daemon.reload import debounced


async def scripted(steps):
    for delay, change in steps:
        await trio.sleep(delay)
        yield {change}


async def test_changes_close_together_are_one_batch(autojump_clock):
    steps = [(0, ("m", "a")), (0.01, ("m", "b")), (0.01, ("m", "c")), (1.0, ("m", "d"))]
    batches = []
    times = []
    async for batch in debounced(scripted(steps), 0.05):
        batches.append(batch)
        times.append(trio.current_time())
    assert batches == [{("m", "a"), ("m", "b"), ("m", "c")}, {("m", "d")}]
    # the first batch is handed on once 50 ms passed without a change
    assert abs(times[0] - 0.07) < 1e-6


async def test_a_steady_stream_is_not_starved(autojump_clock):
    steps = [(0.02, ("m", str(i))) for i in range(5)]
    batches = [b async for b in debounced(scripted(steps), 0.05)]
    assert len(batches) == 1 and len(batches[0]) == 5
