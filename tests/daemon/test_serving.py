"""Connection slots: the caps, who gives way to a new connection, and who never does."""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from sluice.daemon.serving import Service, Slots, peer_key


def admit_all(slots: Slots, *peers):
    admitted = [slots.admit(peer) for peer in peers]
    assert None not in admitted
    return admitted


async def test_under_both_caps_every_connection_is_admitted():
    slots = Slots("test", max_connections=4, max_unproven_per_peer=2)
    admit_all(slots, "a", "a", "b", "b")
    assert slots.open == 4 and slots.evicted == 0 and slots.refused == 0


async def test_a_peer_at_its_cap_pushes_out_its_own_longest_waiting_connection():
    slots = Slots("test", max_connections=10, max_unproven_per_peer=2)
    first, second, other = admit_all(slots, "a", "a", "b")
    third = slots.admit("a")
    assert third is not None
    assert first.scope.cancel_called and not second.scope.cancel_called
    assert not other.scope.cancel_called  # another peer's connections are never its to push out
    assert slots.open == 3 and slots.evicted == 1


async def test_a_full_listener_pushes_out_the_connection_waiting_longest_whoever_it_is(autojump_clock):
    slots = Slots("test", max_connections=3, max_unproven_per_peer=3)
    a1, b1, a2 = admit_all(slots, "a", "b", "a")
    await trio.sleep(1)
    a1.wait()  # answered a request just now: waiting from now on
    assert slots.admit("c") is not None
    assert b1.scope.cancel_called and not a1.scope.cancel_called and not a2.scope.cancel_called


async def test_proven_connections_never_give_way_nor_count_against_their_peer():
    slots = Slots("test", max_connections=2, max_unproven_per_peer=1)
    proven = slots.admit("a")
    proven.prove()
    unproven = slots.admit("a")  # the peer's one unproven connection
    assert unproven is not None
    newer = slots.admit("a")
    assert newer is not None and unproven.scope.cancel_called
    # full now, with one proven and one unproven connection of "a"'s
    assert slots.admit("b") is not None and newer.scope.cancel_called
    assert not proven.scope.cancel_called
    assert slots.open == 2 and slots.evicted == 2


async def test_a_connection_being_answered_does_not_give_way_and_the_newcomer_is_refused():
    slots = Slots("test", max_connections=2, max_unproven_per_peer=2)
    busy, proven = admit_all(slots, "a", "b")
    busy.waiting = False
    proven.prove()
    assert slots.admit("c") is None
    assert slots.refused == 1 and slots.evicted == 0 and slots.open == 2
    busy.wait()
    assert slots.admit("c") is not None and busy.scope.cancel_called


async def test_a_closed_connection_frees_its_slot_for_its_peer():
    slots = Slots("test", max_connections=10, max_unproven_per_peer=1)
    slot = slots.admit("a")
    slots.release(slot)
    assert slots.admit("a") is not None and not slot.scope.cancel_called
    assert slots.evicted == 0


async def test_a_service_closes_the_connection_that_gives_way_and_refuses_when_none_can(nursery):
    slots = Slots("test", max_connections=1, max_unproven_per_peer=1)
    refused: list[trio.abc.Stream] = []
    served = trio.Event()

    async def handle(stream, slot):
        if slot.order == 1:  # the second connection: being answered, never to give way
            slot.waiting = False
            served.set()
        await trio.sleep_forever()

    async def refuse(stream):
        refused.append(stream)

    service = Service(handle, refuse, slots)
    first, first_server = trio.testing.memory_stream_pair()
    second, second_server = trio.testing.memory_stream_pair()
    third, third_server = trio.testing.memory_stream_pair()
    nursery.start_soon(service, first_server)
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(service, second_server)
    await served.wait()
    with trio.fail_after(1):
        assert await first.receive_some() == b""  # pushed out: closed without an answer
    await service(third_server)
    assert refused == [third_server]
    assert await third.receive_some() == b""
    assert slots.open == 1 and slots.evicted == 1 and slots.refused == 1


async def test_peers_are_told_apart_by_uid_on_unix_sockets_and_by_address_on_tcp(tmp_path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s"))
        server.listen()
        client = await trio.open_unix_socket(str(tmp_path / "s"))
        accepted, _ = server.accept()
        with accepted:
            assert peer_key(trio.SocketStream(trio.socket.from_stdlib_socket(accepted))) == os.getuid()
        await client.aclose()
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        accepted = await listener.accept()
        assert peer_key(accepted) == "127.0.0.1"
        await accepted.aclose()
        await client.aclose()
    assert peer_key(trio.testing.memory_stream_pair()[0]) is None


@pytest.mark.parametrize("cap", [1, 3])
async def test_one_peer_opening_many_connections_never_holds_more_than_its_cap(cap):
    slots = Slots("test", max_connections=100, max_unproven_per_peer=cap)
    held = admit_all(slots, *["a"] * 50)
    assert slots.open == cap and slots.evicted == 50 - cap
    assert [slot.scope.cancel_called for slot in held[-cap:]] == [False] * cap
