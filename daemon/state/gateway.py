"""etcd's v3 JSON gateway over httpx: endpoints in turn, TLS, auth tokens, the watch stream.

How this works
--------------
Every call is a POST of JSON with base64 keys and values, as the gateway
wants. ``Gateway.call`` tries the configured endpoints in turn, starting with
the one that answered last, and goes round again for a bounded time (a
leader election is over in about a second). An endpoint that cannot be
reached, or answers with a gRPC code that means "try again" (unavailable,
deadline exceeded, aborted), is a ``Retry``; a definite answer that says no
is ``EtcdRefused``; no endpoint answering at all is ``StateUnavailable``.

With a username, each member's token comes from ``/v3/auth/authenticate``
and goes in the ``Authorization`` header; a token refused (expired, or
another member's: simple tokens are per member) is fetched again once.

``read_prefix`` reads every key under a prefix at one revision, in pages.
``open_watch`` opens ``/v3/watch`` (a streaming POST answered with one JSON
result per line) on the first member that creates the watch.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import msgspec
import trio

from .base import EtcdSettings, StateUnavailable

CONNECT_TIMEOUT = 1.0
REQUEST_TIMEOUT = 5.0

# gRPC codes the gateway reports that mean "try again, perhaps elsewhere"
_RETRY_CODES = {1, 4, 10, 13, 14}  # cancelled, deadline, aborted, internal, unavailable
_UNAUTHENTICATED = 16
COMPACTED = 11  # OutOfRange: the revision asked for is compacted
PAGE = 2000  # keys per range request


class EtcdRefused(Exception):
    """etcd answered, and said no (a bad request, permission denied, compacted)."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Retry(Exception):
    """This endpoint failed; another one (or a later try) may not."""


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def put_op(key: str, value: str | bytes) -> dict:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def delete_op(key: str) -> dict:
    return {"request_delete_range": {"key": b64(key)}}


def mod_revision_is(key: str, revision: int) -> dict:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def absent(key: str) -> dict:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def value_is(key: str, value: str) -> dict:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def _error_of(response: httpx.Response) -> tuple[int | None, str]:
    try:
        body = response.json()
    except ValueError:
        return None, response.text.strip() or f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if not isinstance(body, dict):
        return None, f"HTTP {response.status_code}"
    code = body.get("code", body.get("grpc_code"))
    return code, str(body.get("message") or body.get("error") or f"HTTP {response.status_code}")


class Gateway:
    """POSTs to etcd's JSON gateway: endpoints in turn, TLS, and auth tokens.

    Tokens are per member (etcd's simple tokens are), fetched with
    ``/v3/auth/authenticate`` and fetched again when one is refused.
    """

    def __init__(
        self,
        endpoints: list[str],
        *,
        verify: ssl.SSLContext | bool = True,
        username: str = "",
        password: str = "",
    ) -> None:
        if not endpoints:
            raise ValueError("state.etcd.endpoints must name at least one endpoint")
        for endpoint in endpoints:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError(f"state.etcd.endpoints: {endpoint!r} is not an http:// or https:// URL")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.index = 0
        self.username = username
        self.password = password
        self._tokens: dict[str, str] = {}
        self.client = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
            trust_env=False,
        )

    @classmethod
    def from_settings(cls, etcd: EtcdSettings) -> Gateway:
        """The gateway ``[state.etcd]`` describes; ValueError for a setting that cannot work."""
        verify: ssl.SSLContext | bool = True
        if etcd.ca_file or etcd.cert_file or etcd.key_file:
            if bool(etcd.cert_file) != bool(etcd.key_file):
                raise ValueError("state.etcd: cert_file and key_file go together")
            try:
                verify = ssl.create_default_context(cafile=str(etcd.ca_file) if etcd.ca_file else None)
                if etcd.cert_file:
                    verify.load_cert_chain(etcd.cert_file, etcd.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"state.etcd: cannot load TLS files: {exc}") from None
        if bool(etcd.username) != bool(etcd.password):
            raise ValueError("state.etcd: username and password go together")
        return cls(list(etcd.endpoints), verify=verify, username=etcd.username, password=etcd.password)

    @property
    def endpoint(self) -> str:
        return self.endpoints[self.index]

    def next_endpoint(self) -> None:
        self.index = (self.index + 1) % len(self.endpoints)

    async def _headers(self, endpoint: str) -> dict[str, str]:
        if not self.username:
            return {}
        token = self._tokens.get(endpoint)
        if token is None:
            try:
                response = await self.client.post(
                    endpoint + "/v3/auth/authenticate",
                    json={"name": self.username, "password": self.password},
                )
            except httpx.TransportError as exc:
                raise Retry(describe(exc)) from None
            if response.status_code != 200:
                code, message = _error_of(response)
                if code in _RETRY_CODES or response.status_code >= 500:
                    raise Retry(message)
                raise EtcdRefused(code, f"authentication as {self.username!r} failed: {message}")
            token = self._tokens[endpoint] = response.json()["token"]
        return {"Authorization": token}

    async def post_to(
        self, endpoint: str, path: str, body: dict, timeout: float | None = None
    ) -> dict:
        """One POST to one endpoint; raises Retry or EtcdRefused."""
        for attempt in (1, 2):
            headers = await self._headers(endpoint)
            try:
                response = await self.client.post(
                    endpoint + path,
                    json=body,
                    headers=headers,
                    timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT) if timeout else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                raise Retry(describe(exc)) from None
            if response.status_code == 200:
                return response.json()
            code, message = _error_of(response)
            if code == _UNAUTHENTICATED and self.username and attempt == 1:
                self._tokens.pop(endpoint, None)  # expired, or another member's
                continue
            if code in _RETRY_CODES or response.status_code >= 500:
                raise Retry(message)
            raise EtcdRefused(code, message)
        raise Retry("authentication token refused twice")

    async def call(self, path: str, body: dict, *, patience: float = 0.0) -> dict:
        """POST to the endpoints in turn until one answers.

        Goes round them again for up to ``patience`` seconds (a leader
        election is over in about one). Raises StateUnavailable when none
        answered, EtcdRefused when one said no.
        """
        failures: list[str] = []
        give_up = trio.current_time() + patience
        delay = 0.05
        while True:
            for _ in range(len(self.endpoints)):
                endpoint = self.endpoint
                try:
                    return await self.post_to(endpoint, path, body)
                except Retry as exc:
                    failures.append(f"{endpoint}: {exc}")
                    self.next_endpoint()
            if trio.current_time() + delay > give_up:
                raise StateUnavailable(
                    "etcd is unreachable (" + "; ".join(failures[-len(self.endpoints):]) + ")"
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def read_prefix(self, prefix: bytes, *, patience: float) -> tuple[dict[str, tuple[int, bytes]], int]:
        """Every key under ``prefix``: key -> (mod_revision, value), all at one revision, and that revision.

        Read in pages of ``PAGE``, all at the revision of the first; started
        again if etcd compacts that revision meanwhile. Raises StateUnavailable.
        """
        end = prefix_end(prefix)
        for _ in range(3):
            found: dict[str, tuple[int, bytes]] = {}
            revision: int | None = None
            key = prefix
            try:
                while True:
                    body: dict[str, Any] = {"key": b64(key), "range_end": b64(end), "limit": PAGE}
                    if revision is not None:
                        body["revision"] = revision
                    answer = await self.call("/v3/kv/range", body, patience=patience)
                    if revision is None:
                        revision = int(answer["header"]["revision"])
                    kvs = answer.get("kvs", [])
                    for kv in kvs:
                        found[unb64(kv["key"]).decode("utf-8", "replace")] = (
                            int(kv["mod_revision"]),
                            unb64(kv.get("value", "")),
                        )
                    if not answer.get("more") or not kvs:
                        return found, revision
                    key = unb64(kvs[-1]["key"]) + b"\0"
            except EtcdRefused as exc:
                if exc.code != COMPACTED:
                    raise StateUnavailable(f"etcd refused to list the state: {exc}") from None
        raise StateUnavailable("etcd state kept being compacted while it was read")

    async def open_watch(self, body: dict, stack: AsyncExitStack) -> tuple[str, AsyncIterator[dict]]:
        """Open a watch on the first endpoint that creates it.

        Returns the endpoint and the iterator of the results that follow the
        ``created`` one; the stream is closed with ``stack``.
        """
        failures: list[str] = []
        for _ in range(len(self.endpoints)):
            endpoint = self.endpoint
            try:
                async with AsyncExitStack() as attempt:
                    headers = await self._headers(endpoint)
                    with trio.fail_after(CONNECT_TIMEOUT + REQUEST_TIMEOUT):
                        response = await attempt.enter_async_context(
                            self.client.stream(
                                "POST",
                                endpoint + "/v3/watch",
                                json=body,
                                headers=headers,
                                timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
                            )
                        )
                        if response.status_code != 200:
                            await response.aread()
                            code, message = _error_of(response)
                            if code == _UNAUTHENTICATED:
                                self._tokens.pop(endpoint, None)
                            raise Retry(message)
                        results = _results(response)
                        first = await anext(results)
                    if not first.get("created"):
                        raise Retry(f"watch not created: {first}")
                    stack.push_async_exit(attempt.pop_all())
                    stack.push_async_callback(results.aclose)
                    return endpoint, results
            except (Retry, trio.TooSlowError, httpx.TransportError, StopAsyncIteration) as exc:
                failures.append(f"{endpoint}: {describe(exc)}")
                self.next_endpoint()
        raise StateUnavailable("etcd is unreachable (" + "; ".join(failures) + ")")

    async def aclose(self) -> None:
        await self.client.aclose()


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _results(response: httpx.Response) -> AsyncIterator[dict]:
    """The watch stream's results, one JSON object per line."""
    try:
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            message = msgspec.json.decode(line)
            if "error" in message:
                error = message["error"]
                raise Retry(str(error.get("message", error)) if isinstance(error, dict) else str(error))
            yield message.get("result", {})
    except httpx.TransportError as exc:
        raise Retry(describe(exc)) from None
