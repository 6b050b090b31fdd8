"""Connection limits: a cap on open connections, and deadlines for every stage of reading a request.

uvicorn keeps a connection open for as long as its client likes until a first response (its
keep-alive timer starts only after one), has no deadline for request headers or bodies, and its
`limit_concurrency` answers 503 only once an excess connection has sent a whole request, so idle
and dripping sockets pile up until the file descriptors run out. `GuardedHttpProtocol` is uvicorn's
httptools protocol with a deadline for each stage of a connection:

  connected, or between requests   idle_timeout_s (uvicorn's keep-alive timer, armed from connect too)
  first byte -> end of headers     header_timeout_s, and at most max_header_bytes; else 408 / 431
  end of headers -> end of body    body_timeout_s; else the connection is closed (the app, if it was
                                   reading, sees the client gone)

and a connection beyond `max_connections` is answered 503 at once and closed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import resource
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from qrerank.serving.errors import error_body
from qrerank.serving.options import ConnectionLimits

FD_RESERVE = 256  # descriptors kept for everything but client connections (model files, logs, pipes)
LINGER_S = 1.0  # a refused connection's input is drained this long, so the client reads its 503, not a reset

logger = logging.getLogger("qrerank.serving")


def uvicorn_settings(limits: ConnectionLimits) -> dict[str, Any]:
    """The uvicorn.Config arguments that apply `limits`."""
    return {"http": functools.partial(GuardedHttpProtocol, limits=limits), "timeout_keep_alive": limits.idle_timeout_s}


def reserve_file_descriptors(limits: ConnectionLimits) -> None:
    """Raise this process's soft descriptor limit to fit max_connections, or refuse (ValueError)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = limits.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(
                f"max_connections={limits.max_connections} needs {needed} file descriptors, but this process may "
                f"open at most {hard} (ulimit -Hn); lower --max-connections to {max(1, hard - FD_RESERVE)}"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class _HeadersTooLarge(Exception):
    pass


def _canned(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = json.dumps(error_body(status, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n"
    )
    return (head + ("retry-after: 1\r\n" if status == 503 else "") + "\r\n").encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under ConnectionLimits (one instance per connection)."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._deadline: asyncio.TimerHandle | None = None  # of the stage being read: headers or body
        # Header size, two ways: bytes received since the request began (while its headers are being read:
        # httptools buffers a header until it ends, so one dripped forever must be cut off as it grows),
        # and the URL and headers parsed (exact, for headers that arrive in one read).
        self._header_bytes: int | None = None
        self._parsed_header_bytes = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        # uvicorn arms this timer only after a response; a connection that never sends a request is as idle
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # drained until the client closes or the linger ends
        if self._header_bytes is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._header_bytes is not None and self._header_bytes > self.limits.max_header_bytes:
            self._reject(431, "Request Header Fields Too Large", f"over {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._parsed_header_bytes = 0
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_parsed(len(name) + len(value))
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        self._parsed_header_bytes += size
        if self._parsed_header_bytes > self.limits.max_header_bytes:
            raise _HeadersTooLarge  # httptools stops parsing; uvicorn answers with send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._parsed_header_bytes > self.limits.max_header_bytes:
            self._reject(431, "Request Header Fields Too Large", f"over {self.limits.max_header_bytes} bytes")
        else:
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        self._arm(self.limits.body_timeout_s, self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._reject(408, "Request Timeout", f"not within {self.limits.header_timeout_s} s")

    def _reject(self, status: int, reason: str, why: str) -> None:
        """Headers not sent in time or size: no app has the request yet, so the answer is written here."""
        self._disarm()
        self._header_bytes = None
        if not self.transport.is_closing():
            logger.info("closing a connection from %s: request headers %s", self.client, why)
            self.transport.write(_canned(status, reason, f"request headers {why}"))
            self.transport.close()

    def _body_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            logger.info("closing a connection from %s: body not within %s s", self.client, self.limits.body_timeout_s)
            self.transport.close()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """503 at once, then a lingering close: the output is shut and the input drained for LINGER_S,
        so a client still sending its request reads the 503 rather than a connection reset."""
        self._refused = True
        self.transport = transport
        limit = self.limits.max_connections
        message = f"the server holds its limit of {limit} connections; retry shortly"
        transport.write(_canned(503, "Service Unavailable", message))
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = self.loop.call_later(LINGER_S, transport.close)
