"""Slow and idle clients: idle, header-drip and body-drip sockets are closed on their deadlines while /health
answers; a connection beyond the limit gets 503 at once; oversized headers get 431."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from qrerank import Reranker  # noqa: E402
from qrerank.serving.app import create_app  # noqa: E402
from qrerank.serving.options import ConnectionLimits, ServerOptions  # noqa: E402
from qrerank.serving.server import BackgroundServer  # noqa: E402

DEADLINE_S = 1.0
HEADERS = b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def _serve(reranker: Reranker, limits: ConnectionLimits) -> BackgroundServer:
    return BackgroundServer(create_app(reranker, None, ServerOptions(reranker_name="rr")), limits=limits)


def _connect(server: BackgroundServer, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection((server.host, server.port))
    sock.sendall(first)
    return sock


def _drip(sock: socket.socket, byte: bytes) -> None:
    try:
        sock.send(byte)
    except OSError:  # closed by the server already
        pass


def _answer(sock: socket.socket, within_s: float) -> bytes | None:
    """What the server sent before closing the connection; None if it was still open after `within_s`."""
    sock.settimeout(within_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


@pytest.fixture(scope="module")
def server(reranker: Reranker) -> Iterator[BackgroundServer]:
    limits = ConnectionLimits(
        max_connections=400, idle_timeout_s=DEADLINE_S, header_timeout_s=DEADLINE_S, body_timeout_s=DEADLINE_S
    )
    with _serve(reranker, limits) as running:
        yield running


def test_idle_and_dripping_connections_are_closed_while_health_answers(server: BackgroundServer) -> None:
    start = time.monotonic()
    idle = [_connect(server) for _ in range(70)]
    header_drip = [_connect(server, HEADERS) for _ in range(70)]
    body_drip = [_connect(server, HEADERS + b"Content-Length: 1000\r\n\r\n" + b'{"query') for _ in range(60)]
    health: list[float] = []
    while time.monotonic() - start < 2 * DEADLINE_S:
        for sock in header_drip:
            _drip(sock, b"X")  # one more byte of a header name that never ends
        for sock in body_drip:
            _drip(sock, b" ")
        sent = time.perf_counter()
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        health.append(time.perf_counter() - sent)
        time.sleep(0.1)
    assert max(health) < 0.5, f"/health took up to {max(health) * 1e3:.0f} ms beside 200 slow sockets"
    answers = [_answer(sock, 2 * DEADLINE_S) for sock in idle + header_drip + body_drip]
    for sock in idle + header_drip + body_drip:
        sock.close()
    assert None not in answers, f"{answers.count(None)} of 200 slow connections were still open"
    assert set(answers[:70]) == {b""}  # idle: closed without a word
    assert all(a is not None and a.startswith(b"HTTP/1.1 408 ") and b"request headers" in a for a in answers[70:140])
    assert set(answers[140:]) == {b""}  # the app was reading: it saw the client gone
    metrics = httpx.get(server.url + "/metrics").text
    assert 'qrerank_client_disconnects_total{route="/v1/rerank",stage="body"} 60.0' in metrics


def test_oversized_headers_get_431(server: BackgroundServer) -> None:
    at_once = _connect(server, HEADERS + b"X-Padding: " + b"p" * 70_000 + b"\r\n\r\n")
    streamed = _connect(server, HEADERS + b"X-Padding: ")
    for _ in range(10):  # one header that never ends, 10 kB at a time
        _drip(streamed, b"p" * 10_000)
        time.sleep(0.01)
    for sock in (at_once, streamed):
        answer = _answer(sock, 5)
        sock.close()
        assert answer is not None and answer.startswith(b"HTTP/1.1 431 "), answer


def test_a_connection_beyond_the_limit_gets_503_at_once(reranker: Reranker) -> None:
    with _serve(reranker, ConnectionLimits(max_connections=20, idle_timeout_s=30)) as small:
        held = [_connect(small) for _ in range(20)]
        time.sleep(0.1)  # accepted by the server's loop
        sent = time.perf_counter()
        refused = httpx.get(small.url + "/health", timeout=5)
        waited = time.perf_counter() - sent
        assert refused.status_code == 503 and waited < 1.0
        assert "limit of 20 connections" in refused.json()["error"]["message"]
        assert refused.headers["connection"] == "close" and refused.headers["retry-after"] == "1"
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 5
        while httpx.get(small.url + "/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the server did not take connections again"
            time.sleep(0.05)
