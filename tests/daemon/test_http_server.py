"""The HTTP adapter in process: keep-alive, timeouts and shutdown, on a fake clock."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import h11
import pytest
import structlog
import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

from sluice.daemon.http.peer import Peer
from sluice.daemon.logs import add_request_id
from sluice.daemon.http.connection import Limits, serve_connection
from sluice.daemon.http.message import Request, Response, parse_query
from sluice.daemon.serving import Drain, Slots

LIMITS = Limits(request_timeout=10.0, idle_timeout=60.0, first_request_timeout=5.0)


class Client:
    """The client end of one in-memory connection, reading responses with h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        """The next whole response: status, headers, body."""
        if self.conn.our_state is h11.IDLE:
            # the request went out as raw bytes; h11 is told one went
            self.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "sluice")]))
            self.conn.send(h11.EndOfMessage())
        head = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return head.status_code, dict(head.headers), body
            else:
                raise AssertionError(f"no whole response: {event!r}")

    async def closed(self) -> bool:
        """Whether the server closes without sending anything more."""
        return await self.stream.receive_some(65536) == b""


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: sluice\r\n{extra}\r\n".encode()


@pytest.fixture
def served(nursery):
    """Start a connection served by serve_connection; returns (client, drain)."""

    def start(handler, drain: Drain | None = None) -> Client:
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(serve_connection, theirs, handler, Peer(uid=0, pid=1), LIMITS, drain)
        return Client(ours)

    return start


async def hello(request: Request) -> Response:
    return Response.json({"path": request.path, "query": request.query})


async def test_keep_alive_then_idle_close(served, autojump_clock):
    client = served(hello)
    for n in range(3):
        await client.send(get(f"/x?n={n}"))
        status, headers, body = await client.response()
        assert status == 200 and json.loads(body) == {"path": "/x", "query": {"n": [str(n)]}}
        assert headers[b"x-request-id"].startswith(b"req_")
        answered = trio.current_time()
        await trio.sleep(50)  # under the idle timeout: the connection stays
    assert await client.closed()
    idle = trio.current_time() - answered
    # the idle deadline moves at most once a second
    assert LIMITS.idle_timeout - 1 <= idle <= LIMITS.idle_timeout


async def test_a_request_that_never_finishes_gets_408(served, autojump_clock):
    client = served(hello)
    start = trio.current_time()
    await client.send(b"POST /x HTTP/1.1\r\nHost: sluice\r\nContent-Length: 100\r\n\r\n{")
    status, headers, body = await client.response()
    waited = trio.current_time() - start
    assert status == 408
    assert json.loads(body)["error"]["code"] == "REQUEST_TIMEOUT"
    assert LIMITS.request_timeout <= waited <= LIMITS.request_timeout + 1.5
    assert headers[b"connection"] == b"close"


async def test_slow_headers_keep_their_deadline_from_the_first_byte(served, autojump_clock):
    client = served(hello)
    await client.send(get("/first"))
    assert (await client.response())[0] == 200
    start = trio.current_time()
    for piece in (b"GET /x HTTP/1.1\r\n", b"Host: sluice\r\n", b"X-Slow: 1\r\n"):
        await trio.sleep(4)  # each piece in time, the whole not
        await client.send(piece)
    start += 4  # the first byte
    status, _, body = await client.response()
    assert status == 408
    assert trio.current_time() - start <= LIMITS.request_timeout + 1.5


async def test_a_first_request_head_trickled_in_gets_408_at_the_first_request_timeout(
    served, autojump_clock
):
    client = served(hello)
    start = trio.current_time()
    for byte in b"GET /":  # a byte a second, as long as the deadline: each in time, the head not
        await client.send(bytes([byte]))
        await trio.sleep(1)
    status, _, body = await client.response()
    assert status == 408
    assert json.loads(body)["error"]["message"] == "request head not complete within 5 s of connecting"
    assert trio.current_time() - start == LIMITS.first_request_timeout


async def test_a_connection_that_sends_nothing_is_closed_at_the_first_request_timeout(
    served, autojump_clock
):
    client = served(hello)
    start = trio.current_time()
    assert await client.closed()
    assert trio.current_time() - start == LIMITS.first_request_timeout < LIMITS.idle_timeout


async def test_a_connection_is_proven_by_its_first_request_from_a_known_peer(nursery, autojump_clock):
    """Until then it may give way to a newcomer: while it waits, not while it is answered."""
    slots = Slots("http", max_connections=10, max_unproven_per_peer=10)
    slot = slots.admit("192.0.2.1")
    seen: list[bool] = []

    async def authenticate(request: Request) -> Response:
        seen.append(slot.waiting)
        if request.path == "/with-token":
            request.peer = Peer(address="192.0.2.1", token="grafana", role="read")
        return Response.json({})

    ours, theirs = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_connection, theirs, authenticate, Peer(address="192.0.2.1"), LIMITS, None, slot)
    client = Client(ours)
    await trio.sleep(1)
    await client.send(get("/without"))
    assert (await client.response())[0] == 200
    assert not slot.proven and slot.waiting and slot.since == trio.current_time()
    await client.send(get("/with-token"))
    assert (await client.response())[0] == 200
    assert slot.proven and not slot.waiting
    assert seen == [False, False]


async def test_a_request_that_came_in_pieces_is_answered_however_long_it_takes(
    served, autojump_clock
):
    async def slow(request: Request) -> Response:
        await trio.sleep(LIMITS.request_timeout * 3)  # longer than the request timeout
        return Response.json({"body": request.body.decode()})

    client = served(slow)
    await client.send(b"POST /x HTTP/1.1\r\nHost: sluice\r\nContent-Length: 4\r\n\r\n{}")
    await trio.sleep(2)
    await client.send(b"  ")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body) == {"body": "{}  "}
    # and the connection serves the next request
    await client.send(get("/again"))
    assert (await client.response())[0] == 200


async def test_shutdown_closes_idle_connections_and_lets_requests_finish(
    served, autojump_clock
):
    drain = Drain()
    release = trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/wait":
            await release.wait()
        return Response.json({"path": request.path})

    idle, busy = served(handler, drain), served(handler, drain)
    await idle.send(get("/quick"))
    assert (await idle.response())[0] == 200
    await busy.send(get("/wait"))
    await trio.sleep(1)
    drain.start()
    with trio.fail_after(0.1):
        assert await idle.closed()  # at once, not after the idle timeout
    release.set()
    status, _, body = await busy.response()
    assert status == 200 and json.loads(body) == {"path": "/wait"}
    assert await busy.closed()  # and then it closes: no new request during shutdown


async def test_a_new_connection_during_shutdown_is_closed_at_once(served, autojump_clock):
    drain = Drain()
    drain.start()
    client = served(hello, drain)
    with trio.fail_after(0.1):
        assert await client.closed()


async def test_a_streamed_response_outlives_the_idle_timeout(served, autojump_clock):
    async def chunks():
        for n in range(3):
            yield f"{n}\n".encode()
            await trio.sleep(LIMITS.idle_timeout * 0.8)

    async def stream(request: Request) -> Response:
        return Response(content_type="application/x-ndjson", stream=chunks())

    client = served(stream)
    await client.send(get("/events"))
    status, _, body = await client.response()
    assert status == 200 and body == b"0\n1\n2\n"
    assert trio.current_time() >= LIMITS.idle_timeout * 2


async def test_every_request_is_logged_once_with_its_outcome(served, autojump_clock):
    client = served(hello)
    with structlog.testing.capture_logs() as logs:
        await client.send(get("/one?token=secret") + get("/two"))
        assert (await client.response())[0] == 200
        assert (await client.response())[0] == 200
        await client.send(b"garbage\r\n\r\n")
        assert (await client.response())[0] == 400
    lines = [line for line in logs if line["event"] == "request"]
    assert [(line["path"], line["status"]) for line in lines] == [
        ("/one", 200),
        ("/two", 200),
        (None, 400),
    ]
    assert all(line["request_id"].startswith("req_") for line in lines)
    assert "secret" not in repr(logs)



async def test_a_read_routes_lines_carry_the_request_id_of_its_response(served, autojump_clock):
    """Every line logged while a request is answered names it, not only the lines of changes."""

    async def reading(request: Request) -> Response:
        structlog.get_logger("sluice.test").info("looked_up")
        return Response.json({})

    client = served(reading)
    with structlog.testing.capture_logs([add_request_id]) as logs:
        for _ in range(2):
            await client.send(get("/api/check/v1?queue=example.com"))
            status, headers, _ = await client.response()
            assert status == 200
            lines = [(line["event"], line["request_id"]) for line in logs]
            request_id = headers[b"x-request-id"].decode()
            assert lines == [("looked_up", request_id), ("request", request_id)]
            logs.clear()

async def test_an_announced_body_over_the_limit_is_refused_before_it_is_sent(served, autojump_clock):
    client = served(hello)
    start = trio.current_time()
    await client.send(b"POST /x HTTP/1.1\r\nHost: sluice\r\nContent-Length: 10000000\r\n\r\n")
    status, _, body = await client.response()
    # answered on the head alone: no wait for a body the client may never send
    assert status == 413 and json.loads(body)["error"]["code"] == "BODY_TOO_LARGE"
    assert trio.current_time() - start < LIMITS.request_timeout


async def test_a_body_within_the_limit_reaches_the_route(served, autojump_clock):
    async def echo(request: Request) -> Response:
        return Response.json({"body": request.body.decode(), "type": request.headers["content-type"]})

    client = served(echo)
    await client.send(b"POST /x HTTP/1.1\r\nHost: sluice\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: 5\r\n\r\nhel")
    await trio.sleep(1)  # the rest comes later, within the request timeout
    await client.send(b"lo")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body) == {"body": "hello", "type": "text/plain"}


async def test_a_chunked_body_in_many_small_pieces_arrives_whole(served, autojump_clock):
    async def echo(request: Request) -> Response:
        return Response.json({"size": len(request.body), "tail": request.body[-10:].decode()})

    client = served(echo)
    await client.send(b"POST /x HTTP/1.1\r\nHost: sluice\r\nTransfer-Encoding: chunked\r\n\r\n")
    payload = b"0123456789" * 3000
    for start in range(0, len(payload), 16):  # the head first, then the body 16 bytes a chunk
        await client.send(b"10\r\n" + payload[start:start + 16] + b"\r\n")
    await client.send(b"0\r\n\r\n")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body) == {"size": len(payload), "tail": "0123456789"}


async def test_a_routes_own_header_is_checked_and_cannot_inject_another(served, autojump_clock):
    async def injecting(request: Request) -> Response:
        response = Response.json({"ok": True})
        response.headers.append(("Allow", "GET\r\nSet-Cookie: stolen=1"))
        return response

    client = served(injecting)
    await client.send(get("/x"))
    # h11 refuses the header: the connection closes with nothing sent
    assert await client.closed()
    client = served(hello)
    await client.send(get("/x"))
    status, headers, _ = await client.response()
    assert status == 200 and headers[b"x-request-id"].startswith(b"req_")
    assert headers[b"content-type"] == b"application/json"


# -- the query string --------------------------------------------------------

_QUERY_CHARS = st.sampled_from(list("qa=&%+;#é 0:@!.") + ["%40", "%zz", "%C3%A9"])


@given(st.lists(_QUERY_CHARS, max_size=20).map("".join))
@example("queue=newsletter:acme@bench.example")
@example("queue=")
@example("queue")
@example("=x")
@example("queue=a+b")
@example("queue=a%40b")
@example("queue=a&queue=b")
def test_a_query_string_reads_as_parse_qs_reads_it(query):
    assert parse_query(query) == parse_qs(query)
