"""`qrerank serve` against hostile and careless clients: 4 MiB floods of items refused fast in
bounded memory while /health answers; per-request preparation never on the event loop; POSTs only as JSON and
no CORS; API keys from the command line, a file and the environment, non-ASCII ones included; the connection
flags honoured."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from qrerank import Embedder, Reranker  # noqa: E402
from qrerank.engine import Engine  # noqa: E402
from qrerank.serving.app import create_app  # noqa: E402
from qrerank.serving.options import ServerOptions  # noqa: E402
from qrerank.serving.server import BackgroundServer  # noqa: E402
from qrerank.serving.tokens import TokenCounter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV_KEY = "env-ключ-ü"  # non-ASCII: clients send it as UTF-8
FILE_KEYS = ["file-key-1", "ключ-из-файла"]
MAX_BODY = 4 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("\n".join(["", *FILE_KEYS, ""]), encoding="utf-8")
    port = _free_port()
    argv = [sys.executable, "-m", "qrerank.cli", "serve", "--model", str(reranker_dir), "--served-model-name", "rr"]
    argv += ["--port", str(port), "--device", "cpu", "--max-length", "256", "--log-level", "warning"]
    argv += ["--api-key", "arg-key", "--api-key-file", str(key_file), "--max-connections", "16", "--idle-timeout", "1"]
    process = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "QRERANK_API_KEY": ENV_KEY})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"qrerank serve exited with {process.returncode}"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "qrerank serve did not answer /health within 120 s"
            time.sleep(0.2)
        yield process.pid, url
    finally:
        process.kill()
        process.wait(timeout=30)


def _raw_post(url: str, path: str, body: bytes, headers: dict[str, bytes]) -> tuple[int, bytes]:
    """A POST whose header values are sent as the given bytes (httpx would refuse non-ASCII ones)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", path)
        for name, value in {"Content-Type": b"application/json", **headers}.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_keys_from_the_command_line_a_file_and_the_environment(served: tuple[int, str]) -> None:
    _, url = served
    body = b'{"query": "q", "documents": ["a"]}'
    for key in ["arg-key", *FILE_KEYS, ENV_KEY]:
        status, answer = _raw_post(url, "/v1/rerank", body, {"Authorization": b"Bearer " + key.encode("utf-8")})
        assert status == 200, (key, answer)
    for wrong in ["", "arg-key2", ENV_KEY[:-1], ENV_KEY.encode("utf-8").decode("latin-1")]:
        status, _ = _raw_post(url, "/v1/rerank", body, {"Authorization": b"Bearer " + wrong.encode("utf-8")})
        assert status == 401, wrong


def _peak_rss_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from the current RSS


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to read peak memory")
def test_floods_of_items_are_refused_fast_in_bounded_memory(served: tuple[int, str]) -> None:
    """A million items, wrongly typed or valid ones: msgspec would build every valid one (58 MB of one-letter
    texts out of 4 MiB) before checking a list's length, so the length is counted first."""
    pid, url = served
    auth = {"Authorization": b"Bearer arg-key"}
    prefix = b'{"query": "q", "documents": ['
    items = (b"1", b"{}", b'"a"', b'{"text": "a"}')
    floods = {item: prefix + b",".join([item] * ((MAX_BODY - 64) // (len(item) + 1))) + b"]}" for item in items}
    health: list[float] = []
    flooding = threading.Event()

    def probe() -> None:  # /health on a keep-alive connection, as a load balancer polls it
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        while flooding.is_set():
            start = time.perf_counter()
            connection.request("GET", "/health")
            assert connection.getresponse().read() == b'{"status":"ok"}'
            health.append(time.perf_counter() - start)
            time.sleep(0.002)
        connection.close()

    _raw_post(url, "/v1/rerank", prefix + b"1]}", auth)  # warm the decode path
    for item, body in floods.items():
        _peak_rss_reset(pid)
        before = _peak_rss(pid)
        flooding.set()
        prober = threading.Thread(target=probe)
        prober.start()
        start = time.perf_counter()
        status, answer = _raw_post(url, "/v1/rerank", body, auth)
        seconds = time.perf_counter() - start
        time.sleep(0.05)
        flooding.clear()
        prober.join()
        growth = _peak_rss(pid) - before
        assert status == 413 and b"documents holds more than" in answer, answer[:200]
        assert seconds < 1.0, f"{item!r} x {len(body) // (len(item) + 1)}: 413 after {seconds:.2f} s"
        assert growth < 10 * len(body), (
            f"peak memory grew {growth / 2**20:.1f} MiB for a {len(body) / 2**20:.1f} MiB body"
        )
    assert max(health) < 0.25, f"/health took up to {max(health) * 1e3:.0f} ms during the floods"


def test_the_connection_flags_are_honoured(served: tuple[int, str]) -> None:
    _, url = served
    host, port = url.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port))) for _ in range(16)]
    time.sleep(0.1)
    assert httpx.get(url + "/health", timeout=5).status_code == 503  # --max-connections 16
    for sock in held:  # --idle-timeout 1: the server closes them
        sock.settimeout(5)
        assert sock.recv(1) == b""
        sock.close()
    assert httpx.get(url + "/health", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def in_process(reranker: Reranker, embedder: Embedder) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(reranker, embedder, ServerOptions(reranker_name="rr", embedder_name="ee"))) as s:
        yield s


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
)
def test_posts_must_be_declared_json(in_process: BackgroundServer, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = httpx.post(in_process.url + "/v1/rerank", content=b'{"query": "q", "documents": ["a"]}', headers=headers)
    assert response.status_code == 415 and "application/json" in response.json()["error"]["message"]
    assert "access-control-allow-origin" not in response.headers


def test_json_with_a_utf8_charset_is_taken_and_no_cors_is_offered(in_process: BackgroundServer) -> None:
    body = b'{"query": "q", "documents": ["a"]}'
    ok = httpx.post(
        in_process.url + "/v1/rerank", content=body, headers={"Content-Type": "Application/JSON; Charset=UTF-8"}
    )
    assert ok.status_code == 200
    preflight = httpx.options(
        in_process.url + "/v1/rerank",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 405 and not any(h.startswith("access-control-") for h in preflight.headers)


def test_request_preparation_never_runs_on_the_event_loop(
    in_process: BackgroundServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constructing the requests (every text validated), counting their tokens and checking token ids all
    cost in proportion to the body: none of it may run on the server's event loop thread."""
    threads: dict[str, set[str]] = {}

    def recorded(name: str, original: object) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            threads.setdefault(name, set()).add(threading.current_thread().name)
            return original(*args, **kwargs)  # type: ignore[operator]

        return wrapper

    import qrerank.requests

    monkeypatch.setattr(qrerank.requests, "check_str_list", recorded("validation", qrerank.requests.check_str_list))
    monkeypatch.setattr(TokenCounter, "score_tokens", recorded("tokens", TokenCounter.score_tokens))
    monkeypatch.setattr(TokenCounter, "embed_tokens", recorded("tokens", TokenCounter.embed_tokens))
    monkeypatch.setattr(Engine, "check_tokenized", recorded("token ids", Engine.check_tokenized))
    docs = [f"document {i}" for i in range(50)]
    assert httpx.post(in_process.url + "/v1/rerank", json={"query": "q", "documents": docs}).status_code == 200
    assert httpx.post(in_process.url + "/v1/embeddings", json={"input": docs}).status_code == 200
    assert set(threads) == {"validation", "tokens", "token ids"}
    loop_thread = "qrerank-server"  # BackgroundServer runs uvicorn and its event loop on this thread
    assert all(loop_thread not in names for names in threads.values()), threads


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response read off `sock`: its status and body (sized by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), body


@pytest.mark.parametrize(
    ("path", "field"), [("/v1/rerank", "documents"), ("/rerank", "texts"), ("/v1/embeddings", "input")]
)
def test_a_flood_is_refused_before_its_body_is_read_and_the_connection_lives_on(
    in_process: BackgroundServer, path: str, field: str
) -> None:
    """Its first chunk shows a list over the bound: the 413 comes while the client is still sending, the
    rest of the body is dropped as it arrives, and the connection then serves the next request."""
    head = b'{"query": "q", "' + field.encode() + b'": ['
    body = head + b",".join([b"{}"] * ((MAX_BODY - 64) // 3)) + b"]}"
    with socket.create_connection((in_process.host, in_process.port), timeout=30) as sock:
        request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{request}Content-Length: {len(body)}\r\n\r\n".encode() + body[:65536])
        status, answer = _response(sock)  # with the old whole-body read this waited for the other 4 MiB
        assert status == 413 and f"{field} holds more than" in answer.decode()
        sock.sendall(body[65536:] + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(sock)[0] == 200
