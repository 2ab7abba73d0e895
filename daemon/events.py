"""Change broadcast: every consumer gets every event, through a bounded buffer.

A consumer that falls more than ``buffer`` events behind is cut off: its
channel is closed and it is marked ``overflowed``, so the stream can say so
and end. Publishing never waits and never grows memory without bound.
"""

from __future__ import annotations

import time
from sluice.policy.times import rfc3339
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio


class Subscription:
    def __init__(self, receive: trio.MemoryReceiveChannel) -> None:
        self.receive = receive
        self.overflowed = False
        self.closed = False  # ended by shutdown


class Broadcaster:
    def __init__(self, buffer: int = 1000) -> None:
        self._buffer = buffer
        self._subscribers: dict[Subscription, trio.MemorySendChannel] = {}
        # Called synchronously with every event (metrics); must not block.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def subscribe(self) -> Subscription:
        send, receive = trio.open_memory_channel(self._buffer)
        sub = Subscription(receive)
        self._subscribers[sub] = send
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        send = self._subscribers.pop(sub, None)
        if send is not None:
            send.close()

    def publish(self, event: str, generation: int, **fields: Any) -> None:
        message = {"event": event, "generation": generation, "at": rfc3339(time.time()), **fields}
        for listener in self.listeners:
            listener(message)
        for sub, send in list(self._subscribers.items()):
            try:
                send.send_nowait(message)
            except trio.WouldBlock:
                sub.overflowed = True
                self.unsubscribe(sub)
            except trio.BrokenResourceError:
                self.unsubscribe(sub)

    def close(self) -> None:
        """End every subscription (shutdown): streams say so and end cleanly."""
        for sub in list(self._subscribers):
            sub.closed = True
            self.unsubscribe(sub)

    def __len__(self) -> int:
        return len(self._subscribers)


async def follow(sub: Subscription, heartbeat: float) -> AsyncIterator[dict[str, Any] | None]:
    """Each event of ``sub`` as it comes, and None after each ``heartbeat`` seconds without one.

    Ends when the subscription does (``sub.closed`` or ``sub.overflowed`` say why).
    """
    while True:
        with trio.move_on_after(heartbeat) as quiet:
            try:
                message = await sub.receive.receive()
            except trio.EndOfChannel:
                return
        yield None if quiet.cancelled_caught else message
