"""A request's life in the server: its work dropped when its client leaves or times out, faults answered 500 on a
connection that stays usable, a disconnect mid-body counted (not a fault), the library's input errors 422, and
/health telling the engine's real state."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
parser = pytest.importorskip("prometheus_client.parser")

from qrerank import Reranker, ScoreRequest, Tokenized  # noqa: E402
from qrerank.serving.app import create_app  # noqa: E402
from qrerank.serving.options import ServerOptions  # noqa: E402
from qrerank.serving.server import BackgroundServer  # noqa: E402
from qrerank.serving.tokens import TokenCounter  # noqa: E402

LONG = " ".join(["word"] * 150)  # with the prompt, within the fixture's max_length of 256: two a micro-batch
JSON = {"Content-Type": "application/json"}


class Computed:
    """Counts the documents the engine computes for each query (score_batch wrapped on the device thread)."""

    def __init__(self, reranker: Reranker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.docs: dict[str, int] = {}
        self.started = threading.Event()
        original = reranker.score_batch

        def score_batch(requests: Sequence[ScoreRequest], **kwargs: object) -> list[np.ndarray]:
            for request in requests:
                self.docs[request.query] = self.docs.get(request.query, 0) + len(request.docs)
            self.started.set()
            return original(requests, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(reranker, "score_batch", score_batch)


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }


def _post_raw(url: str, path: str, body: bytes, declared_length: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    length = len(body) if declared_length is None else declared_length
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


@pytest.fixture
def server(reranker: Reranker) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(reranker, None, ServerOptions(reranker_name="rr"))) as running:
        yield running


def _settled(computed: Computed, query: str) -> int:
    """The documents computed for `query` once the engine has stopped computing them."""
    count = -1
    while count != computed.docs.get(query, 0):
        count = computed.docs.get(query, 0)
        time.sleep(0.5)
    return count


def test_a_disconnected_clients_work_is_dropped(
    server: BackgroundServer, reranker: Reranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed = Computed(reranker, monkeypatch)
    body = json.dumps({"query": "gone", "documents": [f"{i} {LONG}" for i in range(200)]}).encode()
    sock = _post_raw(server.url, "/v1/rerank", body)
    assert computed.started.wait(30)
    sock.close()  # the client gives up while its 100 micro-batches run
    assert _settled(computed, "gone") <= 8  # the passes that had started: 2 documents each
    samples = _samples(server.url)
    assert samples["qrerank_client_disconnects_total", (("route", "/v1/rerank"), ("stage", "waiting"))] == 1
    assert not any(dict(labels).get("status") == "500" for _, labels in samples)


def test_a_timed_out_request_stops_at_the_next_micro_batch(reranker: Reranker, monkeypatch: pytest.MonkeyPatch) -> None:
    computed = Computed(reranker, monkeypatch)
    options = ServerOptions(reranker_name="rr", request_timeout_s=0.5)
    with BackgroundServer(create_app(reranker, None, options)) as running:
        docs = [f"{i} {LONG}" for i in range(400)]
        response = httpx.post(running.url + "/v1/rerank", json={"query": "late", "documents": docs}, timeout=60)
        assert response.status_code == 504
        at_timeout = computed.docs.get("late", 0)
        assert _settled(computed, "late") <= at_timeout + 4 < 400


def test_a_server_fault_is_a_json_500_and_the_connection_stays_usable(
    server: BackgroundServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: TokenCounter, *args: object) -> Tokenized:
        raise RuntimeError("a bug in the server")

    monkeypatch.setattr(TokenCounter, "score_tokens", broken)
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)  # one keep-alive connection
    try:
        with caplog.at_level(logging.ERROR, logger="qrerank.serving"):
            connection.request("POST", "/v1/rerank", json.dumps({"query": "q", "documents": ["a"]}), JSON)
            faulted = connection.getresponse()
            error = json.loads(faulted.read())
        first_socket = connection.sock
        assert faulted.status == 500 and error["error"]["code"] == 500 and "RuntimeError" in error["error"]["message"]
        assert faulted.getheader("connection") != "close"
        assert any("internal error on POST /v1/rerank" in r.getMessage() for r in caplog.records)
        connection.request("GET", "/v1/models")
        answered = connection.getresponse()
        assert answered.status == 200 and json.loads(answered.read())["data"][0]["id"] == "rr"
        assert connection.sock is first_socket  # the same connection served the next request
    finally:
        connection.close()


def test_a_disconnect_mid_body_is_counted_and_not_a_fault(
    server: BackgroundServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        sock = _post_raw(server.url, "/v1/rerank", b'{"query": "q", "docu', declared_length=100_000)
        time.sleep(0.2)
        sock.close()
        deadline = time.monotonic() + 10
        key = ("qrerank_client_disconnects_total", (("route", "/v1/rerank"), ("stage", "body")))
        while _samples(server.url).get(key) != 1:
            assert time.monotonic() < deadline, "the disconnect was not counted"
            time.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert not any(dict(labels).get("status") == "500" for _, labels in _samples(server.url))


def test_input_errors_of_the_library_are_422(
    server: BackgroundServer, monkeypatch: pytest.MonkeyPatch, reranker: Reranker
) -> None:
    def untokenizable(self: TokenCounter, *args: object) -> Tokenized:
        raise ValueError("documents[1] cannot be tokenized")

    monkeypatch.setattr(TokenCounter, "score_tokens", untokenizable)
    response = httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
    assert response.status_code == 422 and "documents[1] cannot be tokenized" in response.json()["error"]["message"]
    monkeypatch.undo()

    def refusing(docs: object, name: str) -> list[str]:
        raise TypeError(f"{name}[0] is not a text the model takes")

    monkeypatch.setattr("qrerank.requests.check_str_list", refusing)
    response = httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert response.status_code == 422 and "docs[0] is not a text" in response.json()["error"]["message"]


def test_health_reports_a_worker_fault_until_a_pass_succeeds(
    server: BackgroundServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("metrics exporter broke")

    monkeypatch.setattr(server.app.state.metrics, "observe_batch", broken)
    failed = httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=10)
    assert failed.status_code == 500 and "WorkerFault" in failed.json()["error"]["message"]
    health = httpx.get(server.url + "/health")
    assert health.status_code == 503 and "faulted" in health.json()["error"]["message"]
    assert "metrics exporter broke" in health.json()["error"]["message"]
    monkeypatch.undo()
    assert httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert _samples(server.url)["qrerank_engine_faults", ()] == 1
