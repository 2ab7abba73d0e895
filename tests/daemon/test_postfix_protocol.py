"""The Postfix policy delegation server, in process: decisions, pipelining, limits, timeouts."""

from __future__ import annotations

import functools
import socket
import textwrap
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import structlog
import trio
import trio.testing

from sluice.daemon import postfix
from sluice.daemon.config import PostfixConfig
from sluice.daemon.current import Current
from sluice.daemon.metrics import DecisionCounts
from sluice.daemon.serving import Drain, Service, Slot, Slots
from sluice.daemon.postfix import (
    CLOSING_SEND_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_REASON,
    Remembered,
    RequestReader,
    bind_loopback,
    reason_text,
    refuse_postfix,
    serve_postfix_connection,
)
from sluice.policy.files import combine, parse_policy
from sluice.policy.snapshot import Hold, Snapshot

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z

POLICY = """
[[suspension]]
domain = "blocked.example"
reason = "Blocked for now"

[[suspension]]
tenant = "acme"
reason = "acme is over quota"

[[suspension]]
tenant = "globex"
domain = "gmail.com"
reason = "globex to gmail rate limited"

[[suspension]]
campaign = "a"
tenant = "b"
reason = "campaign a of tenant b"

[[suspension]]
domain = "xn--bcher-kva.example"
reason = "IDN held"

[[suspension]]
domain = "old.example"
reason = "long over"
expires = 2020-01-01T00:00:00Z

[[suspension]]
domain = "twice.example"
reason = "first of two"

[[suspension]]
queue_names = ["twice.example"]
reason = "second of two"

[[queue]]
name = "initech@paused.example"
paused = true
reason = "warming up new IPs"

[[queue]]
name = "quiet.example"
paused = true
"""


def current(text: str = POLICY) -> Current:
    policy = combine([parse_policy(textwrap.dedent(text), "10-test.toml")])
    return Current(Snapshot.build(policy))


def request(**attrs: str) -> bytes:
    """A request as Postfix's smtpd writes it at RCPT time, with ``attrs`` overriding."""
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.10",
        "client_name": "client.example",
        "helo_name": "client.example",
        "sender": "news@sender.example",
        "recipient": "user@example.com",
        "recipient_count": "0",
        "queue_id": "",
        "instance": "123.456.7",
        "size": "1234",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "ccert_subject": "",
        "ccert_issuer": "",
    }
    base.update(attrs)
    return "".join(f"{k}={v}\n" for k, v in base.items()).encode() + b"\n"


async def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two connected ends of a unix socket: the client's, and the one to serve."""
    ours, theirs = trio.socket.socketpair()
    return trio.SocketStream(ours), trio.SocketStream(theirs)


class Client:
    """The client end of a connection served by serve_postfix_connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def answers(self, count: int) -> list[bytes]:
        """The next ``count`` answers, without their ending empty line."""
        while self.buffer.count(b"\n\n") < count:
            data = await self.stream.receive_some()
            if not data:
                break
            self.buffer += data
        parts = self.buffer.split(b"\n\n")
        got, self.buffer = parts[:count], b"\n\n".join(parts[count:])
        return got

    async def answer(self, data: bytes) -> bytes:
        await self.send(data)
        (got,) = await self.answers(1)
        return got

    async def closed(self) -> bool:
        """Whether the server closed its end (after any answers already read)."""
        return await self.stream.receive_some() == b""


async def send_until_unread(stream: trio.abc.Stream, one: bytes) -> None:
    """Send ``one`` request after another, answers unread, until the server stops reading too."""
    while True:
        with trio.move_on_after(0.3) as stuck:
            await stream.send_all(one * 200)
        if stuck.cancelled_caught:
            return


@pytest.fixture
async def serve(nursery):
    """Start a served connection; returns a Client. Keyword arguments configure it."""

    async def start(cur: Current | None = None, drain: Drain | None = None, **config) -> Client:
        ours, theirs = await socket_pair()
        nursery.start_soon(
            serve_postfix_connection,
            theirs,
            cur if cur is not None else current(),
            PostfixConfig(**config),
            lambda: NOW,
            drain,
        )
        return Client(ours)

    return start


DEFER = "action=DEFER_IF_PERMIT 4.7.1 "


@pytest.mark.parametrize(
    ("attrs", "config", "expected"),
    [
        ({"recipient": "user@example.com"}, {}, "action=DUNNO"),
        ({"recipient": "user@blocked.example"}, {}, DEFER + "Blocked for now"),
        # domains are compared in normal form
        ({"recipient": "User@Blocked.EXAMPLE."}, {}, DEFER + "Blocked for now"),
        ({"recipient": "user@bücher.example"}, {}, DEFER + "IDN held"),
        # the tenant comes from sasl_username
        ({"recipient": "u@example.com", "sasl_username": "acme"}, {}, DEFER + "acme is over quota"),
        ({"recipient": "u@example.com", "sasl_username": "other"}, {}, "action=DUNNO"),
        ({"recipient": "u@gmail.com", "sasl_username": "globex"}, {}, DEFER + "globex to gmail rate limited"),
        ({"recipient": "u@yahoo.com", "sasl_username": "globex"}, {}, "action=DUNNO"),
        ({"recipient": "u@gmail.com", "sasl_username": ""}, {}, "action=DUNNO"),
        # ... or from the configured attribute, and then sasl_username is ignored
        (
            {"recipient": "u@example.com", "ccert_subject": "acme"},
            {"tenant_attribute": "ccert_subject"},
            DEFER + "acme is over quota",
        ),
        (
            {"recipient": "u@example.com", "sasl_username": "acme"},
            {"tenant_attribute": "ccert_subject"},
            "action=DUNNO",
        ),
        # HOLD instead of a deferral
        ({"recipient": "user@blocked.example"}, {"on_hold": "hold"}, "action=HOLD Blocked for now"),
        ({"recipient": "user@example.com"}, {"on_hold": "hold"}, "action=DUNNO"),
        # queue pauses are holds too; one without a reason still says why
        (
            {"recipient": "u@paused.example", "sasl_username": "initech"},
            {},
            DEFER + "warming up new IPs",
        ),
        ({"recipient": "u@paused.example"}, {}, "action=DUNNO"),
        ({"recipient": "u@quiet.example"}, {}, DEFER + "queue quiet.example is paused"),
        # several holds: the first one's reason
        ({"recipient": "u@twice.example"}, {}, DEFER + "first of two"),
        # an expired suspension holds nothing
        ({"recipient": "u@old.example"}, {}, "action=DUNNO"),
        # no recipient yet (other protocol states), or no domain in it
        ({"recipient": "", "protocol_state": "CONNECT"}, {}, "action=DUNNO"),
        ({"recipient": "postmaster"}, {}, "action=DUNNO"),
        ({"recipient": "user@"}, {}, "action=DUNNO"),
        # a domain that is no valid queue domain is not a hold
        ({"recipient": "user@bad domain.example"}, {}, "action=DUNNO"),
        ({"recipient": "user@exa$mple.com"}, {}, "action=DUNNO"),
        ({"recipient": "user@" + "a" * 300 + ".com"}, {}, "action=DUNNO"),
        # the domain is after the last @, even with one quoted in the local part
        ({"recipient": '"a@b"@blocked.example'}, {}, DEFER + "Blocked for now"),
        # a tenant no queue name can carry is dropped; domain rules still apply
        (
            {"recipient": "u@blocked.example", "sasl_username": "alice@example.net"},
            {},
            DEFER + "Blocked for now",
        ),
        ({"recipient": "u@example.com", "sasl_username": "alice@acme"}, {}, "action=DUNNO"),
        # a Cyrus SASL login with a realm names the tenant before the @ ...
        ({"recipient": "u@example.com", "sasl_username": "acme@example.com"}, {}, DEFER + "acme is over quota"),
        # ... unless strip_realm is off: then it is no tenant, and domain rules still apply
        ({"recipient": "u@example.com", "sasl_username": "acme@example.com"}, {"strip_realm": False}, "action=DUNNO"),
        (
            {"recipient": "u@blocked.example", "sasl_username": "acme@example.com"},
            {"strip_realm": False},
            DEFER + "Blocked for now",
        ),
        (
            {"recipient": "u@blocked.example", "sasl_username": "has space"},
            {},
            DEFER + "Blocked for now",
        ),
        # a ':' in the tenant never makes a campaign appear
        ({"recipient": "u@example.com", "sasl_username": "a:b"}, {}, "action=DUNNO"),
    ],
)
async def test_decision(serve, attrs, config, expected):
    """Each request gets the action its recipient domain and tenant call for."""
    client = await serve(**config)
    assert await client.answer(request(**attrs)) == expected.encode()


async def test_non_utf8_recipient_is_dunno(serve):
    client = await serve()
    raw = request().replace(b"recipient=user@example.com", b"recipient=u@\xff\xfe.example")
    assert await client.answer(raw) == b"action=DUNNO"
    # and the connection goes on
    assert await client.answer(request(recipient="u@blocked.example")) == (DEFER + "Blocked for now").encode()


async def test_many_requests_on_one_connection_see_the_policy_in_force(serve):
    """Requests are answered one after another, each against the snapshot swapped in last."""
    cur = current()
    client = await serve(cur)
    for _ in range(3):
        assert await client.answer(request(recipient="u@blocked.example")) == (DEFER + "Blocked for now").encode()
    cur.swap(current("").snapshot)
    assert await client.answer(request(recipient="u@blocked.example")) == b"action=DUNNO"


async def test_a_new_hold_applies_at_once_to_a_queue_answered_dunno_before(serve):
    """DUNNO answers are remembered only until another snapshot is swapped in."""
    cur = current()
    client = await serve(cur)
    for _ in range(2):
        assert await client.answer(request(recipient="u@example.com")) == b"action=DUNNO"
    held = '[[suspension]]\ndomain = "example.com"\nreason = "now held"\n'
    cur.swap(current(held).snapshot)
    assert await client.answer(request(recipient="v@example.com")) == (DEFER + "now held").encode()


async def test_a_hold_ends_when_it_expires_on_a_long_connection(nursery):
    """Held answers are worked out each time, so an expiry takes effect without a new snapshot."""
    now = [NOW]
    ours, theirs = await socket_pair()
    policy = '[[suspension]]\ndomain = "soon.example"\nreason = "short hold"\nexpires = 2027-01-15T09:00:00Z\n'
    nursery.start_soon(serve_postfix_connection, theirs, current(policy), PostfixConfig(), lambda: now[0], None)
    client = Client(ours)
    assert await client.answer(request(recipient="u@soon.example")) == (DEFER + "short hold").encode()
    now[0] = NOW + 3600  # NOW is 08:00
    assert await client.answer(request(recipient="u@soon.example")) == b"action=DUNNO"


async def test_pipelined_requests_are_answered_in_order_in_one_write(serve):
    client = await serve()
    recipients = ["a@example.com", "b@blocked.example", "c@quiet.example", "d@example.org"]
    await client.send(b"".join(request(recipient=r) for r in recipients))
    chunk = await client.stream.receive_some()
    assert chunk == (
        b"action=DUNNO\n\n"
        b"action=DEFER_IF_PERMIT 4.7.1 Blocked for now\n\n"
        b"action=DEFER_IF_PERMIT 4.7.1 queue quiet.example is paused\n\n"
        b"action=DUNNO\n\n"
    )


async def test_requests_split_anywhere_are_put_together(serve):
    """A request may arrive a byte at a time, and a write may end inside the next one."""
    client = await serve()
    data = request(recipient="a@blocked.example") + request(recipient="b@example.com")
    for i in range(len(data)):
        await client.send(data[i : i + 1])
    assert await client.answers(2) == [(DEFER + "Blocked for now").encode(), b"action=DUNNO"]
    # two and a half requests, then the rest
    third = request(recipient="c@blocked.example")
    await client.send(data + third[:10])
    assert len(await client.answers(2)) == 2
    await client.send(third[10:])
    assert await client.answers(1) == [(DEFER + "Blocked for now").encode()]


async def test_crlf_line_ends_are_accepted(serve):
    """A person typing into telnet sends CRLF; Postfix sends LF. Both work."""
    client = await serve()
    crlf = request(recipient="u@blocked.example").replace(b"\n", b"\r\n")
    await client.send(crlf[:7] + crlf[7:-1])  # a CR left at the end of one write
    await client.send(crlf[-1:])
    assert await client.answers(1) == [(DEFER + "Blocked for now").encode()]


MALFORMED = "action=DEFER_IF_PERMIT 4.3.5 sluice: malformed policy request: "
LONG = "x" * 9000


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"garbage\n\n", "not a name=value line: 'garbage'"),
        (request()[:-1] + b"garbage\n\n", "not a name=value line: 'garbage'"),
        (b"=value\nrequest=smtpd_access_policy\n\n", "not a name=value line: '=value'"),
        (b"recipient=u@blocked.example\n\n", "no request= attribute"),
        (b"request=junk\nrecipient=u@example.com\n\n", "request=junk is not smtpd_access_policy"),
        (b"\n", "empty request: no request= attribute"),
        (request(ccert_subject=LONG), "a line over 8192 bytes"),
        # the limits hold before the request's end comes
        (f"request=smtpd_access_policy\nccert_subject={LONG}".encode(), "a line over 8192 bytes"),
        (b"request=smtpd_access_policy\n" + b"".join(b"x%d=1\n" % i for i in range(100)) + b"\n", "over 100 attributes"),
        (b"request=smtpd_access_policy\n" + b"".join(b"x%d=1\n" % i for i in range(100)), "over 100 attributes"),
    ],
)
async def test_malformed_request_gets_a_temporary_failure_and_the_connection_closes(serve, data, what):
    client = await serve()
    with structlog.testing.capture_logs() as logs:
        await client.send(data)
        assert await client.answers(1) == [(MALFORMED + what).encode()]
        assert await client.closed()
    assert {"event": "postfix_malformed_request", "what": what, "log_level": "info"} in logs


async def test_good_requests_before_a_malformed_one_are_answered_first(serve):
    client = await serve()
    await client.send(request(recipient="u@blocked.example") + request() + b"junk\n\n" + request())
    assert await client.answers(3) == [
        (DEFER + "Blocked for now").encode(),
        b"action=DUNNO",
        (MALFORMED + "not a name=value line: 'junk'").encode(),
    ]
    assert await client.closed()


async def test_exactly_100_attributes_and_an_8_KiB_line_are_allowed(serve):
    client = await serve()
    attrs = {f"x{i}": "1" for i in range(100 - 17)}  # request() has 17 attributes
    attrs["ccert_subject"] = "y" * (8192 - len("ccert_subject="))
    data = request(recipient="u@blocked.example", **attrs)
    assert data.count(b"\n") == 101
    assert await client.answer(data) == (DEFER + "Blocked for now").encode()


def test_the_idle_timeout_outlasts_postfix_s_own():
    """Postfix closes idle policy connections after 300 s (smtpd_policy_service_max_idle): it is
    the side that closes, and never writes into a connection sluice is closing."""
    assert IDLE_TIMEOUT > 300


# The connection's thread keeps its time limits on its socket, in real time:
# these tests make them short.
@pytest.fixture
def short_limits(monkeypatch):
    monkeypatch.setattr(postfix, "IDLE_TIMEOUT", 0.5)
    monkeypatch.setattr(postfix, "REQUEST_TIMEOUT", 0.8)


async def test_idle_connection_is_closed_after_the_idle_timeout(serve, short_limits):
    client = await serve()
    assert await client.answer(request()) == b"action=DUNNO"
    start = time.monotonic()
    assert await client.closed()
    assert 0.45 <= time.monotonic() - start < 2.0


async def test_request_not_complete_in_time_is_refused(serve, short_limits):
    client = await serve()
    await client.send(b"request=smtpd_access_policy\nrecipient=u@exa")
    start = time.monotonic()
    assert await client.answers(1) == [(MALFORMED + "request not complete within 0.8 s").encode()]
    assert 0.75 <= time.monotonic() - start < 2.0
    assert await client.closed()


async def test_a_slow_request_keeps_its_deadline_from_its_first_byte(serve, short_limits):
    """Dribbling bytes does not extend the time a request may take."""
    client = await serve()
    start = time.monotonic()
    await client.send(b"request=smtpd_access_policy\n")
    for piece in (b"rec", b"ipient=u@example.com\n"):
        await trio.sleep(0.3)
        await client.send(piece)
    assert await client.answers(1) == [(MALFORMED + "request not complete within 0.8 s").encode()]
    # from the first byte: 0.8 s; from the last piece it would be 1.4 s
    assert 0.75 <= time.monotonic() - start < 1.35


async def test_a_client_that_stops_reading_is_dropped(serve, short_limits):
    """Answers nobody reads fill the socket; the write gives up after the idle timeout."""
    client = await serve()
    client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with trio.fail_after(10):
        try:
            while True:  # the server's writes fill both buffers, then it gives up and closes
                await client.send(request(recipient="u@blocked.example") * 200)
        except trio.BrokenResourceError:
            pass


async def test_every_decision_is_counted_remembered_or_not(nursery):
    """Deliveries answered from memory count as decisions; a request naming no queue asks for none."""
    counts = DecisionCounts()
    ours, theirs = await socket_pair()
    nursery.start_soon(
        serve_postfix_connection, theirs, current(), PostfixConfig(), lambda: NOW, None, None, counts
    )
    client = Client(ours)
    assert await client.answer(request()) == b"action=DUNNO"
    assert await client.answer(request()) == b"action=DUNNO"  # remembered
    assert await client.answer(request(recipient="u@blocked.example")) == (DEFER + "Blocked for now").encode()
    assert await client.answer(request(recipient="")) == b"action=DUNNO"
    assert (counts.deliver, counts.hold) == (2, 1)


async def test_connections_share_what_they_remember_and_a_new_hold_reaches_them_all(nursery):
    """One smtpd's DUNNO is remembered for the others, and forgotten by all when a hold comes."""
    cur = current()
    remembered = Remembered()
    counts = DecisionCounts()
    clients = []
    for _ in range(2):
        ours, theirs = await socket_pair()
        nursery.start_soon(
            serve_postfix_connection, theirs, cur, PostfixConfig(), lambda: NOW, None, remembered, counts
        )
        clients.append(Client(ours))
    first, second = clients
    assert await first.answer(request(recipient="a@example.com")) == b"action=DUNNO"
    assert await second.answer(request(recipient="b@example.com")) == b"action=DUNNO"
    assert len(remembered.requests(cur.snapshot)) == 1 and counts.deliver == 2
    cur.swap(current('[[suspension]]\ndomain = "example.com"\nreason = "now held"\n').snapshot)
    for client in clients:
        assert await client.answer(request(recipient="c@example.com")) == (DEFER + "now held").encode()


def test_an_answer_made_under_one_snapshot_is_never_remembered_under_the_next():
    """Connections' threads share the memory: one still answering under the old snapshot, while
    another has moved to the new one, adds to the old snapshot's set, not to the new one's."""
    remembered = Remembered()
    old, new = current().snapshot, current('[[suspension]]\ndomain = "example.com"\nreason = "now held"\n').snapshot
    slow_thread = remembered.requests(old)  # taken just before the swap
    assert remembered.requests(new) == set()  # another thread, after it
    held = RequestReader().feed(request(recipient="u@example.com"))[0][0]
    slow_thread.add(held)  # the slow one's DUNNO, right under the old snapshot
    assert held not in remembered.requests(new)


async def test_shutdown_closes_idle_connections_at_once(serve):
    drain = Drain()
    client = await serve(drain=drain)
    assert await client.answer(request()) == b"action=DUNNO"
    start = time.monotonic()
    drain.start()
    with trio.fail_after(5):  # not the idle timeout's 330 s
        assert await client.closed()
    assert time.monotonic() - start < 0.5  # no time limit ran out


async def test_shutdown_cuts_off_a_write_to_a_client_that_does_not_read(nursery):
    """A thread stuck writing answers nobody reads is cut off a moment after shutdown begins,
    not at its write's own time limit (the idle timeout)."""
    drain = Drain()
    ours, theirs = await socket_pair()
    theirs.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    done = trio.Event()

    async def served() -> None:
        await serve_postfix_connection(theirs, current(), PostfixConfig(), lambda: NOW, drain)
        done.set()

    nursery.start_soon(served)
    client = Client(ours)
    await send_until_unread(client.stream, request())
    start = time.monotonic()
    drain.start()
    with trio.fail_after(10):
        await done.wait()
    assert time.monotonic() - start < CLOSING_SEND_TIMEOUT + 1


async def test_shutdown_still_answers_requests_already_read(serve):
    """Shutdown that begins just as a request arrives: it is answered, then the connection closes."""
    drain = Drain()
    client = await serve(drain=drain)
    assert await client.answer(request()) == b"action=DUNNO"
    await client.send(request(recipient="u@blocked.example"))  # the server is woken, not yet run
    drain.start()
    assert await client.answers(1) == [(DEFER + "Blocked for now").encode()]
    assert await client.closed()


async def test_a_connection_pushed_out_as_its_request_arrives_still_answers_it(nursery):
    """Eviction closes a connection waiting for smtpd; one that has just read a request answers it first."""
    slot = Slot()
    ours, theirs = await socket_pair()

    async def served() -> None:
        with slot.scope:  # as Service runs it
            await serve_postfix_connection(theirs, current(), PostfixConfig(), lambda: NOW, slot=slot)

    nursery.start_soon(served)
    client = Client(ours)
    assert await client.answer(request()) == b"action=DUNNO"
    await client.send(request(recipient="u@blocked.example"))  # the server is woken, not yet run
    slot.scope.cancel()
    assert await client.answers(1) == [(DEFER + "Blocked for now").encode()]
    assert await client.closed()


async def test_client_disconnecting_mid_request_does_not_hurt_the_server(tmp_path, nursery):
    """A real unix socket: one client leaves halfway, the next is served as usual."""
    path = str(tmp_path / "policy.sock")
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(path)
    sock.listen(8)
    drain = Drain()
    cur = current()

    async def handle(stream, slot):
        await serve_postfix_connection(stream, cur, PostfixConfig(), lambda: NOW, drain, slot=slot)

    slots = Slots("postfix", max_connections=8, max_unproven_per_peer=8)
    service = Service(handle, refuse_postfix, slots, drain)
    await nursery.start(trio.serve_listeners, service, [trio.SocketListener(sock)])

    leaver = await trio.open_unix_socket(path)
    await leaver.send_all(request()[:40])
    await leaver.aclose()
    rude = await trio.open_unix_socket(path)
    await rude.send_all(request() * 50)
    rude.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await rude.aclose()  # a reset, with answers unread

    client = Client(await trio.open_unix_socket(path))
    assert await client.answer(request(recipient="u@blocked.example")) == (DEFER + "Blocked for now").encode()
    with trio.fail_after(5):
        while slots.open > 1:  # the two that left are gone
            await trio.sleep(0.01)
    await client.stream.aclose()


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("plain", "plain"),
        ("Müller asked — ünïcode", "Muller asked ? unicode"),
        ("line\nbreak\r", "line?break?"),
        ("x" * 1000, "x" * (MAX_REASON - 3) + "..."),
        ("", "delivery suspended"),
    ],
)
def test_reason_text_is_one_short_line_of_ascii(reason, expected):
    hold = Hold(kind="suspension", id="x", reason=reason, expires=None, source="runtime")
    assert reason_text(hold) == expected


def test_reader_keeps_no_more_than_the_partial_request():
    reader = RequestReader()
    requests, error = reader.feed(request() + request()[:20])
    assert len(requests) == 1 and error is None and reader.pending
    requests, error = reader.feed(request()[20:])
    assert len(requests) == 1 and error is None and not reader.pending


def test_the_whole_partial_request_is_bounded_not_only_its_last_line():
    """Long lines that each end in a newline used to pile up: only the last line was measured."""
    reader = RequestReader()
    error = None
    fed = 0
    while error is None and fed < 2_000_000:
        _, error = reader.feed(b"x=" + b"a" * 8000 + b"\n")
        fed += 8003
    assert error is not None and "a request over 65536 bytes" in str(error)
    assert fed <= 65536 + 8003 and not reader.pending


def test_a_whole_request_over_the_bound_is_refused():
    big = b"request=smtpd_access_policy\n" + b"".join(b"a%d=%s\n" % (i, b"b" * 8000) for i in range(9)) + b"\n"
    requests, error = RequestReader().feed(big)
    assert requests == [] and "a request over 65536 bytes" in str(error)


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("0.0.0.0:10040", "not a loopback address"),
        ("192.0.2.1:10040", "not a loopback address"),
        ("[2001:db8::1]:10040", "not a loopback address"),
        ("localhost:10040", "not an IP address"),
        ("127.0.0.1", "is not ADDRESS:PORT"),
        ("127.0.0.1:0", "is not ADDRESS:PORT"),
        ("127.0.0.1:70000", "is not ADDRESS:PORT"),
    ],
)
def test_tcp_listener_is_loopback_only(listen, message):
    with pytest.raises(ValueError, match=message):
        bind_loopback(listen)


def test_tcp_listener_binds_loopback():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sock = bind_loopback(f"127.0.0.1:{port}")
    try:
        assert sock.getsockname() == ("127.0.0.1", port)
        with pytest.raises(ValueError, match="cannot listen on"):
            bind_loopback(f"127.0.0.1:{port}")
    finally:
        sock.close()


async def test_over_the_connection_cap_postfix_gets_a_temporary_failure():
    from sluice.daemon.postfix import TOO_MANY, refuse_postfix

    client, server = trio.testing.memory_stream_pair()
    await refuse_postfix(server)
    assert await client.receive_some(4096) == TOO_MANY
    assert TOO_MANY.startswith(b"action=DEFER_IF_PERMIT 4.") and TOO_MANY.endswith(b"\n\n")


async def test_a_login_that_cannot_be_a_tenant_is_logged_once_per_connection(serve):
    client = await serve()
    with structlog.testing.capture_logs() as logs:
        await client.send(b"".join(request(recipient=f"u{i}@blocked.example", sasl_username="has space") for i in range(3)))
        assert await client.answers(3) == [(DEFER + "Blocked for now").encode()] * 3
    warned = [e for e in logs if e["event"] == "postfix_tenant_unusable"]
    assert len(warned) == 1 and warned[0]["value"] == "has space"
    assert warned[0]["attribute"] == "sasl_username" and warned[0]["log_level"] == "warning"


def naive_read(block: bytes, tenant_attribute: bytes = b"sasl_username") -> tuple[bytes, bytes] | str:
    """What a request says, read line by line: (domain, tenant), or what is wrong with it."""
    if not block or block.startswith(b"\n"):
        return "empty request: no request= attribute"
    values = {}
    for line in block.split(b"\n"):
        name, eq, value = line.partition(b"=")
        if not eq or not name:
            return f"not a name=value line: {line[:40].decode('utf-8', 'replace')!r}"
        values[name] = value  # the last of a name counts
    if b"request" not in values:
        return "no request= attribute"
    if values[b"request"] != b"smtpd_access_policy":
        return f"request={values[b'request'][:40].decode('utf-8', 'replace')} is not smtpd_access_policy"
    return values.get(b"recipient", b"").rpartition(b"@")[2], values.get(tenant_attribute, b"")


_names = st.sampled_from([b"request", b"recipient", b"sasl_username", b"size", b"x", b""])
_values = st.sampled_from([b"smtpd_access_policy", b"u@example.com", b"a@b@c", b"acme", b"", b"=", b"a=b", b"junk"])
_lines = st.one_of(
    st.tuples(_names, _values).map(lambda nv: nv[0] + b"=" + nv[1]),
    st.sampled_from([b"garbage", b"", b"recipient", b"=x"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_lines, min_size=1, max_size=8))
def test_a_request_reads_as_its_lines_say(lines):
    """Looking up three attributes and checking the rest whole agrees with reading every line."""
    block = b"\n".join(lines)
    if b"\n\n" in block or block.endswith(b"\n"):
        return  # an empty line ends the request there: not one request
    requests, error = RequestReader().feed(block + b"\n\n")
    expected = naive_read(block)
    if isinstance(expected, str):
        assert requests == [] and error is not None and error.what == expected
    else:
        assert error is None and [tuple(r) for r in requests] == [expected]


def policy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sluice policy connections"]


async def serve_on(nursery, loop: postfix.PolicyLoop, cur: Current | None = None) -> Client:
    ours, theirs = await socket_pair()
    nursery.start_soon(
        functools.partial(
            serve_postfix_connection, theirs, cur or current(), PostfixConfig(), lambda: NOW, loop=loop
        )
    )
    return Client(ours)


async def test_one_thread_serves_a_service_s_connections_and_ends_with_the_last(nursery):
    """Twenty connections, one policy thread; when the last connection closes, so does the thread."""
    loop = postfix.PolicyLoop()
    ended = threading.Event()
    loop._ended = lambda result: ended.set()  # the thread's job is done
    clients = [await serve_on(nursery, loop) for _ in range(20)]
    for i, client in enumerate(clients):
        held = i % 2 == 0
        recipient = "u@blocked.example" if held else f"u{i}@example.com"
        expected = (DEFER + "Blocked for now") if held else "action=DUNNO"
        assert await client.answer(request(recipient=recipient)) == expected.encode()
    assert len(policy_threads()) == 1
    for client in clients:
        await client.stream.aclose()
    assert await trio.to_thread.run_sync(ended.wait, 5)
    assert not policy_threads()
    again = await serve_on(nursery, loop)  # and the next connection starts it again
    assert await again.answer(request()) == b"action=DUNNO"


async def test_a_client_that_does_not_read_holds_up_no_other_connection(nursery):
    """One thread serves them all: a connection whose answers pile up unread waits alone."""
    loop = postfix.PolicyLoop()
    stuck = await serve_on(nursery, loop)
    other = await serve_on(nursery, loop)
    stuck.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await send_until_unread(stuck.stream, request(recipient="u@blocked.example"))
    with trio.fail_after(2):
        for i in range(50):
            assert await other.answer(request(recipient=f"u{i}@example.com")) == b"action=DUNNO"


async def test_a_bug_costs_its_request_a_temporary_failure_and_no_other_connection(nursery, monkeypatch):
    loop = postfix.PolicyLoop()
    answer = postfix.Answerer.answer

    def broken(self, snapshot, request, now):
        if request.domain == b"bug.example":
            raise RuntimeError("a bug")
        return answer(self, snapshot, request, now)

    monkeypatch.setattr(postfix.Answerer, "answer", broken)
    hit = await serve_on(nursery, loop)
    other = await serve_on(nursery, loop)
    with structlog.testing.capture_logs() as logs:
        assert await hit.answer(request(recipient="u@bug.example")) == postfix.INTERNAL_ERROR[:-2]
    assert await hit.closed()
    assert any(line["event"] == "postfix_internal_error" for line in logs)
    assert await other.answer(request(recipient="u@blocked.example")) == (DEFER + "Blocked for now").encode()


async def test_a_client_gone_quiet_mid_request_costs_the_other_connections_nothing(nursery, short_limits):
    """A partial request from a client that then shuts its reading side: when the request's time
    runs out, the refusal cannot be written, and that connection alone ends."""
    loop = postfix.PolicyLoop()
    gone = await serve_on(nursery, loop)
    other = await serve_on(nursery, loop)
    await gone.send(b"request=smtpd_access_policy\nrecipient=u@exa")
    gone.stream.socket.shutdown(socket.SHUT_RD)
    loop_failed = []
    with structlog.testing.capture_logs() as logs, trio.fail_after(5):
        with pytest.raises(trio.BrokenResourceError):
            while True:  # until the server has given up on it, the other asking all the while
                assert await other.answer(request()) == b"action=DUNNO"
                await trio.sleep(0.1)
                await gone.send(b"x")
        loop_failed = [line for line in logs if line["event"] == "postfix_loop_failed"]
    assert not loop_failed
    assert await other.answer(request(recipient="u@blocked.example")) == (DEFER + "Blocked for now").encode()


async def test_a_connection_that_cannot_be_given_a_thread_is_closed_and_the_next_is_served(
    nursery, monkeypatch
):
    loop = postfix.PolicyLoop()
    start = trio.lowlevel.start_thread_soon

    def no_thread(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(trio.lowlevel, "start_thread_soon", no_thread)
    with structlog.testing.capture_logs() as logs:
        refused = await serve_on(nursery, loop)
        assert await refused.closed()
    assert [line["event"] for line in logs] == ["postfix_connection_not_served"]
    monkeypatch.setattr(trio.lowlevel, "start_thread_soon", start)
    served = await serve_on(nursery, loop)
    assert await served.answer(request()) == b"action=DUNNO"


async def test_a_request_completed_in_time_behind_unread_answers_is_answered(nursery, monkeypatch):
    """Pipelined requests whose answers the client has not read yet, and the next request
    completed at once: the server reads its rest when the answers drain, and answers it,
    though that is after the request's own time limit."""
    monkeypatch.setattr(postfix, "REQUEST_TIMEOUT", 0.3)
    monkeypatch.setattr(postfix, "IDLE_TIMEOUT", 5.0)
    ours, theirs = await socket_pair()
    theirs.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    nursery.start_soon(serve_postfix_connection, theirs, current(), PostfixConfig(), lambda: NOW)
    client = Client(ours)
    held = request(recipient="u@blocked.example")
    count = 200  # more answers than both buffers hold, and a request cut at the first read's end
    await client.send(held * count)
    await trio.sleep(0.8)  # the server's answers wait, unread, past the request time limit
    assert len(await client.answers(count)) == count
    assert set(await client.answers(0) or []) <= {b""}
    # nothing was refused along the way
    assert await client.answer(request()) == b"action=DUNNO"


async def test_requests_then_end_of_input_are_answered_before_the_close(serve):
    """As nc does: requests, then the writing side shut; every answer comes, then the close."""
    client = await serve()
    await client.send(request() + request(recipient="u@blocked.example"))
    await client.stream.send_eof()
    assert await client.answers(2) == [b"action=DUNNO", (DEFER + "Blocked for now").encode()]
    assert await client.closed()


async def test_a_refusal_nobody_reads_is_given_up_on_in_a_moment(nursery):
    """After a malformed request the connection closes once its last words are written; a client
    that does not read them is cut off after CLOSING_SEND_TIMEOUT, not the idle timeout."""
    ours, theirs = await socket_pair()
    theirs.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    done = trio.Event()

    long_reason = current(f'[[suspension]]\ndomain = "blocked.example"\nreason = "{"r" * 190}"\n')

    async def served() -> None:
        await serve_postfix_connection(theirs, long_reason, PostfixConfig(), lambda: NOW)
        done.set()

    nursery.start_soon(served)
    # in one read: answers more than the buffers hold, then the refusal
    await ours.send_all(request(recipient="u@blocked.example") * 100 + b"not a line\n\n")
    start = time.monotonic()
    with trio.fail_after(10):
        await done.wait()
    assert CLOSING_SEND_TIMEOUT * 0.9 <= time.monotonic() - start < CLOSING_SEND_TIMEOUT + 1


async def test_a_client_that_does_not_read_its_answers_gives_way_as_an_idle_one_does(nursery):
    """The socket full: the connection that has waited longest for its client gives way, and one
    whose answers sit unread has been waiting since its write stopped."""
    service = postfix.postfix_service(
        current(), PostfixConfig(max_connections=2, max_connections_per_peer=2), lambda: NOW
    )
    unread_ours, unread = await socket_pair()
    unread.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    nursery.start_soon(service, unread)
    await send_until_unread(unread_ours, request(recipient="u@blocked.example"))
    idle_ours, idle = await socket_pair()
    nursery.start_soon(service, idle)
    idle_client = Client(idle_ours)
    assert await idle_client.answer(request()) == b"action=DUNNO"  # answered after the write stopped
    newcomer_ours, newcomer = await socket_pair()
    nursery.start_soon(service, newcomer)
    assert await Client(newcomer_ours).answer(request()) == b"action=DUNNO"
    with trio.fail_after(5):  # the unread one went: its answers end, then the close
        while await unread_ours.receive_some():
            pass
    assert await idle_client.answer(request(recipient="u@blocked.example")) == (DEFER + "Blocked for now").encode()
    assert service.slots.evicted == 1
