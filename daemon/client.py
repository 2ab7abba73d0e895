"""A client of sluiced's admin API over its unix socket, for sluicectl.

Blocking httpx with a unix-socket transport: sluicectl makes one request (or
follows one stream) and exits, so there is nothing for trio to do here.

    ClientError              socket: the admin socket the client was speaking to
    ├── Unreachable          reason: no socket, nobody listening, no permission,
    │                        no answer in time, or an answer that is not sluiced's
    └── Refused              status, code, message, body: the daemon's error envelope

Every method returns a ``Reply``: the decoded JSON and the body's text as the
daemon sent it (so ``--json`` can print the API's own bytes). Nothing here
prints or exits; sluicectl maps these exceptions to exit codes in one place.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

BASE_URL = "http://sluice"
TIMEOUT = 30.0


class ClientError(Exception):
    def __init__(self, socket: Path, message: str) -> None:
        super().__init__(message)
        self.socket = socket
        self.message = message


class Unreachable(ClientError):
    """The daemon could not be asked: ``reason`` says why, naming the socket."""

    def __init__(self, socket: Path, reason: str, message: str | None = None) -> None:
        super().__init__(socket, message or f"cannot reach sluiced at {socket}: {reason}")
        self.reason = reason


class Refused(ClientError):
    """The daemon answered with its error envelope."""

    def __init__(self, socket: Path, status: int, code: str, message: str, body: str) -> None:
        super().__init__(socket, message)
        self.status = status
        self.code = code
        self.body = body


@dataclass(frozen=True)
class Reply:
    data: Any
    text: str


def _segment(value: str) -> str:
    """One path segment: ``:``, ``@`` and ``!`` of queue names kept readable."""
    return quote(value, safe=":@!")


def _why(exc: BaseException) -> str:
    """A short reason for a failed connection, from the OSError underneath if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno == errno.ENOENT:
                return "no such socket (is sluiced running? see --socket)"
            if seen.errno == errno.ECONNREFUSED:
                return "connection refused (is sluiced running?)"
            if seen.errno in (errno.EACCES, errno.EPERM):
                return "permission denied (run as root or as a member of the admin group)"
            if seen.errno == errno.ENOTSOCK:
                return "not a socket"
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


class AdminClient:
    """The admin API of one daemon; use as a context manager."""

    def __init__(self, socket: Path, timeout: float = TIMEOUT) -> None:
        self.socket = Path(socket)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url=BASE_URL,
            timeout=timeout,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the transport, and the one place its errors are translated ---------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> Reply:
        """Send one request (``body`` as JSON, or ``content``, JSON already encoded);
        returns its Reply, raises Refused or Unreachable."""
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            response = self._http.request(method, path, json=body, params=params, content=content, headers=headers)
        except httpx.TimeoutException:
            raise Unreachable(self.socket, f"no answer within {self._timeout():g} s") from None
        except httpx.TransportError as exc:
            raise Unreachable(self.socket, _why(exc)) from None
        return self._reply(response.status_code, response.text)

    def _timeout(self) -> float:
        return self._http.timeout.read or 0.0

    def _reply(self, status: int, text: str) -> Reply:
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            raise Unreachable(
                self.socket, f"the answer (HTTP {status}) is not JSON; is this sluiced's socket?"
            ) from None
        if status >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict) and "code" in error:
                raise Refused(self.socket, status, str(error["code"]), str(error.get("message", "")), text)
            raise Refused(self.socket, status, f"HTTP_{status}", text.strip(), text)
        return Reply(data, text)

    # -- suspensions ----------------------------------------------------------

    def suspend(self, body: dict[str, Any]) -> Reply:
        return self.request("POST", "/api/admin/suspend/v1", body=body)

    def suspensions(self) -> Reply:
        return self.request("GET", "/api/admin/suspend/v1")

    def cancel_suspension(self, ident: str) -> Reply:
        return self.request("DELETE", "/api/admin/suspend/v1", body={"id": ident})

    # -- queues, schedules, endpoints -------------------------------------------

    def pause(self, kind: str, ident: str, reason: str | None = None) -> Reply:
        """Pause a queue, schedule or endpoint (``kind`` is the plural path word)."""
        body = {"reason": reason} if reason is not None else None
        return self.request("POST", f"/api/admin/{kind}/{_segment(ident)}/pause", body=body)

    def resume(self, kind: str, ident: str) -> Reply:
        return self.request("POST", f"/api/admin/{kind}/{_segment(ident)}/resume")

    def listing(self, kind: str) -> Reply:
        return self.request("GET", f"/api/admin/{kind}")

    # -- decisions, status, reload ---------------------------------------------

    def check(self, **one: str) -> Reply:
        """The decision for ``queue=``, ``schedule=`` or ``endpoint=``."""
        return self.request("GET", "/api/check/v1", params=one)

    def status(self) -> Reply:
        return self.request("GET", "/api/status/v1")

    def reload(self) -> Reply:
        return self.request("POST", "/api/admin/reload/v1")

    def publish_log(self, records: bytes) -> Reply:
        """Post delivery outcomes (a JSON array of kumod log records) to automation."""
        return self.request("POST", "/publish_log_v1", content=records)

    def events(self) -> Iterator[str]:
        """The events stream, one JSON line at a time (heartbeat blank lines dropped).

        Ends when the daemon ends the stream; raises Unreachable if the
        connection is lost without a proper end (the daemon stopped, say).
        """
        try:
            with self._http.stream(
                "GET", "/api/events/v1", timeout=httpx.Timeout(self._timeout(), read=None)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._reply(response.status_code, response.text)
                for line in response.iter_lines():
                    if line.strip():
                        yield line
        except httpx.TimeoutException:
            raise Unreachable(self.socket, f"no answer within {self._timeout():g} s") from None
        except httpx.RemoteProtocolError:
            reason = "the events stream broke off (did the daemon stop?)"
            raise Unreachable(
                self.socket, reason, f"lost sluiced at {self.socket}: {reason}"
            ) from None
        except httpx.TransportError as exc:
            raise Unreachable(self.socket, _why(exc)) from None
